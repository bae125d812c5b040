// Kernels built from source: pristine tree + patch series + checked config
// -> bzImage and modules, cached by content. Two cache levels keep a
// no-change run free of make: the assembled config is cached by its inputs,
// the build by (tree, patches, final config, compiler).
//
// Incremental builds: every build of one source tree happens in the same two
// directories (src/ and obj/ under a per-tree work dir), because kbuild
// records absolute paths in its .cmd files; the nearest earlier build's obj/
// is copied back first, and every file a patch touched now or in that build
// gets a fresh mtime so make recompiles exactly those.
import { execa } from 'execa';
import { createWriteStream, existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cacheKey, cacheRoot, ensureEntry, entryDir, isComplete, markUsed, sha256, usableEntry } from '../util/cache.ts';

import { makeExt4 } from '../util/ext4.ts';
import { withLock } from '../util/lock.ts';
import { boundToHwlab } from '../util/host-tools.ts';
import type { Step } from '../util/progress.ts';
import { assembleConfig } from './config.ts';
import { BuildProgress, objectCount } from './build-progress.ts';
import { applySeries, parseDiff, scratchCopy, stripPath, type PatchFile } from './patches.ts';
import type { KernelTree } from './source.ts';
import { planRebuild, describePlan, type RebuildPlan } from './targeted.ts';
import { filesInEntry, type SourceKernel } from './types.ts';
import { InfraError, InputError, isDiskFull } from '../util/errors.ts';

/** Fixed so that unchanged sources give unchanged objects (and ccache hits). */
const REPRODUCIBLE_ENV = {
  KBUILD_BUILD_TIMESTAMP: '2026-01-01 00:00:00 UTC',
  KBUILD_BUILD_USER: 'hwlab',
  KBUILD_BUILD_HOST: 'hwlab',
};

export interface KernelBuildRequest {
  tree: KernelTree;
  patches: PatchFile[];
  /** Make target for the base config, e.g. tinyconfig. */
  base: string;
  fragments: Array<{ file: string; text: string }>;
  /** Full build output goes here (the run folder). */
  logFile: string;
  step: Step;
  jobs?: number;
  /**
   * auto: rebuild only the modules when kbuild's records show the changed files
   * go into modules only (targeted.ts); whole-tree: always `make bzImage modules`.
   * Default: $HWLAB_KERNEL_REBUILD, else auto.
   */
  rebuild?: RebuildMode;
}

export type RebuildMode = 'auto' | 'whole-tree';
const REBUILD_MODES: readonly RebuildMode[] = ['auto', 'whole-tree'];

/** The rebuild mode a request asks for, or $HWLAB_KERNEL_REBUILD (checked: a typo must not silently change what is measured). */
export function rebuildMode(req: Pick<KernelBuildRequest, 'rebuild'>, env: NodeJS.ProcessEnv = process.env): RebuildMode {
  if (req.rebuild) return req.rebuild;
  const v = env.HWLAB_KERNEL_REBUILD;
  if (v === undefined || v === '') return 'auto';
  if (!(REBUILD_MODES as readonly string[]).includes(v)) {
    throw new InputError(`environment variable HWLAB_KERNEL_REBUILD: must be one of ${REBUILD_MODES.join(', ')} (got "${v}")`, undefined, 'bad-environment');
  }
  return v as RebuildMode;
}


/** A patched tree that does not build (compile or link errors): the series is at fault. */
export class KernelBuildError extends InputError {
  constructor(message: string, hint?: string) {
    super(message, hint, 'build-failed');
  }
}

function workDir(tree: KernelTree): string {
  return path.join(cacheRoot(), 'kbuild-work', cacheKey({ tree: tree.id }));
}

/** Repository paths a patch touches (after -p stripping). */
export function touchedFiles(patches: PatchFile[]): string[] {
  const out = new Set<string>();
  for (const p of patches) {
    for (const s of parseDiff(p.text)) {
      for (const f of [s.oldPath, s.newPath]) {
        if (f === '/dev/null') continue;
        const rel = stripPath(f, p.strip);
        if (rel) out.add(rel);
      }
    }
  }
  return [...out].sort();
}

