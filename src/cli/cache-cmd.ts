import { existsSync } from 'node:fs';
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot, isComplete } from '../util/cache.ts';

/** Removes unfinished entries (.tmp-*, entries without a manifest); with all, the whole cache. */
export async function pruneCache(opts: { all: boolean }): Promise<string[]> {
  const root = cacheRoot();
  const removed: string[] = [];
  if (!existsSync(root)) return removed;
  for (const kind of await readdir(root)) {
    const kdir = path.join(root, kind);
    if (!(await stat(kdir)).isDirectory() || kind === 'ssh' || kind === 'apt') {
      if (opts.all && kind === 'apt') { await rm(kdir, { recursive: true, force: true }); removed.push(kdir); }
      continue;
    }
    for (const name of await readdir(kdir)) {
      const dir = path.join(kdir, name);
      if (opts.all || name.startsWith('.tmp-') || !isComplete(dir)) {
        await rm(dir, { recursive: true, force: true });
        removed.push(dir);
      }
    }
  }
  return removed;
}
