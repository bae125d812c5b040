// The night's logic without a guest: runNightly with a stand-in for runLab
// that writes what a run leaves (results.json, lab.resolved.json) from a
// script, so infra retries, reruns with only the affected probes, baselines,
// title tracking, stale expectations and exit codes are checked in seconds.
// The real runs are test/e2e/nightly.test.ts.
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openHistory, type HistoryDb } from '../../src/history/db.ts';
import { listRuns } from '../../src/history/query.ts';
import { loadLab } from '../../src/lab/load.ts';
import { probeKey, selectProbes } from '../../src/lab/select.ts';
import type { LabSpec } from '../../src/lab/types.ts';
import { formatDigestMarkdown, formatDigestText, writeDigest } from '../../src/nightly/digest.ts';
import { runNightly, type LabRunner, type NightDigest } from '../../src/nightly/nightly.ts';
import type { KernelReport } from '../../src/report/kernel-report.ts';
import type { OutcomeClass } from '../../src/results/outcome.ts';
import { classifyRun } from '../../src/results/outcome.ts';
import type { RunResults } from '../../src/results/report.ts';
import type { ProbeResult } from '../../src/results/tap.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { tempDir } from './helpers/temp.ts';
import { ensureSqliteAddon } from '../../src/history/addon.ts';

// Run without npm's pretest (npx ava ...) in a checkout the hwlab wrapper installed: the addon is built here once.
test.before(() => ensureSqliteAddon());

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** One scripted run: which points fail or are TODO (others pass), or an infra stop; the kernel release; reports. */
interface Script { infra?: boolean; fail?: string[]; todo?: string[]; release?: string; reports?: string[] }

const POINTS = ['first', 'second'];

/** A runLab stand-in: each call takes the next script entry and leaves a run folder as runLab does. */
function scriptedRunner(scripts: Script[], calls: Array<{ runDir: string; probes: string[] }>): LabRunner {
  return async (full: LabSpec, opts) => {
    const lab = opts.onlyProbes?.length ? selectProbes(full, opts.onlyProbes) : full;
    const s = scripts.shift() ?? {};
    calls.push({ runDir: opts.runDir, probes: lab.probes.map(probeKey) });
    mkdirSync(opts.runDir, { recursive: true });
    writeFileSync(path.join(opts.runDir, 'lab.resolved.json'), JSON.stringify(lab));
    const reports: KernelReport[] = (s.reports ?? []).map((title) => ({ kind: 'WARNING', title, count: 1, line: 1, fatal: false, excerpt: title }));
    const probes: ProbeResult[] = s.infra ? [] : lab.probes.map((p) => {
      const subtests = POINTS.map((pt, i) => {
        const id = `${probeKey(p)} :: ${pt}`;
        const failing = s.fail?.includes(id) || s.todo?.includes(id);
        return { id: i + 1, name: pt, ok: !failing, ...(s.todo?.includes(id) ? { todo: 'known' } : {}) };
      });
      const bad = subtests.some((x) => !x.ok && x.todo === undefined);
      return { name: p.name, ok: !bad, ...(subtests.some((x) => x.todo) ? { todo: 'known' } : {}), subtests, kernelReports: [] };
    });
    const failure = s.infra ? { phase: 'boot' as const, class: 'infra' as const, code: 'qemu-died', message: 'QEMU died' } : undefined;
    const release = s.release ?? '7.2.13-hwlab';
    const results: RunResults = {
      lab: full.name, startedAt: new Date().toISOString(), runDir: opts.runDir, outcome: classifyRun(probes, reports, failure), ...(failure ? { failure } : {}),
      kernel: { kind: 'source', package: 'linux-source-7.2 7.2.13-1', version: release.replace('-hwlab', ''), release, patches: [], configSha256: 'c0ffee' },
      probes, kernelReports: reports, timings: { total: 1 },
    };
    writeFileSync(path.join(opts.runDir, 'results.json'), JSON.stringify(results));
    return results;
  };
}

interface Ctx { db: HistoryDb; dir: string; lab: LabSpec }
async function ctx(labFile = 'labs/smoke.yaml'): Promise<Ctx> {
  const dir = tempDir('hwlab-nightly-');
  return { db: openHistory(path.join(dir, 'history.sqlite')), dir, lab: await loadLab(path.join(repo, labFile)) };
}