async function compilerId(): Promise<string> {
  const r = await execa('gcc', ['--version'], { reject: false });
  if (r.exitCode !== 0) throw new InfraError('gcc is not installed', 'apt-get install gcc make flex bison bc libelf-dev libssl-dev');
  return r.stdout.split('\n')[0];
}

/** Recreates work/src as pristine + series; fails before any build when a patch does not apply. */
async function preparePatchedTree(req: Pick<KernelBuildRequest, 'tree' | 'patches' | 'step'>, src: string, alsoTouch: string[]): Promise<void> {
  const stateFile = srcStateFile(src);
  await rm(stateFile, { force: true });
  await rm(src, { recursive: true, force: true });
  req.step.update('copying the source tree');
  await scratchCopy(req.tree.dir, src);
  if (req.patches.length) await applySeries(src, req.patches, { step: req.step });
  // Files a previous build patched but this one does not are back to pristine
  // content with an old mtime; a fresh mtime makes make rebuild them. Rewrite
  // (not touch) so the pristine tree's hard-linked inode keeps its mtime.
  for (const rel of new Set([...alsoTouch, ...touchedFiles(req.patches)])) {
    const f = path.join(src, rel);
    if (!existsSync(f)) continue;
    const data = await readFile(f);
    await rm(f);
    await writeFile(f, data);
  }
  await writeFile(stateFile, srcState(req));
}

/** Which patch series src/ holds: written last, so an interrupted preparation is never trusted. */
const srcStateFile = (src: string) => path.join(path.dirname(src), 'src-state.json');
const srcState = (req: Pick<KernelBuildRequest, 'tree' | 'patches'>) => JSON.stringify({ tree: req.tree.id, patches: req.patches.map((p) => p.sha256) });

/**
 * Runs fn with the tree's shared src/ holding exactly pristine + patches, under
 * the tree's build lock: M= builds of hwlab's own modules against a built
 * kernel read its headers from there (the obj/ in the cache entry points at it),
 * and a series may change headers (include/linux/dma-buf.h, vfio_pci_core.h).
 */
export async function withPatchedSource<T>(
  req: Pick<KernelBuildRequest, 'tree' | 'patches' | 'step'>,
  fn: (src: string) => Promise<T>,
): Promise<T> {
  const work = workDir(req.tree);
  const src = path.join(work, 'src');
  await mkdir(work, { recursive: true });
  const matches = async () => (await readFile(srcStateFile(src), 'utf8').catch(() => '')) === srcState(req) && existsSync(path.join(src, 'Makefile'));
  // Without the lock when src/ already holds this series (a kernel build of the
  // same series may be running for many minutes); a re-preparation that started
  // meanwhile removes the state file first, so checking again afterwards catches it.
  if (await matches()) {
    let result: { ok: true; value: T } | { ok: false; error: unknown };
    try {
      result = { ok: true, value: await fn(src) };
    } catch (error) {
      result = { ok: false, error };
    }
    if (await matches()) {
      if (!result.ok) throw result.error;
      return result.value;
    }
  }
  return withLock(path.join(work, 'lock'), `the build directory ${work}`, 4 * 3600_000, async () => {
    if (!(await matches())) await preparePatchedTree(req, src, []);
    return fn(src);
  }, (pid) => req.step.update(`waiting for hwlab process ${pid}, which is building this tree`));
}

/** Files whose change can change what olddefconfig produces. */
const KCONFIG_INPUT = /(^|\/)Kconfig[^/]*$|^arch\/x86\/configs\/|^kernel\/configs\//;

export function configKey(req: Pick<KernelBuildRequest, "tree" | "patches" | "base" | "fragments">): string {
  return cacheKey({
    v: 2,
    tree: req.tree.id,
    // Only patches that touch Kconfig inputs change the config: a driver fix reuses the cached one.
    patches: req.patches.filter((p) => touchedFiles([p]).some((f) => KCONFIG_INPUT.test(f))).map((p) => p.sha256),
    base: req.base,
    fragments: req.fragments.map((f) => ({ file: path.basename(f.file), sha: sha256(f.text) })),
  });
}

