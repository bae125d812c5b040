import test from 'ava';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { isProbeName } from '../../src/guest/probes/catalog.ts';
import { KernelBuildError } from '../../src/kernel/build.ts';
import { parseDiff, PatchApplyError, stripPath, type PatchFile } from '../../src/kernel/patches.ts';
import type { LabSpec } from '../../src/lab/types.ts';
import {
  catchLabel, DEFAULT_CATALOGUE_DIR, failuresOf, formatMutantsTable, judgeMutant, loadCatalogue, newFailures, parseMutantHeader, runMutants,
  type MutantPatch, type MutantsSummary,
} from '../../src/run/mutants.ts';
import type { RunResults } from '../../src/results/report.ts';
import { classifyRun, failureFromError, type RunFailure } from '../../src/results/outcome.ts';
import type { KernelReport } from '../../src/report/kernel-report.ts';
import { TAP_STREAM_PROBE, type ProbeResult } from '../../src/results/tap.ts';
import { InfraError, InputError } from '../../src/util/errors.ts';
import { silentProgress } from '../../src/util/progress.ts';

const formatPatch = (subject: string, message: string, diffExtra = '') => `From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001
From: Ada Example <ada@example.org>
Date: Wed, 7 Jan 2026 12:00:00 +0000
Subject: ${subject}

${message}
---
 drivers/vfio/pci/vfio_pci_dmabuf.c | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/drivers/vfio/pci/vfio_pci_dmabuf.c b/drivers/vfio/pci/vfio_pci_dmabuf.c
--- a/drivers/vfio/pci/vfio_pci_dmabuf.c
+++ b/drivers/vfio/pci/vfio_pci_dmabuf.c
@@ -1,3 +1,3 @@
 a
-b
+b2${diffExtra}
 c
--
2.39.5
`;

test('parseMutantHeader: folded subject without [PATCH] prefix, trailer names split on commas and spaces', (t) => {
  const text = formatPatch('[PATCH v2 3/7] vfio/pci: a subject long enough\n to be folded by git', 'Body.\n\nExpected-catch: importer-refusals, revoke-triggers\nexpected-catch: lifetime revoke-triggers');
  t.deepEqual(parseMutantHeader(text, 'x.patch'), {
    subject: 'vfio/pci: a subject long enough to be folded by git',
    expectedCatch: ['importer-refusals', 'revoke-triggers', 'lifetime'],
  });
});

test('parseMutantHeader: a trailer-like line inside the diff does not count', (t) => {
  const text = formatPatch('[PATCH] vfio/pci: x', 'Body without a trailer.', '\n+Expected-catch: dmabuf-fd');
  const err = t.throws(() => parseMutantHeader(text, 'x.patch'), { instanceOf: InputError });
  t.regex(err!.message, /^x\.patch: no "Expected-catch/);
});

test('parseMutantHeader: refuses a patch without Subject, and a name that is no probe name', (t) => {
  t.throws(() => parseMutantHeader('diff --git a/x b/x\n--- a/x\n+++ b/x\n', 'plain.diff'), { message: /plain\.diff: no Subject/ });
  t.throws(() => parseMutantHeader(formatPatch('[PATCH] x', 'Expected-catch: Revoke_Triggers'), 'y.patch'), { message: /"Revoke_Triggers" is not a probe name/ });
});

test('the catalogue: at least 10 numbered patches, each with a subject, a reason, a catcher, and only drivers/vfio/pci changes', async (t) => {
  const all = await loadCatalogue(DEFAULT_CATALOGUE_DIR);
  t.true(all.length >= 10, `${all.length} patches`);
  t.deepEqual(all.map((p) => p.number), all.map((_, k) => k + 1), 'numbered 1..N without gaps');
  for (const p of all) {
    const text = await readFile(p.file, 'utf8');
    t.regex(text, /^Broken on purpose: /m, `${p.name} says what is broken`);
    t.regex(text, /Violates\s+contract\s+section\s+\d/, `${p.name} names the contract rule`);
    const files = parseDiff(text).map((s) => stripPath(s.newPath, 1));
    t.true(files.length > 0, `${p.name} has a diff`);
    for (const n of p.expectedCatch) t.true(isProbeName(n), `${p.name}: Expected-catch ${n} is a probe of guest/probes/catalog.ts`);
    for (const f of files) t.regex(f ?? '', /^drivers\/vfio\/pci\/vfio_pci_(dmabuf|core|config)\.c$/, `${p.name} touches ${f}`);
  }
});

async function tempCatalogue(files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'hwlab-mutants-'));
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, name), text);
  return dir;
}

