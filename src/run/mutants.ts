// The catalogue of known-bad kernels: a directory of deliberately broken
// patches, each run on top of a lab's own series. A probe suite is only as
// good as the bugs it catches, so every patch must make the lab fail; one
// that passes SURVIVED and names a hole in the probes. A patch that does not
// apply or build proves nothing about the probes: that is an error in the
// catalogue, never a catch.
//
// The lab also runs once without any extra patch (the baseline): a failure
// the unpatched kernel shows too is not a catch, or a broken probe would make
// every mutant look caught.
import { readdir, readFile, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LabSpec } from '../lab/types.ts';
import { describeReport } from '../report/kernel-report.ts';
import { unattributedReports } from '../results/attribution.ts';
import type { OutcomeClass } from '../results/outcome.ts';
import type { RunResults } from '../results/report.ts';
import { isFailingPoint, probeStatus, TAP_STREAM_PROBE } from '../results/tap.ts';

import type { Progress } from '../util/progress.ts';
import { runLab, type RunOptions, type RunOutcome } from './run-lab.ts';
import { classOfError, InfraError, InputError } from '../util/errors.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const DEFAULT_CATALOGUE_DIR = path.join(repoRoot, 'labs/mutants');

// ---------------------------------------------------------------------------
// The catalogue: files and their headers.

export interface MutantHeader {
  /** Subject without the [PATCH ...] prefix. */
  subject: string;
  /** Probes that should catch the bug (the `Expected-catch:` trailer). */
  expectedCatch: string[];
}

const PROBE_NAME_RE = /^[a-z0-9][a-z0-9-]*$/;

/**
 * Subject and Expected-catch of a git format-patch file. The Subject header may
 * be folded over several lines; the trailer is looked for in the commit message
 * only (before the `---` that starts the diffstat, or the first diff), so a
 * diff line that happens to contain the word cannot count. Throws on a missing
 * Subject, a missing trailer, or a name that cannot be a probe.
 */
export function parseMutantHeader(text: string, where: string): MutantHeader {
  const lines = text.split('\n').map((l) => l.replace(/\r$/, ''));
  let i = lines[0]?.startsWith('From ') ? 1 : 0;
  let subject: string | undefined;
  let inSubject = false;
  for (; i < lines.length && lines[i] !== ''; i++) {
    const l = lines[i];
    if (/^[ \t]/.test(l)) {
      if (inSubject) subject += ` ${l.trim()}`;
      continue;
    }
    inSubject = /^subject:/i.test(l);
    if (inSubject && subject === undefined) subject = l.replace(/^subject:\s*/i, '');
    else inSubject = false;
  }
  subject = subject?.replace(/^(\s*\[[^\]]*\]\s*)+/, '').trim();
  if (!subject) throw new InputError(`${where}: no Subject: header (catalogue patches are git format-patch files)`);

  const expected: string[] = [];
  for (const l of lines.slice(i)) {
    if (l === '---' || l.startsWith('diff --git ') || l.startsWith('--- a/') || l.startsWith('Index: ')) break;
    const m = l.match(/^expected-catch:\s*(.*)$/i);
    if (!m) continue;
    for (const name of m[1].split(/[,\s]+/).filter(Boolean)) {
      if (!PROBE_NAME_RE.test(name)) throw new InputError(`${where}: Expected-catch: "${name}" is not a probe name`);
      if (!expected.includes(name)) expected.push(name);
    }
  }
  if (expected.length === 0) {
    throw new InputError(`${where}: no "Expected-catch: <probe>[, <probe>...]" trailer in the commit message`);
  }
  return { subject, expectedCatch: expected };
}

export interface MutantPatch extends MutantHeader {
  /** File name, e.g. 03-attach-allows-no-p2p.patch. */
  name: string;
  /** Catalogue number, the NN of NN-name.patch. */
  number: number;
  file: string;
}

const CATALOGUE_FILE_RE = /^(\d+)-[^/]+\.patch$/;