/**
 * The config this request asks for, assembled and verified once per set of
 * inputs. A cache hit needs no tree copy and no make; a miss assembles it on
 * a freshly patched src/ (so a patch that does not apply stops here).
 */
async function finalConfig(req: KernelBuildRequest, src: string): Promise<string> {
  const key = configKey(req);
  const { dir } = await ensureEntry('kconfig', key, `config for ${req.tree.label}`, async (tmp) => {
    await preparePatchedTree(req, src, []);
    const objDir = path.join(tmp, 'obj');
    await mkdir(objDir);
    req.step.update('assembling config');
    const res = await assembleConfig({ srcDir: src, objDir, base: req.base, fragments: req.fragments, step: req.step });
    await writeFile(path.join(tmp, 'config'), res.configText);
    await rm(objDir, { recursive: true, force: true });
  });
  return readFile(path.join(dir, 'config'), 'utf8');
}

/**
 * The final config a build request would use, assembled and verified (cached
 * by its inputs like a build's) without building anything: for checks that
 * must stop a run before make, such as what the kernel's selftests ask for.
 */
export async function assembledConfig(req: KernelBuildRequest): Promise<string> {
  const dir = entryDir('kconfig', configKey(req));
  if (isComplete(dir)) return readFile(path.join(dir, 'config'), 'utf8');
  const work = workDir(req.tree);
  await mkdir(work, { recursive: true });
  return withLock(path.join(work, 'lock'), `the build directory ${work}`, 4 * 3600_000, () => finalConfig(req, path.join(work, 'src')),
    (pid) => req.step.update(`waiting for hwlab process ${pid}, which is building this tree`));
}

interface BuildManifest {
  treeId: string;
  patches: Array<{ name: string; sha256: string; origin: string }>;
  touched: string[];
  configSha: string;
  compiler: string;
  release: string;
  buildSeconds: number;
  finishedAt: string;
}

/**
 * The base for an incremental build: a build entry of the same tree, same
 * config preferred, then the one that leaves the fewest files to rebuild
 * (what it patched plus what this series patches: from an unpatched build a
 * vfio-pci change stays a modules-only rebuild, from a build that patched
 * built-in dma-buf code it would not), then the newest.
 */
async function nearestEntry(treeId: string, configSha: string, touched: readonly string[]): Promise<{ dir: string; manifest: BuildManifest } | null> {
  const kdir = path.join(cacheRoot(), 'kernel-build');
  if (!existsSync(kdir)) return null;
  const found: Array<{ dir: string; manifest: BuildManifest }> = [];
  for (const name of await readdir(kdir)) {
    const dir = path.join(kdir, name);
    if (!isComplete(dir) || !existsSync(path.join(dir, 'build.json')) || !existsSync(path.join(dir, 'obj'))) continue;
    const manifest = JSON.parse(await readFile(path.join(dir, 'build.json'), 'utf8')) as BuildManifest;
    if (manifest.treeId === treeId) found.push({ dir, manifest });
  }
  const toRebuild = (m: BuildManifest) => new Set([...m.touched, ...touched]).size;
  found.sort((a, b) =>
    Number(b.manifest.configSha === configSha) - Number(a.manifest.configSha === configSha) ||
    toRebuild(a.manifest) - toRebuild(b.manifest) ||
    b.manifest.finishedAt.localeCompare(a.manifest.finishedAt));
  return found[0] ?? null;
}

