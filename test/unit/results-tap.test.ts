import test from 'ava';
import { parseProbeTap, probeStatus, tapSummary, TAP_STREAM_PROBE } from '../../src/results/tap.ts';

const ALL_PASS = `TAP version 14
# Subtest: dmabuf-export
    1..2
    ok 1 - VFIO_DEVICE_FEATURE_DMA_BUF returns an fd
    ok 2 - fd size matches BAR2
ok 1 - dmabuf-export # time=12.3ms
# Subtest: bar-mmap
    1..1
    ok 1 - mmap BAR0
ok 2 - bar-mmap # time=1.5s
1..2
`;

test('all-pass stream: one result per probe with subtests and durations', (t) => {
  const r = parseProbeTap(ALL_PASS);
  t.deepEqual(
    r.map((p) => [p.name, p.ok, p.subtests.length, p.durationMs]),
    [
      ['dmabuf-export', true, 2, 12.3],
      ['bar-mmap', true, 1, 1500],
    ],
  );
  t.deepEqual(r[0].subtests[1], { id: 2, name: 'fd size matches BAR2', ok: true });
  t.deepEqual(tapSummary(r), { total: 2, pass: 2, fail: 0, skip: 0, todo: 0 });
});

test('failing subtest keeps its YAML diagnostics and fails the probe', (t) => {
  const r = parseProbeTap(`TAP version 14
# Subtest: dmabuf-move
    1..3
    ok 1 - export
    not ok 2 - move_notify revokes mapping
      ---
      errno: EFAULT
      wanted: 0
      found: -14
      at: probes/dmabuf.c:212
      ...
    ok 3 - cleanup
not ok 1 - dmabuf-move # time=40ms
1..1
`);
  t.is(r.length, 1);
  const [p] = r;
  t.false(p.ok);
  t.is(probeStatus(p), 'FAIL');
  const failed = p.subtests.find((s) => !s.ok);
  t.deepEqual(failed, {
    id: 2,
    name: 'move_notify revokes mapping',
    ok: false,
    diagnostics: { errno: 'EFAULT', wanted: 0, found: -14, at: 'probes/dmabuf.c:212' },
  });
  t.deepEqual(tapSummary(r), { total: 1, pass: 0, fail: 1, skip: 0, todo: 0 });
});

test('skip and todo at both levels', (t) => {
  const r = parseProbeTap(`TAP version 14
# Subtest: p2p-nvme
    1..0 # SKIP no CMB on this endpoint
ok 1 - p2p-nvme # SKIP no CMB on this endpoint
# Subtest: known-bad
    1..2
    ok 1 - setup
    not ok 2 - revoke
ok 2 - known-bad # TODO fails on 7.2, fixed by the patch under test
# Subtest: mixed
    1..3
    ok 1 - a
    ok 2 - b # SKIP needs iommu=on
    not ok 3 - c # TODO upstream bug
not ok 3 - truly-todo # TODO whole probe expected to fail
1..3
`);
  t.is(r.length, 3);
  t.is(r[0].skip, 'no CMB on this endpoint');
  t.is(probeStatus(r[0]), 'SKIP');
  t.is(r[1].todo, 'fails on 7.2, fixed by the patch under test');
  t.is(probeStatus(r[1]), 'TODO');
  // The third point is "not ok # TODO": ok for the run, but visibly todo.
  t.true(r[2].ok);
  t.is(probeStatus(r[2]), 'TODO');
  t.is(r[2].subtests[1].skip, 'needs iommu=on');
  t.deepEqual(r[2].subtests[2], { id: 3, name: 'c', ok: false, todo: 'upstream bug' });
  t.deepEqual(tapSummary(r), { total: 3, pass: 0, fail: 0, skip: 1, todo: 2 });
  t.false(r.some((p) => p.name === TAP_STREAM_PROBE));
});

test('truncated stream: the interrupted probe and the stream itself fail', (t) => {
  const r = parseProbeTap(`TAP version 14
# Subtest: bar-mmap
    1..1
    ok 1 - mmap BAR0
ok 1 - bar-mmap # time=3ms
# Subtest: dmabuf-move
    1..4
    ok 1 - export
    ok 2 - map
`);
  t.deepEqual(
    r.map((p) => [p.name, p.ok]),
    [
      ['bar-mmap', true],
      ['dmabuf-move', false],
      [TAP_STREAM_PROBE, false],
    ],
  );
  t.is(r[1].subtests.length, 2);
  const reasons = r[2].diagnostics?.reasons as string[];
  t.true(reasons.some((x) => x.includes("inside subtest 'dmabuf-move'")));
  t.true(reasons.some((x) => x.startsWith('no plan')));
  t.is(tapSummary(r).fail, 2);
});

test('fewer points than planned is a stream failure', (t) => {
  const r = parseProbeTap(`TAP version 14
1..3
# Subtest: a
    1..1
    ok 1 - x
ok 1 - a
`);
  const stream = r.find((p) => p.name === TAP_STREAM_PROBE);
  t.truthy(stream);
  t.deepEqual(stream?.diagnostics?.reasons, ['incorrect number of tests: planned 3, got 1']);
});

test('a subtest whose own plan is short fails even under an ok point', (t) => {
  const r = parseProbeTap(`TAP version 14
# Subtest: a
    1..3
    ok 1 - x
ok 1 - a
1..1
`);
  t.false(r[0].ok);
  t.deepEqual(r[0].diagnostics?.tapErrors, ['incorrect number of tests']);
});

test('bail out is a stream failure with its reason', (t) => {
  const r = parseProbeTap(`TAP version 14
1..2
# Subtest: a
    1..1
    ok 1 - x
ok 1 - a
Bail out! guest runner lost /dev/vfio/12
`);
  const stream = r.find((p) => p.name === TAP_STREAM_PROBE);
  t.truthy(stream);
  t.true((stream?.diagnostics?.reasons as string[]).includes('bail out: guest runner lost /dev/vfio/12'));
  t.is(tapSummary(r).fail, 1);
});

test('empty or non-TAP output is never a pass', (t) => {
  for (const text of ['', 'Segmentation fault\n']) {
    const r = parseProbeTap(text);
    t.is(r.length, 1);
    t.is(r[0].name, TAP_STREAM_PROBE);
    t.false(r[0].ok);
  }
});
