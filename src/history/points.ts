// A run's points as the history keeps them: one row per (probe, device,
// subtest), with a status read from the results as data. A probe that has no
// points of its own (it crashed before its first, never ran, or skipped as a
// whole) is one point named PROBE_POINT, so it is compared like the others.
import type { CellRecord } from '../reports/summary.ts';
import { isFailingPoint } from '../results/tap.ts';

/**
 * pass; fail (counts against the kernel); todo (failed as expected: the
 * lab's expect_fail or the probe's own known imperfection); skip; not-run
 * (an earlier probe hung, so this says nothing about the kernel).
 */
export type PointStatus = 'pass' | 'fail' | 'todo' | 'skip' | 'not-run';
export const POINT_STATUSES: readonly PointStatus[] = ['pass', 'fail', 'todo', 'skip', 'not-run'];

export interface PointRecord {
  /** The probe's column key in reports: `name(device)`. */
  probeKey: string;
  probe: string;
  device?: string;
  point: string;
  status: PointStatus;
  /** The skip or todo reason. */
  reason?: string;
}

/** Name of the point that stands for a probe without points of its own. */
export const PROBE_POINT = '(probe)';

export const pointId = (p: Pick<PointRecord, 'probeKey' | 'point'>): string => `${p.probeKey} :: ${p.point}`;

export function pointsOf(cell: CellRecord): PointRecord[] {
  const out: PointRecord[] = [];
  const seen = new Set<string>();
  for (const row of cell.probes) {
    const base = { probeKey: row.key, probe: row.name, ...(row.device ? { device: row.device } : {}) };
    const r = row.result;
    const add = (p: PointRecord) => {
      // Two points of one probe with one name (a probe looping over cases) stay apart by their order.
      let id = pointId(p);
      for (let n = 2; seen.has(id); n++) id = pointId({ ...p, point: `${p.point} [${n}]` });
      const point = id.slice(p.probeKey.length + 4);
      seen.add(id);
      out.push({ ...p, point });
    };
    if (!r || r.notRun !== undefined) {
      add({ ...base, point: PROBE_POINT, status: 'not-run', ...(r?.notRun ? { reason: r.notRun } : {}) });
      continue;
    }
    if (r.subtests.length === 0) {
      const status: PointStatus = r.skip !== undefined ? 'skip' : r.ok ? (r.todo !== undefined ? 'todo' : 'pass') : 'fail';
      add({ ...base, point: PROBE_POINT, status, ...(r.skip ?? r.todo ? { reason: r.skip ?? r.todo } : {}) });
      continue;
    }
    for (const s of r.subtests) {
      // A harness point judged nothing: not run, with the harness's reason.
      const status: PointStatus = s.skip !== undefined ? 'skip' : s.ok ? 'pass' : s.todo !== undefined ? 'todo' : s.harness !== undefined ? 'not-run' : 'fail';
      const reason = s.skip ?? (status === 'todo' ? s.todo : undefined) ?? s.harness;
      add({ ...base, point: s.name, status, ...(reason ? { reason } : {}) });
    }
    // A probe with no failing point still fails for a kernel report in its window or an unfinished run (no closing result).
    if ((row.class === 'kernel' || row.class === 'infra') && !r.subtests.some((s) => isFailingPoint(s) || s.harness !== undefined)) {
      add({ ...base, point: PROBE_POINT, status: 'fail', reason: row.class === 'kernel' ? `kernel report: ${r.kernelReports.map((k) => k.title).join(', ')}` : String(r.diagnostics?.error ?? 'did not finish') });
    }
  }
  return out;
}
