// The fault suite of issue 16 on real guests: each scenario must end in the
// right outcome class with a message saying what happened, keep the run
// folder's artifacts, leave no QEMU or child process (checked by PID), and be
// followed by a run that passes. A fast subset runs in `npm test`; all of it
// with `npm run test:faults` (HWLAB_FAULTS=all). The guest boots of the
// isolation and SSH checks go through the machine interface directly, so the
// test can run its own commands in the guest.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildKernel, removeKernelBuild } from '../../src/kernel/build.ts';
import { loadLab } from '../../src/lab/load.ts';
import type { MachineInstance } from '../../src/machine/instance.ts';
import { qemuBackend } from '../../src/machine/qemu.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { ensureHwlabKey } from '../../src/session/keys.ts';
import { cacheRoot, entryProblem, listEntries } from '../../src/util/cache.ts';
import { Progress, silentProgress } from '../../src/util/progress.ts';
import { hwlab, readRun, cleanUpRunsDirs, repoRoot, runsDir, treeDiff } from './helpers.ts';
import { smokeBuilds } from './smoke-builds.ts';

// The lab every scenario runs: the smoke lab (same build as the default lab).
const LAB = process.env.HWLAB_FAULTS_LAB ?? path.join(repoRoot, 'labs/smoke.yaml');
const all = process.env.HWLAB_FAULTS === 'all';
/** In `npm test`: the scenarios that take a guest boot or less each. */
const fast = test.serial;
/** Only in `npm run test:faults`. */
const full = all ? test.serial : test.serial.skip;

cleanUpRunsDirs(test);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every process below `pid` (children, grandchildren), from /proc. */
async function descendants(pid: number): Promise<number[]> {
  const r = await execa('ps', ['-e', '-o', 'pid=,ppid='], { reject: false });
  const kids = new Map<number, number[]>();
  for (const line of r.stdout.split('\n')) {
    const [p, pp] = line.trim().split(/\s+/).map(Number);
    if (p && pp !== undefined) kids.set(pp, [...(kids.get(pp) ?? []), p]);
  }
  const out: number[] = [];
  const walk = (p: number) => { for (const k of kids.get(p) ?? []) { out.push(k); walk(k); } };
  walk(pid);
  return out;
}

async function commOf(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
}

/** The QEMUs below `pid` (by PID; other users' QEMUs on this host are not ours). */
async function qemusUnder(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const p of await descendants(pid)) if ((await commOf(p)).startsWith('qemu-system')) out.push(p);
  return out;
}

/**
 * Starts `hwlab run LAB --runs-dir dir`, returns when the run's probes.tap
 * (written as the TAP arrives) matches `marker`, with the QEMU's PID.
 */
async function runUntil(dir: string, marker: RegExp, timeoutMs = 25 * 60_000) {
  const child = hwlab(['run', LAB, '--runs-dir', dir]);
  let out = '';
  child.all?.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + timeoutMs;
  const tap = async () => {
    const [folder] = await readdir(dir).catch(() => [] as string[]);
    return folder ? readFile(path.join(dir, folder, 'probes.tap'), 'utf8').catch(() => '') : '';
  };
  while (!marker.test(await tap()) && Date.now() < deadline && child.exitCode === null) await sleep(100);
  if (!marker.test(await tap())) throw new Error(`never saw ${marker} in probes.tap:\n${out}`);
  const [qemu = 0] = await qemusUnder(child.pid!);
  return { child, out: () => out, qemu };
}

/** Nothing the run started is left: the QEMU by PID, and no cache temp directory. */
async function nothingLeft(t: import('ava').ExecutionContext, pids: number[], since: number): Promise<void> {
  await noProcessLeft(t, pids);
  t.deepEqual(await deadTempDirs(since), [], 'no half-written cache entry');
}

async function noProcessLeft(t: import('ava').ExecutionContext, pids: number[]): Promise<void> {
  for (let i = 0; i < 50 && pids.some(alive); i++) await sleep(100);
  const left = pids.filter(alive);
  t.deepEqual(left, [], `no process of the run is left (left: ${(await Promise.all(left.map(async (p) => `${p} ${await commOf(p)}`))).join(', ')})`);
}