test('loadCatalogue: number order, --only by number or name, unknown selectors and duplicate numbers refused', async (t) => {
  const p = (s: string) => formatPatch(`[PATCH] ${s}`, 'Expected-catch: dmabuf-fd');
  const dir = await tempCatalogue({ '10-ten.patch': p('ten'), '02-two.patch': p('two'), '1-one.patch': p('one'), 'README.md': 'not a patch' });
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  t.deepEqual((await loadCatalogue(dir)).map((x) => x.name), ['1-one.patch', '02-two.patch', '10-ten.patch']);
  t.deepEqual((await loadCatalogue(dir, ['2', '10-ten'])).map((x) => x.subject), ['two', 'ten']);
  t.deepEqual((await loadCatalogue(dir, ['01'])).map((x) => x.name), ['1-one.patch']);
  await t.throwsAsync(loadCatalogue(dir, ['7']), { message: /--only 7: no such patch/ });
  await writeFile(path.join(dir, '2-again.patch'), p('again'));
  await t.throwsAsync(loadCatalogue(dir), { message: /two patches share the number 2/ });
});

const report = (title: string, line: number, count = 1): KernelReport => ({ kind: 'WARNING', title, count, line, timestampSec: 1, fatal: false, excerpt: title });
const probe = (name: string, failing: string[] = [], extra: Partial<ProbeResult> = {}): ProbeResult => ({
  name,
  ok: failing.length === 0,
  subtests: [{ id: 1, name: 'fine', ok: true }, ...failing.map((n, k) => ({ id: k + 2, name: n, ok: false }))],
  kernelReports: [],
  ...extra,
});
function results(probes: ProbeResult[], opts: { kernelReports?: KernelReport[]; failure?: RunFailure } = {}): RunResults {
  const kernelReports = opts.kernelReports ?? [];
  // As collect() does: one class from the probes, the kernel reports and the run's failure.
  return {
    lab: 'default', startedAt: '', outcome: classifyRun(probes, kernelReports, opts.failure), ...(opts.failure ? { failure: opts.failure } : {}),
    kernel: { kind: 'stock', package: 'p', version: 'v', release: 'r' }, probes, kernelReports, timings: {}, runDir: '/runs/x',
  };
}
const lost: RunFailure = { phase: 'probes', class: 'infra', code: 'ssh-lost', message: 'guest command "node runner": the SSH channel closed without an exit status' };

test('failuresOf: failing subtests per probe, TODO ignored, loose kernel reports and run-level reasons kept apart', (t) => {
  const attributed = report('WARNING in vfio_pci_dma_buf_map', 40);
  const r = results([
    probe('dmabuf-fd', ['slice size is one page']),
    probe('known', [], { ok: false, todo: 'known on 7.2', subtests: [{ id: 1, name: 'x', ok: false, todo: 'known' }] }),
    probe('revoke-triggers', [], { ok: false, kernelReports: [attributed] }),
  ], { kernelReports: [attributed, report('refcount_t: underflow', 90)], failure: { phase: 'probes', class: 'infra', code: 'timeout', message: 'probes timed out after 600 s' } });
  t.deepEqual(failuresOf(r), [
    { probe: 'dmabuf-fd', subtests: ['slice size is one page'], kernelReports: [] },
    { probe: 'revoke-triggers', subtests: [], kernelReports: ['WARNING: WARNING in vfio_pci_dma_buf_map'] },
    { probe: '(kernel)', subtests: ['WARNING: refcount_t: underflow'], kernelReports: [] },
    { probe: '(run)', subtests: ['probes: probes timed out after 600 s'], kernelReports: [] },
  ]);
});

