// End-to-end helpers: run the real CLI as a user would and read what it wrote.
import type { TestFn } from 'ava';
import { execa, type ResultPromise } from 'execa';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
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
let aTestFailed = false;

export function runsDir(): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'hwlab-e2e-runs-'));
  created.push(dir);
  return dir;
}

/** Records a failed test of this file (test.afterEach.always): its run folders are then kept, not removed. */
export function noteFailure(t: { passed: boolean }): void {
  if (!t.passed) aTestFailed = true;
}

/**
 * Removes the run folders this test file made, unless one of its tests
 * failed (noteFailure) or HWLAB_KEEP_RUNS=1: then they stay, and each run's
 * class, kernel report titles and console tail are printed, because on a CI
 * machine the log is all that outlives the run (a flake's console was lost
 * once when these folders were removed unconditionally).
 */
export async function removeRunsDirs(): Promise<void> {
  if (aTestFailed) {
    for (const dir of created) await describeKeptRuns(dir);
    return;
  }
  if (process.env.HWLAB_KEEP_RUNS === '1') return;
  // Retries: a hwlab a test just interrupted may still be writing its last files there.
  await Promise.all(created.map((d) => rm(d, { recursive: true, force: true, maxRetries: 5, retryDelay: 500 })));
}

/** Both hooks of a test file that makes run folders: failures noted after each test, folders removed or kept after all. */
export function cleanUpRunsDirs(test: TestFn): void {
  test.afterEach.always(noteFailure);
  test.after.always(removeRunsDirs);
}

const CONSOLE_TAIL_LINES = 60;

/** Prints, for each run folder under dir (dir itself or up to three levels down: mutants and matrix runs nest), where it is, its class and reports, and the console's last lines. */
async function describeKeptRuns(dir: string): Promise<void> {
  const folders: string[] = [];
  const walk = async (d: string, depth: number): Promise<void> => {
    const entries = await readdir(d, { withFileTypes: true }).catch(() => []);
    if (entries.some((e) => e.name === 'results.json' || e.name === 'console.log')) folders.push(d);
    if (depth < 3) for (const e of entries) if (e.isDirectory()) await walk(path.join(d, e.name), depth + 1);
  };
  await walk(dir, 0);
  const lines = [`e2e: a test failed; run folders kept under ${dir}`];
  for (const f of folders) {
    const results = await readFile(path.join(f, 'results.json'), 'utf8').then((text) => JSON.parse(text) as RunResults, () => undefined);
    const outcome = results?.outcome ? `${results.outcome.class}${results.outcome.class === 'pass' ? '' : `: ${results.outcome.title}`}` : 'no results.json';
    const reports = (results?.kernelReports ?? []).map((r) => r.title);
    lines.push(`--- ${f}: ${outcome}${reports.length ? `; kernel reports: ${reports.join(' | ')}` : ''}`);
    const consoleText = await readFile(path.join(f, 'console.log'), 'utf8').catch(() => '');
    if (consoleText) lines.push(...consoleText.trimEnd().split('\n').slice(-CONSOLE_TAIL_LINES).map((l) => `    ${l}`));
  }
  console.error(lines.join('\n'));
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

/** A unified diff (a patch for the lab) of `rel` in a pristine kernel tree against the text edit() makes of it; scratch files go under scratchDir. */
export async function treeDiff(treeDir: string, rel: string, edit: (orig: string) => string, scratchDir: string): Promise<string> {
  const orig = await readFile(path.join(treeDir, rel), 'utf8');
  const dir = await mkdtemp(path.join(scratchDir, 'diff-'));
  for (const [side, text] of [['a', orig], ['b', edit(orig)]] as const) {
    await mkdir(path.dirname(path.join(dir, side, rel)), { recursive: true });
    await writeFile(path.join(dir, side, rel), text);
  }
  const r = await execa('diff', ['-u', `a/${rel}`, `b/${rel}`], { cwd: dir, reject: false });
  if (r.exitCode !== 1) throw new Error(`diff of ${rel}: exit ${r.exitCode} ${r.stderr}`);
  return r.stdout + '\n';
}