/** Does a `--only` selector name this patch: its number (3 or 03), its file name, or the name without `.patch`? */
export function selectorMatches(selector: string, p: Pick<MutantPatch, 'name' | 'number'>): boolean {
  if (/^\d+$/.test(selector)) return Number(selector) === p.number;
  return selector === p.name || `${selector}.patch` === p.name;
}

/**
 * The patches NN-*.patch in dir, in number order, with their headers; `only`
 * narrows them (a selector that names no patch is an error, not an empty run).
 */
export async function loadCatalogue(dir: string, only: readonly string[] = []): Promise<MutantPatch[]> {
  const entries = await readdir(dir).catch((err: NodeJS.ErrnoException) => {
    throw new InputError(`catalogue directory ${dir}: ${err.code === 'ENOENT' ? 'does not exist' : err.message}`);
  });
  const all: MutantPatch[] = [];
  for (const name of entries.sort()) {
    const m = name.match(CATALOGUE_FILE_RE);
    if (!m) continue;
    const file = path.join(dir, name);
    all.push({ name, number: Number(m[1]), file, ...parseMutantHeader(await readFile(file, 'utf8'), file) });
  }
  all.sort((a, b) => a.number - b.number || a.name.localeCompare(b.name));
  const dup = all.find((p, k) => k > 0 && all[k - 1].number === p.number);
  if (dup) throw new InputError(`${dir}: two patches share the number ${dup.number}`);
  if (all.length === 0) throw new InputError(`${dir}: no NN-name.patch files`);
  const unknown = only.filter((s) => !all.some((p) => selectorMatches(s, p)));
  if (unknown.length) throw new InputError(`--only ${unknown.join(', ')}: no such patch in ${dir} (have ${all.map((p) => p.number).join(', ')})`);
  return only.length ? all.filter((p) => only.some((s) => selectorMatches(s, p))) : all;
}

// ---------------------------------------------------------------------------
// Judging one run.

/** One source of failure in a run: a probe (its failing subtests and kernel reports), or the run itself. */
export interface Catch {
  /** Probe name; '(kernel)' for a kernel report outside every probe window, '(run)' for a run-level failure (boot, SSH, timeout). */
  probe: string;
  /** The probe's device, when the lab runs that probe on more than one device. */
  device?: string;
  /** Failing subtest names; for '(kernel)' and '(run)', the kernel report titles or reasons. */
  subtests: string[];
  /** Kernel reports attributed to the probe, one per title. */
  kernelReports: string[];
}

/** Numbers (inode numbers, addresses, counts) differ between runs; a failure is the same failure without them. */
function normalise(s: string): string {
  return s.replace(/0x[0-9a-f]+|\d+/gi, 'N');
}

/** How a catch is shown and compared: the probe, and its device when the name alone is ambiguous. */
export function catchLabel(c: Pick<Catch, 'probe' | 'device'>): string {
  return c.device ? `${c.probe}(${c.device})` : c.probe;
}

/**
 * Every failure of a run, grouped by probe. TODO and SKIP results are not
 * failures. With the lab, a probe the lab runs on several devices is told
 * apart by its device (results list the lab's probes in order).
 */