test('failuresOf: a probe whose only non-ok point is a harness point (workers never started) caught nothing', (t) => {
  const harness = { id: 2, name: 'every worker process started its threads within 60 s', ok: false, harness: 'the guest did not start 3 node worker processes in 60 s' };
  const r = results([
    probe('stress', [], { ok: false, subtests: [{ id: 1, name: 'region 2 has at least eight pages', ok: true }, harness] }),
    probe('dmabuf-fd', ['slice size is one page']),
  ]);
  t.deepEqual(failuresOf(r), [{ probe: 'dmabuf-fd', subtests: ['slice size is one page'], kernelReports: [] }]);
  t.deepEqual(failuresOf(results([probe('stress', [], { ok: false, subtests: [harness] })])), []);
});

test('failuresOf: a title seen in a probe and outside every window is loose only for the occurrences no probe holds', (t) => {
  const inProbe = report('WARNING in dma_buf_invalidate_mappings', 40, 3);
  const r = results([probe('revoke-triggers', [], { ok: false, kernelReports: [inProbe] })], { kernelReports: [{ ...inProbe, count: 5 }] });
  t.deepEqual(failuresOf(r), [
    { probe: 'revoke-triggers', subtests: [], kernelReports: ['WARNING: WARNING in dma_buf_invalidate_mappings (x3)'] },
    { probe: '(kernel)', subtests: ['WARNING: WARNING in dma_buf_invalidate_mappings (x2)'], kernelReports: [] },
  ]);
  // Counts differ from run to run; the same title is the same failure.
  const again = results([probe('revoke-triggers', [], { ok: false, kernelReports: [{ ...inProbe, count: 7 }] })], { kernelReports: [{ ...inProbe, count: 9 }] });
  t.deepEqual(newFailures(failuresOf(r), failuresOf(again)), []);
});

test('failuresOf: a probe the lab runs on two devices is told apart by device, and so is its baseline', (t) => {
  const twice = { probes: [{ name: 'revoke-triggers', device: 'nvme0' }, { name: 'revoke-triggers', device: 'shm0' }, { name: 'dmabuf-fd', device: 'shm0' }] } as unknown as LabSpec;
  const r = results([probe('revoke-triggers', ['flr: importer invalidated']), probe('revoke-triggers', ['mem-off: map ENODEV']), probe('dmabuf-fd', ['x'])]);
  const f = failuresOf(r, twice);
  t.deepEqual(f.map(catchLabel), ['revoke-triggers(nvme0)', 'revoke-triggers(shm0)', 'dmabuf-fd']);
  const baseline = failuresOf(results([probe('revoke-triggers', ['flr: importer invalidated']), probe('revoke-triggers'), probe('dmabuf-fd')]), twice);
  t.deepEqual(newFailures(f, baseline).map(catchLabel), ['revoke-triggers(shm0)', 'dmabuf-fd']);
});

test('newFailures: what the baseline shows too is not a catch, even when numbers in the names differ', (t) => {
  const baseline = failuresOf(results([probe('reset-and-mem-toggle', ['dma-buf (ino 123) gone from bufinfo after closing'])]));
  const run = failuresOf(results([
    probe('reset-and-mem-toggle', ['dma-buf (ino 4711) gone from bufinfo after closing']),
    probe('dmabuf-bad-inputs', ['flags_nonzero: flags = 1 -> EINVAL']),
  ]));
  t.deepEqual(newFailures(run, baseline), [{ probe: 'dmabuf-bad-inputs', subtests: ['flags_nonzero: flags = 1 -> EINVAL'], kernelReports: [] }]);
  t.deepEqual(newFailures(run, []), run);
});

const mutant: MutantPatch = {
  name: '16-reserved-flags-ignored.patch', number: 16, file: '/x/16-reserved-flags-ignored.patch',
  subject: 'vfio/pci: ignore the reserved flags', expectedCatch: ['dmabuf-bad-inputs', 'export-ranges'],
};
const lab = { probes: [{ name: 'dmabuf-bad-inputs', device: 'shm0', params: {} }] } as unknown as LabSpec;