/** Compiler and linker errors out of a build log, instead of a wall of make output. */
export function extractBuildErrors(log: string, max = 40): string[] {
  const lines = log.split('\n');
  const out: string[] = [];
  for (let i = 0; i < lines.length && out.length < max; i++) {
    const l = lines[i];
    if (/^\S+:\d+:\d+: (fatal )?error: /.test(l) || /^\S+:\d+: (undefined reference|multiple definition)/.test(l)) {
      out.push(l);
      // gcc's caret context: the source line and the marker under it.
      for (let j = i + 1; j < Math.min(i + 3, lines.length) && /^\s+(\d+ \|| \|)/.test(lines[j]); j++) out.push(lines[j]);
    } else if (/^(ERROR|FATAL): modpost: /.test(l) || /undefined reference to /.test(l) || /^make\[\d+\]: \*\*\* .*Error \d+/.test(l)) {
      out.push(l);
    }
  }
  return out;
}

async function runMake(args: string[], req: KernelBuildRequest, src: string, obj: string, log: (s: string) => void, progress?: BuildProgress): Promise<void> {
  const useCcache = (await execa('ccache', ['--version'], { reject: false })).exitCode === 0;
  // Killed with hwlab: make must not go on writing into obj/ once the tree lock is free for the next run.
  const child = execa(...boundToHwlab('make', ['-C', src, `O=${obj}`, 'ARCH=x86_64', `-j${req.jobs ?? os.cpus().length}`, ...(useCcache ? ['CC=ccache gcc'] : []), ...args]), {
    reject: false,
    all: true,
    env: { ...REPRODUCIBLE_ENV, CCACHE_BASEDIR: path.dirname(src), CCACHE_NOHASHDIR: '1' },
    timeout: 4 * 3600_000,
  });
  let lastFile = '';
  child.all?.on('data', (d: Buffer) => {
    const s = d.toString();
    log(s);
    if (progress) return req.step.update(progress.push(s));
    const m = s.match(/^\s+(CC|LD|AR|AS)( \[M\])?\s+(\S+)/gm);
    if (m) lastFile = m[m.length - 1].trim();
    req.step.update(lastFile);
  });
  const r = await child;
  if (r.exitCode !== 0) {
    const errors = extractBuildErrors(String(r.all));
    if (isDiskFull(String(r.all))) throw new InfraError(`make ${args.join(' ')} failed: the disk is full (No space left on device); full log: ${req.logFile}`, 'free space, e.g. hwlab cache prune --max-size 20G', 'disk-full');
    throw new KernelBuildError(
      `make ${args.join(' ')} failed (exit ${r.exitCode}); full log: ${req.logFile}\n${errors.length ? errors.join('\n') : String(r.all).split('\n').slice(-20).join('\n')}`,
    );
  }
}

/**
 * Removes a kernel-build entry of this tree under the tree's build lock, so no
 * build of the tree is copying its objects as its incremental base meanwhile
 * (tests and benchmarks drop the entries of their throw-away patches).
 */
export async function removeKernelBuild(tree: KernelTree, kernel: SourceKernel, step: Step): Promise<void> {
  const work = workDir(tree);
  await mkdir(work, { recursive: true });
  await withLock(path.join(work, 'lock'), `the build directory ${work}`, 4 * 3600_000,
    () => rm(kernel.cacheDir, { recursive: true, force: true }),
    (pid) => step.update(`waiting for hwlab process ${pid}, which is building this tree`));
}

export async function buildKernel(req: KernelBuildRequest): Promise<SourceKernel> {
  const work = workDir(req.tree);
  await mkdir(work, { recursive: true });
  // A cache hit needs neither src/ nor obj/: no waiting for another build of the same tree.
  const hit = await cachedBuild(req);
  if (hit) return hit;
  // One build per tree at a time: builds of a tree share src/ and obj/.
  return withLock(path.join(work, 'lock'), `the build directory ${work}`, 4 * 3600_000, () => buildKernelLocked(req, work),
    (pid) => req.step.update(`waiting for hwlab process ${pid}, which is building this tree`));
}

/** Key of a kernel-build entry: the source, the exact series, the final config and the compiler. */
function buildKey(req: KernelBuildRequest, configSha: string, compiler: string): string {
  return cacheKey({ v: 1, tree: req.tree.id, patches: req.patches.map((p) => p.sha256), config: configSha, compiler });
}