export function failuresOf(results: Pick<RunResults, 'probes' | 'kernelReports' | 'failure'>, lab?: Pick<LabSpec, 'probes'>): Catch[] {
  const out: Catch[] = [];
  const real = results.probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  const repeated = (name: string) => (lab?.probes.filter((x) => x.name === name).length ?? 0) > 1;
  for (const p of results.probes) {
    // A probe that never ran says nothing about the patch; the one that hung before it does.
    if (probeStatus(p) !== 'FAIL' || p.notRun !== undefined) continue;
    const subtests = p.subtests.filter(isFailingPoint).map((s) => s.name);
    // Only points the harness could not judge: evidence of nothing, not a catch.
    if (subtests.length === 0 && p.kernelReports.length === 0 && p.subtests.some((s) => s.harness !== undefined)) continue;
    const spec = lab?.probes[real.indexOf(p)];
    const device = spec?.name === p.name && repeated(p.name) ? spec.device : undefined;
    out.push({ probe: p.name, ...(device ? { device } : {}), subtests, kernelReports: p.kernelReports.map(describeReport) });
  }
  const loose = unattributedReports(results.kernelReports, results.probes);
  if (loose.length) out.push({ probe: '(kernel)', subtests: loose.map(describeReport), kernelReports: [] });
  // The run itself stopped (boot failed, SSH lost, the probes timed out): recorded, never evidence on its own.
  if (results.failure) out.push({ probe: '(run)', subtests: [`${results.failure.phase}: ${results.failure.message.split('\n')[0]}`], kernelReports: [] });
  return out;
}

/** The failures of `run` that the baseline did not show (compared per probe, subtest and kernel report, numbers ignored). */
export function newFailures(run: readonly Catch[], baseline: readonly Catch[]): Catch[] {
  const seen = new Set(baseline.flatMap((c) => [
    `${catchLabel(c)}\0`,
    ...c.subtests.map((s) => `${catchLabel(c)}\0${normalise(s)}`),
    ...c.kernelReports.map((r) => `${catchLabel(c)}\0report\0${normalise(r)}`),
  ]));
  const out: Catch[] = [];
  for (const c of run) {
    const key = catchLabel(c);
    const subtests = c.subtests.filter((s) => !seen.has(`${key}\0${normalise(s)}`));
    const kernelReports = c.kernelReports.filter((r) => !seen.has(`${key}\0report\0${normalise(r)}`));
    // A probe that fails with no subtest named (it threw) is new only if the baseline's did not fail at all.
    const bareNew = c.subtests.length === 0 && c.kernelReports.length === 0 && !seen.has(`${key}\0`);
    if (subtests.length || kernelReports.length || bareNew) out.push({ ...c, subtests, kernelReports });
  }
  return out;
}

export type MutantVerdict = 'caught' | 'SURVIVED' | 'inconclusive' | 'build-failed' | 'did-not-apply' | 'error';

/** Run-level failures: they say the run broke, not what broke it (QEMU killed, SSH lost, runner crashed). */
const RUN_LEVEL = new Set(['(run)', TAP_STREAM_PROBE]);

/**
 * Does this catch point at the kernel? A failing subtest or a kernel report
 * does; a run that merely stopped (or a probe cut off without a failing
 * subtest) may be the host's doing, so it is inconclusive on its own.
 */
function isEvidence(c: Catch): boolean {
  return !RUN_LEVEL.has(c.probe) && (c.subtests.length > 0 || c.kernelReports.length > 0);
}

export interface MutantOutcome {
  patch: string;
  number: number;
  subject: string;
  verdict: MutantVerdict;
  /** New failures (not in the baseline), one entry per probe. */
  caughtBy: Catch[];
  expectedCatch: string[];
  /** Expected probes among the catchers. */
  expectedHit: string[];
  /** Expected probes the lab does not run at all (they cannot catch anything here). */
  expectedNotInLab: string[];
  /** Why the run stopped (build-failed, did-not-apply, error), or the run's own verdict reasons. */
  message?: string;
  runDir?: string;
  seconds: number;
}

/**
 * A mutant's verdict from its run's outcome class (or an error that escaped
 * the run): a bad input is an error in the catalogue, infra is inconclusive,
 * and only new failing points or kernel reports are catches.
 */