test('judgeMutant: caught, with the expected probes that caught it and those the lab does not run', (t) => {
  const o = judgeMutant(mutant, lab, { results: results([probe('dmabuf-bad-inputs', ['flags_nonzero: flags = 1 -> EINVAL'])]) }, [], 61);
  t.is(o.verdict, 'caught');
  t.deepEqual(o.expectedHit, ['dmabuf-bad-inputs']);
  t.deepEqual(o.expectedNotInLab, ['export-ranges']);
  t.is(o.runDir, '/runs/x');
});

test('judgeMutant: a clean run, or one failing only as the baseline does, SURVIVED', (t) => {
  t.is(judgeMutant(mutant, lab, { results: results([probe('dmabuf-bad-inputs')]) }, [], 1).verdict, 'SURVIVED');
  const failing = results([probe('dmabuf-bad-inputs', ['probe: PROBE|GET -> OK'])]);
  t.is(judgeMutant(mutant, lab, { results: failing }, failuresOf(failing), 1).verdict, 'SURVIVED');
});

test('judgeMutant: a run that only broke (runner lost, TAP cut off, no failing subtest or kernel report) is infra, so inconclusive', (t) => {
  const cutOff = results([{ name: 'dmabuf-export', ok: false, subtests: [{ id: 1, name: 'fine', ok: true }], kernelReports: [] }, { name: TAP_STREAM_PROBE, ok: false, subtests: [], kernelReports: [] }], { failure: lost });
  t.is(cutOff.outcome.class, 'infra');
  const o = judgeMutant(mutant, lab, { results: cutOff }, [], 1);
  t.is(o.verdict, 'inconclusive');
  t.deepEqual(o.caughtBy, []);
  t.regex(o.message ?? '', /SSH channel closed/);
  t.regex(formatMutantsTable({ baseline: null, mutants: [o] }), /16-reserved-flags-ignored\.patch: inconclusive: .*--only 16/);
  // The same run with a kernel report in the log is a catch: the kernel said what broke.
  const oops = report('BUG: unable to handle page fault', 7);
  const withReport = results(cutOff.probes, { kernelReports: [oops], failure: lost });
  t.is(withReport.outcome.class, 'kernel');
  t.is(judgeMutant(mutant, lab, { results: withReport }, [], 1).verdict, 'caught');
  // An error that escaped the run is judged by its class too.
  t.is(judgeMutant(mutant, lab, { error: new Error('qemu-img: no space left') }, [], 1).verdict, 'inconclusive');
});

test('judgeMutant: a patch that does not apply or build is a catalogue error, not a catch', (t) => {
  const pf: PatchFile = { name: mutant.name, origin: mutant.file, sha256: '0', text: '', strip: 1 };
  const stopped = (err: Error) => results([], { failure: failureFromError('prepare', err) });
  const apply = judgeMutant(mutant, lab, { results: stopped(new PatchApplyError(pf, 0, 1, [{ file: 'drivers/vfio/pci/vfio_pci_dmabuf.c', hunk: 1, reason: 'FAILED' }], [], '')) }, [], 1);
  t.is(apply.verdict, 'did-not-apply');
  t.regex(apply.message ?? '', /does not apply/);
  t.is(judgeMutant(mutant, lab, { results: stopped(new KernelBuildError('make failed: vfio_pci_dmabuf.c:12: error: x')) }, [], 1).verdict, 'build-failed');
  t.is(judgeMutant(mutant, lab, { results: stopped(new InputError('config fragment x: ENOENT')) }, [], 1).verdict, 'error');
});

