// Reading the history back: runs, one point over time with its flake rate,
// report titles, and the nights a nightly run compares against.
import type { OutcomeClass } from '../results/outcome.ts';
import type { PointCategory } from './classify.ts';
import type { HistoryDb } from './db.ts';
import type { PointRecord, PointStatus } from './points.ts';
import type { RunPurpose } from './record.ts';

export interface RunRow {
  id: number;
  runDir: string;
  lab: string;
  cell: string;
  startedAt: string;
  purpose: RunPurpose;
  nightId?: number;
  outcomeClass: OutcomeClass;
  outcomeCode: string;
  outcomeTitle: string;
  kernelRelease?: string;
  kernelIdentity?: string;
  hwlabVersion: string;
  points: number;
  failing: number;
}

interface RawRun {
  id: number; run_dir: string; lab: string; cell: string; started_at: string; purpose: RunPurpose; night_id: number | null;
  outcome_class: OutcomeClass; outcome_code: string; outcome_title: string; kernel_release: string | null; kernel_identity: string | null;
  hwlab_version: string; points: number; failing: number;
}

const RUN_SELECT = `SELECT r.*, (SELECT count(*) FROM points p WHERE p.run_id = r.id) AS points,
  (SELECT count(*) FROM points p WHERE p.run_id = r.id AND p.status = 'fail') AS failing FROM runs r`;

function runRow(r: RawRun): RunRow {
  return {
    id: r.id, runDir: r.run_dir, lab: r.lab, cell: r.cell, startedAt: r.started_at, purpose: r.purpose,
    ...(r.night_id !== null ? { nightId: r.night_id } : {}),
    outcomeClass: r.outcome_class, outcomeCode: r.outcome_code, outcomeTitle: r.outcome_title,
    ...(r.kernel_release !== null ? { kernelRelease: r.kernel_release } : {}),
    ...(r.kernel_identity !== null ? { kernelIdentity: r.kernel_identity } : {}),
    hwlabVersion: r.hwlab_version, points: r.points, failing: r.failing,
  };
}

/** Runs, newest first; optionally of one lab or cell. */
export function listRuns(db: HistoryDb, opts: { cell?: string; limit?: number } = {}): RunRow[] {
  const where = opts.cell ? 'WHERE r.cell = @cell OR r.lab = @cell' : '';
  return (db.prepare(`${RUN_SELECT} ${where} ORDER BY r.started_at DESC, r.id DESC LIMIT @limit`).all({ cell: opts.cell, limit: opts.limit ?? 50 }) as RawRun[]).map(runRow);
}

export function runById(db: HistoryDb, id: number): RunRow | undefined {
  const r = db.prepare(`${RUN_SELECT} WHERE r.id = ?`).get(id) as RawRun | undefined;
  return r ? runRow(r) : undefined;
}

export function pointsOfRun(db: HistoryDb, runId: number): PointRecord[] {
  const rows = db.prepare('SELECT probe_key, probe, device, point, status, reason FROM points WHERE run_id = ? ORDER BY rowid').all(runId) as Array<{ probe_key: string; probe: string; device: string | null; point: string; status: PointStatus; reason: string | null }>;
  return rows.map((r) => ({ probeKey: r.probe_key, probe: r.probe, ...(r.device ? { device: r.device } : {}), point: r.point, status: r.status, ...(r.reason ? { reason: r.reason } : {}) }));
}

export interface PointHistoryEntry {
  runId: number;
  startedAt: string;
  cell: string;
  purpose: RunPurpose;
  kernelRelease?: string;
  probeKey: string;
  point: string;
  status: PointStatus;
  reason?: string;
  /** The point's class that night, when the run was a night's. */
  category?: PointCategory;
}

/** A probe's points (or one point, by a substring of its name) over time, oldest first. */
export function pointHistory(db: HistoryDb, probe: string, point?: string): PointHistoryEntry[] {
  const rows = db.prepare(`SELECT p.run_id, r.started_at, r.cell, r.purpose, r.kernel_release, p.probe_key, p.point, p.status, p.reason,
      (SELECT np.category FROM night_points np WHERE np.night_id = r.night_id AND np.probe_key = p.probe_key AND np.point = p.point AND r.purpose IN ('nightly', 'infra-retry')) AS category
    FROM points p JOIN runs r ON r.id = p.run_id
    WHERE (p.probe = @probe OR p.probe_key = @probe) AND (@point IS NULL OR instr(lower(p.point), lower(@point)) > 0)
    ORDER BY r.started_at, r.id, p.rowid`).all({ probe, point: point ?? null }) as Array<{ run_id: number; started_at: string; cell: string; purpose: RunPurpose; kernel_release: string | null; probe_key: string; point: string; status: PointStatus; reason: string | null; category: PointCategory | null }>;
  return rows.map((r) => ({
    runId: r.run_id, startedAt: r.started_at, cell: r.cell, purpose: r.purpose, ...(r.kernel_release ? { kernelRelease: r.kernel_release } : {}),
    probeKey: r.probe_key, point: r.point, status: r.status, ...(r.reason ? { reason: r.reason } : {}), ...(r.category ? { category: r.category } : {}),
  }));
}