/** Cache temp directories (unfinished entries) made since `since` whose owner is dead. */
async function deadTempDirs(since: number): Promise<string[]> {
  const tmp: string[] = [];
  for (const kind of existsSync(cacheRoot()) ? await readdir(cacheRoot()) : []) {
    const dir = path.join(cacheRoot(), kind);
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      // Another user's build in progress has a live PID in its name; a dead one's is debris.
      const m = /^\.tmp-.*-(\d+)-[0-9a-f]{8}$/.exec(n);
      const made = (await stat(path.join(dir, n)).catch(() => null))?.mtimeMs ?? 0;
      if (m && !alive(Number(m[1])) && made >= since) tmp.push(path.join(dir, n));
    }
  }
  return tmp;
}

/**
 * Runs `hwlab run lab` to its end, noting every process below it while it
 * runs (polled: a panic can end QEMU within a second), so the test can check
 * by PID that none outlived the run.
 */
async function runWatching(lab: string, dir: string) {
  const child = hwlab(['run', lab, '--runs-dir', dir]);
  const seen = new Set<number>();
  const qemus = new Map<number, string[]>();
  const poll = async () => {
    for (const p of await descendants(child.pid!)) {
      seen.add(p);
      if (!qemus.has(p) && (await commOf(p)).startsWith('qemu-system')) {
        qemus.set(p, (await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')).split('\0'));
      }
    }
  };
  while (child.exitCode === null) {
    await poll();
    await Promise.race([child, sleep(200)]);
  }
  const r = await child;
  return { r, pids: [...seen], qemus: [...qemus.keys()], qemuArgs: [...qemus.values()] };
}

/**
 * A kernel fault made by the fault-inject probe (labs/faults/<kind>.yaml, the
 * second of three probes): the run ends `kernel` with the report titled and
 * attributed to fault-inject, dmabuf-export's result before it kept, nothing
 * left running, and the smoke lab passes afterwards.
 */
async function kernelFault(t: import('ava').ExecutionContext, kind: string, title: RegExp) {
  const dir = runsDir();
  const started = Date.now();
  const { r, pids, qemus } = await runWatching(path.join(repoRoot, `labs/faults/${kind}.yaml`), dir);
  t.is(r.exitCode, 1, r.all);
  t.true(qemus.length === 1, `one QEMU seen under hwlab (${qemus.join(', ')})`);
  const { runDir, results } = await readRun(dir);
  t.deepEqual([results.outcome.class, results.outcome.code], ['kernel', kind === 'panic' ? 'panic' : kind === 'softlockup' ? 'lockup' : 'hung task']);
  t.regex(results.outcome.title, title);
  const [before, fault] = results.probes;
  t.deepEqual([before.name, before.ok], ['dmabuf-export', true], 'the probe before the fault keeps its result');
  t.is(fault.name, 'fault-inject');
  t.false(fault.ok);
  t.true(fault.kernelReports.some((k) => title.test(k.title)), `the report is attributed to fault-inject: ${JSON.stringify(fault.kernelReports.map((k) => k.title))}`);
  for (const f of ['console.log', 'probes.tap', 'results.json', 'junit.xml', 'hwlab_fault-build.log']) t.true(existsSync(path.join(runDir, f)), f);
  t.log(`${results.outcome.class} (${results.outcome.code}): ${results.outcome.title}; probes ${results.probes.map((p) => `${p.name}=${p.notRun ?? (p.ok ? 'ok' : 'FAIL')}`).join(' ')}; ${results.timings.total.toFixed(1)} s`);
  await nothingLeft(t, pids, started);
  return results;
}

async function nextRunPasses(t: import('ava').ExecutionContext): Promise<void> {
  const dir = runsDir();
  const r = await hwlab(['run', LAB, '--runs-dir', dir]);
  t.is(r.exitCode, 0, `the next run passes:\n${r.all?.split('\n').slice(-15).join('\n')}`);
}

fast('QEMU SIGKILLed in the middle of the probes: infra, the signal named, the TAP so far kept', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  t.true(qemu > 0, 'QEMU found as a child of hwlab');
  process.kill(qemu, 'SIGKILL');
  const r = await child;
  t.is(r.exitCode, 3, r.all);
  const { runDir, results } = await readRun(dir);
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'qemu-died']);
  t.regex(results.outcome.title, /^QEMU was killed by SIGKILL during the probes/);
  t.is(results.probes[0].name, 'dmabuf-export');
  t.true(results.probes[0].ok, 'the probe that finished keeps its result');
  const tap = await readFile(path.join(runDir, 'probes.tap'), 'utf8');
  t.regex(tap, /ok 1 - dmabuf-export/);
  for (const f of ['console.log', 'qemu-cmdline.sh', 'results.json', 'junit.xml']) t.true(existsSync(path.join(runDir, f)), f);
  t.log(`${results.outcome.class} (${results.outcome.code}): ${results.outcome.title}`);
  await nothingLeft(t, [qemu, ...(await descendants(child.pid!))], started);
  await nextRunPasses(t);
});