test('runMutants: baseline first, one run per patch with it as the extra patch; summary and table written; ok only if all caught', async (t) => {
  const p = (s: string) => formatPatch(`[PATCH] ${s}`, 'Expected-catch: dmabuf-bad-inputs');
  const dir = await tempCatalogue({ '01-caught.patch': p('caught'), '02-survives.patch': p('survives'), '03-no-apply.patch': p('no apply') });
  const runsDir = await mkdtemp(path.join(tmpdir(), 'hwlab-mutants-runs-'));
  t.teardown(() => Promise.all([rm(dir, { recursive: true, force: true }), rm(runsDir, { recursive: true, force: true })]));
  const calls: Array<string[] | undefined> = [];
  const fakeLab = { file: '/labs/default.yaml', name: 'default', probes: [{ name: 'dmabuf-bad-inputs', device: 'shm0', params: {} }] } as unknown as LabSpec;
  const summary: MutantsSummary = await runMutants(fakeLab, {
    progress: silentProgress(), dir, runsDir,
    runOne: async (_lab, opts) => {
      calls.push(opts.extraPatches?.map((f) => path.basename(f)));
      const extra = opts.extraPatches?.[0] ?? '';
      if (extra.endsWith('03-no-apply.patch')) {
        return { results: results([], { failure: failureFromError('prepare', new PatchApplyError({ name: '03-no-apply.patch', origin: extra, sha256: '0', text: '', strip: 1 }, 1, 2, [], [], 'patch: **** malformed')) }) };
      }
      return { results: results([probe('dmabuf-bad-inputs', extra.endsWith('01-caught.patch') ? ['flags_nonzero: flags = 1 -> EINVAL'] : [])]) };
    },
  });
  t.deepEqual(calls, [undefined, ['01-caught.patch'], ['02-survives.patch'], ['03-no-apply.patch']]);
  t.deepEqual(summary.mutants.map((m) => m.verdict), ['caught', 'SURVIVED', 'did-not-apply']);
  t.is(summary.baseline?.class, 'pass');
  t.false(summary.ok);
  t.is(path.dirname(summary.dir), runsDir);
  t.deepEqual((await readdir(summary.dir)).sort(), ['summary.json', 'table.txt']);
  const saved = JSON.parse(await readFile(path.join(summary.dir, 'summary.json'), 'utf8')) as MutantsSummary;
  t.deepEqual(saved.mutants.map((m) => m.patch), ['01-caught.patch', '02-survives.patch', '03-no-apply.patch']);
  const table = formatMutantsTable(summary);
  t.regex(table, /^01-caught\s+caught\s+caught\s+dmabuf-bad-inputs\s+yes$/m);
  t.regex(table, /^02-survives\s+survives\s+SURVIVED\s+-\s+no$/m);
  t.regex(table, /^03-no-apply\s+no apply\s+did-not-apply\s+-\s+-$/m);
  t.regex(table, /03-no-apply\.patch: did-not-apply \(an error in the catalogue, not a catch\)/);
  t.regex(table, /^ {2}dmabuf-bad-inputs: flags_nonzero: flags = 1 -> EINVAL$/m);
  t.regex(table, /^1\/3 caught, 1 SURVIVED, 1 did-not-apply$/m);
});

test('runMutants --focus: the baseline runs every probe, each patch only its Expected-catch probes; a patch naming none is refused up front', async (t) => {
  const dir = await tempCatalogue({
    '01-a.patch': formatPatch('[PATCH] a', 'Expected-catch: dmabuf-fd'),
    '02-b.patch': formatPatch('[PATCH] b', 'Expected-catch: dmabuf-bad-inputs, lifetime'),
  });
  const runsDir = await mkdtemp(path.join(tmpdir(), 'hwlab-mutants-runs-'));
  t.teardown(() => Promise.all([rm(dir, { recursive: true, force: true }), rm(runsDir, { recursive: true, force: true })]));
  const lab = { file: '/labs/default.yaml', name: 'default', probes: ['dmabuf-fd', 'dmabuf-bad-inputs', 'stress'].map((name) => ({ name, device: 'shm0', params: {} })) } as unknown as LabSpec;
  const ran: string[][] = [];
  const summary = await runMutants(lab, {
    progress: silentProgress(), dir, runsDir, focus: true,
    runOne: async (l) => {
      ran.push(l.probes.map((p) => p.name));
      return { results: results(l.probes.map((p) => probe(p.name, ran.length > 1 ? ['broken'] : []))) };
    },
  });
  t.deepEqual(ran, [['dmabuf-fd', 'dmabuf-bad-inputs', 'stress'], ['dmabuf-fd'], ['dmabuf-bad-inputs']]);
  t.deepEqual(summary.mutants.map((m) => m.verdict), ['caught', 'caught']);

  const none = { ...lab, probes: [lab.probes[2]] } as LabSpec;
  await t.throwsAsync(runMutants(none, { progress: silentProgress(), dir, runsDir, focus: true, runOne: async () => { throw new Error('must not run'); } }),
    { message: /--focus: 01-a\.patch \(Expected-catch: dmabuf-fd\); 02-b\.patch .* names no probe of \/labs\/default\.yaml/ });
});

