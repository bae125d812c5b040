// What changed since the baseline night, point by point. Pure functions over
// point records, so the categories are tested on synthetic histories without
// a guest: the nightly digest leads with these.
import { pointId, type PointRecord, type PointStatus } from './points.ts';

/**
 *   new-failure       fails now, did not before (and no rerun passed it)
 *   flaky             failed now where it did not before, but passed when rerun
 *   fixed             failed before, passes now
 *   still-failing     failed before and still fails (or now fails as expected)
 *   known-now-passes  failed as expected (TODO) before and passes now: the expectation is stale
 *   new-skip          skips now, did not before
 *   new-point         not in the baseline (or there is no baseline yet)
 *   gone              in the baseline, not in this run
 *   not-run           an earlier probe hung, so this says nothing
 *   unchanged         the same as before
 */
export type PointCategory = 'new-failure' | 'flaky' | 'fixed' | 'still-failing' | 'known-now-passes' | 'new-skip' | 'new-point' | 'gone' | 'not-run' | 'unchanged';

/** Digest order: what needs a human first. */
export const CATEGORY_ORDER: readonly PointCategory[] = ['new-failure', 'known-now-passes', 'fixed', 'flaky', 'new-point', 'new-skip', 'gone', 'still-failing', 'not-run', 'unchanged'];

export const CATEGORY_TITLE: Record<PointCategory, string> = {
  'new-failure': 'new failures',
  flaky: 'flaky (failed, then passed when rerun)',
  fixed: 'fixed',
  'still-failing': 'still failing (known)',
  'known-now-passes': 'known failure now passes (stale expect_fail)',
  'new-skip': 'new skips',
  'new-point': 'new points',
  gone: 'gone',
  'not-run': 'not run',
  unchanged: 'unchanged',
};

export interface PointChange {
  probeKey: string;
  point: string;
  category: PointCategory;
  before?: PointStatus;
  now?: PointStatus;
  /** The point's status in each rerun, when it was rerun. */
  reruns?: PointStatus[];
  /** The skip or todo reason now (or before, for a point that is gone). */
  reason?: string;
}

const failing = (s: PointStatus | undefined) => s === 'fail';

/** A point's category from its status before and now, before reruns. */
export function categoryOf(before: PointStatus | undefined, now: PointStatus | undefined): PointCategory {
  if (now === undefined) return 'gone';
  if (before === undefined) return 'new-point';
  if (now === 'not-run') return 'not-run';
  if (now === 'fail') return before === 'fail' || before === 'todo' ? 'still-failing' : 'new-failure';
  if (now === 'todo') return before === 'fail' || before === 'todo' ? 'still-failing' : 'new-failure';
  if (now === 'skip') return before === 'skip' ? 'unchanged' : 'new-skip';
  // now === 'pass'
  if (before === 'fail') return 'fixed';
  if (before === 'todo') return 'known-now-passes';
  return 'unchanged';
}

/**
 * Every point of the baseline and of this run, classified. A new failure
 * (or a failing new point) that passed in any rerun is flaky.
 */
export function classifyPoints(baseline: readonly PointRecord[] | undefined, current: readonly PointRecord[], reruns: ReadonlyMap<string, PointStatus[]> = new Map()): PointChange[] {
  const before = new Map((baseline ?? []).map((p) => [pointId(p), p]));
  const out: PointChange[] = [];
  for (const p of current) {
    const b = before.get(pointId(p));
    let category = categoryOf(b?.status, p.status);
    const again = reruns.get(pointId(p));
    if (again?.includes('pass') && (category === 'new-failure' || (category === 'new-point' && p.status === 'fail'))) category = 'flaky';
    out.push({
      probeKey: p.probeKey, point: p.point, category,
      ...(b ? { before: b.status } : {}), now: p.status,
      ...(again ? { reruns: again } : {}),
      ...(p.reason ? { reason: p.reason } : {}),
    });
    before.delete(pointId(p));
  }
  for (const b of before.values()) out.push({ probeKey: b.probeKey, point: b.point, category: 'gone', before: b.status, ...(b.reason ? { reason: b.reason } : {}) });
  return out;
}

/** The points to rerun in a fresh guest: new failures and failing new points (a new point nobody has seen pass is news too). */
export function rerunCandidates(baseline: readonly PointRecord[] | undefined, current: readonly PointRecord[]): PointRecord[] {
  return classifyPoints(baseline, current).flatMap((c) => (c.category === 'new-failure' || (c.category === 'new-point' && failing(c.now)))
    ? current.filter((p) => p.probeKey === c.probeKey && p.point === c.point)
    : []);
}

/** Whether a change is news a human must look at (exit 1): a new failure or a failing point nobody has seen before. */
export function isRegression(c: PointChange): boolean {
  return c.category === 'new-failure' || (c.category === 'new-point' && failing(c.now));
}

/** A probe the lab expects to fail (expect_fail) that has no failing point left: the expectation is stale. */
export interface StaleExpectation {
  probeKey: string;
  reason: string;
  points: number;
}

export function staleExpectations(expected: ReadonlyArray<{ probeKey: string; reason: string }>, current: readonly PointRecord[]): StaleExpectation[] {
  const out: StaleExpectation[] = [];
  for (const e of expected) {
    const pts = current.filter((p) => p.probeKey === e.probeKey);
    // A probe that did not run, or only skipped, proves nothing either way.
    if (pts.length === 0 || !pts.some((p) => p.status === 'pass')) continue;
    if (pts.every((p) => p.status === 'pass' || p.status === 'skip')) out.push({ probeKey: e.probeKey, reason: e.reason, points: pts.length });
  }
  return out;
}

export function countByCategory(changes: readonly PointChange[]): Record<PointCategory, number> {
  const counts = Object.fromEntries(CATEGORY_ORDER.map((c) => [c, 0])) as Record<PointCategory, number>;
  for (const c of changes) counts[c.category]++;
  return counts;
}
