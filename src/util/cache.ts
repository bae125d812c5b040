// Content-addressed cache entries under one root. An entry is a directory
// that is visible only once complete: it is built in a temp directory beside
// it and renamed into place, so an interrupted or failed build never leaves
// an entry a later run would trust. The manifest lists the entry's files with
// their size and sha256, and an entry is checked against it when a run uses
// it: a truncated kernel, a flipped byte in a module or a deleted file makes
// the entry corrupt, and it is removed and built again instead of booted.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, rmSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, utimes, writeFile, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { InfraError, isDiskFull } from './errors.ts';

export function cacheRoot(): string {
  if (process.env.HWLAB_CACHE) return path.resolve(process.env.HWLAB_CACHE);
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'hwlab');
}

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Stable JSON (sorted keys) so equal inputs always give equal keys. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b)))
      : v,
  );
}

export function cacheKey(parts: unknown): string {
  return sha256(stableJson(parts)).slice(0, 20);
}

export interface CacheEntryInfo {
  kind: string;
  key: string;
  dir: string;
  createdAt: string;
  label: string;
  bytes?: number;
  /** When a run last used the entry (the manifest's mtime, touched on every hit). */
  lastUsed?: string;
  /** Every checked file (relative path) with its size and sha256, as built; absent in entries of older hwlab versions. */
  files?: Record<string, { size: number; sha256: string | null }>;
}

/**
 * Top-level directories of an entry that are not checked on use: a kernel
 * build's objects (obj/, only an input to later incremental builds, and tens
 * of thousands of files) and an unpacked source tree (tree/). What a boot
 * reads (kernel image, modules, disks, initramfs) is always checked.
 */
const UNCHECKED_DIRS = new Set(['obj', 'tree']);

/**
 * Files bigger than this are checked by size only: hashing the guest image's
 * 800 MB root disk took 7 s of every run here (2.5 s of CPU, loaded host).
 * What a boot reads from a kernel entry (kernel, modules, initramfs) is far
 * smaller and always hashed.
 */
export const HASHED_MAX_BYTES = 64 << 20;

const MANIFEST = 'hwlab-entry.json';

export function entryDir(kind: string, key: string): string {
  return path.join(cacheRoot(), kind, key);
}

export function isComplete(dir: string): boolean {
  return existsSync(path.join(dir, MANIFEST));
}

async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Regular files under dir (relative paths), but the UNCHECKED_DIRS at the top and the manifest. */
async function checkedFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const d of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${d.name}` : d.name;
    if (!rel && (d.name === MANIFEST || UNCHECKED_DIRS.has(d.name))) continue;
    if (d.isDirectory()) out.push(...await checkedFiles(dir, r));
    else if (d.isFile()) out.push(r);
  }
  return out.sort();
}

/** Size and sha256 of every checked file of a finished build directory. */
export async function contentList(dir: string): Promise<NonNullable<CacheEntryInfo['files']>> {
  const out: NonNullable<CacheEntryInfo['files']> = {};
  for (const f of await checkedFiles(dir)) {
    const size = (await stat(path.join(dir, f))).size;
    out[f] = { size, sha256: size > HASHED_MAX_BYTES ? null : await fileSha256(path.join(dir, f)) };
  }
  return out;
}

/** Entries already checked by this process: a matrix run uses one kernel for many cells. */
const verified = new Set<string>();
/** For tests that damage an entry this process has checked already. */
export function resetVerified(): void {
  verified.clear();
}

/**
 * Whether a complete entry still holds what its manifest lists: each file
 * present with its size and sha256, and no file missing. The first problem,
 * or null when it is intact (or from an hwlab that listed no files).
 */
export async function entryProblem(dir: string): Promise<string | null> {
  if (verified.has(dir)) return null;
  let info: CacheEntryInfo;
  try {
    info = JSON.parse(await readFile(path.join(dir, MANIFEST), 'utf8')) as CacheEntryInfo;
  } catch (err) {
    return `unreadable manifest (${(err as Error).message})`;
  }
  if (!info.files) return null;
  for (const [f, want] of Object.entries(info.files)) {
    const st = await stat(path.join(dir, f)).catch(() => null);
    if (!st) return `${f} is missing`;
    if (st.size !== want.size) return `${f} is ${st.size} bytes, ${want.size} when built`;
    if (want.sha256 !== null && await fileSha256(path.join(dir, f)) !== want.sha256) return `${f} does not have the sha256 it had when built`;
  }
  verified.add(dir);
  return null;
}

/**
 * Checks a complete entry before use. A corrupt one is moved aside (so no
 * other run picks it up meanwhile) and removed; the caller builds it again.
 * `onCorrupt` hears what was wrong. True when the entry can be used.
 */
export async function usableEntry(dir: string, onCorrupt?: (problem: string) => void): Promise<boolean> {
  if (!isComplete(dir)) return false;
  const problem = await entryProblem(dir);
  if (!problem) return true;
  onCorrupt?.(`cache entry ${dir} is corrupt (${problem}); removed, building it again`);
  const aside = path.join(path.dirname(dir), `.corrupt-${path.basename(dir)}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await rename(dir, aside).catch(() => {});
  await rm(aside, { recursive: true, force: true });
  return false;
}

