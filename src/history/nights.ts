// A night of `hwlab nightly` in the history: opened before its run, closed
// with the run it judged, its baseline and every point's category, in one
// transaction, so a night that died half way is never taken as a baseline.
import type { OutcomeClass } from '../results/outcome.ts';
import type { PointChange } from './classify.ts';
import type { HistoryDb } from './db.ts';

export function startNight(db: HistoryDb, n: { series: string; source: string; folder: string }): number {
  const info = db.prepare('INSERT INTO nights (series, source, started_at, folder) VALUES (?, ?, ?, ?)').run(n.series, n.source, new Date().toISOString(), n.folder);
  return Number(info.lastInsertRowid);
}

export interface NightEnd {
  /** The run the night was judged on (the last attempt); absent when none ran. */
  runId?: number;
  baselineNightId?: number;
  kernelIdentity?: string;
  kernelChanged?: boolean;
  outcomeClass: OutcomeClass;
  verdict: string;
  changes: readonly PointChange[];
}

export function finishNight(db: HistoryDb, nightId: number, end: NightEnd): void {
  db.transaction(() => {
    db.prepare(`UPDATE nights SET finished_at = ?, run_id = ?, baseline_night_id = ?, kernel_identity = ?, kernel_changed = ?, outcome_class = ?, verdict = ? WHERE id = ?`).run(
      new Date().toISOString(), end.runId ?? null, end.baselineNightId ?? null, end.kernelIdentity ?? null,
      end.kernelChanged === undefined ? null : Number(end.kernelChanged), end.outcomeClass, end.verdict, nightId,
    );
    const ins = db.prepare('INSERT INTO night_points (night_id, probe_key, point, category) VALUES (?, ?, ?, ?)');
    for (const c of end.changes) ins.run(nightId, c.probeKey, c.point, c.category);
  }).immediate();
}