/** The finished entry for this request when both the config and the build are cached; otherwise null. */
async function cachedBuild(req: KernelBuildRequest): Promise<SourceKernel | null> {
  const configDir = entryDir('kconfig', configKey(req));
  if (!isComplete(configDir)) return null;
  const configSha = sha256(await readFile(path.join(configDir, 'config'), 'utf8'));
  const key = buildKey(req, configSha, await compilerId());
  const dir = entryDir('kernel-build', key);
  // Checked by content: a corrupt build is removed here and built again below, never booted.
  if (!(await usableEntry(dir, (msg) => process.stderr.write(`hwlab: ${msg}\n`)))) return null;
  await markUsed(configDir);
  await markUsed(dir);
  return builtFromEntry(req, dir, key, configSha, false);
}

async function builtFromEntry(req: KernelBuildRequest, dir: string, key: string, configSha: string, built: boolean, buildSeconds?: number, incrementalFrom?: string, rebuild?: RebuildPlan): Promise<SourceKernel> {
  const manifest = JSON.parse(await readFile(path.join(dir, 'build.json'), 'utf8')) as BuildManifest;
  if (!built) await writeFile(req.logFile, `cache hit: ${dir} (built ${manifest.finishedAt} in ${manifest.buildSeconds.toFixed(0)} s)\n`);
  return {
    kind: 'source',
    ...filesInEntry(dir, key, { package: req.tree.label, version: req.tree.version, release: manifest.release }),
    objDir: path.join(dir, 'obj'),
    built,
    buildSeconds,
    incrementalFrom,
    ...(rebuild ? { rebuild } : {}),
    patches: req.patches.map((p) => ({ name: p.name, sha256: p.sha256, origin: p.origin })),
    configSha256: configSha,
  };
}

