// `hwlab nightly`: one night of a lab (or of every runnable cell of a
// matrix), judged against the last night that produced evidence. Per lab or
// cell ("series"): run it with the kernel resolved afresh (--refresh: the
// newest Debian 7.2.x upload, a git ref's tip), retry a run the host broke
// (infra) a bounded number of times with a growing pause, compare every
// point with the baseline night, rerun new failures in a fresh guest with
// only their probes to tell flaky from new, count kernel report titles
// across nights, and notice expectations that went stale. Everything is
// recorded in the results history; the digest (digest.ts) says what changed.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { classifyPoints, countByCategory, isRegression, rerunCandidates, staleExpectations, type PointCategory, type PointChange, type StaleExpectation } from '../history/classify.ts';
import type { HistoryDb } from '../history/db.ts';
import { finishNight, startNight } from '../history/nights.ts';
import { pointId, pointsOf, type PointStatus } from '../history/points.ts';
import { baselineNight, flakeRate, lastNight, pointsOfRun, reportTitles, runById, titlesOfRun } from '../history/query.ts';
import { hwlabVersion, recordRun, type RunPurpose } from '../history/record.ts';
import { probeKey } from '../lab/select.ts';
import type { LabSpec } from '../lab/types.ts';
import type { MachineBackend } from '../machine/instance.ts';
import { readRunFolder } from '../reports/folders.ts';
import { summarize, type CellRecord } from '../reports/summary.ts';
import { writeReports } from '../reports/write.ts';
import type { OutcomeClass } from '../results/outcome.ts';
import { runLab, type RunOptions } from '../run/run-lab.ts';
import { InfraError } from '../util/errors.ts';
import type { Progress } from '../util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** One thing a night runs: a lab, or one cell of a matrix. */
export interface NightUnit {
  /** What the history keys nights by: the lab's name, or `<matrix>/<cell>`. */
  series: string;
  lab: LabSpec;
}

export interface NightlyOptions {
  progress: Progress;
  /** What the user named (a lab or matrix file): kept with each night. */
  source: string;
  /** Short name for the night's folder. */
  name: string;
  runsDir?: string;
  extraPatches?: string[];
  extraFragments?: string[];
  /** Only these probes (names or name(device)). */
  onlyProbes?: readonly string[];
  /** Reruns of new failures, each in a fresh guest with only their probes (default 2). */
  reruns?: number;
  /** Retries of a run the host broke (default 2), after backoffSec, then twice that, ... */
  infraRetries?: number;
  backoffSec?: number;
  backend?: MachineBackend;
  /** What runs a lab into a folder; runLab unless a unit test stands in for the whole run. */
  runner?: LabRunner;
}

/** runLab's shape as the night uses it: the run must leave results.json (and lab.resolved.json) in runDir. */
export type LabRunner = (lab: LabSpec, opts: RunOptions & { runDir: string }) => Promise<unknown>;

export const DEFAULT_RERUNS = 2;
export const DEFAULT_INFRA_RETRIES = 2;
export const DEFAULT_BACKOFF_SEC = 60;
/** No pause between infra retries is longer than this, however many are asked for. */
export const MAX_BACKOFF_SEC = 900;

export interface Attempt {
  purpose: RunPurpose;
  runDir: string;
  runId: number;
  outcome: { class: OutcomeClass; code: string; title: string };
  /** For a rerun: the probes it ran. */
  probes?: string[];
}

export interface TrackedTitle {
  title: string;
  kind: string;
  /** Reports with this title in this night's runs. */
  count: number;
  /** No earlier run in the history printed it. */
  isNew: boolean;
  firstSeen: string;
  runs: number;
  kernels: string[];
}

export type UnitVerdict = 'nothing-new' | 'news' | 'infra' | 'error';

export interface UnitNight {
  series: string;
  lab: string;
  nightId: number;
  folder: string;
  attempts: Attempt[];
  /** The attempt the night is judged on: the last one. */
  final?: Attempt;
  kernel: { identity?: string; release?: string; changed?: boolean; previous?: string };
  baseline?: { nightId: number; startedAt: string; runDir?: string };
  /** Every point that is not unchanged. */
  changes: PointChange[];
  counts: Record<PointCategory, number>;
  reruns: Attempt[];
  /** Flake rate over this series' nights, for each flaky point. */
  flakes: Array<{ probeKey: string; point: string; flaky: number; nights: number }>;
  reports: TrackedTitle[];
  stale: StaleExpectation[];
  verdict: UnitVerdict;
  /** The final run's HTML report. */
  report?: string;
}

export interface NightDigest {
  name: string;
  source: string;
  startedAt: string;
  finishedAt: string;
  folder: string;
  hwlab: string;
  units: UnitNight[];
  verdict: UnitVerdict;
  exitCode: number;
  /** The night's HTML report over every unit's final run. */
  report?: string;
}

