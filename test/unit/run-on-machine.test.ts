// The run's orchestration on the fake machine backend: boot, setup, the probe
// phase and collect, for every way a run can go wrong, without QEMU. Each case
// checks the outcome class, what results.json keeps, and that the machine was
// ended.
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import type { LabSpec } from '../../src/lab/types.ts';
import { FakeBackend, type FakeInstance, type FakeScript, type RunnerStep } from '../../src/machine/fake.ts';
import { formatProbeMarker } from '../../src/protocol/protocol.ts';
import { runOnMachine } from '../../src/run/on-machine.ts';
import type { PreparedLab } from '../../src/run/prepare.ts';
import { FAKE_PREPARED } from './helpers/fake-prepared.ts';
import type { RunResults } from '../../src/results/report.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));

const prepared: PreparedLab = FAKE_PREPARED;

async function run(t: { teardown: (fn: () => Promise<void>) => void }, script: FakeScript, labOverride: LabSpec = lab): Promise<{ results: RunResults; m: FakeInstance; runDir: string }> {
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-fake-run-'));
  t.teardown(() => rm(runDir, { recursive: true, force: true }));
  const backend = new FakeBackend(script);
  const results = await runOnMachine({
    lab: labOverride, prepared, runDir, progress: silentProgress(), privateKey: 'key', startedAt: Date.now(), timings: {},
  }, backend);
  return { results, m: backend.instances[0] as FakeInstance, runDir };
}

/** What the runner prints and logs for one probe: markers in the kernel log, a TAP subtest on stdout. */
function probeSteps(index: number, name: string, points: Array<[boolean, string]>, during: RunnerStep[] = []): RunnerStep[] {
  const body = points.map(([ok, p], i) => `    ${ok ? 'ok' : 'not ok'} ${i + 1} - ${p}\n`).join('');
  const ok = points.every(([x]) => x);
  return [
    { console: formatProbeMarker({ edge: 'begin', index, probe: name }) },
    { stdout: `# Subtest: ${name}\n` },
    ...during,
    { stdout: `${body}    1..${points.length}\n${ok ? 'ok' : 'not ok'} ${index} - ${name}\n` },
    { console: formatProbeMarker({ edge: 'end', index, probe: name }) },
  ];
}

const header = (n: number): RunnerStep => ({ stdout: `TAP version 14\n1..${n}\n` });
const allPass = (l: LabSpec): RunnerStep[] => [header(l.probes.length), ...l.probes.flatMap((p, i) => probeSteps(i + 1, p.name, [[true, 'works']]))];
const PANIC = [
  'BUG: kernel NULL pointer dereference, address: 0000000000000008',
  '#PF: supervisor read access in kernel mode',
  'Oops: 0000 [#1] PREEMPT SMP NOPTI',
  'CPU: 1 UID: 0 PID: 201 Comm: node Not tainted 7.2.13 #1',
  'RIP: 0010:vfio_pci_dma_buf_move+0x1a/0x90 [vfio_pci_core]',
  'Call Trace:',
  ' <TASK>',
  ' vfio_pci_core_close_device+0x30/0x60 [vfio_pci_core]',
  'Kernel panic - not syncing: Fatal exception',
];

test('a clean run: setup binds the probes\' endpoints, every probe passes, the machine powers off', async (t) => {
  const { results, m, runDir } = await run(t, { runner: allPass(lab) });
  t.is(results.outcome.class, 'pass', results.outcome.detail);
  t.is(results.probes.length, lab.probes.length);
  t.is(results.failure, undefined);
  t.deepEqual(results.machine, { backend: 'fake', accel: 'tcg', accelNote: 'fake backend (no emulator)' });
  const argv = m.calls.map((c) => c.argv);
  t.true(argv.some((a) => a.join(' ') === 'modprobe vfio-pci'));
  t.true(argv.some((a) => a[0] === 'node' && a[2] === '/run/hwlab/config.json'));
  t.true(argv.some((a) => a[0] === 'busybox' && a[1] === 'poweroff'), 'powered off');
  t.deepEqual(m.exited, { code: 0, signal: null });
  const config = JSON.parse(await readFile(path.join(runDir, 'guest-config.json'), 'utf8'));
  t.deepEqual(config.probes.map((p: { name: string }) => p.name), lab.probes.map((p) => p.name));
  t.true(existsSync(path.join(runDir, 'probes.tap')));
  t.true(existsSync(path.join(runDir, 'devices.json')));
});