async function buildKernelLocked(req: KernelBuildRequest, work: string): Promise<SourceKernel> {
  const src = path.join(work, 'src');
  const obj = path.join(work, 'obj');
  await mkdir(work, { recursive: true });
  const patchesInfo = req.patches.map((p) => ({ name: p.name, sha256: p.sha256, origin: p.origin }));
  const compiler = await compilerId();
  const configText = await finalConfig(req, src);
  const configSha = sha256(configText);
  const key = buildKey(req, configSha, compiler);

  let built = false;
  let buildSeconds: number | undefined;
  let incrementalFrom: string | undefined;
  let plan: RebuildPlan | undefined;
  const mode = rebuildMode(req);
  const { dir } = await ensureEntry('kernel-build', key, `${req.tree.label} + ${req.patches.length} patches`, async (tmp) => {
    const near = await nearestEntry(req.tree.id, configSha, touchedFiles(req.patches));
    // Files patched by whatever last built in obj/ (an earlier entry, or an interrupted build).
    const lastTouchedFile = path.join(work, 'obj-touched.json');
    const reuseWork = !near && existsSync(path.join(obj, 'Makefile'));
    const lastTouched: string[] = near ? near.manifest.touched
      : reuseWork && existsSync(lastTouchedFile) ? JSON.parse(await readFile(lastTouchedFile, 'utf8')) : [];
    await preparePatchedTree(req, src, lastTouched);
    if (near) {
      req.step.update(`copying objects of ${path.basename(near.dir)}`);
      await rm(obj, { recursive: true, force: true });
      await execa('cp', ['-a', path.join(near.dir, 'obj'), obj]);
      incrementalFrom = path.basename(near.dir);
    } else if (reuseWork) {
      // An interrupted or failed build of this tree left objects: make continues from them.
      incrementalFrom = 'the objects of an unfinished build';
    } else {
      await rm(obj, { recursive: true, force: true });
      await mkdir(obj, { recursive: true });
    }
    const changed = [...new Set([...lastTouched, ...touchedFiles(req.patches)])];
    await writeFile(lastTouchedFile, JSON.stringify(changed));
    await writeFile(path.join(obj, '.config'), configText);
    // Same config as the entry the objects came from: only what changed compiles, no useful total.
    const expected = near && near.manifest.configSha === configSha ? undefined : near ? await objectCount(path.join(near.dir, 'obj')) : undefined;
    const start = Date.now();
    plan = !near ? { kind: 'whole-tree', reason: reuseWork ? 'continuing an unfinished build' : 'no earlier build of this tree' }
      : mode === 'whole-tree' ? { kind: 'whole-tree', reason: 'whole-tree asked for (HWLAB_KERNEL_REBUILD or the request)' }
      : near.manifest.configSha !== configSha ? { kind: 'whole-tree', reason: `the base build ${path.basename(near.dir)} has another config` }
      : await planRebuild({ objDir: obj, srcDir: src, changed });
    // Written as make runs, so tail -f of the run folder's kernel-build.log follows the build.
    const logStream = createWriteStream(req.logFile);
    const log = (s: string) => { logStream.write(s); };
    log(`hwlab: ${describePlan(plan)}\n`);
    try {
      await runMake(['olddefconfig'], req, src, obj, log);
      const after = await readFile(path.join(obj, '.config'), 'utf8');
      // Compare values, not text: the header comment names ARCH and the tool versions.
      const values = (t: string) => t.split('\n').filter((l) => l && !l.startsWith('# ') || / is not set$/.test(l)).join('\n');
      if (values(after) !== values(configText)) {
        throw new InfraError('olddefconfig changed the verified config in the build tree; the source tree and the config cache disagree');
      }
      if (plan.kind === 'modules') {
        // Single .ko targets end by deleting modules.order ("not the real one");
        // the full build's list is put back for modules_install and the next build.
        const orderFile = path.join(obj, 'modules.order');
        const order = await readFile(orderFile);
        try {
          await runMake(plan.targets, req, src, obj, log);
        } finally {
          await writeFile(orderFile, order);
        }
      } else {
        await runMake(['bzImage', 'modules'], req, src, obj, log, new BuildProgress(expected));
      }
      req.step.update('modules_install');
      await runMake(['modules_install', `INSTALL_MOD_PATH=${path.join(tmp, 'modroot')}`, 'INSTALL_MOD_STRIP=1', 'DEPMOD=/sbin/depmod'], req, src, obj, log);
    } finally {
      await new Promise<void>((resolve) => logStream.end(resolve));
    }
    buildSeconds = (Date.now() - start) / 1000;
    built = true;
    const release = (await readFile(path.join(obj, 'include/config/kernel.release'), 'utf8')).trim();
    await copyFile(path.join(obj, 'arch/x86/boot/bzImage'), path.join(tmp, 'vmlinuz'));
    await copyFile(path.join(obj, '.config'), path.join(tmp, 'config'));
    const modDir = path.join(tmp, 'modroot/lib/modules', release);
    await mkdir(modDir, { recursive: true });
    // modules_install links build/ and source/ to the work dir; they would dangle in the guest.
    await rm(path.join(modDir, 'build'), { force: true });
    await rm(path.join(modDir, 'source'), { force: true });
    await execa('depmod', ['-b', path.join(tmp, 'modroot'), release]);
    req.step.update('modules disk');
    await makeExt4(path.join(tmp, 'modroot/lib/modules'), path.join(tmp, 'modules.ext4'), 'hwlab-mods');
    // Keep the objects for the next incremental build and for M= module builds.
    await rename(obj, path.join(tmp, 'obj'));
    const manifest: BuildManifest = {
      treeId: req.tree.id, patches: patchesInfo, touched: touchedFiles(req.patches), configSha, compiler, release,
      buildSeconds, finishedAt: new Date().toISOString(),
    };
    await writeFile(path.join(tmp, 'build.json'), JSON.stringify(manifest, null, 2));
    await writeFile(path.join(tmp, 'kernel.json'), JSON.stringify({ package: req.tree.label, version: req.tree.version, release }, null, 2));
  });
  return builtFromEntry(req, dir, key, configSha, built, buildSeconds, incrementalFrom, plan);
}