export function judgeMutant(
  patch: MutantPatch, lab: Pick<LabSpec, 'probes'>, run: { results: RunResults } | { error: unknown }, baseline: readonly Catch[], seconds: number,
): MutantOutcome {
  const inLab = new Set(lab.probes.map((p) => p.name));
  const base = {
    patch: patch.name, number: patch.number, subject: patch.subject, expectedCatch: patch.expectedCatch,
    expectedNotInLab: patch.expectedCatch.filter((n) => !inLab.has(n)), seconds,
  };
  if ('error' in run) {
    const err = run.error;
    const message = err instanceof Error ? err.message : String(err);
    return { ...base, verdict: classOfError(err) === 'error' ? 'error' : 'inconclusive', caughtBy: [], expectedHit: [], message };
  }
  const { outcome, failure, runDir } = run.results;
  const message = outcome.class === 'pass' ? undefined : failure?.message ?? outcome.detail;
  const stopped = { ...base, caughtBy: [], expectedHit: [], runDir, ...(message ? { message } : {}) };
  if (outcome.class === 'error') {
    return { ...stopped, verdict: outcome.code === 'patch-does-not-apply' ? 'did-not-apply' : outcome.code === 'build-failed' ? 'build-failed' : 'error' };
  }
  // The host broke the run and the kernel showed nothing: it says nothing about the probes.
  if (outcome.class === 'infra') return { ...stopped, verdict: 'inconclusive' };
  const caughtBy = newFailures(failuresOf(run.results, lab), baseline);
  return {
    ...base,
    verdict: caughtBy.some(isEvidence) ? 'caught' : caughtBy.length ? 'inconclusive' : 'SURVIVED',
    caughtBy,
    expectedHit: patch.expectedCatch.filter((n) => caughtBy.some((c) => c.probe === n)),
    runDir,
    ...(message ? { message } : {}),
  };
}

// ---------------------------------------------------------------------------
// The catalogue run.

export interface MutantsSummary {
  lab: string;
  catalogue: string;
  startedAt: string;
  /** The unpatched lab: its outcome class, and the failures that therefore cannot count as catches. */
  baseline: { class: OutcomeClass; failures: Catch[]; message?: string; runDir?: string } | null;
  mutants: MutantOutcome[];
  /** Every mutant caught, and the baseline (if run) passed. */
  ok: boolean;
  dir: string;
}

export interface MutantsOptions {
  progress: Progress;
  /** Catalogue directory (default labs/mutants). */
  dir?: string;
  /** `--only` selectors: patch numbers or names. */
  only?: string[];
  /** Parent of the catalogue folder; default <repo>/runs. */
  runsDir?: string;
  /** Skip the baseline run (then every failure counts as a catch). */
  noBaseline?: boolean;
  /**
   * Run only the probes a patch's Expected-catch names (the baseline still runs
   * the whole lab): about half the time per patch, and it proves the named
   * probes catch it, not just some probe.
   */
  focus?: boolean;
  /** One lab run; runLab unless a test substitutes it. */
  runOne?: (lab: LabSpec, opts: RunOptions) => Promise<Pick<RunOutcome, 'results'>>;
}

function stamp(): string {
  return new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');
}

/**
 * Runs the lab once without extra patches, then once per catalogue patch, one
 * run at a time. Writes summary.json and table.txt into
 * <runsDir>/mutants-<lab>-<stamp>/, next to every run's folder.
 */
