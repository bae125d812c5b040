// Kernels built from source: pristine tree + patch series + checked config
// -> bzImage and modules, cached by content. Two cache levels keep a
// no-change run free of make: the assembled config is cached by its inputs,
// the build by (tree, patches, final config, compiler).
//
// Incremental builds: the builds of one source tree with one final config
// happen in the same two directories (src/ and obj/ under a work dir per
// (tree, config)), because kbuild records absolute paths in its .cmd files;
// the nearest earlier build's obj/ is copied back first (its recorded source
// paths moved to this work dir when it was built in another one), and every
// file a patch touched now or in that build gets a fresh mtime so make
// recompiles exactly those. Builds of different configs of one tree have
// different work dirs and locks, so they never wait for each other, and an
// M= module build waits only for a build of its own kernel's config.
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { copyFile, link, lstat, mkdir, readdir, readFile, readlink, rename, rm, symlink, writeFile } from 'node:fs/promises';
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

/**
 * Fixed so that unchanged sources give unchanged objects (and ccache hits).
 * KBUILD_BUILD_VERSION: without it each vmlinux link takes the next number
 * from the work dir's .version ("#2", "#3" in `uname -v`), so a rebuild whose
 * changes were all in modules still gave a new bzImage, and a saved booted
 * guest (keyed by the kernel image's hash) could not be restored for it.
 */
const REPRODUCIBLE_ENV = {
  KBUILD_BUILD_VERSION: '1',
  KBUILD_BUILD_TIMESTAMP: '2026-01-01 00:00:00 UTC',
  KBUILD_BUILD_USER: 'hwlab',
  KBUILD_BUILD_HOST: 'hwlab',
};

/**
 * ccache as hwlab runs it. Depend mode: a miss is one compiler run, and the
 * key comes from the compiler's own -MMD dependency list (kbuild asks for it).
 * The default direct mode runs the preprocessor once more per miss and hashes
 * its output: on kernel sources that made a cold miss cost about 45% more
 * than no ccache at all (40 objects compiled one at a time: 28 to 32 s
 * without ccache, 42 to 46 s direct mode cold, 31 to 36 s depend mode cold),
 * and a first build is all misses. Hits are looked up the same way in both.
 * NOHASHDIR with BASEDIR (the work dir, holding src/ and obj/): objects do
 * not depend on where the work dir is.
 */
export const CCACHE_ENV = { CCACHE_DEPEND: '1', CCACHE_NOHASHDIR: '1' };

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

/** Where builds of this tree with this final config run (src/ and obj/ and the lock). */
function workDir(tree: KernelTree, configSha: string): string {
  return path.join(cacheRoot(), 'kbuild-work', cacheKey({ tree: tree.id, config: configSha }));
}

/** The one work dir per tree of hwlab before per-config work dirs: entries built there record no srcDir. */
function legacyWorkDir(treeId: string): string {
  return path.join(cacheRoot(), 'kbuild-work', cacheKey({ tree: treeId }));
}

/** The source directory an entry's obj/ was built from, as its .cmd files and the obj/source link name it (the builder's absolute path). */
function recordedSrcDir(manifest: Pick<BuildManifest, 'treeId' | 'srcDir'>): string {
  return manifest.srcDir ?? path.join(legacyWorkDir(manifest.treeId), 'src');
}

/**
 * That source directory in this cache. The recorded path names the cache the
 * entry was built in; a copy of the entry in another cache (an ordinary
 * user's seeded from root's, a CI cache restored under another home) finds
 * it under its own root, at the same kbuild-work/<key>/src: the key is the
 * (tree, config) content key, the same everywhere.
 */
export function localSrcDir(manifest: Pick<BuildManifest, 'treeId' | 'srcDir'>, root = cacheRoot()): string {
  const recorded = recordedSrcDir(manifest);
  const rel = /(?:^|\/)(kbuild-work\/[^/]+\/src)$/.exec(recorded)?.[1];
  return rel ? path.join(root, rel) : recorded;
}

const lockFile = (work: string) => path.join(work, 'lock');
const waitingFor = (step: Step) => (pid: number) => step.update(`waiting for hwlab process ${pid}, which is building this tree with this config`);

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

