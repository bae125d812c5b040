// Issue 12's table in one run (`npm run bench`): every row next to its
// target, each with its stage breakdown and the load average of the moment,
// and a bare boot-to-poweroff of the same kernel and image measured in the
// same run, so the ratios hold on a shared, loaded host. Prints figures;
// asserts nothing. Lab runs go one at a time (one guest).
//   node --import tsx test/bench/speed.ts [--runs N] [--skip-warm] [--skip-change] [--skip-default]
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import type { LabSpec } from '../../src/lab/types.ts';
import { decideAccel } from '../../src/machine/accel.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import type { MachineBackend } from '../../src/machine/instance.ts';
import { qemuBackend } from '../../src/machine/qemu.ts';
import { snapshotQemuBackend, type SnapshotRecord } from '../../src/machine/snapshot.ts';
import { prepareLab, type PreparedLab } from '../../src/run/prepare.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { runLab } from '../../src/run/run-lab.ts';
import type { RunnerRecord } from '../../src/results/report.ts';
import { resolveKernelTree } from '../../src/kernel/source.ts';
import { entryDir } from '../../src/util/cache.ts';
import { onCleanup, runCleanups } from '../../src/util/cleanup.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values } = parseArgs({ options: {
  runs: { type: 'string', default: '3' },
  'skip-warm': { type: 'boolean', default: false },
  'skip-change': { type: 'boolean', default: false },
  'skip-default': { type: 'boolean', default: false },
} });
const runs = Number(values.runs);
const progress = silentProgress();
const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const s = (x: number | undefined) => (x === undefined ? '-' : `${x.toFixed(1)} s`);
const scratch = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-speed-'));
const forgetScratch = onCleanup(() => rm(scratch, { recursive: true, force: true }));

const smoke = await loadLab(path.join(repoRoot, 'labs/smoke.yaml'));
const dflt = await loadLab(path.join(repoRoot, 'labs/default.yaml'));
console.log(`${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; load average at start ${load()}`);
let t = Date.now();
const prepared = await prepareLab(smoke, { progress }, scratch);
console.log(`warm-up (kernel, image, initramfs; built now if cold): ${s((Date.now() - t) / 1000)}`);
const accel = await decideAccel(smoke.machine.accel, prepared.kernel.vmlinuz);
console.log(`accel: ${accel.note}\n`);

interface Row { what: string; value: string; breakdown: string; target: string; load: string }
const table: Row[] = [];
const row = (r: Row) => { table.push(r); console.log(`${r.what}: ${r.value}  [${r.breakdown}]  target ${r.target}  (load ${r.load})`); };