test('a waiting probe runner (a restored guest) takes the run through prestart.sh go: no cold node, results say prestarted', async (t) => {
  const { results, m } = await run(t, { runner: allPass(lab), waitingRunner: { takes: true } });
  t.is(results.outcome.class, 'pass', results.outcome.detail);
  t.is(results.probes.length, lab.probes.length);
  t.deepEqual(results.runner, { mode: 'prestarted', startupSavedSec: 4.5 });
  const argv = m.calls.map((c) => c.argv);
  const go = argv.find((a) => a[1] === '/run/hwlab/prestart/prestart.sh');
  t.deepEqual(go?.slice(2, 3), ['go']);
  t.regex(go?.[3] ?? '', /^[0-9a-f]{64}$/, 'this run\'s bundle hash');
  t.is(go?.[4], '/run/hwlab/config.json');
  t.false(argv.some((a) => a[0] === 'node'), 'no cold runner');
});

test('a waiting runner that refuses the run (another bundle) leaves it to a cold runner; results say cold and why', async (t) => {
  const { results, m } = await run(t, { runner: allPass(lab), waitingRunner: { refuses: 'runner: started from bundle 000000000000, this run uploaded 123456789abc: a cold runner must run it' } });
  t.is(results.outcome.class, 'pass', results.outcome.detail);
  t.is(results.probes.length, lab.probes.length);
  t.deepEqual(results.runner, { mode: 'cold', prestartRefused: 'runner: started from bundle 000000000000, this run uploaded 123456789abc: a cold runner must run it' });
  const argv = m.calls.map((c) => c.argv);
  const goAt = argv.findIndex((a) => a[2] === 'go');
  const coldAt = argv.findIndex((a) => a[0] === 'node');
  t.true(goAt >= 0 && coldAt > goAt, `go at ${goAt}, cold at ${coldAt}`);
});

test('a booted guest runs the cold runner alone, as always', async (t) => {
  const { results, m } = await run(t, { runner: allPass(lab) });
  t.deepEqual(results.runner, { mode: 'cold' });
  t.false(m.calls.some((c) => c.argv[2] === 'go'));
});

test('boot timeout without a kernel report is infra; the machine is killed, no probe results', async (t) => {
  const { results, m } = await run(t, { boot: { kind: 'hang' } });
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'boot-timeout']);
  t.is(results.failure?.phase, 'boot');
  t.deepEqual(results.probes, []);
  t.not(m.exited, null, 'the machine was ended');
  t.deepEqual(m.calls, [], 'nothing ran in a guest that never came up');
});

test('boot timeout with a kernel report on the console is the kernel\'s', async (t) => {
  const { results } = await run(t, {
    boot: { kind: 'hang' },
    bootConsole: ['Linux version 7.2.13', 'rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:', 'rcu: \t1-...!: (0 ticks this GP)'],
  });
  t.deepEqual([results.outcome.class, results.outcome.code], ['kernel', 'RCU stall']);
  t.regex(results.outcome.title, /^INFO: rcu detected stall/);
  t.is(results.failure?.code, 'boot-timeout');
});

test('QEMU exiting during boot: infra on its own, the kernel\'s when it panicked', async (t) => {
  const died = await run(t, { boot: { kind: 'exit', exit: { code: null, signal: 'SIGKILL' } } });
  t.deepEqual([died.results.outcome.class, died.results.outcome.code], ['infra', 'boot-exited']);
  const panicked = await run(t, {
    boot: { kind: 'exit', exit: { code: 0, signal: null } },
    bootConsole: ['Linux version 7.2.13', 'Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)'],
  });
  t.is(panicked.results.outcome.class, 'kernel');
  t.regex(panicked.results.outcome.title, /^Kernel panic - not syncing: VFS: Unable to mount root fs/);
});

test('SSH never answering after the ready line is infra', async (t) => {
  const { results, m } = await run(t, { boot: { kind: 'ssh-never' } });
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'boot-ssh']);
  t.not(m.exited, null);
});

