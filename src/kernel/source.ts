// Kernel source trees to build from: Debian's linux-source package, a local
// git tree, or a tarball. Each resolves to a pristine tree in hwlab's cache
// (kind 'kernel-src'), keyed by exact content identity. The user's own files
// are only ever read: a git tree is exported with `git archive` (which, unlike
// `git worktree add`, writes nothing into the user's .git) and builds use O=.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { cacheKey, ensureEntry } from '../util/cache.ts';

import type { Step } from '../util/progress.ts';
import { aptDir, aptDownload, aptOptions, aptUpdate, RESOLVE_TTL_MS } from './debian.ts';
import { InfraError, InputError } from '../util/errors.ts';

export type KernelSourceSpec =
  | { kind: 'debian-source'; package: string /* linux-source-7.2 */; suite: string; mirror: string }
  | { kind: 'git'; path: string; ref?: string }
  | { kind: 'tarball'; path: string };

export interface KernelTree {
  /** Pristine tree; never written to. */
  dir: string;
  /** Identity for cache keys: debian:<pkg>=<version>, git:<commit sha>, tar:<sha256>. */
  id: string;
  /** `make kernelversion` of the tree, e.g. 7.2.13. */
  version: string;
  /** Human description for results: e.g. "linux-source-7.2 7.2.13-1". */
  label: string;
}

const KIND = 'kernel-src';
/** Stored beside the tree in each entry, so a cache hit needs no re-reading of the tree. */
const META = 'source.json';

interface TreeMeta {
  id: string;
  version: string;
}

export async function resolveKernelTree(spec: KernelSourceSpec, step: Step): Promise<KernelTree> {
  switch (spec.kind) {
    case 'debian-source':
      return debianSourceTree(spec, step);
    case 'git':
      return gitTree(spec, step);
    case 'tarball':
      return tarballTree(spec, step);
  }
}

/**
 * `make kernelversion` without make: the top Makefile's VERSION, PATCHLEVEL,
 * SUBLEVEL and EXTRAVERSION, joined the way the Makefile's KERNELVERSION does.
 */
export async function kernelVersionOf(tree: string): Promise<string> {
  const mk = path.join(tree, 'Makefile');
  let text: string;
  try {
    text = await readFile(mk, 'utf8');
  } catch {
    throw new InputError(`${tree} is not a kernel tree: it has no top-level Makefile`);
  }
  const v = (name: string) => text.match(new RegExp(`^${name}[ \\t]*=[ \\t]*(.*?)[ \\t]*$`, 'm'))?.[1];
  const [version, patchlevel, sublevel, extra] = [v('VERSION'), v('PATCHLEVEL'), v('SUBLEVEL'), v('EXTRAVERSION')];
  if (!version || !/^\d+$/.test(version)) throw new InputError(`${mk}: no numeric VERSION = line; not a kernel tree?`);
  let out = version;
  if (patchlevel) {
    out += `.${patchlevel}`;
    if (sublevel) out += `.${sublevel}`;
  }
  return out + (extra ?? '');
}

// ---------------------------------------------------------------------------
// Extraction

type Compression = '-J' | '-z' | '-j' | '--zstd' | undefined;

/** GNU tar detects compression only for seekable files, not on stdin: sniff the magic ourselves. */
async function sniffCompression(file: string): Promise<Compression> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await fh.read(buf, 0, 512, 0);
    const b = buf.subarray(0, bytesRead);
    if (b.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return '-J';
    if (b[0] === 0x1f && b[1] === 0x8b) return '-z';
    if (b.subarray(0, 3).toString('latin1') === 'BZh') return '-j';
    if (b.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))) return '--zstd';
    if (bytesRead >= 262 && b.subarray(257, 262).toString('latin1') === 'ustar') return undefined;
    throw new InputError(`${file}: not a tar archive (plain, gzip, xz, bzip2 or zstd)`);
  } finally {
    await fh.close();
  }
}

