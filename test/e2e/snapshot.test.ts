// Issue 12's snapshot restore on real guests, through the CLI with
// --snapshot on and labs/smoke.yaml: a first run leaves a saved booted
// guest (or finds one); the next runs, each with a freshly built (targeted)
// vfio-pci-core, must restore it, run the modules just built (srcversion
// checked, the patched errno seen by the probe), keep the boot's console in
// front of the run's, and still attribute a kernel report to the probe that
// caused it. Both runs must get their probes run by the runner started
// before the save (results.json runner: prestarted), never a cold node.
import test from 'ava';
import { execa } from 'execa';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildKernel, removeKernelBuild, type KernelBuildRequest } from '../../src/kernel/build.ts';
import type { KernelTree } from '../../src/kernel/source.ts';
import type { SnapshotRecord } from '../../src/machine/snapshot.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { noteFailure, readRun, removeRunsDirs, repoRoot, runsDir } from './helpers.ts';
import { smokeBuilds, smokeLab } from './smoke-builds.ts';

const enoent = path.join(repoRoot, 'test/fixtures/patches/vfio-zero-length-enoent.patch');
const progress = silentProgress();
let scratch: string;
let tree: KernelTree;
let request: (extra: string[]) => Promise<KernelBuildRequest>;
/** Patch series of the runs here: their kernel-build entries are removed afterwards. */
const series: string[][] = [];

test.before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'hwlab-snapshot-e2e-'));
  const builds = await smokeBuilds(progress);
  tree = builds.tree;
  request = (extra) => builds.request(extra, path.join(scratch, 'cleanup.log'));
});
test.afterEach.always(noteFailure);
test.after.always(async () => {
  // Each run's build entry is this file's alone: the same request is a cache hit that names it.
  for (const extra of series) {
    const k = await buildKernel(await request(extra)).catch(() => null);
    if (k) await removeKernelBuild(tree, k, progress.step('cleanup'));
  }
  await rm(scratch, { recursive: true, force: true });
  await removeRunsDirs();
});

/** A patch editing one file of the pristine tree. */
async function patchOf(name: string, rel: string, edit: (orig: string) => string): Promise<string> {
  const orig = await readFile(path.join(tree.dir, rel), 'utf8');
  const dir = await mkdtemp(path.join(scratch, 'diff-'));
  for (const [side, text] of [['a', orig], ['b', edit(orig)]] as const) {
    await mkdir(path.dirname(path.join(dir, side, rel)), { recursive: true });
    await writeFile(path.join(dir, side, rel), text);
  }
  const r = await execa('diff', ['-u', `a/${rel}`, `b/${rel}`], { cwd: dir, reject: false });
  if (r.exitCode !== 1) throw new Error(`diff of ${rel}: exit ${r.exitCode}`);
  const file = path.join(scratch, name);
  await writeFile(file, r.stdout + '\n');
  return file;
}

async function run(patches: string[]) {
  if (patches.length) series.push(patches);
  const dir = runsDir();
  // --snapshot wins over the environment's HWLAB_SNAPSHOT=off.
  const r = await execa('node', [path.join(repoRoot, 'src/cli/hwlab.js'), 'run', smokeLab, '--snapshot', 'on', ...patches.flatMap((p) => ['--patch', p]), '--runs-dir', dir], {
    cwd: repoRoot, reject: false, all: true, timeout: 45 * 60_000, env: { ...process.env, CI: 'true', HWLAB_SNAPSHOT: 'off' },
  });
  const { runDir, results } = await readRun(dir);
  const snapshotText = await readFile(path.join(runDir, 'snapshot.json'), 'utf8').catch(async () => {
    const why = await readFile(path.join(runDir, 'error.txt'), 'utf8').catch(() => results.outcome.title);
    throw new Error(`the run never started a machine: ${why}`);
  });
  const snapshot = JSON.parse(snapshotText) as SnapshotRecord;
  const consoleText = await readFile(path.join(runDir, 'console.log'), 'utf8');
  return { r, runDir, results, snapshot, consoleText };
}