test('a probe hang: the hung probe fails with the blocked tasks, earlier results stay, later probes are not run', async (t) => {
  const short = { ...lab, probes: lab.probes.slice(0, 3).map((p) => ({ ...p, timeoutSec: 0.3 })) };
  const { results, m } = await run(t, {
    runner: [header(3), ...probeSteps(1, short.probes[0].name, [[true, 'exports']]), { console: formatProbeMarker({ edge: 'begin', index: 2, probe: short.probes[1].name }) },
      { stdout: `# Subtest: ${short.probes[1].name}\n    ok 1 - opened\n` }, { hang: true }],
    blockedTasks: 'task node tid 201 state D (disk sleep)\n  [<0>] vfio_pci_dma_buf_move+0x1a0/0x230 [vfio_pci_core]',
  }, short);
  t.deepEqual([results.outcome.class, results.outcome.code], ['fail', 'probe-failed']);
  t.is(results.outcome.title, `${short.probes[1].name}: finishes within 0.3 s`);
  t.deepEqual(results.probes.map((p) => [p.name, p.ok, p.notRun !== undefined]).slice(0, 3),
    [[short.probes[0].name, true, false], [short.probes[1].name, false, false], [short.probes[2].name, false, true]]);
  t.regex(String(results.probes[1].diagnostics?.blockedTasks), /vfio_pci_dma_buf_move/);
  t.true(m.calls.some((c) => c.argv[2]?.includes('pidof node')), 'the stuck runner was killed');
  t.false(m.calls.some((c) => c.argv[2]?.includes('driver_override') && c.argv[2]?.includes('echo >')), 'no give-back after a hang');
});

test('a kernel panic in the middle of a probe: the kernel\'s, attributed to that probe, the TAP before it kept', async (t) => {
  const { results } = await run(t, {
    runner: [header(lab.probes.length), ...probeSteps(1, lab.probes[0].name, [[true, 'exports']]),
      { console: formatProbeMarker({ edge: 'begin', index: 2, probe: lab.probes[1].name }) },
      { stdout: `# Subtest: ${lab.probes[1].name}\n    ok 1 - opened\n` },
      ...PANIC.map((l) => ({ console: l })), { die: { code: 0, signal: null } }],
  });
  t.deepEqual([results.outcome.class, results.outcome.code], ['kernel', 'BUG']);
  t.regex(results.outcome.title, /^BUG: kernel NULL pointer dereference in vfio_pci_dma_buf_move/);
  // QEMU ended (panic=-1 reboots, and QEMU runs with -no-reboot): the failure says so, the class stays the kernel's.
  t.is(results.failure?.code, 'qemu-died');
  t.is(results.failure?.message.split(';')[0], 'QEMU exited with code 0 during the probes');
  t.true(results.probes[0].ok);
  t.is(results.probes[1].name, lab.probes[1].name);
  t.false(results.probes[1].ok);
  t.is(results.probes[1].kernelReports.length, 1, 'the panic belongs to the probe that was running');
});

test('the SSH channel dropping mid-probe without a kernel report is infra; finished probes keep their results', async (t) => {
  const { results } = await run(t, {
    runner: [header(lab.probes.length), ...probeSteps(1, lab.probes[0].name, [[true, 'exports']]),
      { stdout: `# Subtest: ${lab.probes[1].name}\n    ok 1 - opened\n` }, { dropConnection: true }],
  });
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'ssh-lost']);
  t.is(results.failure?.phase, 'probes');
  t.true(results.probes[0].ok);
  t.regex(String(results.probes[1].diagnostics?.error), /interrupted/);
});

test('QEMU killed by a signal mid-probe (issue 16): infra, the signal named, finished probes and the TAP so far kept', async (t) => {
  const { results, runDir } = await run(t, {
    runner: [header(lab.probes.length), ...probeSteps(1, lab.probes[0].name, [[true, 'exports']]),
      { stdout: `# Subtest: ${lab.probes[1].name}\n    ok 1 - opened\n` }, { die: { code: null, signal: 'SIGKILL' } }],
  });
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'qemu-died']);
  t.is(results.outcome.title, 'QEMU was killed by SIGKILL during the probes; the results up to then are kept (see console.log and qemu-stderr.log)');
  t.is(results.failure?.phase, 'probes');
  t.true(results.probes[0].ok);
  t.regex(String(results.probes[1].diagnostics?.error), /interrupted/);
  t.regex(await readFile(path.join(runDir, 'probes.tap'), 'utf8'), /ok 1 - opened/);
});