/** Streams `source` into `tar -x` in dest, calling onBytes with the running byte count. */
// `dest` must exist. No await may come before the pipeline is attached: a
// child's stdout left unconsumed for a tick can be drained by execa (a flaky
// "does not look like a tar archive" with small git archives).
async function untarStream(source: Readable, compression: Compression, dest: string, onBytes: (n: number) => void, what: string): Promise<void> {
  // --no-same-owner: running as root must not recreate the archive's owners. GNU tar already refuses
  // member names with '..' and strips a leading '/', so an archive cannot write outside dest.
  const tar = execa('tar', ['-x', ...(compression ? [compression] : []), '-f', '-', '-C', dest, '--no-same-owner'], {
    stdin: 'pipe',
    reject: false,
    timeout: 1_800_000,
  });
  let n = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      n += chunk.length;
      onBytes(n);
      cb(null, chunk);
    },
  });
  let sourceError: Error | undefined;
  source.once('error', (e) => { sourceError = e; });
  const [, res] = await Promise.allSettled([pipeline(source, counter, tar.stdin!), tar]);
  if (sourceError) throw new InfraError(`reading ${what} failed: ${sourceError.message}`);
  if (res.status === 'rejected') throw res.reason;
  if (res.value.exitCode !== 0) {
    throw new InfraError(`extracting ${what} failed: ${res.value.stderr.trim() || `tar exited ${res.value.exitCode}`}`);
  }
  // tar succeeded: a write error on its stdin (EPIPE, premature close) only means it stopped
  // at the end-of-archive marker before the archive's zero padding was all sent.
}

/** Extracts an archive file with a percentage on the step (the kernel's tar.xz takes ~12 s). */
async function untarFile(file: string, dest: string, step: Step, what: string): Promise<void> {
  const compression = await sniffCompression(file);
  const total = (await stat(file)).size;
  let last = 0;
  await mkdir(dest, { recursive: true });
  await untarStream(createReadStream(file), compression, dest, (n) => {
    const now = Date.now();
    if (now - last < 250 && n < total) return;
    last = now;
    step.update(`extracting ${what} ${Math.floor((100 * n) / total)}%`);
  }, what);
}

/** The tree inside an extracted archive: its single top-level directory, or the root itself if that has the Makefile. */
async function findTreeRoot(extracted: string, what: string): Promise<string> {
  const entries = await readdir(extracted, { withFileTypes: true });
  if (entries.length === 1 && entries[0].isDirectory()) return path.join(extracted, entries[0].name);
  if (existsSync(path.join(extracted, 'Makefile'))) return extracted;
  const names = entries.slice(0, 8).map((e) => e.name).join(', ');
  throw new InputError(
    `${what}: expected one top-level directory holding the kernel tree, found ${entries.length} entries (${names}${entries.length > 8 ? ', ...' : ''})`,
  );
}

/** Moves the found tree to <tmp>/tree and records its identity next to it. */
async function finishEntry(tmp: string, treeRoot: string, id: string): Promise<void> {
  const version = await kernelVersionOf(treeRoot);
  if (treeRoot !== path.join(tmp, 'tree')) await rename(treeRoot, path.join(tmp, 'tree'));
  const meta: TreeMeta = { id, version };
  await writeFile(path.join(tmp, META), JSON.stringify(meta, null, 2));
}

async function readMeta(dir: string): Promise<TreeMeta> {
  return JSON.parse(await readFile(path.join(dir, META), 'utf8')) as TreeMeta;
}

// ---------------------------------------------------------------------------
// Debian linux-source-X.Y

interface ResolvedSource {
  package: string;
  version: string;
  resolvedAt: string;
}

async function resolveDebianSource(spec: Extract<KernelSourceSpec, { kind: 'debian-source' }>, step: Step): Promise<ResolvedSource> {
  // Debian package names: lower-case alphanumerics and + - . ; also keeps the name from reading as an option.
  if (!/^[a-z0-9][a-z0-9+.-]+$/.test(spec.package)) throw new InputError(`kernel.debian: "${spec.package}" is not a Debian package name`);
  const dir = aptDir(spec);
  const memo = path.join(dir, `resolved-source-${spec.package}.json`);
  if (existsSync(memo)) {
    const m = JSON.parse(await readFile(memo, 'utf8')) as ResolvedSource;
    if (Date.now() - Date.parse(m.resolvedAt) < RESOLVE_TTL_MS) return m;
  }
  step.update(`apt-get update (${spec.suite})`);
  await aptUpdate(spec, dir, step);
  // With an empty dpkg status, the candidate apt-cache shows is the newest version in the suite.
  const show = await execa('apt-cache', [...aptOptions(dir), 'show', '--no-all-versions', spec.package], { reject: false, timeout: 60_000 });
  const version = show.stdout.match(/^Version: (\S+)/m)?.[1];
  if (show.exitCode !== 0 || !version) {
    throw new InputError(
      `kernel.debian: no package ${spec.package} in ${spec.suite} at ${spec.mirror}${show.stderr.trim() ? `: ${show.stderr.trim()}` : ''}`,
    );
  }
  const res: ResolvedSource = { package: spec.package, version, resolvedAt: new Date().toISOString() };
  await writeFile(memo, JSON.stringify(res, null, 2));
  return res;
}

