// Content-addressed cache entries under one root. An entry is a directory
// that is visible only once complete: it is built in a temp directory beside
// it and renamed into place, so an interrupted or failed build never leaves
// an entry a later run would trust.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, utimes, writeFile, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

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
}

const MANIFEST = 'hwlab-entry.json';

export function entryDir(kind: string, key: string): string {
  return path.join(cacheRoot(), kind, key);
}

export function isComplete(dir: string): boolean {
  return existsSync(path.join(dir, MANIFEST));
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
  if (isComplete(dir)) {
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
    const info: CacheEntryInfo = { kind, key, dir, createdAt: new Date().toISOString(), label };
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
    throw err;
  } finally {
    process.removeListener('exit', onExit);
  }
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