test('a runner that does not exit after its last probe (a kernel spinning): the phase ends after timeouts.runner_exit, not timeouts.probes; a soft lockup on the console makes it the kernel\'s', async (t) => {
  const quick: LabSpec = { ...lab, timeouts: { ...lab.timeouts, runnerExitSec: 1, probesSec: 600 } };
  const start = Date.now();
  const { results, m } = await run(t, { runner: [...allPass(quick), { hang: true }], blockedTasks: 'task:kworker/0:1 state:D\n  vfio_pci_dma_buf_cleanup+0x1/0x2\n' }, quick);
  t.true(Date.now() - start < 15_000, `ended after ${Date.now() - start} ms`);
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'runner-did-not-exit']);
  t.regex(results.outcome.title, /^the probe runner did not exit within 1 s after its last probe/);
  t.regex(results.failure?.message ?? '', /vfio_pci_dma_buf_cleanup/);
  t.true(results.probes.every((p) => p.ok), 'every probe keeps its pass');
  t.true(m.calls.some((c) => c.argv[2]?.includes('pidof node')), 'the stuck runner was killed');
  const spinning = await run(t, {
    runner: [...allPass(quick), ...[
      'watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [node:412]',
      'Modules linked in: vfio_pci vfio_pci_core',
      'CPU: 1 UID: 0 PID: 412 Comm: node Not tainted 7.2.13 #1',
      'RIP: 0010:vfio_pci_dma_buf_move+0x1a/0x90 [vfio_pci_core]',
      'Call Trace:',
      ' <TASK>',
      ' vfio_pci_core_close_device+0x40/0x90 [vfio_pci_core]',
      ' </TASK>',
    ].map((l) => ({ console: l })), { hang: true }],
  }, { ...quick, timeouts: { ...quick.timeouts, runnerExitSec: 4 } }); // room for the fake to print the report on a loaded host
  t.deepEqual([spinning.results.outcome.class, spinning.results.outcome.code], ['kernel', 'lockup']);
  t.regex(spinning.results.outcome.title, /^BUG: soft lockup/);
  t.is(spinning.results.failure?.code, 'runner-did-not-exit');
});

test('a blocked give-back (issue 16): the first unbind that hangs ends the teardown, with what blocked; the others are not tried', async (t) => {
  const start = Date.now();
  const { results, m } = await run(t, {
    runner: allPass(lab),
    blockedTasks: 'task:sh state:D\n  vfio_unregister_group_dev+0x9c/0x1c0 [vfio]\n',
    blocking: { 'echo > "$d/driver_override"': { console: ['vfio-pci 0000:01:00.0: Device is currently in use, task "sh" (120) blocked until device is released'] } },
  }, lab);
  t.true(Date.now() - start < 15_000);
  t.deepEqual([results.failure?.phase, results.failure?.code], ['teardown', 'teardown-blocked']);
  t.regex(results.failure?.message ?? '', /^giving \S+ \(0000:[0-9a-f:.]+\) back to its driver blocked in the guest kernel: the unbind did not return in 60 s; the kernel says: vfio-pci 0000:01:00\.0: Device is currently in use, task "sh" \(120\) blocked until device is released/);
  t.regex(results.failure?.message ?? '', /vfio_unregister_group_dev/);
  t.is(m.calls.filter((c) => c.argv[2]?.includes('echo > "$d/driver_override"')).length, 1, 'one unbind tried, not one per device');
  // Every probe's process has exited: only a reference the kernel kept can hold the device.
  t.deepEqual([results.outcome.class, results.outcome.code], ['kernel', 'teardown-blocked']);
  t.regex(results.outcome.title, /^giving \S+ \(0000:[0-9a-f:.]+\) back to its driver blocked in the guest kernel/);
});

test('a blocked give-back names the device the one unbind command was at, and the ones after it as not tried', async (t) => {
  const full = await loadLab(path.join(repo, 'labs/default.yaml'));
  const script = { runner: [header(full.probes.length), ...full.probes.flatMap((p, i) => probeSteps(i + 1, p.name, [[true, 'works']]))] };
  const clean = await run(t, script, full);
  const unbinds = clean.m.calls.filter((c) => c.argv[2]?.includes('echo > "$d/driver_override"'));
  t.is(unbinds.length, 1, 'every endpoint in one guest command');
  const bdfs = unbinds[0].argv.slice(4);
  t.true(bdfs.length >= 3, bdfs.join(' '));
  const { results } = await run(t, { ...script, blocking: { 'echo > "$d/driver_override"': { stdout: `${bdfs[0]}\n${bdfs[1]}\n` } } }, full);
  const devices = JSON.parse(await readFile(path.join(clean.runDir, 'devices.json'), 'utf8')) as Record<string, { bdf: string }>;
  const idOf = (bdf: string) => Object.entries(devices).find(([, d]) => d.bdf === bdf)![0];
  t.deepEqual([results.failure?.phase, results.failure?.code], ['teardown', 'teardown-blocked']);
  t.true(results.failure!.message.startsWith(`giving ${idOf(bdfs[1])} (${bdfs[1]}) back to its driver blocked`), results.failure!.message);
  t.regex(results.failure!.message, new RegExp(`; not tried: ${bdfs.slice(2).map(idOf).join(', ')}$`, 'm'));
});