async function debianSourceTree(spec: Extract<KernelSourceSpec, { kind: 'debian-source' }>, step: Step): Promise<KernelTree> {
  step.update(`resolving ${spec.package}`);
  const res = await resolveDebianSource(spec, step);
  const id = `debian:${res.package}=${res.version}`;
  const label = `${res.package} ${res.version}`;
  // The same package version is the same bytes on every mirror: the key leaves the mirror out.
  const key = cacheKey({ v: 1, kind: 'debian-source', package: res.package, version: res.version });
  const { dir } = await ensureEntry(KIND, key, label, async (tmp) => {
    const apt = aptDir(spec);
    const debs = path.join(tmp, 'debs');
    await mkdir(debs);
    await aptDownload(apt, [`${res.package}=${res.version}`], debs, step, 1_800_000);
    const [deb] = (await readdir(debs)).filter((f) => f.endsWith('.deb'));
    if (!deb) throw new InfraError(`apt-get download ${res.package}=${res.version} produced no .deb`);
    await unpackSourceDeb(path.join(debs, deb), tmp, id, step);
    await rm(debs, { recursive: true, force: true });
  });
  const meta = await readMeta(dir);
  return { dir: path.join(dir, 'tree'), id: meta.id, version: meta.version, label };
}

/** linux-source-X.Y.deb -> usr/src/linux-source-X.Y.tar.xz -> <tmp>/tree. Exported for tests with a local .deb. */
export async function unpackSourceDeb(deb: string, tmp: string, id: string, step: Step): Promise<void> {
  const root = path.join(tmp, 'deb-root');
  step.update(`unpacking ${path.basename(deb)}`);
  await execa('dpkg-deb', ['-x', deb, root], { timeout: 600_000 });
  const src = path.join(root, 'usr/src');
  const tarballs = existsSync(src) ? (await readdir(src)).filter((f) => /^linux-source-.*\.tar\.(xz|gz|bz2|zst)$/.test(f)) : [];
  if (tarballs.length !== 1) {
    throw new InfraError(`${path.basename(deb)}: expected one usr/src/linux-source-*.tar.* in the package, found ${tarballs.length}`);
  }
  const x = path.join(tmp, 'x');
  await untarFile(path.join(src, tarballs[0]), x, step, tarballs[0]);
  await rm(root, { recursive: true, force: true });
  await finishEntry(tmp, await findTreeRoot(x, tarballs[0]), id);
  await rm(x, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------
// Local git tree

async function git(repo: string, args: string[], what: string): Promise<string> {
  const r = await execa('git', ['-C', repo, ...args], { reject: false, timeout: 120_000, env: { LC_ALL: 'C' } });
  if (r.exitCode !== 0) throw new InfraError(`kernel.path ${repo}: ${what} failed: ${r.stderr.trim() || `git exited ${r.exitCode}`}`);
  return r.stdout.trim();
}

async function gitTree(spec: Extract<KernelSourceSpec, { kind: 'git' }>, step: Step): Promise<KernelTree> {
  const repo = path.resolve(spec.path);
  if (!(await stat(repo).catch(() => undefined))?.isDirectory()) throw new InputError(`kernel.path ${repo} is not a directory`);
  const inside = await execa('git', ['-C', repo, 'rev-parse', '--is-bare-repository'], { reject: false, env: { LC_ALL: 'C' } });
  if (inside.exitCode !== 0) throw new InputError(`kernel.path ${repo} is not inside a git repository`, 'use `tarball:` for a plain source tree');
  const bare = inside.stdout.trim() === 'true';
  // A tree in a subdirectory of a larger repository: export only that subdirectory.
  const prefix = bare ? '' : (await git(repo, ['rev-parse', '--show-prefix'], 'rev-parse --show-prefix')).replace(/\/$/, '');
  const ref = spec.ref ?? 'HEAD';
  step.update(`resolving ${ref}`);
  const sha = await execa('git', ['-C', repo, 'rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`], {
    reject: false,
    env: { LC_ALL: 'C' },
  });
  if (sha.exitCode !== 0 || !/^[0-9a-f]{40,64}$/.test(sha.stdout.trim())) {
    throw new InputError(`kernel.ref "${ref}" does not name a commit in ${repo}`);
  }
  const commit = sha.stdout.trim();
  if (spec.ref === undefined && !bare) {
    // Exporting HEAD would silently drop uncommitted edits the user means to test.
    // --no-optional-locks: status must not even refresh the user's index.
    const st = await git(repo, ['--no-optional-locks', 'status', '--porcelain', '--', '.'], 'git status');
    if (st) {
      const lines = st.split('\n');
      throw new InputError(
        `kernel.path ${repo} has uncommitted changes; hwlab builds committed trees only:\n${lines.slice(0, 10).map((l) => `  ${l}`).join('\n')}${lines.length > 10 ? `\n  ... and ${lines.length - 10} more` : ''}`,
        'commit or stash them, or set kernel.ref to build a given commit regardless of the working tree',
      );
    }
  }
  const id = prefix ? `git:${commit}:${prefix}` : `git:${commit}`;
  const subject = await git(repo, ['log', '-1', '--format=%s', commit], 'git log');
  const label = `git ${repo}${spec.ref ? ` ${spec.ref}` : ''} @ ${commit.slice(0, 12)} (${subject})`;
  const key = cacheKey({ v: 1, kind: 'git', commit, prefix });
  const { dir } = await ensureEntry(KIND, key, label, async (tmp) => {
    const out = path.join(tmp, 'tree');
    await mkdir(out, { recursive: true });
    // git archive reads objects only: nothing is written to the user's .git, index or working tree.
    const archive = execa('git', ['-C', repo, 'archive', '--format=tar', prefix ? `${commit}:${prefix}` : commit], {
      buffer: { stdout: false },
      reject: false,
      timeout: 1_800_000,
    });
    let last = 0;
    const extracted = untarStream(archive.stdout, undefined, out, (n) => {
      if (Date.now() - last < 250) return;
      last = Date.now();
      step.update(`exporting ${commit.slice(0, 12)}: ${(n / 1048576).toFixed(0)} MB`);
    }, `git archive ${commit.slice(0, 12)}`);
    const [x, a] = await Promise.allSettled([extracted, archive]);
    if (a.status === 'rejected') throw a.reason;
    // git's own error explains a truncated archive; a git killed by SIGPIPE only means tar stopped first.
    if (a.value.exitCode !== 0 && !a.value.signal) {
      throw new InfraError(`git archive ${commit} in ${repo} failed: ${String(a.value.stderr).trim() || `exit ${a.value.exitCode}`}`);
    }
    if (x.status === 'rejected') throw x.reason;
    await finishEntry(tmp, out, id);
  });
  const meta = await readMeta(dir);
  return { dir: path.join(dir, 'tree'), id: meta.id, version: meta.version, label };
}

// ---------------------------------------------------------------------------
// Tarball

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(file), h);
  return h.digest('hex');
}

async function tarballTree(spec: Extract<KernelSourceSpec, { kind: 'tarball' }>, step: Step): Promise<KernelTree> {
  const file = path.resolve(spec.path);
  if (!(await stat(file).catch(() => undefined))?.isFile()) throw new InputError(`kernel.tarball ${file} is not a file`);
  step.update(`hashing ${path.basename(file)}`);
  const hash = await sha256File(file);
  const id = `tar:${hash}`;
  const label = `tarball ${path.basename(file)} (sha256 ${hash.slice(0, 12)})`;
  const key = cacheKey({ v: 1, kind: 'tar', sha256: hash });
  const { dir } = await ensureEntry(KIND, key, label, async (tmp) => {
    const x = path.join(tmp, 'x');
    await untarFile(file, x, step, path.basename(file));
    await finishEntry(tmp, await findTreeRoot(x, file), id);
    await rm(x, { recursive: true, force: true });
  });
  const meta = await readMeta(dir);
  return { dir: path.join(dir, 'tree'), id: meta.id, version: meta.version, label };
}