fast('hwlab SIGKILLed during the probes: its QEMU dies with it (setpriv --pdeathsig), the TAP so far is on disk', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  t.true(qemu > 0);
  const kids = await descendants(child.pid!);
  child.kill('SIGKILL');
  await child;
  const start = Date.now();
  await nothingLeft(t, [qemu, ...kids], started);
  t.log(`QEMU ${qemu} gone ${Date.now() - start} ms after hwlab was SIGKILLed`);
  const runDir = path.join(dir, (await readdir(dir))[0]);
  t.true(existsSync(path.join(runDir, 'console.log')));
  await nextRunPasses(t);
});

fast('a lab asking for more memory than the host has is refused before boot, with the numbers', async (t) => {
  const dir = runsDir();
  const text = (await readFile(LAB, 'utf8')).replace(/memory: 2G/, 'memory: 64G');
  const file = path.join(dir, 'huge.yaml');
  await writeFile(file, text);
  const r = await hwlab(['run', file, '--runs-dir', dir]);
  t.is(r.exitCode, 2, r.all);
  t.regex(r.all ?? '', /machine\.memory: 65536M plus \d+M of endpoint memory does not fit in this host's \d+M of RAM less 1024M for the host/);
  t.deepEqual(await readdir(dir), ['huge.yaml'], 'no run folder');
});

full('a corrupt cache entry (a flipped byte in hwlab_importer.ko, a truncated initramfs) is found on use and built again', async (t) => {
  // A private cache: the kernel, image, key and sources are the shared ones (symlinked, never damaged);
  // the module and initramfs entries are built here by this hwlab, with their content lists, and damaged here.
  const shared = cacheRoot();
  const cache = runsDir();
  for (const kind of await readdir(shared)) {
    if (kind === 'kmod' || kind === 'initramfs' || kind.startsWith('.')) continue;
    await symlink(path.join(shared, kind), path.join(cache, kind));
  }
  const env = { HWLAB_CACHE: cache };
  const first = await hwlab(['run', LAB, '--runs-dir', runsDir()], { env });
  t.is(first.exitCode, 0, first.all);
  const only = async (kind: string) => {
    const names = (await readdir(path.join(cache, kind))).filter((n) => !n.startsWith('.'));
    t.is(names.length, 1, kind);
    return path.join(cache, kind, names[0]);
  };
  const ko = path.join(await only('kmod'), 'hwlab_importer.ko');
  const bytes = await readFile(ko);
  bytes[bytes.length >> 1] ^= 0xff;
  await writeFile(ko, bytes);
  const cpio = path.join(await only('initramfs'), 'initramfs.cpio');
  await writeFile(cpio, (await readFile(cpio)).subarray(0, 1000));
  const r = await hwlab(['run', LAB, '--runs-dir', runsDir()], { env });
  t.is(r.exitCode, 0, r.all);
  t.regex(r.all ?? '', /cache entry .*kmod.* is corrupt \(hwlab_importer\.ko does not have the sha256 it had when built\); removed, building it again/);
  t.regex(r.all ?? '', /cache entry .*initramfs.* is corrupt \(initramfs\.cpio is 1000 bytes, \d+ when built\); removed, building it again/);
});

fast('a kernel panic in the middle of a probe: kernel, titled and attributed to the probe, results so far kept, QEMU gone', async (t) => {
  const results = await kernelFault(t, 'panic', /^Kernel panic - not syncing: hwlab_fault: panic requested \(hwlab fault suite\)$/);
  const after = results.probes.find((p) => p.name === 'dmabuf-fd');
  t.regex(after?.notRun ?? '', /^not run: the run stopped during fault-inject/, 'the probe after the panic is reported as not run');
  await nextRunPasses(t);
});

full('a soft lockup in the middle of a probe: kernel, "BUG: soft lockup" attributed to the probe; the guest lives on', async (t) => {
  const results = await kernelFault(t, 'softlockup', /^BUG: soft lockup in hwf_spin_preempt_off$/);
  const after = results.probes.find((p) => p.name === 'dmabuf-fd');
  t.is(after?.ok, true, 'the probe after the lockup ran and passed');
  await nextRunPasses(t);
});

full('a hung task in the middle of a probe: kernel, "INFO: task hung" attributed to the probe; the guest lives on', async (t) => {
  const results = await kernelFault(t, 'hung', /^INFO: task hung in hwf_(?:trigger_write|sleep_uninterruptible)$/);
  t.is(results.probes.find((p) => p.name === 'dmabuf-fd')?.ok, true, 'the probe after the hung task ran and passed');
  await nextRunPasses(t);
});

/** Boots the lab's machine through the machine interface, for checks that need their own commands in the guest. */
async function bootMachine(opts: { privateKey?: string; hostKey?: string; bootSec?: number } = {}): Promise<{ m: MachineInstance; runDir: string }> {
  const lab = await loadLab(LAB);
  const runDir = runsDir();
  const progress = new Progress();
  const prepared = await prepareLab(lab, { progress }, runDir);
  const key = await ensureHwlabKey();
  const m = await qemuBackend.start({
    lab, kernelImage: prepared.kernel.vmlinuz, modulesDisk: prepared.kernel.modulesDisk, initrd: prepared.initrd,
    rootImage: prepared.image.rootDisk, privateKey: opts.privateKey ?? key.privateKey, hostKey: opts.hostKey ?? prepared.image.hostKey,
    runDir, append: KERNEL_WORDS,
  });
  try {
    await m.waitReady({ timeoutMs: (opts.bootSec ?? lab.timeouts.bootSec) * 1000 });
  } catch (err) {
    await m.kill();
    throw err;
  }
  return { m, runDir };
}

fast('isolation: the guest reaches neither host loopback ports nor the outside; SSH listens on 127.0.0.1 only; the host key is pinned', async (t) => {
  // A listener on the host's loopback that the guest must not reach (restrict=on has no route to the host).
  const server = net.createServer((s) => s.end('reached\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const hostPort = (server.address() as net.AddressInfo).port;
  const { m } = await bootMachine();
  try {
    const [qemuPid] = await qemusUnder(process.pid);
    // The slirp gateway (10.0.2.2) is where a guest would reach host services; the outside by address and by name.
    const probe = `const net = require('net'); const dns = require('dns');
const tryConnect = (host, port) => new Promise((res) => { const s = net.connect({ host, port, timeout: 3000 }, () => { s.destroy(); res('connected'); });
  s.on('error', (e) => res(e.code)); s.on('timeout', () => { s.destroy(); res('timeout'); }); });
(async () => {
  const out = {
    hostLoopback: await tryConnect('10.0.2.2', ${hostPort}),
    hostSsh: await tryConnect('10.0.2.2', 22),
    outside: await tryConnect('1.1.1.1', 80),
    dns: await new Promise((res) => dns.lookup('deb.debian.org', (e) => res(e ? e.code : 'resolved'))),
  };
  console.log(JSON.stringify(out));
})();`;
    const r = await m.exec(['node', '-e', probe], { timeoutMs: 60_000 });
    const seen = JSON.parse(r.stdout.trim()) as Record<string, string>;
    t.log(JSON.stringify(seen));
    for (const k of ['hostLoopback', 'hostSsh', 'outside']) t.not(seen[k], 'connected', `${k} must be unreachable`);
    t.not(seen.dns, 'resolved', 'no DNS');
    // The SSH forward in the host's socket table: QEMU's listening sockets are all on 127.0.0.1.
    const ss = await execa('ss', ['-Hltnp'], { reject: false });
    const qemuLines = ss.stdout.split('\n').filter((l) => l.includes(`pid=${qemuPid},`));
    t.true(qemuLines.length >= 1, `QEMU listens (pid ${qemuPid}):\n${ss.stdout}`);
    for (const l of qemuLines) t.regex(l.trim().split(/\s+/)[3] ?? '', /^127\.0\.0\.1:\d+$/, l);
  } finally {
    await m.kill();
    server.close();
  }
});

fast('SSH: a changed guest host key and a refused hwlab key both end the boot at once, no retry loop to the timeout', async (t) => {
  const keyDir = runsDir();
  const other = await execa('ssh-keygen', ['-t', 'ed25519', '-N', '', '-q', '-f', path.join(keyDir, 'k')], { reject: false });
  t.is(other.exitCode, 0);
  const otherPub = (await readFile(path.join(keyDir, 'k.pub'), 'utf8')).trim();
  const otherPriv = await readFile(path.join(keyDir, 'k'), 'utf8');
  for (const [what, opts, code] of [
    ['changed host key', { hostKey: otherPub }, /host key does not match/],
    ['refused client key', { privateKey: otherPriv }, /sshd refused hwlab's key/],
  ] as const) {
    const start = Date.now();
    const err = await t.throwsAsync(bootMachine({ ...opts, bootSec: 300 }));
    const s = (Date.now() - start) / 1000;
    t.regex(err?.message ?? '', code, what);
    t.true(s < 120, `${what}: ended after ${s.toFixed(0)} s of a 300 s boot budget`);
    t.log(`${what}: ${err?.message} (${s.toFixed(1)} s)`);
  }
  t.deepEqual(await qemusUnder(process.pid), [], 'no QEMU left');
});

full('the guest never reaches sshd (a boot budget it cannot meet): infra within the timeout, console tail quoted', async (t) => {
  const dir = runsDir();
  const text = (await readFile(LAB, 'utf8')).replace(/\nprobes:/, '\ntimeouts: { boot: 3 }\nprobes:');
  const file = path.join(dir, 'no-sshd.yaml');
  await writeFile(file, text);
  const r = await hwlab(['run', file, '--runs-dir', dir]);
  t.is(r.exitCode, 3, r.all);
  const folder = (await readdir(dir)).find((n) => n !== 'no-sshd.yaml')!;
  const results = JSON.parse(await readFile(path.join(dir, folder, 'results.json'), 'utf8'));
  t.is(results.outcome.class, 'infra');
  t.regex(results.outcome.title, /did not start sshd in 3 s; last console line: /);
  await rm(file);
});

full('Ctrl-C during the probes: exit 130, no QEMU left, artifacts kept', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, r.all);
  await nothingLeft(t, [qemu], started);
  const runDir = path.join(dir, (await readdir(dir))[0]);
  t.true(existsSync(path.join(runDir, 'console.log')));
});

/** kernel-build cache entries whose series holds a patch with this sha256 (finished entries only: temp dirs start with a dot). */
async function entriesWithPatch(sha: string): Promise<string[]> {
  const root = path.join(cacheRoot(), 'kernel-build');
  const out: string[] = [];
  for (const n of await readdir(root).catch(() => [] as string[])) {
    if (n.startsWith('.')) continue;
    const manifest = await readFile(path.join(root, n, 'build.json'), 'utf8').catch(() => '');
    if (manifest.includes(sha)) out.push(n);
  }
  return out;
}

full('hwlab SIGINTed and SIGKILLed during a kernel build: no cache entry from it, no make or compiler left; the next run builds (cache prune meanwhile keeps its live dirs) and passes', async (t) => {
  // A throw-away drivers/vfio/pci change unique to this test run (new code, so no cache skips it):
  // a targeted modules build on top of the smoke lab's entry, long enough to interrupt.
  const progress = silentProgress();
  const builds = await smokeBuilds(progress);
  const tok = `hwlab_fault_build_${Date.now().toString(36)}_${process.pid}`;
  const patch = path.join(runsDir(), 'interrupt.patch');
  await writeFile(patch, await treeDiff(builds.tree.dir, 'drivers/vfio/pci/vfio_pci_core.c', (x) => `${x}\nstatic const char ${tok}[] __used = "${tok}";\n`, runsDir()));
  const patchSha = (await execa('sha256sum', [patch])).stdout.split(' ')[0];
  const killedTemp: string[] = [];
  try {
    for (const signal of ['SIGINT', 'SIGKILL'] as const) {
      const dir = runsDir();
      const started = Date.now();
      const child = hwlab(['run', LAB, '--patch', patch, '--runs-dir', dir]);
      // Interrupt once a compiler runs below hwlab: make is really building.
      const seen = new Set<number>();
      const builders: string[] = [];
      let compiling = false;
      while (!compiling && child.exitCode === null && Date.now() - started < 20 * 60_000) {
        for (const p of await descendants(child.pid!)) {
          seen.add(p);
          const comm = await commOf(p);
          if (/^(make|cc1|gcc|ld|objtool|modpost)$/.test(comm)) builders.push(`${p} ${comm}`);
          if (comm === 'cc1') compiling = true;
        }
        await sleep(100);
      }
      t.true(compiling, `${signal}: a compiler ran below hwlab before the signal`);
      child.kill(signal);
      const r = await child;
      await noProcessLeft(t, [...seen]);
      if (signal === 'SIGINT') {
        t.is(r.exitCode, 130, r.all);
        t.deepEqual(await deadTempDirs(started), [], 'SIGINT: the unfinished entry was removed');
      } else {
        // Nothing can clean up after SIGKILL: the unfinished entry stays as debris (a dead PID in its name), never
        // an entry; the cache prune below removes it.
        killedTemp.push(...await deadTempDirs(started));
      }
      const left = (await execa('pgrep', ['-a', '-x', 'make|cc1'], { reject: false })).stdout.split('\n').filter((l) => seen.has(Number(l.split(' ')[0])));
      t.deepEqual(left, [], `${signal}: no make or cc1 of this run left (seen during the build: ${[...new Set(builders)].slice(0, 6).join(', ')})`);
      t.deepEqual(await entriesWithPatch(patchSha), [], `${signal}: no kernel-build entry made from the interrupted build`);
      const runDir = path.join(dir, (await readdir(dir))[0]);
      t.true(existsSync(path.join(runDir, 'kernel-build.log')), 'the interrupted build\'s log is kept');
      t.log(`${signal} after ${((Date.now() - started) / 1000).toFixed(0)} s; kernel-build.log began: ${(await readFile(path.join(runDir, 'kernel-build.log'), 'utf8')).split('\n')[0]}`);
    }
    // The next run, and `hwlab cache prune` while its make runs: the live work dir and temp entry are kept.
    const dir = runsDir();
    const next = hwlab(['run', LAB, '--patch', patch, '--runs-dir', dir]);
    let building = false;
    while (!building && next.exitCode === null) {
      for (const p of await descendants(next.pid!)) if (await commOf(p) === 'cc1') building = true;
      await sleep(100);
    }
    t.true(building, 'the next run compiles');
    const prune = await hwlab(['cache', 'prune']);
    t.is(prune.exitCode, 0, prune.all);
    t.regex(prune.all ?? '', new RegExp(`kept \\S+: in use by process ${next.pid}`), `prune keeps what the running build owns:\n${prune.all}`);
    t.log(`cache prune during the build: ${(prune.all ?? '').split('\n').filter((l) => l.includes(`process ${next.pid}`)).join(' | ')}`);
    t.log(`the SIGKILLed build's unfinished entries: ${killedTemp.join(', ') || 'none'}`);
    t.deepEqual(killedTemp.filter((d) => existsSync(d)), [], `prune removed the SIGKILLed build's unfinished entry (${killedTemp.join(', ') || 'none was left'})`);
    const r = await next;
    t.is(r.exitCode, 0, r.all);
    const { runDir, results } = await readRun(dir);
    t.is(results.outcome.class, 'pass');
    const log = await readFile(path.join(runDir, 'kernel-build.log'), 'utf8');
    t.regex(log.split('\n')[0], /^hwlab: /, 'the build log says how the build started');
    t.log(`next run: ${results.outcome.class}; kernel-build.log began: ${log.split('\n')[0]}`);
    t.is((await entriesWithPatch(patchSha)).length, 1, 'the finished build made its entry');
  } finally {
    // The throw-away entry, under the tree's build lock (a cache hit here: nothing is built).
    const request = await builds.request([patch], path.join(runsDir(), 'cleanup.log'));
    if ((await entriesWithPatch(patchSha)).length) await removeKernelBuild(builds.tree, await buildKernel(request), progress.step('cleanup'));
  }
});

/** The SSH port, root overlay and kernel a QEMU ran with, from its argv. */
function machineOf(argv: string[]): { port: string; overlay: string; kernel: string } {
  const joined = argv.join(' ');
  return {
    port: /hostfwd=tcp:127\.0\.0\.1:(\d+)-:22/.exec(joined)?.[1] ?? '',
    overlay: /file=([^,\s]*root\.qcow2)/.exec(joined)?.[1] ?? '',
    kernel: argv[argv.indexOf('-kernel') + 1] ?? '',
  };
}

/**
 * Starts `labs` at the same moment, all into one runs folder: each must pass
 * in its own run folder, with its own SSH port and root overlay; every cache
 * entry a run used is intact afterwards.
 */
async function atOnce(t: import('ava').ExecutionContext, labs: string[]) {
  const dir = runsDir();
  const started = Date.now();
  const runs = await Promise.all(labs.map((lab) => runWatching(lab, dir)));
  for (const [i, { r }] of runs.entries()) t.is(r.exitCode, 0, `${path.basename(labs[i])} #${i + 1}:\n${r.all?.split('\n').slice(-20).join('\n')}`);
  const folders = (await readdir(dir)).sort();
  t.is(folders.length, labs.length, `one run folder each: ${folders.join(', ')}`);
  const results = await Promise.all(folders.map(async (f) => JSON.parse(await readFile(path.join(dir, f, 'results.json'), 'utf8')) as import('../../src/results/report.ts').RunResults));
  // The lab's guest is the QEMU with the SSH forward (a run may also start a short accelerator test guest).
  const guests = runs.map((x) => x.qemuArgs.filter((a) => a.some((w) => w.includes('hostfwd='))));
  t.true(guests.every((g) => g.length === 1), `one guest per run (QEMUs seen: ${runs.map((x) => x.qemuArgs.length).join(', ')})`);
  const machines = guests.map((g) => machineOf(g[0] ?? []));
  t.is(new Set(machines.map((m) => m.port)).size, labs.length, `own SSH ports: ${machines.map((m) => m.port).join(', ')}`);
  t.is(new Set(machines.map((m) => m.overlay)).size, labs.length, `own root overlays: ${machines.map((m) => m.overlay).join(', ')}`);
  t.true(machines.every((m) => m.port && m.overlay && m.kernel), `port, overlay and kernel found in QEMU's argv: ${JSON.stringify(machines)}`);
  // Used by these runs (touched on every hit) and intact: each file's size and sha256 as built.
  const used = (await listEntries()).filter((e) => e.lastUsed && Date.parse(e.lastUsed) >= started - 1000);
  for (const e of used) t.is(await entryProblem(e.dir), null, `${e.kind}/${e.key} intact`);
  t.log(`${folders.join(', ')}: ${results.map((x, i) => `${x.outcome.class} in ${x.timings.total.toFixed(0)} s, kernel ${machines[i].kernel}`).join('; ')}; ports ${machines.map((m) => m.port).join(', ')}; ${used.length} cache entries used, all intact`);
  await nothingLeft(t, runs.flatMap((x) => x.pids), started);
  return machines;
}

full('two runs of the same lab at once: both pass, each with its own run folder, port and overlay; the cache intact', async (t) => {
  await atOnce(t, [LAB, LAB]);
});

full('two labs sharing one kernel at once (smoke and vga): both pass on the same kernel entry; the cache intact', async (t) => {
  const machines = await atOnce(t, [LAB, path.join(repoRoot, 'labs/vga.yaml')]);
  t.is(machines[0].kernel, machines[1].kernel, 'one kernel entry for both');
});

full('disk full while building a cache entry (a 1 MiB tmpfs as HWLAB_CACHE): infra disk-full saying where, no half entry', async (t) => {
  // The kernel, image, sources and key are the shared ones (symlinked, only read); hwlab_importer's
  // M= build and the initramfs are built on the tmpfs, and the initramfs (about 2 MB) does not fit.
  const cache = runsDir();
  const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'hwlab-e2e-full', cache], { reject: false });
  t.is(mounted.exitCode, 0, `mount a tmpfs (needs root): ${mounted.stderr}`);
  if (mounted.exitCode !== 0) return;
  try {
    const shared = cacheRoot();
    for (const kind of await readdir(shared)) {
      if (kind === 'kmod' || kind === 'initramfs' || kind.startsWith('.')) continue;
      await symlink(path.join(shared, kind), path.join(cache, kind));
    }
    const dir = runsDir();
    const r = await hwlab(['run', LAB, '--runs-dir', dir], { env: { HWLAB_CACHE: cache } });
    t.is(r.exitCode, 3, r.all);
    const { results } = await readRun(dir);
    t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'disk-full']);
    t.regex(results.outcome.title, /^building the (initramfs|kmod) cache entry \(.*\) in .*: the disk is full \(ENOSPC: no space left on device.*\); the unfinished entry was removed$/);
    t.log(results.outcome.title);
    for (const kind of ['kmod', 'initramfs']) {
      const left = (await readdir(path.join(cache, kind)).catch(() => [] as string[])).filter((n) => n.startsWith('.tmp-'));
      t.deepEqual(left, [], `no half-written ${kind} entry`);
    }
  } finally {
    await execa('umount', [cache], { reject: false });
  }
});
