// `hwlab bisect`: the first commit between a good and a bad ref of a kernel
// git tree that breaks a lab. `git bisect run` does the search, in a bare
// `--shared` clone inside the bisect folder, so the user's checkout, index
// and bisect state are never touched (the clone only borrows their objects).
// The oracle is the lab with only the probes that failed on the bad ref.
//
// Every step builds the good ref's tree plus `git diff good..step` as one
// patch: all steps then share one source tree, so hwlab's incremental builds
// (src/kernel/build.ts: one work directory per tree, only touched files
// recompiled) make a step cost a small rebuild rather than a cold one.
// A step exits 0 (good), 1 (bad) or 125 (skip: the tree does not build, the
// patch does not apply, or the run was infra), and is recorded in the history.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HistoryDb } from '../history/db.ts';
import { pointsOf } from '../history/points.ts';
import { recordRun } from '../history/record.ts';
import type { LabSpec } from '../lab/types.ts';
import { readRunFolder } from '../reports/folders.ts';
import type { OutcomeClass } from '../results/outcome.ts';
import { runLab } from '../run/run-lab.ts';
import { InfraError, InputError } from '../util/errors.ts';
import type { Progress } from '../util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const HWLAB_JS = path.join(repoRoot, 'src/cli/hwlab.js');
/** The whole `git bisect run`: each step has its own build and run timeouts; this bounds the total. */
const BISECT_TIMEOUT_MS = 12 * 3600_000;

/** What a step process needs, written by the parent (bisect-state.json). */
export interface BisectState {
  labFile: string;
  /** The bare clone git bisect runs in. */
  clone: string;
  good: string;
  onlyProbes: string[];
  extraPatches: string[];
  extraFragments: string[];
  historyFile: string;
  folder: string;
}

export type StepVerdict = 'good' | 'bad' | 'skip';
export const STEP_EXIT: Record<StepVerdict, number> = { good: 0, bad: 1, skip: 125 };
/** hwlab itself failed in a step: git bisect run stops on an exit code of 128 or more. */
export const STEP_ABORT = 128;

export interface StepRecord {
  n: number;
  commit: string;
  subject: string;
  runDir: string;
  outcome: { class: OutcomeClass; code: string; title: string };
  verdict: StepVerdict;
  failingPoints: string[];
}

export interface BisectResult {
  folder: string;
  lab: string;
  tree: string;
  good: string;
  bad: string;
  oracleProbes: string[];
  steps: StepRecord[];
  /** Lab runs made: the bad ref's run and every step. */
  labRuns: number;
  firstBad?: { commit: string; subject: string; runDir?: string; failingPoints: string[] };
  /** Why there is no first bad commit (skipped commits left, ...), in git's words. */
  inconclusive?: string;
}