test('runMutants: a baseline that does not finish stops the catalogue (nothing could be judged)', async (t) => {
  const dir = await tempCatalogue({ '01-x.patch': formatPatch('[PATCH] x', 'Expected-catch: dmabuf-fd') });
  const runsDir = await mkdtemp(path.join(tmpdir(), 'hwlab-mutants-runs-'));
  t.teardown(() => Promise.all([rm(dir, { recursive: true, force: true }), rm(runsDir, { recursive: true, force: true })]));
  let runs = 0;
  await t.throwsAsync(runMutants({ file: '/l.yaml', name: 'l', probes: [] } as unknown as LabSpec, {
    progress: silentProgress(), dir, runsDir,
    runOne: async () => { runs++; throw new InfraError('gcc is not installed'); },
  }), { message: /baseline run of \/l\.yaml .* did not finish: gcc is not installed/ });
  t.is(runs, 1);
});

test('formatMutantsTable: catchers listed once and cut to fit, subtests capped under the table, baseline failures named', (t) => {
  const many = Array.from({ length: 9 }, (_, k) => ({ probe: `probe-number-${k}`, subtests: [`s${k}`], kernelReports: [] }));
  const m = {
    patch: '14-full-bar-refused.patch', number: 14, subject: 'vfio/pci: x', verdict: 'caught' as const, expectedCatch: ['probe-number-0'],
    expectedHit: ['probe-number-0'], expectedNotInLab: [], seconds: 1,
    caughtBy: [...many, { probe: 'probe-number-0', subtests: ['a', 'b', 'c', 'd', 'e', 'f'], kernelReports: ['WARNING: w'] }],
  };
  const table = formatMutantsTable({ baseline: { class: 'fail', failures: [{ probe: 'revoke-triggers', device: 'shm0', subtests: ['edu DMA'], kernelReports: [] }] }, mutants: [m] });
  const row = table.split('\n')[2];
  t.regex(row, /caught   probe-number-0, probe-number-1, probe-number-2 \(\+6\)  yes$/);
  t.regex(table, /^ {2}probe-number-0: d$/m);
  t.regex(table, /^ {2}probe-number-0: \.\.\. and 3 more$/m);
  t.notRegex(table, /probe-number-0: e$/m);
  t.regex(table, /^baseline FAIL .*do not count as catches:\n {2}revoke-triggers\(shm0\): edu DMA$/m);
});

test('formatMutantsTable: a kernel report repeated in one probe is one line with its count', (t) => {
  // Attribution keeps the three hung-task reports of the probe as one entry with count 3.
  const hung: KernelReport = { ...report('INFO: task hung in vfio_pci_dma_buf_move', 100, 3), kind: 'hung task', timestampSec: 30 };
  const run = results([probe('importer-refusals', ['finishes within 120 s'], { kernelReports: [hung] })]);
  const o = judgeMutant(mutant, lab, { results: run }, [], 1);
  const table = formatMutantsTable({ baseline: null, mutants: [o] });
  t.regex(table, /importer-refusals: kernel hung task: INFO: task hung in vfio_pci_dma_buf_move \(x3\)/);
  t.is(table.match(/task hung in/g)?.length, 1);
});