export async function compilerId(): Promise<string> {
  const r = await execa('gcc', ['--version'], { reject: false });
  if (r.exitCode !== 0) throw new InfraError('gcc is not installed', 'apt-get install gcc make flex bison bc libelf-dev libssl-dev');
  return r.stdout.split('\n')[0];
}

/**
 * Recreates work/src as pristine + series; fails before any build when a
 * patch does not apply. When src/ holds a complete preparation of this tree
 * (its state file, written last, names the files its series touched), only
 * those files go back to pristine (hard links again, or removed where the
 * pristine tree has none) before the new series is applied: a full copy is
 * about 95,000 hard links plus removing as many, 4.8 s on a 2-core host, on
 * every change of the series (each edit in the local loop).
 */
async function preparePatchedTree(req: Pick<KernelBuildRequest, 'tree' | 'patches' | 'step'>, src: string, alsoTouch: string[]): Promise<void> {
  const stateFile = srcStateFile(src);
  const held = parseSrcState(await readFile(stateFile, 'utf8').catch(() => ''));
  // Not trusted from here until the new state is written.
  await rm(stateFile, { force: true });
  const inside = (rel: string) => path.resolve(src, rel).startsWith(src + path.sep);
  if (held && held.tree === req.tree.id && held.touched.every(inside) && existsSync(path.join(src, 'Makefile'))) {
    req.step.update(`putting back the ${held.touched.length} files the previous series touched`);
    for (const rel of held.touched) {
      const f = path.join(src, rel);
      const pristine = path.join(req.tree.dir, rel);
      await rm(f, { force: true });
      if (existsSync(pristine)) {
        await mkdir(path.dirname(f), { recursive: true });
        await link(pristine, f);
      }
    }
  } else {
    await rm(src, { recursive: true, force: true });
    req.step.update('copying the source tree');
    await scratchCopy(req.tree.dir, src);
  }
  if (req.patches.length) await applySeries(src, req.patches, { step: req.step });
  // Files a previous build patched but this one does not are back to pristine
  // content with an old mtime; a fresh mtime makes make rebuild them. Rewrite
  // (not touch) so the pristine tree's hard-linked inode keeps its mtime.
  for (const rel of new Set([...alsoTouch, ...touchedFiles(req.patches), ...(held?.touched ?? [])])) {
    const f = path.join(src, rel);
    if (!existsSync(f)) continue;
    const data = await readFile(f);
    await rm(f);
    await writeFile(f, data);
  }
  await writeFile(stateFile, srcState(req));
}

/**
 * Runs fn on a scratch copy of the tree with the series applied (hard links,
 * beside the tree's cache entry; `cache prune` leaves it alone while this
 * process lives), removed afterwards: for checks that must read the patched
 * tree before anything is built.
 */
