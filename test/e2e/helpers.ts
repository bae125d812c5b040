// End-to-end helpers: run the real CLI as a user would and read what it wrote.
import { execa, type ResultPromise } from 'execa';
import { readdir, readFile, rm } from 'node:fs/promises';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunResults } from '../../src/results/report.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export function hwlab(args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): ResultPromise<{ reject: false; all: true }> {
  return execa('node', [path.join(repoRoot, 'src/cli/hwlab.js'), ...args], {
    cwd: repoRoot,
    reject: false,
    all: true,
    timeout: opts.timeoutMs ?? 45 * 60_000,
    env: { ...process.env, CI: 'true', ...opts.env },
  }) as ResultPromise<{ reject: false; all: true }>;
}

const created: string[] = [];

export function runsDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hwlab-e2e-runs-'));
  created.push(dir);
  return dir;
}

/** Removes the run folders this test file made; kept when HWLAB_KEEP_RUNS=1 (to debug a failure). */
export async function removeRunsDirs(): Promise<void> {
  if (process.env.HWLAB_KEEP_RUNS === '1') return;
  await Promise.all(created.map((d) => rm(d, { recursive: true, force: true })));
}

/** The single run folder a `hwlab run --runs-dir dir` created, and its results. */
export async function readRun(dir: string): Promise<{ runDir: string; results: RunResults }> {
  const entries = await readdir(dir);
  if (entries.length !== 1) throw new Error(`expected one run folder in ${dir}, found ${entries.join(', ') || 'none'}`);
  const runDir = path.join(dir, entries[0]);
  const results = JSON.parse(await readFile(path.join(runDir, 'results.json'), 'utf8')) as RunResults;
  return { runDir, results };
}

/** QEMU processes whose command line mentions `needle` (a run's files are unique to it). */
export async function qemuProcessesMentioning(needle: string): Promise<string[]> {
  const r = await execa('pgrep', ['-a', '-f', 'qemu-system-x86_64'], { reject: false });
  return r.stdout.split('\n').filter((l) => l.includes(needle));
}
