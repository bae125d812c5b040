import test from 'ava';
import { ProbeWatchdog, type ProbeTimeout } from '../../src/run/probe-watchdog.ts';
import { markHungProbe, parseProbeTap, TAP_STREAM_PROBE } from '../../src/results/tap.ts';
import { failuresOf, judgeMutant, type MutantPatch } from '../../src/run/mutants.ts';
import type { RunResults } from '../../src/results/report.ts';
import { classifyRun } from '../../src/results/outcome.ts';
import type { LabSpec } from '../../src/lab/types.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('watchdog: a probe that closes in time never fires; the next one that stalls does, with its index', async (t) => {
  const fired: ProbeTimeout[] = [];
  const w = new ProbeWatchdog([{ name: 'a', timeoutSec: 0.08 }, { name: 'b', timeoutSec: 0.08 }], (x) => fired.push(x));
  // Lines split across chunks anywhere, as ssh delivers them.
  w.push('TAP version 14\n1..2\n# Subt');
  w.push('est: a\n    ok 1 - x\n    1..1\nok 1 - a\n');
  await sleep(120);
  t.deepEqual(fired, [], 'a closed before its budget');
  w.push('# Subtest: b\n    ok 1 - y\n');
  t.is(w.current, 1);
  await sleep(120);
  t.deepEqual(fired, [{ index: 1, name: 'b', timeoutSec: 0.08 }]);
  t.deepEqual(w.timedOut, fired[0]);
  t.is(w.startedCount, 2);
  w.stop();
});

test('watchdog: indented points inside a subtest do not stop the clock; stop() cancels it', async (t) => {
  const fired: ProbeTimeout[] = [];
  const w = new ProbeWatchdog([{ name: 'a', timeoutSec: 0.05 }], (x) => fired.push(x));
  w.push('# Subtest: a\n    ok 1 - x\n    not ok 2 - y\n');
  await sleep(90);
  t.is(fired.length, 1, 'nested points are not the closing point');
  const w2 = new ProbeWatchdog([{ name: 'a', timeoutSec: 0.05 }], (x) => fired.push(x));
  w2.push('# Subtest: a\n');
  w2.stop();
  await sleep(90);
  t.is(fired.length, 1);
});

const partialTap = `TAP version 14
1..3
# Subtest: dmabuf-export
    ok 1 - export
    1..1
ok 1 - dmabuf-export
# Subtest: importer-refusals
    ok 1 - attach refuses no-p2p
`;
const hung = { index: 1, name: 'importer-refusals', timeoutSec: 120, blockedTasks: 'task node tid 201 state D (disk sleep)\n  [<0>] vfio_pci_dma_buf_move+0x1a0/0x230 [vfio_pci_core]' };

test('markHungProbe: the hung probe fails with a timeout point and the stacks; later probes are not run; earlier results stay', (t) => {
  const probes = parseProbeTap(partialTap);
  markHungProbe(probes, hung, ['dmabuf-export', 'importer-refusals', 'lifetime']);
  t.deepEqual(probes.map((p) => [p.name, p.ok, p.notRun !== undefined]), [
    ['dmabuf-export', true, false], ['importer-refusals', false, false], ['lifetime', false, true], [TAP_STREAM_PROBE, false, false],
  ]);
  const h = probes[1];
  t.deepEqual(h.subtests.map((s) => [s.name, s.ok]), [['attach refuses no-p2p', true], ['finishes within 120 s', false]]);
  t.regex(String(h.diagnostics?.blockedTasks), /vfio_pci_dma_buf_move/);
  t.regex(String(probes[2].diagnostics?.error), /not run: importer-refusals \(probe 2\) did not finish in 120 s/);
});

test('a hung probe catches a mutant; the probes it kept from running do not', (t) => {
  const probes = parseProbeTap(partialTap);
  markHungProbe(probes, hung, ['dmabuf-export', 'importer-refusals', 'lifetime']);
  const results: RunResults = {
    lab: 'default', startedAt: '', outcome: classifyRun(probes, []), kernel: { kind: 'stock', package: 'p', version: 'v', release: 'r' }, probes, kernelReports: [],
    timings: {}, runDir: '/runs/x',
  };
  // The hung probe's own point is the evidence: a fail, not infra.
  t.is(results.outcome.class, 'fail');
  t.regex(results.outcome.title, /^importer-refusals: finishes within 120 s/);
  const lab = { probes: ['dmabuf-export', 'importer-refusals', 'lifetime'].map((name) => ({ name, device: 'shm0', params: {}, timeoutSec: 120 })) } as unknown as LabSpec;
  const failures = failuresOf(results, lab);
  t.false(failures.some((c) => c.probe === 'lifetime'));
  const patch: MutantPatch = { name: '21-x.patch', number: 21, file: '/x/21-x.patch', subject: 's', expectedCatch: ['importer-refusals'] };
  const o = judgeMutant(patch, lab, { results }, [], 1);
  t.is(o.verdict, 'caught');
  t.deepEqual(o.expectedHit, ['importer-refusals']);
});