/** A bare boot: the lab's QEMU command line, the guest init powering off as soon as sshd is up. */
async function bareBoot(lab: LabSpec, p: PreparedLab): Promise<number> {
  const dir = await mkdtemp(path.join('/dev/shm', 'hwlab-bare-'));
  try {
    const overlay = path.join(dir, 'root.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', p.image.rootDisk, '-F', 'raw', overlay]);
    const cmd = buildQemuCommand({
      lab, accel: accel.accel, kernelImage: p.kernel.vmlinuz, initrd: p.initrd, rootDisk: overlay, modulesDisk: p.kernel.modulesDisk,
      consoleLog: path.join(dir, 'console.log'), qmpSocket: path.join(dir, 'qmp.sock'), sshPort: 20001 + Math.floor(Math.random() * 20000),
      memoryBackendDir: dir, append: [...KERNEL_WORDS, 'hwlab.bare'],
    });
    const start = Date.now();
    await execa(cmd.binary, cmd.args, { timeout: 180_000 });
    return (Date.now() - start) / 1000;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

interface Timed { wall: number; build?: number; boot: number; setup: number; probes: number; teardown: number; outcome: string; snapshot?: SnapshotRecord; runner?: RunnerRecord; load: string }

async function timedRun(lab: LabSpec, backend: MachineBackend, extraPatches: string[] = []): Promise<Timed> {
  const dir = await mkdtemp(path.join(scratch, 'runs-'));
  const start = Date.now();
  const out = await runLab(lab, { progress, runsDir: dir, backend, extraPatches });
  const wall = (Date.now() - start) / 1000;
  const tm = out.results.timings;
  const snapshot = await readFile(path.join(out.runDir, 'snapshot.json'), 'utf8').then((x) => JSON.parse(x) as SnapshotRecord).catch(() => undefined);
  const k = out.results.kernel;
  await rm(dir, { recursive: true, force: true });
  return { wall, build: k?.built ? k.buildSeconds : undefined, boot: tm.boot_to_ssh, setup: tm.setup, probes: tm.probes, teardown: tm.teardown, outcome: out.results.outcome.class, snapshot, runner: out.results.runner, load: load() };
}
const runnerNote = (r?: RunnerRecord) => (r?.mode === 'prestarted' ? `runner prestarted (its start at the save: ${s(r.startupSavedSec)})` : r ? 'runner cold' : 'no runner');
const stages = (r: Timed) => `${r.build !== undefined ? `build ${s(r.build)}, ` : ''}boot to SSH ${s(r.boot)}, setup ${s(r.setup)}, probes ${s(r.probes)}, teardown ${s(r.teardown)}; ${r.outcome}${r.snapshot ? `; snapshot ${r.snapshot.action}` : ''}; ${runnerNote(r.runner)}`;

/** A patch adding new code to vfio_pci_core.c (a unique string), so neither the build cache nor ccache can skip it. */
const tree = await resolveKernelTree(smoke.kernel.kind === 'source' ? smoke.kernel.source : (() => { throw new Error('labs/smoke.yaml must build from source'); })(), progress.step('tree'));
async function oneFileChange(tag: string): Promise<string> {
  const rel = 'drivers/vfio/pci/vfio_pci_core.c';
  const orig = await readFile(path.join(tree.dir, rel), 'utf8');
  const token = `hwlab_bench_${tag}_${Date.now().toString(36)}`;
  const dir = path.join(scratch, `patch-${tag}`);
  await execa('mkdir', ['-p', path.join(dir, 'a', path.dirname(rel)), path.join(dir, 'b', path.dirname(rel))]);
  await writeFile(path.join(dir, 'a', rel), orig);
  await writeFile(path.join(dir, 'b', rel), `${orig}\nstatic const char ${token}[] __used = "${token}";\n`);
  const diff = await execa('diff', ['-u', `a/${rel}`, `b/${rel}`], { cwd: dir, reject: false });
  const file = path.join(scratch, `${tag}.patch`);
  await writeFile(file, diff.stdout + '\n');
  return file;
}

// 1. The first run: not re-measured here (it needs empty caches); the cold build's own record.
const manifest = JSON.parse(await readFile(path.join(prepared.kernel.cacheDir, 'build.json'), 'utf8').catch(() => '{}')) as { buildSeconds?: number; finishedAt?: string };
row({ what: 'first run, cold caches', value: 'not re-measured', breakdown: `this kernel's cold build took ${s(manifest.buildSeconds)} (finished ${manifest.finishedAt ?? '?'}, under that moment's load)`, target: '<= 13 min', load: '-' });

// 2. Bare boots and warm smoke runs, booted, restored with a cold probe runner (a guest saved
// without a waiting one: the restore as it was before the prestarted runner) and restored with
// the prestarted runner, interleaved so they see the same load.
/** The snapshot backend saving and restoring guests without a waiting runner (their own entries: another key). */
const snapshotColdRunner: MachineBackend = { name: 'qemu+snapshot', start: (c) => snapshotQemuBackend.start({ ...c, prestartRunner: undefined }) };
const bare: number[] = [];
const booted: Timed[] = [];
const restoredCold: Timed[] = [];
const restored: Timed[] = [];
if (!values['skip-warm']) {
for (const [name, backend] of [['prestarted runner', snapshotQemuBackend], ['cold runner', snapshotColdRunner]] as const) {
  const primer = await timedRun(smoke, backend);
  const snap = primer.snapshot;
  // The cold-runner guest is this benchmark's alone: removed at the end if it saved it (100 to 200 MB).
  if (backend === snapshotColdRunner && snap?.action === 'saved') onCleanup(() => rm(entryDir('guest-snapshot', snap.key), { recursive: true, force: true }));
  console.log(`snapshot primer run, ${name} (saves the booted guest unless one exists): ${s(primer.wall)} [${stages(primer)}]${snap?.action === 'saved' ? `, save ${s(snap.seconds)}, ${(snap.bytes / 2 ** 20).toFixed(0)} MiB` : ''}`);
}
for (let i = 0; i < runs; i++) {
  bare.push(await bareBoot(smoke, prepared));
  booted.push(await timedRun(smoke, qemuBackend));
  restoredCold.push(await timedRun(smoke, snapshotColdRunner));
  restored.push(await timedRun(smoke, snapshotQemuBackend));
  console.log(`  round ${i + 1}: bare ${s(bare[i])}; booted ${s(booted[i].wall)} [${stages(booted[i])}]; restored, cold runner ${s(restoredCold[i].wall)} [${stages(restoredCold[i])}]; restored ${s(restored[i].wall)} [${stages(restored[i])}] (load ${load()})`);
}
const med = (xs: Timed[], k: keyof Timed) => median(xs.map((x) => x[k] as number));
const bareMed = median(bare);
for (const [name, xs] of [['booted', booted], ['restored, cold probe runner', restoredCold], ['restored, prestarted probe runner', restored]] as const) {
  row({
    what: `warm labs/smoke.yaml, ${name}, median of ${runs}`, value: s(med(xs, 'wall')),
    breakdown: `boot to SSH ${s(med(xs, 'boot'))}, setup ${s(med(xs, 'setup'))}, probes ${s(med(xs, 'probes'))}, teardown ${s(med(xs, 'teardown'))}; bare boot-to-poweroff ${s(bareMed)}, ratio ${(med(xs, 'wall') / bareMed).toFixed(2)}; ${[...new Set(xs.map((x) => x.runner?.mode ?? 'none'))].join('/')} runner; ${xs.filter((x) => x.snapshot?.action === 'saved').length} of ${xs.length} saved rather than restored`,
    target: '<= 12 s and <= 1.5x bare', load: xs[xs.length - 1].load,
  });
}
row({ what: 'boot to SSH, debug kernel', value: `booted ${s(med(booted, 'boot'))}, restored ${s(med(restoredCold, 'boot'))} (cold runner), ${s(med(restored, 'boot'))} (prestarted)`, breakdown: `bare boot-to-poweroff ${s(bareMed)}`, target: '<= 4 s', load: load() });
console.log(`prestarted vs cold runner, restored, round by round: probes ${restored.map((r, i) => `${s(r.probes)} vs ${s(restoredCold[i].probes)}`).join('; ')}; whole run ${restored.map((r, i) => (r.wall / restoredCold[i].wall).toFixed(2)).join(', ')}x`);
}

// 3. One-file change in drivers/vfio/pci to smoke results: whole-tree make (before), targeted rebuild, targeted + restore.
const variants: Array<[string, MachineBackend, 'whole-tree' | 'auto']> = [
  ['whole-tree make, booted (before)', qemuBackend, 'whole-tree'],
  ['targeted rebuild, booted', qemuBackend, 'auto'],
  ['targeted rebuild, restored', snapshotQemuBackend, 'auto'],
];
for (const [name, backend, mode] of values['skip-change'] ? [] : variants) {
  const patch = await oneFileChange(name.replace(/\W+/g, '_'));
  process.env.HWLAB_KERNEL_REBUILD = mode;
  const r = await timedRun(smoke, backend, [patch]).finally(() => { delete process.env.HWLAB_KERNEL_REBUILD; });
  row({ what: `one-file change -> smoke results, ${name}`, value: s(r.wall), breakdown: stages(r), target: '<= 30 s', load: r.load });
}

// 4. The whole suite, warm (its nvme endpoint cannot be migrated: booted).
if (!values['skip-default']) {
  await prepareLab(dflt, { progress }, scratch);
  const r = await timedRun(dflt, qemuBackend);
  row({ what: 'warm labs/default.yaml (whole suite)', value: s(r.wall), breakdown: stages(r), target: '<= 60 s', load: r.load });
}

console.log('\n| what | measured | stages | target | load average (1, 5, 15 min) |\n| --- | --- | --- | --- | --- |');
for (const r of table) console.log(`| ${r.what} | ${r.value} | ${r.breakdown} | ${r.target} | ${r.load} |`);
forgetScratch();
await rm(scratch, { recursive: true, force: true });
await runCleanups();