async function night(c: Ctx, scripts: Script[], extra: { reruns?: number; infraRetries?: number; only?: string[] } = {}): Promise<{ d: NightDigest; calls: Array<{ runDir: string; probes: string[] }> }> {
  const calls: Array<{ runDir: string; probes: string[] }> = [];
  const d = await runNightly(c.db, [{ series: c.lab.name, lab: c.lab }], {
    progress: silentProgress(), source: c.lab.file, name: c.lab.name, runsDir: c.dir, backoffSec: 0,
    reruns: extra.reruns, infraRetries: extra.infraRetries, onlyProbes: extra.only, runner: scriptedRunner(scripts, calls),
  });
  // Nights of one test must not share a folder (their stamps are milliseconds apart).
  await new Promise((r) => setTimeout(r, 5));
  return { d, calls };
}

const cat = (d: NightDigest, category: string) => d.units[0].changes.filter((c) => c.category === category).map((c) => `${c.probeKey} :: ${c.point}`);
const F = 'importer-refusals(shm0) :: second';

test('first night: every point new, nothing to report; then a new failure that reruns confirm (exit 1), then fixed (exit 0)', async (t) => {
  const c = await ctx();
  const n1 = await night(c, [{}]);
  t.is(n1.d.exitCode, 0);
  t.is(n1.d.verdict, 'nothing-new');
  t.is(n1.d.units[0].counts['new-point'], c.lab.probes.length * 2);
  t.is(n1.d.units[0].kernel.changed, undefined);

  const n2 = await night(c, [{ fail: [F], release: '7.2.14-hwlab' }, { fail: [F] }, { fail: [F] }]);
  t.is(n2.d.exitCode, 1);
  t.deepEqual(cat(n2.d, 'new-failure'), [F]);
  t.deepEqual(n2.calls.slice(1).map((x) => x.probes), [['importer-refusals(shm0)'], ['importer-refusals(shm0)']], 'two reruns, only the affected probe');
  t.deepEqual(n2.d.units[0].changes.find((x) => x.point === 'second')?.reruns, ['fail', 'fail']);
  t.like(n2.d.units[0].kernel, { changed: true, previous: 'source:linux-source-7.2 7.2.13-1=7.2.13 config:c0ffee' });
  t.regex(formatDigestText(n2.d), /^NEW FAILURES \(1\)\n  importer-refusals\(shm0\) second: pass -> fail; reruns: fail, fail$/m);
  t.regex(formatDigestMarkdown(n2.d), /^\*\*new failures \(1\)\*\*\n- `importer-refusals\(shm0\)` second: pass -> fail; reruns: fail, fail$/m);

  const n3 = await night(c, [{ release: '7.2.14-hwlab' }]);
  t.is(n3.d.exitCode, 0);
  t.deepEqual(cat(n3.d, 'fixed'), [F]);
  t.is(n3.d.units[0].kernel.changed, false);
  t.is(n3.calls.length, 1, 'nothing to rerun');
});

test('a failure that passes on a rerun is flaky, not news, and its flake rate is kept; reruns stop once it passed', async (t) => {
  const c = await ctx();
  await night(c, [{}]);
  const n2 = await night(c, [{ fail: [F] }, { fail: [] }, { fail: [F] }]);
  t.is(n2.d.exitCode, 0);
  t.deepEqual(cat(n2.d, 'flaky'), [F]);
  t.is(n2.calls.length, 2, 'the first rerun passed it: no second rerun');
  t.deepEqual(n2.d.units[0].flakes, [{ probeKey: 'importer-refusals(shm0)', point: 'second', flaky: 1, nights: 2 }]);
  t.regex(formatDigestText(n2.d), /flaky on 1 of 2 nights/);
});

test('infra: retried with backoff, judged on the retry; an all-infra night exits 3, claims no regression and is never a baseline', async (t) => {
  const c = await ctx();
  await night(c, [{}]);
  const n2 = await night(c, [{ infra: true }, {}]);
  t.is(n2.d.exitCode, 0);
  t.deepEqual(n2.d.units[0].attempts.map((a) => [a.purpose, a.outcome.class]), [['nightly', 'infra'], ['infra-retry', 'pass']]);
  t.deepEqual(n2.d.units[0].changes, []);
  const n3 = await night(c, [{ infra: true }, { infra: true }, { infra: true }], { infraRetries: 2 });
  t.is(n3.d.exitCode, 3);
  t.is(n3.d.verdict, 'infra');
  t.deepEqual(n3.d.units[0].changes, [], 'nothing compared, so no point reads as gone or failing');
  t.regex(formatDigestText(n3.d), /INFRASTRUCTURE only/);
  const n4 = await night(c, [{ fail: [F] }, { fail: [F] }, { fail: [F] }]);
  t.is(n4.d.units[0].baseline?.nightId, n2.d.units[0].nightId, 'the infra night is skipped as a baseline');
  t.deepEqual(cat(n4.d, 'new-failure'), [F]);
  t.is(listRuns(c.db, { limit: 100 }).filter((r) => r.outcomeClass === 'infra').length, 4);
});

