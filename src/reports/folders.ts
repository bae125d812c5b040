// Reading run folders back: the one way every summary is made, whether the
// folders were written a second ago by this machine (a run, a matrix) or
// downloaded from a CI engine's artifacts (a merge). A folder is a run when
// it holds results.json; lab.resolved.json gives the probes' devices and the
// probes a run never reached, cell.json the matrix cell it was.
import { existsSync } from 'node:fs';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { RunResults } from '../results/report.ts';
import { InputError } from '../util/errors.ts';
import { probeRows, type CellMeta, type CellRecord, type PlannedProbes } from './summary.ts';

async function readJson<T>(file: string): Promise<T | undefined> {
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch (err) {
    throw new InputError(`${file}: not readable JSON (${(err as Error).message})`);
  }
}

/** The cell a run folder holds; undefined when it has no results.json. */
export async function readRunFolder(dir: string): Promise<CellRecord | undefined> {
  const results = await readJson<RunResults>(path.join(dir, 'results.json'));
  if (!results) return undefined;
  if (typeof results !== 'object' || !results.outcome || !Array.isArray(results.probes)) {
    throw new InputError(`${path.join(dir, 'results.json')}: not an hwlab results.json (no outcome or probes)`);
  }
  const lab = await readJson<PlannedProbes>(path.join(dir, 'lab.resolved.json'));
  const meta = await readJson<CellMeta>(path.join(dir, 'cell.json'));
  return { id: meta?.id ?? results.lab, dir: path.resolve(dir), ...(meta ? { meta } : {}), results, probes: probeRows(results, lab) };
}

/**
 * Every run folder under the roots, in path order. A run folder is not
 * searched further (its own subfolders are not runs); depth is bounded so a
 * wrong root (/) fails fast instead of walking the disk.
 */
export async function findRunFolders(roots: readonly string[], maxDepth = 6): Promise<string[]> {
  const out: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    if (existsSync(path.join(dir, 'results.json'))) {
      out.push(path.resolve(dir));
      return;
    }
    if (depth >= maxDepth) return;
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.isDirectory() && e.name !== 'node_modules' && !e.name.startsWith('.')) await walk(path.join(dir, e.name), depth + 1);
    }
  };
  for (const r of roots) {
    const s = await stat(r).catch(() => undefined);
    if (!s?.isDirectory()) throw new InputError(`${r}: not a directory`);
    await walk(r, 0);
  }
  return out;
}