test('a failing point is a fail; the runner exiting non-zero after it is recorded but does not hide it', async (t) => {
  const steps = [header(lab.probes.length), ...lab.probes.flatMap((p, i) => probeSteps(i + 1, p.name, [[i !== 2, i === 2 ? 'zero_length: EINVAL' : 'works']]))];
  const { results } = await run(t, { runner: steps, runnerExit: 1 });
  t.deepEqual([results.outcome.class, results.outcome.title], ['fail', `${lab.probes[2].name}: zero_length: EINVAL`]);
  t.is(results.failure?.code, 'runner-exit');
});

test('a probe asking for a hot removal is served through the machine and logged; the removed device is not given back', async (t) => {
  const steps = [header(lab.probes.length), ...lab.probes.flatMap((p, i) => probeSteps(i + 1, p.name, [[true, 'works']],
    i === 0 ? [{ stdout: '# hwlab-request: device_del shm0\n' }, { stdout: '# hwlab-request: device_del nope\n' }] : []))];
  const { results, m, runDir } = await run(t, { runner: steps });
  t.is(results.outcome.class, 'pass', results.outcome.detail);
  t.deepEqual(m.hostRequests, [{ verb: 'device_del', id: 'shm0' }]);
  const log = await readFile(path.join(runDir, 'host-requests.log'), 'utf8');
  t.regex(log, /device_del shm0: done/);
  t.regex(log, /refused: device_del nope: not an endpoint of this lab/);
  const unbinds = m.calls.filter((c) => c.argv[2]?.includes('echo > "$d/driver_override"')).map((c) => c.argv[4]);
  t.false(unbinds.includes('0000:01:00.0'), 'shm0 was removed: nothing to give back');
});

test('hold (--keep): after the probes the guest stays up with the devices bound until hold returns, then powers off', async (t) => {
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-fake-run-'));
  t.teardown(() => rm(runDir, { recursive: true, force: true }));
  const backend = new FakeBackend({ runner: allPass(lab) });
  let seen: { results: RunResults; runner: string[]; unbindsBefore: number; alive: boolean } | undefined;
  const results = await runOnMachine({
    lab, prepared, runDir, progress: silentProgress(), privateKey: 'key', startedAt: Date.now(), timings: {},
    hold: async (m, held, runner) => {
      const f = m as FakeInstance;
      seen = { results: held, runner, unbindsBefore: f.calls.filter((c) => c.argv.join(' ').includes('echo > "$d/driver_override"')).length, alive: f.exited === null };
    },
  }, backend);
  t.truthy(seen);
  t.is(seen!.results.outcome.class, 'pass', 'hold sees the results of the probes');
  t.deepEqual(seen!.runner.slice(0, 1), ['node']);
  t.true(seen!.runner[2].endsWith('config.json'));
  t.is(seen!.unbindsBefore, 0, 'no device given back before the hold');
  t.true(seen!.alive);
  t.is(results.outcome.class, 'pass');
  t.not(backend.instances[0].exited, null, 'powered off after the hold');
});

test('runProbes false (hwlab shell): set up and uploaded, no probe run, hold gets the runner command', async (t) => {
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-fake-run-'));
  t.teardown(() => rm(runDir, { recursive: true, force: true }));
  const backend = new FakeBackend({ runner: allPass(lab) });
  let runner: string[] = [];
  await runOnMachine({
    lab, prepared, runDir, progress: silentProgress(), privateKey: 'key', startedAt: Date.now(), timings: {},
    runProbes: false, hold: async (_m, _r, r) => { runner = r; },
  }, backend);
  const m = backend.instances[0] as FakeInstance;
  t.true(m.uploads.some((u) => u.remote.endsWith('config.json')), 'probes uploaded');
  t.false(m.calls.some((c) => c.argv[0] === 'node'), 'no probe ran');
  t.is(runner[0], 'node');
});