async function git(dir: string, args: string[]): Promise<string> {
  const r = await execa('git', ['-C', dir, ...args], { reject: false, timeout: 600_000, env: { LC_ALL: 'C' } });
  if (r.exitCode !== 0) throw new InputError(`git ${args.join(' ')} in ${dir}: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
  return r.stdout.trim();
}

async function commitOf(tree: string, ref: string, flag: string): Promise<string> {
  const r = await execa('git', ['-C', tree, 'rev-parse', '--verify', '--quiet', '--end-of-options', `${ref}^{commit}`], { reject: false, env: { LC_ALL: 'C' } });
  if (r.exitCode !== 0) throw new InputError(`${flag} ${ref}: not a commit in ${tree}`);
  return r.stdout.trim();
}

/** The lab building `commit` as the good ref's tree plus the diff up to it (one source tree for every step). */
async function labAt(lab: LabSpec, s: Pick<BisectState, 'clone' | 'good' | 'folder'>, commit: string): Promise<LabSpec> {
  if (lab.kernel.kind !== 'source') throw new InputError(`${lab.file}: bisect needs a kernel built from source (kernel.debian: linux-source-..., kernel.path or a tarball), not a prebuilt one`);
  const patches = [...lab.kernel.patches];
  if (commit !== s.good) {
    const diff = await git(s.clone, ['diff', '--no-renames', '--full-index', s.good, commit]);
    if (diff) {
      const file = path.join(s.folder, 'diffs', `${s.good.slice(0, 12)}..${commit.slice(0, 12)}.patch`);
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, `${diff}\n`);
      patches.unshift({ kind: 'file', path: file });
    }
  }
  return { ...lab, kernel: { ...lab.kernel, source: { kind: 'git', path: s.clone, ref: s.good }, patches } };
}

function verdictOf(c: OutcomeClass): StepVerdict {
  return c === 'pass' ? 'good' : c === 'fail' || c === 'kernel' ? 'bad' : 'skip';
}

/** One lab run at `commit`, recorded; its step record is written beside the run. */
async function runAt(db: HistoryDb, lab: LabSpec, s: BisectState, commit: string, n: number, onlyProbes: readonly string[], progress: Progress): Promise<StepRecord> {
  const subject = await git(s.clone, ['log', '-1', '--format=%s', commit]);
  const runDir = path.join(s.folder, 'steps', `${String(n).padStart(2, '0')}-${commit.slice(0, 12)}`);
  progress.info(`bisect step ${n}: ${commit.slice(0, 12)} ${subject}`);
  await runLab(await labAt(lab, s, commit), {
    progress, runDir, extraPatches: s.extraPatches, extraFragments: s.extraFragments, ...(onlyProbes.length ? { onlyProbes } : {}),
  });
  const cell = await readRunFolder(runDir);
  if (!cell) throw new InfraError(`${runDir}: the run left no results.json`);
  recordRun(db, cell, { purpose: 'bisect' });
  const o = cell.results.outcome;
  const step: StepRecord = {
    n, commit, subject, runDir, outcome: { class: o.class, code: o.code, title: o.title }, verdict: verdictOf(o.class),
    failingPoints: pointsOf(cell).filter((p) => p.status === 'fail').map((p) => `${p.probeKey} :: ${p.point}`),
  };
  await writeFile(path.join(runDir, 'bisect-step.json'), `${JSON.stringify(step, null, 2)}\n`);
  progress.info(`bisect step ${n}: ${commit.slice(0, 12)} is ${step.verdict} (${o.class}${o.class === 'pass' ? '' : `: ${o.title}`})`);
  return step;
}

async function readSteps(folder: string): Promise<StepRecord[]> {
  const dir = path.join(folder, 'steps');
  if (!existsSync(dir)) return [];
  const out: StepRecord[] = [];
  for (const d of (await readdir(dir)).sort()) {
    const f = path.join(dir, d, 'bisect-step.json');
    if (existsSync(f)) out.push(JSON.parse(await readFile(f, 'utf8')) as StepRecord);
  }
  return out;
}

/** A step, as `git bisect run` calls it: the exit code is the verdict. */
export async function bisectStep(db: HistoryDb, lab: LabSpec, s: BisectState, progress: Progress): Promise<number> {
  const commit = await git(s.clone, ['rev-parse', 'BISECT_HEAD']);
  const n = Math.max(0, ...(await readSteps(s.folder)).map((x) => x.n)) + 1;
  try {
    return STEP_EXIT[(await runAt(db, lab, s, commit, n, s.onlyProbes, progress)).verdict];
  } catch (err) {
    // Anything that stops a step before results (a tree that cannot be exported, ...) is no verdict on the commit.
    progress.info(`bisect step ${n}: ${commit.slice(0, 12)}: skipped: ${(err as Error).message}`);
    return STEP_EXIT.skip;
  }
}

export interface BisectOptions {
  progress: Progress;
  tree: string;
  goodRef: string;
  badRef: string;
  historyFile: string;
  runsDir?: string;
  onlyProbes?: string[];
  extraPatches?: string[];
  extraFragments?: string[];
}

const stamp = () => new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');

export async function runBisect(db: HistoryDb, lab: LabSpec, opts: BisectOptions): Promise<BisectResult> {
  const { progress } = opts;
  if (lab.kernel.kind !== 'source') throw new InputError(`${lab.file}: bisect needs a kernel built from source, not the prebuilt ${lab.kernel.package}`);
  const tree = path.resolve(opts.tree);
  if ((await execa('git', ['-C', tree, 'rev-parse', '--git-dir'], { reject: false })).exitCode !== 0) throw new InputError(`--tree ${tree}: not a git repository`);
  const good = await commitOf(tree, opts.goodRef, '--good');
  const bad = await commitOf(tree, opts.badRef, '--bad');
  if (good === bad) throw new InputError(`--good and --bad name the same commit ${good.slice(0, 12)}`);
  if ((await execa('git', ['-C', tree, 'merge-base', '--is-ancestor', good, bad], { reject: false })).exitCode !== 0) {
    throw new InputError(`--good ${opts.goodRef} (${good.slice(0, 12)}) is not an ancestor of --bad ${opts.badRef} (${bad.slice(0, 12)})`);
  }
  const folder = path.resolve(opts.runsDir ?? path.join(repoRoot, 'runs'), `bisect-${lab.name}-${stamp()}`);
  const clone = path.join(folder, 'repo.git');
  await mkdir(folder, { recursive: true });
  progress.info(`bisect folder: ${folder}`);
  // Bare and --shared: no checkout, no writes to the user's repository; git bisect assumes --no-checkout in a bare repository.
  await execa('git', ['clone', '--quiet', '--bare', '--shared', tree, clone], { timeout: 600_000 });
  const state: BisectState = {
    labFile: lab.file, clone, good, onlyProbes: opts.onlyProbes ?? [], extraPatches: (opts.extraPatches ?? []).map((p) => path.resolve(p)),
    extraFragments: (opts.extraFragments ?? []).map((p) => path.resolve(p)), historyFile: opts.historyFile, folder,
  };
  try {
    // The oracle: which probes fail on the bad ref. Steps run only those.
    const oracle = await runAt(db, lab, state, bad, 0, state.onlyProbes, progress);
    if (oracle.verdict !== 'bad') {
      throw new InputError(`--bad ${opts.badRef} (${bad.slice(0, 12)}) is not bad: the lab ${oracle.verdict === 'good' ? 'passes' : `ended ${oracle.outcome.class} (${oracle.outcome.code}: ${oracle.outcome.title})`} there (${oracle.runDir})`,
        oracle.verdict === 'good' ? 'name a ref the lab fails on' : 'fix the run on the bad ref first; bisect needs a failing lab as its oracle');
    }
    state.onlyProbes = [...new Set(oracle.failingPoints.map((p) => p.split(' :: ')[0]))];
    if (!state.onlyProbes.length) state.onlyProbes = [...(opts.onlyProbes ?? [])]; // a kernel report with no failing point: the same probes again
    progress.info(`bisect oracle: ${state.onlyProbes.length ? state.onlyProbes.join(', ') : 'every probe'} (failed on ${bad.slice(0, 12)})`);
    const stateFile = path.join(folder, 'bisect-state.json');
    await writeFile(stateFile, `${JSON.stringify(state, null, 2)}\n`);
    await git(clone, ['bisect', 'start', '--no-checkout', bad, good]);
    const run = await execa('git', ['-C', clone, 'bisect', 'run', process.execPath, HWLAB_JS, 'bisect', '--step', stateFile], {
      reject: false, timeout: BISECT_TIMEOUT_MS, env: { LC_ALL: 'C' }, stdout: 'pipe', stderr: 'inherit',
    });
    await writeFile(path.join(folder, 'git-bisect-run.log'), `${run.stdout}\n`);
    await writeFile(path.join(folder, 'git-bisect.log'), `${await git(clone, ['bisect', 'log']).catch(() => '')}\n`);
    const steps = [oracle, ...(await readSteps(folder)).filter((s) => s.n > 0)];
    const result: BisectResult = { folder, lab: lab.name, tree, good, bad, oracleProbes: state.onlyProbes, steps, labRuns: steps.length };
    const found = /^([0-9a-f]{40}) is the first bad commit$/m.exec(run.stdout);
    if (run.exitCode === 0 && found) {
      const commit = found[1];
      const step = [...steps].reverse().find((s) => s.commit === commit);
      result.firstBad = { commit, subject: await git(clone, ['log', '-1', '--format=%s', commit]), ...(step ? { runDir: step.runDir } : {}), failingPoints: step?.failingPoints ?? [] };
    } else {
      result.inconclusive = run.stdout.split('\n').filter((l) => /skip|could be any|first bad|error|fatal/i.test(l)).join('\n') || `git bisect run exited ${run.exitCode}`;
    }
    await writeFile(path.join(folder, 'bisect.json'), `${JSON.stringify(result, null, 2)}\n`);
    return result;
  } finally {
    await execa('git', ['-C', clone, 'bisect', 'reset'], { reject: false, timeout: 60_000 });
  }
}

export function formatBisect(r: BisectResult): string {
  const out = [`bisect ${r.lab}: ${r.good.slice(0, 12)} (good) .. ${r.bad.slice(0, 12)} (bad) in ${r.tree}`, `oracle probes: ${r.oracleProbes.join(', ') || 'every probe'}`, ''];
  for (const s of r.steps) out.push(`  ${s.n === 0 ? 'bad ref' : `step ${s.n}`}: ${s.commit.slice(0, 12)} ${s.verdict.padEnd(4)} ${s.outcome.class}  ${s.subject}`);
  out.push('', `${r.labRuns} lab run(s)`);
  if (r.firstBad) {
    out.push(`first bad commit: ${r.firstBad.commit}`, `  ${r.firstBad.subject}`);
    if (r.firstBad.runDir) out.push(`  run folder: ${r.firstBad.runDir}`);
    for (const p of r.firstBad.failingPoints) out.push(`  failing: ${p}`);
  } else out.push(`no first bad commit: ${r.inconclusive}`);
  return out.join('\n');
}

export async function removeClone(r: BisectResult): Promise<void> {
  await rm(path.join(r.folder, 'repo.git'), { recursive: true, force: true });
}