export async function withPatchedScratch<T>(tree: KernelTree, patches: PatchFile[], fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = path.join(path.dirname(path.dirname(tree.dir)), `.tmp-check-${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await scratchCopy(tree.dir, dir);
    await applySeries(dir, patches);
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Which patch series src/ holds: written last, so an interrupted preparation is never trusted. */
const srcStateFile = (src: string) => path.join(path.dirname(src), 'src-state.json');
const srcState = (req: Pick<KernelBuildRequest, 'tree' | 'patches'>) =>
  JSON.stringify({ tree: req.tree.id, patches: req.patches.map((p) => p.sha256), touched: touchedFiles(req.patches) });
/** A state file's content, or null when it is missing, unreadable or from before `touched` was recorded. */
function parseSrcState(text: string): { tree: string; touched: string[] } | null {
  try {
    const v = JSON.parse(text) as { tree?: unknown; touched?: unknown };
    return typeof v.tree === 'string' && Array.isArray(v.touched) && v.touched.every((x) => typeof x === 'string') ? { tree: v.tree, touched: v.touched as string[] } : null;
  } catch {
    return null;
  }
}

/**
 * Runs fn with the src/ a built kernel's obj/ points at holding exactly
 * pristine + patches, under the lock of that kernel's work dir: M= builds of
 * hwlab's own modules against a built kernel read its headers from there, and
 * a series may change headers (include/linux/dma-buf.h, vfio_pci_core.h).
 */
export async function withPatchedSource<T>(
  req: Pick<KernelBuildRequest, 'tree' | 'patches' | 'step'> & { objDir: string },
  fn: (src: string) => Promise<T>,
): Promise<T> {
  const manifest = JSON.parse(await readFile(path.join(path.dirname(req.objDir), 'build.json'), 'utf8')) as BuildManifest;
  const src = localSrcDir(manifest);
  const work = path.dirname(src);
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
  return withLock(lockFile(work), `the build directory ${work}`, 4 * 3600_000, async () => {
    if (!(await matches())) await preparePatchedTree(req, src, []);
    return fn(src);
  }, waitingFor(req.step));
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
 * a freshly patched scratch copy of its own (so a patch that does not apply
 * stops here, and no build's work dir or lock is involved).
 */
async function finalConfig(req: KernelBuildRequest): Promise<string> {
  const key = configKey(req);
  const { dir } = await ensureEntry('kconfig', key, `config for ${req.tree.label}`, async (tmp) => {
    const src = path.join(tmp, 'src');
    await preparePatchedTree(req, src, []);
    const objDir = path.join(tmp, 'obj');
    await mkdir(objDir);
    req.step.update('assembling config');
    const res = await assembleConfig({ srcDir: src, objDir, base: req.base, fragments: req.fragments, step: req.step });
    await writeFile(path.join(tmp, 'config'), res.configText);
    await rm(objDir, { recursive: true, force: true });
    await rm(src, { recursive: true, force: true });
    await rm(srcStateFile(src), { force: true });
  });
  return readFile(path.join(dir, 'config'), 'utf8');
}

/**
 * The final config a build request would use, assembled and verified (cached
 * by its inputs like a build's) without building anything: for checks that
 * must stop a run before make, such as what the kernel's selftests ask for.
 */
export const assembledConfig: (req: KernelBuildRequest) => Promise<string> = finalConfig;

interface BuildManifest {
  treeId: string;
  /** The src/ its objects were built from; absent in entries from before per-config work dirs. */
  srcDir?: string;
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

/**
 * Makes a copied obj/ name src/ instead of the source directory it was built
 * from: kbuild's records (.cmd files with each object's command and header
 * dependencies, objtool's .d files, the generated Makefile) hold absolute
 * source paths, and obj/source is a link to the source. Without this, make
 * would check the old directory's headers and miss a change in the new one.
 * Host tools' binaries keep the old path in their debug info, which does not
 * matter to make.
 */
export async function relocateObjects(obj: string, fromSrc: string, toSrc: string): Promise<number> {
  const r = await execa('grep', ['-rlZF', '--include=*.cmd', '--include=*.d', '--include=Makefile', '--', fromSrc, obj], { reject: false, timeout: 600_000 });
  if (r.exitCode !== 0 && r.exitCode !== 1) throw new InfraError(`relocating ${obj}: grep failed: ${r.stderr.trim()}`);
  const files = r.stdout.split('\0').filter(Boolean);
  for (const f of files) {
    const text = await readFile(f, 'utf8');
    await writeFile(f, text.split(fromSrc).join(toSrc));
  }
  const links = await execa('find', [obj, '-type', 'l', '-lname', `${fromSrc}*`, '-print0'], { timeout: 600_000 });
  for (const l of links.stdout.split('\0').filter(Boolean)) {
    const target = await readlink(l);
    await rm(l);
    await symlink(toSrc + target.slice(fromSrc.length), l);
  }
  return files.length;
}

/**
 * kbuild links obj/vmlinux-gdb.py and obj/scripts/gdb/linux/*.py to the
 * source tree; the work dir's src/ holds another series after the next build
 * of this config, so the entry keeps copies and its gdb helpers stay its own.
 */
export async function materializeGdbScripts(obj: string): Promise<number> {
  const links = [path.join(obj, 'vmlinux-gdb.py')];
  const dir = path.join(obj, 'scripts/gdb/linux');
  if (existsSync(dir)) links.push(...(await readdir(dir)).map((f) => path.join(dir, f)));
  let n = 0;
  for (const l of links) {
    const st = await lstat(l).catch(() => undefined);
    if (!st?.isSymbolicLink()) continue;
    const data = await readFile(l);
    await rm(l);
    await writeFile(l, data);
    n++;
  }
  return n;
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
  // Ended with hwlab: make must not go on writing into obj/ once the tree lock is free for the next run.
  // SIGTERM, not SIGKILL: make then ends its sub-makes and compilers and deletes the targets it was
  // writing, so neither a compiler outlives hwlab nor a half-written object is left in the work dir
  // for the next build of this config to take as up to date (a SIGKILLed make left cc1 running).
  const child = execa(...boundToHwlab('make', ['-C', src, `O=${obj}`, 'ARCH=x86_64', `-j${req.jobs ?? os.cpus().length}`, ...(useCcache ? ['CC=ccache gcc'] : []), ...args], 'TERM'), {
    reject: false,
    all: true,
    env: { ...REPRODUCIBLE_ENV, ...CCACHE_ENV, CCACHE_BASEDIR: path.dirname(src) },
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
  const work = workDir(tree, kernel.configSha256);
  await mkdir(work, { recursive: true });
  await withLock(lockFile(work), `the build directory ${work}`, 4 * 3600_000,
    () => rm(kernel.cacheDir, { recursive: true, force: true }), waitingFor(step));
}

export async function buildKernel(req: KernelBuildRequest): Promise<SourceKernel> {
  // A cache hit needs neither src/ nor obj/: no waiting for another build of the same tree.
  const hit = await cachedBuild(req);
  if (hit) return hit;
  const configText = await finalConfig(req);
  const work = workDir(req.tree, sha256(configText));
  await mkdir(work, { recursive: true });
  // One build per (tree, config) at a time: such builds share src/ and obj/.
  return withLock(lockFile(work), `the build directory ${work}`, 4 * 3600_000, () => buildKernelLocked(req, work, configText), waitingFor(req.step));
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

/** A .config's values, without the header comment (which names ARCH and the tool versions). */
function configValues(text: string): string {
  return text.split('\n').filter((l) => l && !l.startsWith('# ') || / is not set$/.test(l)).join('\n');
}

async function buildKernelLocked(req: KernelBuildRequest, work: string, configText: string): Promise<SourceKernel> {
  const src = path.join(work, 'src');
  const obj = path.join(work, 'obj');
  await mkdir(work, { recursive: true });
  const patchesInfo = req.patches.map((p) => ({ name: p.name, sha256: p.sha256, origin: p.origin }));
  const compiler = await compilerId();
  const configSha = sha256(configText);
  const key = buildKey(req, configSha, compiler);

  let built = false;
  let buildSeconds: number | undefined;
  let incrementalFrom: string | undefined;
  let plan: RebuildPlan | undefined;
  const mode = rebuildMode(req);
  const { dir } = await ensureEntry('kernel-build', key, `${req.tree.label} + ${req.patches.length} patches`, async (tmp) => {
    const nearest = await nearestEntry(req.tree.id, configSha, touchedFiles(req.patches));
    // The work dir is this config's: objects left in it are an interrupted or
    // failed build of this config, a better base than another config's entry.
    const lastTouchedFile = path.join(work, 'obj-touched.json');
    const reuseWork = nearest?.manifest.configSha !== configSha && existsSync(path.join(obj, 'Makefile'));
    let near = reuseWork ? null : nearest;
    let baseNote = '';
    // Files patched by whatever last built in obj/ (an earlier entry, or an interrupted build).
    const lastTouched: string[] = near ? near.manifest.touched
      : reuseWork && existsSync(lastTouchedFile) ? JSON.parse(await readFile(lastTouchedFile, 'utf8')) : [];
    await preparePatchedTree(req, src, lastTouched);
    if (near) {
      req.step.update(`copying objects of ${path.basename(near.dir)}`);
      await rm(obj, { recursive: true, force: true });
      const copied = await execa('cp', ['-a', path.join(near.dir, 'obj'), obj], { reject: false });
      if (copied.exitCode === 0) {
        // Built in another work dir (another config, or before per-config work dirs): its records name that src/.
        const from = recordedSrcDir(near.manifest);
        if (from !== src) await relocateObjects(obj, from, src);
        incrementalFrom = path.basename(near.dir);
      } else {
        // Pruned or removed while copying (another config's entry is not under this lock): build from nothing.
        baseNote = `hwlab: copying ${near.dir} failed (${copied.stderr.trim().split('\n')[0]}); building without a base\n`;
        near = null;
        await rm(obj, { recursive: true, force: true });
        await mkdir(obj, { recursive: true });
      }
    } else if (reuseWork) {
      incrementalFrom = 'the objects of an unfinished build';
    } else {
      await rm(obj, { recursive: true, force: true });
      await mkdir(obj, { recursive: true });
    }
    const changed = [...new Set([...lastTouched, ...touchedFiles(req.patches)])];
    await writeFile(lastTouchedFile, JSON.stringify(changed));
    // Same config as the entry the objects came from: only what changed compiles, no useful total.
    const expected = near && near.manifest.configSha === configSha ? undefined : near ? await objectCount(path.join(near.dir, 'obj')) : undefined;
    const start = Date.now();
    plan = !near ? { kind: 'whole-tree', reason: reuseWork ? 'continuing an unfinished build' : 'no earlier build of this tree' }
      : mode === 'whole-tree' ? { kind: 'whole-tree', reason: 'whole-tree asked for (HWLAB_KERNEL_REBUILD or the request)' }
      : near.manifest.configSha !== configSha ? { kind: 'whole-tree', reason: `the base build ${path.basename(near.dir)} has another config` }
      : await planRebuild({ objDir: obj, srcDir: src, changed });
    // A targeted rebuild starts from objects built with this very config, and its
    // changes are all .c, .h or .S files (planRebuild), so olddefconfig has nothing
    // to do; rewriting .config would also make the next make rerun syncconfig.
    // Together 7 s of a one-file change on a 2-core host; skipped when the .config
    // the objects came with has the same values.
    const keepConfig = plan.kind === 'modules' && configValues(await readFile(path.join(obj, '.config'), 'utf8').catch(() => '')) === configValues(configText);
    if (!keepConfig) await writeFile(path.join(obj, '.config'), configText);
    // Written as make runs, so tail -f of the run folder's kernel-build.log follows the build.
    const logStream = createWriteStream(req.logFile);
    const log = (s: string) => { logStream.write(s); };
    log(`${baseNote}hwlab: ${describePlan(plan)}\n`);
    try {
      if (keepConfig) log('hwlab: .config is the base build\'s, with the same values: no olddefconfig\n');
      else {
        await runMake(['olddefconfig'], req, src, obj, log);
        const after = await readFile(path.join(obj, '.config'), 'utf8');
        if (configValues(after) !== configValues(configText)) {
          throw new InfraError('olddefconfig changed the verified config in the build tree; the source tree and the config cache disagree');
        }
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
      // The kernel's gdb helpers (lx-dmesg, lx-symbols) are built only by `all`, not by bzImage or modules.
      if (/^CONFIG_GDB_SCRIPTS=y$/m.test(configText)) await runMake(['scripts_gdb'], req, src, obj, log);
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
    await materializeGdbScripts(obj);
    // Keep the objects for the next incremental build and for M= module builds.
    await rename(obj, path.join(tmp, 'obj'));
    const manifest: BuildManifest = {
      treeId: req.tree.id, srcDir: src, patches: patchesInfo, touched: touchedFiles(req.patches), configSha, compiler, release,
      buildSeconds, finishedAt: new Date().toISOString(),
    };
    await writeFile(path.join(tmp, 'build.json'), JSON.stringify(manifest, null, 2));
    await writeFile(path.join(tmp, 'kernel.json'), JSON.stringify({ package: req.tree.label, version: req.tree.version, release }, null, 2));
  });
  return builtFromEntry(req, dir, key, configSha, built, buildSeconds, incrementalFrom, plan);
}