export interface FlakeRate {
  /** Nights that classified the point flaky. */
  flaky: number;
  /** Nights that saw the point at all. */
  nights: number;
  rate: number;
}

/** How often a point was flaky over the nights of a series that saw it. */
export function flakeRate(db: HistoryDb, series: string, probeKey: string, point: string): FlakeRate {
  const r = db.prepare(`SELECT count(*) AS nights, coalesce(sum(np.category = 'flaky'), 0) AS flaky FROM night_points np JOIN nights n ON n.id = np.night_id
    WHERE n.series = ? AND np.probe_key = ? AND np.point = ? AND np.category <> 'gone'`).get(series, probeKey, point) as { nights: number; flaky: number };
  return { flaky: r.flaky, nights: r.nights, rate: r.nights ? r.flaky / r.nights : 0 };
}

export interface ReportTitle {
  title: string;
  kind: string;
  firstSeen: string;
  lastSeen: string;
  /** Reports with this title, all runs together. */
  count: number;
  /** Runs that printed it. */
  runs: number;
  kernels: string[];
}

export function reportTitles(db: HistoryDb, titles?: readonly string[]): ReportTitle[] {
  const rows = db.prepare('SELECT * FROM report_titles ORDER BY last_seen DESC').all() as Array<{ title: string; kind: string; first_seen: string; last_seen: string; count: number; runs: number }>;
  const kernels = db.prepare('SELECT kernel FROM report_kernels WHERE title = ? ORDER BY kernel');
  return rows.filter((r) => !titles || titles.includes(r.title)).map((r) => ({
    title: r.title, kind: r.kind, firstSeen: r.first_seen, lastSeen: r.last_seen, count: r.count, runs: r.runs,
    kernels: (kernels.all(r.title) as Array<{ kernel: string }>).map((k) => k.kernel),
  }));
}

/** The titles a run printed, and for each whether an earlier run (by start time) had printed it: new titles are news. */
export function titlesOfRun(db: HistoryDb, runId: number): Array<{ title: string; kind: string; count: number; seenBefore: boolean }> {
  return db.prepare(`SELECT rr.title, rr.kind, rr.count, EXISTS (SELECT 1 FROM run_reports o JOIN runs ro ON ro.id = o.run_id
      WHERE o.title = rr.title AND o.run_id <> rr.run_id AND (ro.started_at < r.started_at OR (ro.started_at = r.started_at AND ro.id < r.id))) AS seen
    FROM run_reports rr JOIN runs r ON r.id = rr.run_id WHERE rr.run_id = ?`).all(runId).map((x) => {
    const r = x as { title: string; kind: string; count: number; seen: number };
    return { title: r.title, kind: r.kind, count: r.count, seenBefore: r.seen === 1 };
  });
}

export interface NightRow {
  id: number;
  series: string;
  source: string;
  startedAt: string;
  runId?: number;
  kernelIdentity?: string;
  outcomeClass?: OutcomeClass;
  verdict?: string;
  folder: string;
}

function nightRow(r: { id: number; series: string; source: string; started_at: string; run_id: number | null; kernel_identity: string | null; outcome_class: OutcomeClass | null; verdict: string | null; folder: string }): NightRow {
  return {
    id: r.id, series: r.series, source: r.source, startedAt: r.started_at, folder: r.folder,
    ...(r.run_id !== null ? { runId: r.run_id } : {}), ...(r.kernel_identity !== null ? { kernelIdentity: r.kernel_identity } : {}),
    ...(r.outcome_class !== null ? { outcomeClass: r.outcome_class } : {}), ...(r.verdict !== null ? { verdict: r.verdict } : {}),
  };
}

/** The last finished night of a series that knew its kernel (any class): whether the kernel changed is judged against it. */
export function lastNight(db: HistoryDb, series: string, before?: number): NightRow | undefined {
  const r = db.prepare('SELECT * FROM nights WHERE series = ? AND finished_at IS NOT NULL AND kernel_identity IS NOT NULL AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT 1').get(series, before ?? null, before ?? null);
  return r ? nightRow(r as Parameters<typeof nightRow>[0]) : undefined;
}

/** The baseline: the last finished night of a series whose run was neither infra nor error, so points were compared against real evidence. */
export function baselineNight(db: HistoryDb, series: string, before?: number): NightRow | undefined {
  const r = db.prepare(`SELECT * FROM nights WHERE series = ? AND finished_at IS NOT NULL AND run_id IS NOT NULL AND outcome_class NOT IN ('infra', 'error')
    AND (? IS NULL OR id < ?) ORDER BY id DESC LIMIT 1`).get(series, before ?? null, before ?? null);
  return r ? nightRow(r as Parameters<typeof nightRow>[0]) : undefined;
}

export function listNights(db: HistoryDb, series?: string, limit = 50): NightRow[] {
  return (db.prepare('SELECT * FROM nights WHERE (? IS NULL OR series = ?) ORDER BY id DESC LIMIT ?').all(series ?? null, series ?? null, limit) as Array<Parameters<typeof nightRow>[0]>).map(nightRow);
}