/** 0 nothing new; 1 new failures or new kernel report titles; 3 infrastructure only; 2 bad input. */
export const VERDICT_EXIT: Record<UnitVerdict, number> = { 'nothing-new': 0, news: 1, error: 2, infra: 3 };
const VERDICT_ORDER: readonly UnitVerdict[] = ['error', 'news', 'infra', 'nothing-new'];

const stamp = () => new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');
const slug = (s: string) => s.replace(/[^A-Za-z0-9._-]+/g, '_');

/** Pause before infra retry i (0-based): backoff, doubled each time, capped. */
export function backoffSeconds(base: number, i: number): number {
  return Math.min(MAX_BACKOFF_SEC, base * 2 ** i);
}

async function readCell(runDir: string): Promise<CellRecord> {
  const c = await readRunFolder(runDir);
  if (!c) throw new InfraError(`${runDir}: the run left no results.json`);
  return c;
}

export async function runNightly(db: HistoryDb, units: readonly NightUnit[], opts: NightlyOptions): Promise<NightDigest> {
  const startedAt = new Date().toISOString();
  const folder = path.join(opts.runsDir ?? path.join(repoRoot, 'runs'), `nightly-${slug(opts.name)}-${stamp()}`);
  await mkdir(folder, { recursive: true });
  opts.progress.info(`night folder: ${folder}`);
  const done: UnitNight[] = [];
  for (const unit of units) done.push(await runUnit(db, unit, units.length > 1 ? path.join(folder, slug(unit.series)) : folder, opts));
  const verdict = VERDICT_ORDER.find((v) => done.some((u) => u.verdict === v)) ?? 'nothing-new';
  // One report over every unit's final run, beside the digest.
  const finals = await Promise.all(done.filter((u) => u.final).map(async (u) => ({ ...(await readCell(u.final!.runDir)), id: u.series })));
  const written = finals.length ? await writeReports(folder, summarize(units.length > 1 ? 'matrix' : 'run', opts.name, finals)).catch(() => undefined) : undefined;
  return {
    name: opts.name, source: opts.source, startedAt, finishedAt: new Date().toISOString(), folder, hwlab: hwlabVersion(),
    units: done, verdict, exitCode: VERDICT_EXIT[verdict], ...(written ? { report: written.html } : {}),
  };
}

