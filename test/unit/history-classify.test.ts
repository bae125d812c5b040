// The nightly classifier over synthetic histories: every category, reruns
// turning new failures into flakes, regressions for the exit code, and stale
// expect_fail.
import test from 'ava';
import { classifyPoints, countByCategory, isRegression, rerunCandidates, staleExpectations, type PointCategory } from '../../src/history/classify.ts';
import type { PointRecord, PointStatus } from '../../src/history/points.ts';

const pt = (probeKey: string, point: string, status: PointStatus): PointRecord => ({ probeKey, probe: probeKey.replace(/\(.*/, ''), point, status });
const P = 'export-ranges(shm0)';

const baseline = [
  pt(P, 'stays passing', 'pass'),
  pt(P, 'breaks', 'pass'),
  pt(P, 'was broken', 'fail'),
  pt(P, 'still broken', 'fail'),
  pt(P, 'known bug', 'todo'),
  pt(P, 'known bug, still', 'todo'),
  pt(P, 'starts skipping', 'pass'),
  pt(P, 'removed', 'pass'),
  pt(P, 'wobbles', 'pass'),
  pt(P, 'blocked by a hang', 'pass'),
];
const tonight = [
  pt(P, 'stays passing', 'pass'),
  pt(P, 'breaks', 'fail'),
  pt(P, 'was broken', 'pass'),
  pt(P, 'still broken', 'fail'),
  pt(P, 'known bug', 'pass'),
  pt(P, 'known bug, still', 'todo'),
  pt(P, 'starts skipping', 'skip'),
  pt(P, 'wobbles', 'fail'),
  pt(P, 'blocked by a hang', 'not-run'),
  pt(P, 'added', 'pass'),
  pt(P, 'added, failing', 'fail'),
];

test('every category from a baseline and tonight, with reruns deciding flaky', (t) => {
  const reruns = new Map<string, PointStatus[]>([[`${P} :: wobbles`, ['fail', 'pass']], [`${P} :: breaks`, ['fail', 'fail']]]);
  const got = Object.fromEntries(classifyPoints(baseline, tonight, reruns).map((c) => [c.point, c.category]));
  t.deepEqual(got, {
    'stays passing': 'unchanged',
    breaks: 'new-failure',
    'was broken': 'fixed',
    'still broken': 'still-failing',
    'known bug': 'known-now-passes',
    'known bug, still': 'still-failing',
    'starts skipping': 'new-skip',
    wobbles: 'flaky',
    'blocked by a hang': 'not-run',
    added: 'new-point',
    'added, failing': 'new-point',
    removed: 'gone',
  } satisfies Record<string, PointCategory>);
  const counts = countByCategory(classifyPoints(baseline, tonight, reruns));
  t.is(counts['new-failure'], 1);
  t.is(counts.flaky, 1);
  t.is(Object.values(counts).reduce((a, b) => a + b, 0), 12);
});

test('reruns are asked for new failures and failing new points only; those are the regressions', (t) => {
  t.deepEqual(rerunCandidates(baseline, tonight).map((p) => p.point), ['breaks', 'wobbles', 'added, failing']);
  const changes = classifyPoints(baseline, tonight, new Map([[`${P} :: added, failing`, ['pass']]]));
  t.deepEqual(changes.filter(isRegression).map((c) => c.point), ['breaks', 'wobbles']);
  // A flaky point keeps what the reruns said.
  t.deepEqual(changes.find((c) => c.point === 'added, failing'), { probeKey: P, point: 'added, failing', category: 'flaky', now: 'fail', reruns: ['pass'] });
});

test('without a baseline every point is new, and only failing ones are regressions', (t) => {
  const changes = classifyPoints(undefined, tonight);
  t.true(changes.every((c) => c.category === 'new-point'));
  t.deepEqual(changes.filter(isRegression).map((c) => c.point), ['breaks', 'still broken', 'wobbles', 'added, failing']);
});

test('a point that now fails as expected after passing is a new failure; an expected failure that was a real one is still failing', (t) => {
  t.is(classifyPoints([pt(P, 'x', 'pass')], [pt(P, 'x', 'todo')])[0].category, 'new-failure');
  t.is(classifyPoints([pt(P, 'x', 'fail')], [pt(P, 'x', 'todo')])[0].category, 'still-failing');
  t.is(classifyPoints([pt(P, 'x', 'skip')], [pt(P, 'x', 'skip')])[0].category, 'unchanged');
});

test('an expect_fail is stale when its probe ran and no point failed', (t) => {
  const M = 'importer-multirange(shm0)';
  const expected = [{ probeKey: M, reason: 'dma_iova_link offset 0' }, { probeKey: 'lifetime(shm0)', reason: 'x' }, { probeKey: 'rough-edges(shm0)', reason: 'y' }];
  const fixed = [pt(M, 'map', 'pass'), pt(M, 'range 0 bytes', 'pass'), pt(M, 'range 1 bytes', 'skip'), pt('lifetime(shm0)', 'leak', 'todo'), pt('rough-edges(shm0)', 'a', 'skip')];
  t.deepEqual(staleExpectations(expected, fixed), [{ probeKey: M, reason: 'dma_iova_link offset 0', points: 3 }]);
  t.deepEqual(staleExpectations(expected, [pt(M, 'map', 'todo')]), []);
});