/** Who is told about corrupt entries (the CLI's progress); stderr by default. */
let corruptListener: (message: string) => void = (m) => process.stderr.write(`hwlab: ${m}\n`);
export function onCorruptEntry(fn: (message: string) => void): void {
  corruptListener = fn;
}

/**
 * Returns the entry for (kind, key), building it with `build(tmpDir)` first
 * when absent. `build` writes into tmpDir only.
 */
export async function ensureEntry(
  kind: string,
  key: string,
  label: string,
  build: (tmpDir: string) => Promise<void>,
): Promise<{ dir: string; hit: boolean }> {
  const dir = entryDir(kind, key);
  if (await usableEntry(dir, corruptListener)) {
    await markUsed(dir);
    return { dir, hit: true };
  }
  const parent = path.dirname(dir);
  await mkdir(parent, { recursive: true });
  const tmp = path.join(parent, `.tmp-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  const cleanup = () => rm(tmp, { recursive: true, force: true }).catch(() => {});
  const onExit = () => {
    // Synchronous best effort on hard exit paths: a stale .tmp-* is also swept by `cache prune`.
    try { rmSync(tmp, { recursive: true, force: true }); } catch { /* nothing */ }
  };
  process.once('exit', onExit);
  try {
    await build(tmp);
    const info: CacheEntryInfo = { kind, key, dir, createdAt: new Date().toISOString(), label, files: await contentList(tmp) };
    await writeFile(path.join(tmp, MANIFEST), JSON.stringify(info, null, 2));
    // A half-built leftover from a crashed run (no manifest) is not an entry: replace it.
    if (existsSync(dir) && !isComplete(dir)) await rm(dir, { recursive: true, force: true });
    try {
      await rename(tmp, dir);
    } catch (err) {
      // Another run finished the same entry first: keep theirs.
      if (isComplete(dir)) await cleanup();
      else throw err;
    }
    return { dir, hit: false };
  } catch (err) {
    await cleanup();
    throw diskFull(err, kind, label, parent) ?? err;
  } finally {
    process.removeListener('exit', onExit);
  }
}

/**
 * A build that ran out of space (ENOSPC from Node, or "No space left on
 * device" in a tool's output), whatever step hit it, as one infra error that
 * says so and where; undefined for any other error.
 */
function diskFull(err: unknown, kind: string, label: string, parent: string): InfraError | undefined {
  if (err instanceof InfraError && err.code === 'disk-full') return undefined;
  const e = err as { code?: unknown; message?: unknown; stderr?: unknown; all?: unknown } | null;
  if (!e || (e.code !== 'ENOSPC' && !isDiskFull([e.message, e.stderr, e.all].map((x) => (typeof x === 'string' ? x : '')).join('\n')))) return undefined;
  const first = String(e.message ?? '').split('\n')[0];
  return new InfraError(
    `building the ${kind} cache entry (${label}) in ${parent}: the disk is full (${first}); the unfinished entry was removed`,
    'free space there, e.g. hwlab cache prune --max-size 20G, or point HWLAB_CACHE at a bigger disk', 'disk-full',
  );
}

/** Records a use of an entry for `cache prune --max-size` (least recently used go first). */
export async function markUsed(dir: string): Promise<void> {
  const now = new Date();
  await utimes(path.join(dir, MANIFEST), now, now).catch(() => {});
}

export async function listEntries(): Promise<CacheEntryInfo[]> {
  const root = cacheRoot();
  const out: CacheEntryInfo[] = [];
  if (!existsSync(root)) return out;
  for (const kind of await readdir(root)) {
    const kdir = path.join(root, kind);
    if (!(await stat(kdir)).isDirectory()) continue;
    for (const key of await readdir(kdir)) {
      const dir = path.join(kdir, key);
      if (!isComplete(dir)) continue;
      try {
        const info = JSON.parse(await readFile(path.join(dir, MANIFEST), 'utf8')) as CacheEntryInfo;
        info.lastUsed = (await stat(path.join(dir, MANIFEST))).mtime.toISOString();
        out.push(info);
      } catch { /* unreadable manifest: not listed */ }
    }
  }
  return out;
}