test('a new kernel report title is news (exit 1); the same title the next night is counted, not news', async (t) => {
  const c = await ctx();
  await night(c, [{}]);
  const n2 = await night(c, [{ reports: ['WARNING in vfio_pci_dma_buf_move'] }]);
  t.is(n2.d.exitCode, 1);
  t.deepEqual(n2.d.units[0].reports.map((r) => [r.title, r.isNew]), [['WARNING in vfio_pci_dma_buf_move', true]]);
  const n3 = await night(c, [{ reports: ['WARNING in vfio_pci_dma_buf_move'], release: '7.2.14-hwlab' }]);
  t.is(n3.d.exitCode, 0);
  t.like(n3.d.units[0].reports[0], { isNew: false, runs: 2 });
  t.deepEqual(n3.d.units[0].reports[0].kernels, ['7.2.13-hwlab', '7.2.14-hwlab']);
  t.regex(formatDigestText(n3.d), /known kernel reports\n  WARNING in vfio_pci_dma_buf_move \(x1 tonight; 2 runs since/);
});

test('an expect_fail whose points pass is reported as known failure now passes and as stale', async (t) => {
  const c = await ctx('labs/default.yaml');
  const M = 'importer-multirange(shm0)';
  const n1 = await night(c, [{ todo: [`${M} :: second`] }], { only: [M] });
  t.is(n1.d.exitCode, 0);
  t.deepEqual(n1.d.units[0].stale, []);
  const n2 = await night(c, [{}], { only: [M] });
  t.is(n2.d.exitCode, 0);
  t.deepEqual(cat(n2.d, 'known-now-passes'), [`${M} :: second`]);
  t.deepEqual(n2.d.units[0].stale.map((s) => s.probeKey), [M]);
  const text = formatDigestText(n2.d);
  t.regex(text, /^KNOWN FAILURE NOW PASSES \(STALE EXPECT_FAIL\) \(1\)\n  importer-multirange\(shm0\) second: todo -> pass$/m);
  t.regex(text, /^STALE EXPECT_FAIL\n  importer-multirange\(shm0\): no point failed \(2 points\)/m);
  t.true(text.indexOf('STALE EXPECT_FAIL') < text.indexOf('unchanged:'), 'news first');
  const files = await writeDigest(n2.d);
  t.deepEqual(JSON.parse(readFileSync(files.json, 'utf8')), JSON.parse(JSON.stringify(n2.d)));
  t.is(readFileSync(files.markdown, 'utf8'), formatDigestMarkdown(n2.d));
  t.regex(readFileSync(n2.d.report!, 'utf8'), /<html/i, 'the night\'s HTML report is written');
});

test('several units (a matrix\'s cells): one series and folder each, one digest, the worst verdict decides the exit', async (t) => {
  const c = await ctx();
  const units = [{ series: 'vfio-dmabuf/smoke.a', lab: c.lab }, { series: 'vfio-dmabuf/smoke.b', lab: c.lab }];
  const run = (scripts: Script[]) => runNightly(c.db, units, {
    progress: silentProgress(), source: 'labs/matrix.yaml', name: 'vfio-dmabuf', runsDir: c.dir, backoffSec: 0, reruns: 1, infraRetries: 0,
    runner: scriptedRunner(scripts, []),
  });
  const d1 = await run([{}, {}]);
  t.is(d1.exitCode, 0);
  t.deepEqual(d1.units.map((u) => path.relative(d1.folder, u.folder)), ['vfio-dmabuf_smoke.a', 'vfio-dmabuf_smoke.b']);
  await new Promise((r) => setTimeout(r, 5));
  // Cell a: infra; cell b: a new failure its rerun confirms. News outranks infra.
  const d2 = await run([{ infra: true }, { fail: [F] }, { fail: [F] }]);
  t.deepEqual(d2.units.map((u) => u.verdict), ['infra', 'news']);
  t.is(d2.verdict, 'news');
  t.is(d2.exitCode, 1);
  t.is(d2.units[1].baseline?.nightId, d1.units[1].nightId, 'each cell against its own series');
  const text = formatDigestText(d2);
  t.regex(text, /^vfio-dmabuf\/smoke\.a: INFRASTRUCTURE only/m);
  t.regex(text, /^vfio-dmabuf\/smoke\.b: NEWS/m);
});