async function runUnit(db: HistoryDb, unit: NightUnit, folder: string, opts: NightlyOptions): Promise<UnitNight> {
  const { progress } = opts;
  await mkdir(folder, { recursive: true });
  const nightId = startNight(db, { series: unit.series, source: opts.source, folder });
  const runner = opts.runner ?? runLab;
  const runOpts = { progress, extraPatches: opts.extraPatches, extraFragments: opts.extraFragments, backend: opts.backend };
  const attempts: Attempt[] = [];
  const record = async (purpose: RunPurpose, runDir: string, probes?: string[]): Promise<Attempt> => {
    const cell = await readCell(runDir);
    const { id } = recordRun(db, cell, { purpose, nightId, cell: unit.series });
    const o = cell.results.outcome;
    return { purpose, runDir, runId: id, outcome: { class: o.class, code: o.code, title: o.title }, ...(probes ? { probes } : {}) };
  };

  // The night's run, and bounded retries while the host is to blame.
  const retries = opts.infraRetries ?? DEFAULT_INFRA_RETRIES;
  for (let i = 0; i <= retries; i++) {
    if (i > 0) {
      const pause = backoffSeconds(opts.backoffSec ?? DEFAULT_BACKOFF_SEC, i - 1);
      progress.info(`${unit.series}: the run was infra (${attempts.at(-1)!.outcome.code}); retry ${i} of ${retries} in ${pause} s`);
      await sleep(pause * 1000);
    }
    const runDir = path.join(folder, i === 0 ? 'run' : `infra-retry-${i}`);
    // --refresh: a night looks the kernel up again (a new upload, a moved ref).
    await runner(unit.lab, { ...runOpts, runDir, refresh: true, onlyProbes: opts.onlyProbes });
    attempts.push(await record(i === 0 ? 'nightly' : 'infra-retry', runDir));
    if (attempts.at(-1)!.outcome.class !== 'infra') break;
  }
  const final = attempts.at(-1)!;
  const finalRun = runById(db, final.runId)!;
  const previous = lastNight(db, unit.series, nightId);
  const kernel = {
    ...(finalRun.kernelIdentity ? { identity: finalRun.kernelIdentity } : {}),
    ...(finalRun.kernelRelease ? { release: finalRun.kernelRelease } : {}),
    ...(finalRun.kernelIdentity && previous?.kernelIdentity ? { changed: previous.kernelIdentity !== finalRun.kernelIdentity, previous: previous.kernelIdentity } : {}),
  };
  const base = baselineNight(db, unit.series, nightId);
  const baseRun = base?.runId !== undefined ? runById(db, base.runId) : undefined;
  const baseline = base ? { nightId: base.id, startedAt: base.startedAt, ...(baseRun ? { runDir: baseRun.runDir } : {}) } : undefined;
  const unitBase = { series: unit.series, lab: unit.lab.name, nightId, folder, attempts, final, kernel, ...(baseline ? { baseline } : {}) };
  const report = path.join(final.runDir, 'report.html');

  if (final.outcome.class === 'infra' || final.outcome.class === 'error') {
    // No evidence about the kernel: nothing is compared, and this night is never a baseline.
    const verdict: UnitVerdict = final.outcome.class;
    finishNight(db, nightId, { runId: final.runId, ...(base ? { baselineNightId: base.id } : {}), kernelIdentity: kernel.identity, kernelChanged: kernel.changed, outcomeClass: final.outcome.class, verdict, changes: [] });
    progress.info(`${unit.series}: ${verdict === 'infra' ? `infrastructure only, after ${attempts.length} attempt(s)` : `error: ${final.outcome.title}`}`);
    return { ...unitBase, changes: [], counts: countByCategory([]), reruns: [], flakes: [], reports: [], stale: [], verdict, report };
  }

  const current = pointsOf(await readCell(final.runDir));
  const before = baseRun ? pointsOfRun(db, baseRun.id) : undefined;

  // New failures again, in fresh guests with only their probes, until each passed once or the reruns are used up.
  const candidates = rerunCandidates(before, current);
  const rerunStatus = new Map<string, PointStatus[]>(candidates.map((p) => [pointId(p), []]));
  const reruns: Attempt[] = [];
  for (let i = 1; i <= (opts.reruns ?? DEFAULT_RERUNS) && candidates.length; i++) {
    const open = candidates.filter((p) => !rerunStatus.get(pointId(p))!.includes('pass'));
    if (!open.length) break;
    const probes = [...new Set(open.map((p) => p.probeKey))];
    progress.info(`${unit.series}: rerun ${i}: ${open.length} new failing point(s) in ${probes.join(', ')}`);
    const runDir = path.join(folder, `rerun-${i}`);
    await runner(unit.lab, { ...runOpts, runDir, onlyProbes: probes });
    const a = await record('rerun', runDir, probes);
    reruns.push(a);
    // A rerun the host broke says nothing about any point.
    if (a.outcome.class === 'infra' || a.outcome.class === 'error') continue;
    const got = new Map(pointsOf(await readCell(runDir)).map((p) => [pointId(p), p.status]));
    for (const p of open) rerunStatus.get(pointId(p))!.push(got.get(pointId(p)) ?? 'not-run');
  }

  const all = classifyPoints(before, current, new Map([...rerunStatus].filter(([, s]) => s.length)));
  const changes = all.filter((c) => c.category !== 'unchanged');
  const expected = unit.lab.probes.filter((p) => p.expectFail).map((p) => ({ probeKey: probeKey(p), reason: p.expectFail! }));
  const stale = staleExpectations(expected, current);

  // Titles of every run of this night, new if no earlier run anywhere in the history printed them.
  const seen = new Map<string, { kind: string; count: number; isNew: boolean }>();
  for (const a of [final, ...reruns]) {
    for (const t of titlesOfRun(db, a.runId)) {
      const s = seen.get(t.title);
      seen.set(t.title, { kind: t.kind, count: (s?.count ?? 0) + t.count, isNew: (s?.isNew ?? true) && !t.seenBefore });
    }
  }
  const tracked = reportTitles(db, [...seen.keys()]);
  const reports: TrackedTitle[] = [...seen].map(([title, s]) => {
    const t = tracked.find((x) => x.title === title)!;
    return { title, kind: s.kind, count: s.count, isNew: s.isNew, firstSeen: t.firstSeen, runs: t.runs, kernels: t.kernels };
  });

  const news = changes.some(isRegression) || reports.some((r) => r.isNew);
  const verdict: UnitVerdict = news ? 'news' : 'nothing-new';
  finishNight(db, nightId, { runId: final.runId, ...(base ? { baselineNightId: base.id } : {}), kernelIdentity: kernel.identity, kernelChanged: kernel.changed, outcomeClass: final.outcome.class, verdict, changes: all });
  const flakes = changes.filter((c) => c.category === 'flaky').map((c) => ({ probeKey: c.probeKey, point: c.point, ...flakeRate(db, unit.series, c.probeKey, c.point) }))
    .map(({ probeKey: k, point, flaky, nights }) => ({ probeKey: k, point, flaky, nights }));
  return { ...unitBase, changes, counts: countByCategory(all), reruns, flakes, reports, stale, verdict, report };
}
