// `hwlab cache ls|prune`: what the content-addressed cache (src/util/cache.ts)
// holds, with sizes and last use, and removing unfinished or least recently
// used entries. With `ls --json`, stdout is the entries alone.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot, isComplete, listEntries, type CacheEntryInfo } from '../util/cache.ts';
import { InputError } from '../util/errors.ts';
import { lockHolder, processAlive } from '../util/lock.ts';
import { flag, str, type CommandGroup } from './command.ts';


/** Entries used this recently are never pruned by size: a running lab may be reading them. */
export const IN_USE_MS = 15 * 60_000;

/** "20G", "512M", "1.5T", "300000" (bytes) -> bytes. */
export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!m) throw new InputError(`--max-size: "${text}" is not a size (examples: 20G, 512M, 1T)`);
  const mult = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Math.floor(Number(m[1]) * mult);
}

export function formatSize(bytes: number): string {
  const units = ['B', 'K', 'M', 'G', 'T'];
  let n = bytes;
  let u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u++; }
  return `${n.toFixed(n < 10 && u > 0 ? 1 : 0)}${units[u]}`;
}

/** Disk use of a directory as du counts it (hard links once, sparse files by blocks). */
export async function dirBytes(dir: string): Promise<number> {
  const r = await execa('du', ['-s', '--block-size=1', dir], { timeout: 120_000 });
  return Number(r.stdout.split(/\s/)[0]);
}

/** Complete entries with their size, least recently used first. */
export async function entriesBySize(): Promise<Array<CacheEntryInfo & { bytes: number }>> {
  const entries = await listEntries();
  const sized = await Promise.all(entries.map(async (e) => ({ ...e, bytes: await dirBytes(e.dir) })));
  return sized.sort((a, b) => (a.lastUsed ?? a.createdAt).localeCompare(b.lastUsed ?? b.createdAt));
}

/**
 * The live process that owns an unfinished directory of the cache, or 0: a
 * `.tmp-<key>-<pid>-<random>` directory belongs to its PID while that process
 * lives, and a directory with a held `lock` file (a kernel tree's build work
 * dir, kbuild-work/<key>) to the lock's holder. Such a directory is a build
 * running now, not debris.
 */
export async function liveOwner(dir: string): Promise<number> {
  const m = /^\.tmp-.*-(\d+)-[0-9a-f]{8}$/.exec(path.basename(dir));
  if (m && processAlive(Number(m[1]))) return Number(m[1]);
  return lockHolder(path.join(dir, 'lock'));
}

/**
 * Removes unfinished entries (.tmp-*, entries without a manifest); with all,
 * the whole cache; with maxBytes, then the least recently used entries until
 * the complete ones fit (never one used in the last IN_USE_MS). A directory
 * a live process owns (liveOwner) is never removed, with any option:
 * `onKept` hears of each.
 */
export async function pruneCache(opts: { all: boolean; maxBytes?: number; now?: number; onKept?: (dir: string, pid: number) => void }): Promise<string[]> {
  const root = cacheRoot();
  const removed: string[] = [];
  if (!existsSync(root)) return removed;
  for (const kind of await readdir(root)) {
    const kdir = path.join(root, kind);
    // ssh: hwlab's key; kept: the state files of guests running now (src/machine/kept.ts); neither is a cache entry.
    if (!(await stat(kdir)).isDirectory() || kind === 'ssh' || kind === 'apt' || kind === 'kept') {
      if (opts.all && kind === 'apt') { await rm(kdir, { recursive: true, force: true }); removed.push(kdir); }
      continue;
    }
    for (const name of await readdir(kdir)) {
      const dir = path.join(kdir, name);
      if (opts.all || name.startsWith('.tmp-') || !isComplete(dir)) {
        const owner = await liveOwner(dir);
        if (owner) {
          opts.onKept?.(dir, owner);
          continue;
        }
        await rm(dir, { recursive: true, force: true });
        removed.push(dir);
      }
    }
  }
  if (opts.maxBytes !== undefined && !opts.all) {
    const now = opts.now ?? Date.now();
    const entries = await entriesBySize();
    let total = entries.reduce((n, e) => n + e.bytes, 0);
    for (const e of entries) {
      if (total <= opts.maxBytes) break;
      if (now - Date.parse(e.lastUsed ?? e.createdAt) < IN_USE_MS) continue;
      await rm(e.dir, { recursive: true, force: true });
      removed.push(e.dir);
      total -= e.bytes;
    }
  }
  return removed;
}

export const cacheCommands: CommandGroup = {
  name: 'cache',
  summary: 'the cache of kernels, images and builds',
  subcommands: [
    {
      name: 'cache ls',
      summary: `list cache entries with size and last use (${cacheRoot()})`,
      args: '',
      positionals: { min: 0, max: 0 },
      options: { json: { type: 'boolean', help: 'stdout: the entries as JSON only' } },
      async handler(a) {
        const entries = await entriesBySize();
        if (flag(a, 'json')) {
          process.stdout.write(`${JSON.stringify({ root: cacheRoot(), entries }, null, 2)}\n`);
          return 0;
        }
        for (const e of entries) {
          process.stdout.write(`${e.kind.padEnd(13)} ${e.key}  ${formatSize(e.bytes).padStart(6)}  used ${(e.lastUsed ?? e.createdAt).slice(0, 19)}  ${e.label}\n`);
        }
        process.stdout.write(`${entries.length} entries, ${formatSize(entries.reduce((n, e) => n + e.bytes, 0))} in ${cacheRoot()} (least recently used first)\n`);
        return 0;
      },
    },
    {
      name: 'cache prune',
      summary: 'remove unfinished entries; --all everything; --max-size then the least recently used until the cache fits',
      args: '',
      positionals: { min: 0, max: 0 },
      options: {
        all: { type: 'boolean', help: 'remove everything' },
        'max-size': { type: 'string', value: 'SIZE', help: 'e.g. 20G: remove least recently used entries (not used in the last 15 min) until the cache fits' },
      },
      async handler(a) {
        const max = str(a, 'max-size');
        if (flag(a, 'all') && max !== undefined) throw new InputError('cache prune: --all and --max-size exclude each other');
        const removed = await pruneCache({
          all: flag(a, 'all'), maxBytes: max === undefined ? undefined : parseSize(max),
          onKept: (dir, pid) => process.stdout.write(`kept ${dir}: in use by process ${pid > 0 ? pid : '(unknown)'}\n`),
        });
        for (const r of removed) process.stdout.write(`removed ${r}\n`);
        process.stdout.write(`removed ${removed.length} entries\n`);
        return 0;
      },
    },
  ],
};