export async function runMutants(lab: LabSpec, opts: MutantsOptions): Promise<MutantsSummary> {
  const { progress } = opts;
  const runOne = opts.runOne ?? runLab;
  const catalogueDir = path.resolve(opts.dir ?? DEFAULT_CATALOGUE_DIR);
  const patches = await loadCatalogue(catalogueDir, opts.only);
  const labFor = (p: MutantPatch): LabSpec => (opts.focus ? { ...lab, probes: lab.probes.filter((x) => p.expectedCatch.includes(x.name)) } : lab);
  if (opts.focus) {
    const none = patches.filter((p) => labFor(p).probes.length === 0);
    if (none.length) {
      throw new InputError(`--focus: ${none.map((p) => `${p.name} (Expected-catch: ${p.expectedCatch.join(', ') || 'none'})`).join('; ')} names no probe of ${lab.file}`);
    }
  }
  const dir = path.join(opts.runsDir ?? path.join(repoRoot, 'runs'), `mutants-${lab.name}-${stamp()}`);
  await mkdir(dir, { recursive: true });
  const summary: MutantsSummary = {
    lab: lab.file, catalogue: catalogueDir, startedAt: new Date().toISOString(), baseline: null, mutants: [], ok: false, dir,
  };
  const save = async () => writeFile(path.join(dir, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');
  const runOpts = { progress, runsDir: dir };

  let baseline: Catch[] = [];
  if (!opts.noBaseline) {
    progress.info(`\n[baseline] ${lab.name} without extra patches`);
    const run = await runOne(lab, runOpts).then((r) => ({ results: r.results }), (error: unknown) => ({ error }));
    // Without a baseline nothing can be judged: an input error or a broken host would stop every mutant too.
    const broken = 'error' in run
      ? { class: classOfError(run.error), message: run.error instanceof Error ? run.error.message : String(run.error) }
      : run.results.outcome.class === 'error' || run.results.outcome.class === 'infra'
        ? { class: run.results.outcome.class, message: run.results.failure?.message ?? run.results.outcome.title, runDir: run.results.runDir }
        : null;
    if (broken) {
      summary.baseline = { ...broken, failures: [] };
      await save();
      const Err = broken.class === 'error' ? InputError : InfraError;
      throw new Err(`the baseline run of ${lab.file} (no extra patch) did not finish: ${broken.message}`);
    }
    const results = (run as { results: RunResults }).results;
    baseline = failuresOf(results, lab);
    summary.baseline = { class: results.outcome.class, failures: baseline, runDir: results.runDir, ...(results.outcome.class !== 'pass' ? { message: results.outcome.title } : {}) };
    await save();
  }

  for (const [k, p] of patches.entries()) {
    progress.info(`\n[${k + 1}/${patches.length}] ${p.name}: ${p.subject}`);
    const t0 = Date.now();
    const run = await runOne(labFor(p), { ...runOpts, extraPatches: [p.file] }).then((r) => ({ results: r.results }), (error: unknown) => ({ error }));
    const outcome = judgeMutant(p, labFor(p), run, baseline, (Date.now() - t0) / 1000);
    summary.mutants.push(outcome);
    progress.info(`    ${outcome.verdict}${outcome.caughtBy.length ? ` by ${outcome.caughtBy.map(catchLabel).join(', ')}` : ''}`);
    await save();
  }
  summary.ok = summary.mutants.every((m) => m.verdict === 'caught') && (summary.baseline === null || summary.baseline.class === 'pass');
  await save();
  await writeFile(path.join(dir, 'table.txt'), formatMutantsTable(summary) + '\n');
  return summary;
}

// ---------------------------------------------------------------------------
// Presentation.

function pad(s: string, w: number): string {
  return s.length >= w ? s : s + ' '.repeat(w - s.length);
}

function truncate(s: string, w: number): string {
  return s.length <= w ? s : `${s.slice(0, w - 1)}…`;
}

/** Lines of failing subtests shown per catcher under the table; summary.json keeps them all. */
const DETAIL_LINES = 4;

/** The catchers' labels, each once, cut to fit the column. */
function caughtByCell(m: MutantOutcome, width = 60): string {
  const labels = [...new Set(m.caughtBy.map(catchLabel))];
  let cell = '';
  for (const [k, l] of labels.entries()) {
    const next = cell ? `${cell}, ${l}` : l;
    const rest = labels.length - k - 1;
    if (next.length + (rest ? ` (+${rest})`.length : 0) > width && cell) return `${cell} (+${labels.length - k})`;
    cell = next;
  }
  return cell || '-';
}

/** Up to DETAIL_LINES of items, then how many more. */
function capped(all: string[], prefix: string): string[] {
  // A report the kernel repeats (a hung task every 30 s) is one line with a count.
  const counts = new Map<string, number>();
  for (const s of all) counts.set(s, (counts.get(s) ?? 0) + 1);
  const items = [...counts].map(([s, n]) => (n > 1 ? `${s} (x${n})` : s));
  const shown = items.slice(0, DETAIL_LINES).map((s) => `${prefix}${s}`);
  if (items.length > DETAIL_LINES) shown.push(`${prefix}... and ${items.length - DETAIL_LINES} more`);
  return shown;
}

/** What the EXPECTED column says: which expected probes caught it, and which the lab does not run. */
function expectedCell(m: MutantOutcome): string {
  if (m.verdict !== 'caught' && m.verdict !== 'SURVIVED' && m.verdict !== 'inconclusive') return '-';
  const parts: string[] = [];
  if (m.expectedHit.length === m.expectedCatch.length) parts.push('yes');
  else if (m.expectedHit.length) parts.push(`partly (${m.expectedHit.join(', ')})`);
  else parts.push('no');
  if (m.expectedNotInLab.length) parts.push(`not in lab: ${m.expectedNotInLab.join(', ')}`);
  return parts.join('; ');
}

/** The catalogue table, then per patch what caught it (subtests) or why it was not judged. */
export function formatMutantsTable(summary: Pick<MutantsSummary, 'baseline' | 'mutants'>): string {
  const rows = summary.mutants.map((m) => [
    m.patch.replace(/\.patch$/, ''),
    truncate(m.subject, 60),
    m.verdict,
    caughtByCell(m),
    expectedCell(m),
  ]);
  const header = ['PATCH', 'SUBJECT', 'VERDICT', 'CAUGHT BY', 'EXPECTED'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i])).join('  ').trimEnd();
  const out = [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];

  const details: string[] = [];
  const b = summary.baseline;
  if (b && b.class !== 'pass') {
    details.push(`baseline ${b.class.toUpperCase()} (so the catalogue fails too); its failures do not count as catches:`);
    for (const c of b.failures) {
      details.push(...capped([...c.subtests, ...c.kernelReports.map((r) => `kernel ${r}`)], `  ${catchLabel(c)}: `));
      if (!c.subtests.length && !c.kernelReports.length) details.push(`  ${catchLabel(c)}: (probe failed without a failing subtest)`);
    }
  }
  for (const m of summary.mutants) {
    if (m.verdict === 'caught') {
      details.push(`${m.patch}: caught`);
      for (const c of m.caughtBy) {
        details.push(...capped([...c.subtests, ...c.kernelReports.map((r) => `kernel ${r}`)], `  ${catchLabel(c)}: `));
        if (!c.subtests.length && !c.kernelReports.length) details.push(`  ${catchLabel(c)}: (probe failed without a failing subtest)`);
      }
    } else if (m.verdict === 'inconclusive') {
      details.push(`${m.patch}: inconclusive: the run broke without a failing subtest or kernel report; run it again (--only ${m.number})`);
      if (m.message) details.push(...m.message.split('\n').slice(0, 4).map((l) => `  ${l}`));
    } else if (m.verdict === 'SURVIVED') {
      details.push(`${m.patch}: SURVIVED, expected to be caught by ${m.expectedCatch.join(', ')}`);
    } else {
      details.push(`${m.patch}: ${m.verdict} (an error in the catalogue, not a catch)`);
      if (m.message) details.push(...m.message.split('\n').slice(0, 12).map((l) => `  ${l}`));
    }
  }
  const total = summary.mutants.length;
  const caught = summary.mutants.filter((m) => m.verdict === 'caught').length;
  const count = (v: MutantVerdict) => summary.mutants.filter((m) => m.verdict === v).length;
  const tally = `${caught}/${total} caught` + (['SURVIVED', 'inconclusive', 'build-failed', 'did-not-apply', 'error'] as const)
    .filter((v) => count(v) > 0).map((v) => `, ${count(v)} ${v}`).join('');
  return [...out, '', ...details, '', tally].join('\n');
}