test.serial('a run with --snapshot on leaves a saved booted guest (or restores one) and passes', async (t) => {
  // No patch: the lab's cached build, so this costs a run, not a build.
  const { r, results, snapshot } = await run([]);
  t.log(`snapshot: ${JSON.stringify(snapshot)}; boot_to_ssh ${results.timings.boot_to_ssh} s`);
  t.is(r.exitCode, 0, r.all);
  t.true(snapshot.action === 'saved' || snapshot.action === 'restored', JSON.stringify(snapshot));
  t.is(results.machine?.backend, 'qemu+snapshot');
  // The saving run's guest goes on from the save: it holds the waiting runner too.
  t.is(results.runner?.mode, 'prestarted', JSON.stringify(results.runner));
  t.true(snapshot.action !== 'not-saved' && (snapshot.runner?.startupSec ?? 0) > 0, JSON.stringify(snapshot));
});

test.serial('a restored guest runs the vfio-pci-core just built (srcversion, the patched errno), keeps the boot console in front, and attributes a WARN to its probe', async (t) => {
  // Two changes in one build: zero length -> ENOENT (a failed point), and a WARN_ONCE on every export (a kernel report in dmabuf-export, the first probe to export).
  const warn = await patchOf('warn.patch', 'drivers/vfio/pci/vfio_pci_core.c', (s) => {
    const at = s.indexOf('\t\treturn vfio_pci_core_feature_dma_buf(vdev, flags, arg, argsz);');
    if (at < 0) throw new Error('vfio_pci_core_ioctl_feature changed: the test needs another anchor');
    return `${s.slice(0, at)}\t\tWARN_ONCE(1, "hwlab snapshot attribution check\\n");\n${s.slice(at)}`;
  });
  const { results, snapshot, consoleText } = await run([enoent, warn]);
  t.log(`snapshot: ${JSON.stringify(snapshot)}; boot_to_ssh ${results.timings.boot_to_ssh} s, setup ${results.timings.setup} s`);
  t.is(snapshot.action, 'restored', JSON.stringify(snapshot));
  t.is(results.kernel?.rebuild?.kind, 'modules', 'a targeted rebuild: the same kernel image, so the same snapshot');
  // The probes ran in the runner waiting since the save: its node start (measured then) is the time this run did not pay.
  t.is(results.runner?.mode, 'prestarted', JSON.stringify(results.runner));
  t.log(`prestarted runner: node's start at the save took ${results.runner?.mode === 'prestarted' ? results.runner.startupSavedSec : '?'} s; probes ${results.timings.probes} s`);
  const core = (results.kernel?.modulesVerified ?? []).find((m) => m.module === 'vfio_pci_core');
  t.regex(core?.srcversion ?? '', /^[0-9A-F]{20,}$/, JSON.stringify(results.kernel?.modulesVerified));
  const failed = results.probes.find((p) => p.name === 'dmabuf-bad-inputs')!.subtests.filter((s) => !s.ok);
  t.is(failed.length, 1, JSON.stringify(failed));
  t.is(failed[0].diagnostics?.actual, 'ENOENT');
  // The strongest evidence wins: a kernel report over a failed point.
  t.is(results.outcome.class, 'kernel', JSON.stringify(results.outcome));
  const first = results.probes.find((p) => p.name === 'dmabuf-export')!;
  t.true(first.kernelReports.some((k) => k.kind === 'WARNING'), JSON.stringify(first.kernelReports));
  for (const p of results.probes.filter((x) => x.name !== 'dmabuf-export')) t.deepEqual(p.kernelReports, [], `${p.name}: WARN_ONCE fires once, in the first probe`);
  // The saved boot's console first (kernel banner, the ready line), then this run's probe markers.
  const banner = consoleText.indexOf('Linux version');
  const ready = consoleText.indexOf('hwlab-init: sshd started');
  const firstMarker = consoleText.indexOf('hwlab-probe: begin');
  t.true(banner >= 0 && banner < ready && ready < firstMarker, `banner ${banner}, ready ${ready}, first probe marker ${firstMarker}`);
});
