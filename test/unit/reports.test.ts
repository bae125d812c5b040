// Reports and merges from run folders: cells of every outcome class written
// as a matrix run (or a CI job) writes them, read back by `hwlab merge`, and
// each report checked by its format's real validator: JUnit against Jenkins'
// junit-10.xsd with xmllint, KCIDB against KernelCI's published v5.3 schema
// with ajv. Kernel reports must be JUnit failures with their title and
// excerpt, infra must be errors, expected failures skipped with the reason.
import test from 'ava';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import type { KernelReport } from '../../src/report/kernel-report.ts';
import { formatGrid } from '../../src/reports/grid.ts';
import { kcidbReport, patchsetHash } from '../../src/reports/kcidb.ts';
import { junitXml } from '../../src/reports/junit.ts';
import { markdownSummary } from '../../src/reports/markdown.ts';
import { collectCells } from '../../src/reports/merge.ts';
import { probeRows, runSummary, type CellMeta } from '../../src/reports/summary.ts';
import { writeReports } from '../../src/reports/write.ts';
import { classifyRun, type RunFailure } from '../../src/results/outcome.ts';
import type { RunResults } from '../../src/results/report.ts';
import type { ProbeResult } from '../../src/results/tap.ts';
import { jsonSchemaValidator, xmlValidate } from './helpers/validators.ts';

const WARN: KernelReport = {
  kind: 'WARNING', title: 'WARNING in vfio_pci_dma_buf_move', count: 3, line: 412, timestampSec: 21.5, fatal: false,
  excerpt: 'WARNING: CPU: 1 PID: 311 at drivers/vfio/pci/vfio_pci_dmabuf.c:305 vfio_pci_dma_buf_move+0x1a/0x40 [vfio_pci_core]\nCall Trace:\n <TASK>\n \u0001control & <xml> chars',
};

const point = (id: number, name: string, ok: boolean, extra: Partial<ProbeResult['subtests'][number]> = {}) => ({ id, name, ok, ...extra });
const probe = (name: string, subtests: ProbeResult['subtests'], extra: Partial<ProbeResult> = {}): ProbeResult => ({
  name, ok: subtests.every((s) => s.ok || s.todo !== undefined), durationMs: 1234.5, subtests, kernelReports: [], ...extra,
});

function results(lab: string, probes: ProbeResult[], kernelReports: KernelReport[] = [], failure?: RunFailure): RunResults {
  return {
    lab, startedAt: '2026-12-06T05:00:00.000Z', outcome: classifyRun(probes, kernelReports, failure), ...(failure ? { failure } : {}),
    kernel: { kind: 'source', package: 'linux-source-7.2 7.2.13-1', version: '7.2.13', release: '7.2.13', patches: [{ name: '0001-fix.patch', sha256: 'a'.repeat(64), origin: 'x' }], configSha256: 'c'.repeat(64), built: false },
    machine: { backend: 'qemu', accel: 'tcg', accelNote: 'TCG' },
    probes, kernelReports, timings: { prepare: 0.5, ...(failure?.phase === 'boot' ? {} : { boot_to_ssh: 9.1 }), total: 20.25 }, runDir: '',
  };
}

const SMOKE = [{ name: 'dmabuf-export', device: 'shm0' }, { name: 'importer-refusals', device: 'shm0' }, { name: 'lifetime', device: 'shm0' }];

/** Five cells of a matrix `m`, as the CI jobs of a matrix run would upload them. */
function cells(): Array<{ id: string; results: RunResults }> {
  const pass = results('smoke', [
    probe('dmabuf-export', [point(1, 'export', true)]),
    probe('importer-refusals', [point(1, 'attach', true)]),
    probe('lifetime', [point(1, 'outlives', true), point(2, 'no I/O BAR', true, { skip: 'device has none' })]),
  ]);
  const fail = results('smoke', [
    probe('dmabuf-export', [point(1, 'export', true)]),
    probe('importer-refusals', [point(1, 'attach', true), point(2, 'map while revoked fails ENODEV', false, { diagnostics: { got: 'OK', want: 'ENODEV' } })]),
    probe('lifetime', [point(1, 'outlives', true)]),
  ]);
  const kernelProbe = probe('importer-refusals', [point(1, 'attach', true)], { ok: false, kernelReports: [WARN] });
  const kernel = results('smoke', [probe('dmabuf-export', [point(1, 'export', true)]), kernelProbe, probe('lifetime', [point(1, 'outlives', true)])], [WARN]);
  const todo = results('smoke', [
    probe('dmabuf-export', [point(1, 'export', true)]),
    probe('importer-refusals', [point(21, 'DMA read after MEM toggle', false, { todo: 'amd: zeros after MEM off/on' })], { todo: 'amd: zeros after MEM off/on' }),
    probe('lifetime', [point(1, 'outlives', true)]),
  ]);
  const infra = results('smoke', [], [], { phase: 'boot', class: 'infra', code: 'boot-timeout', message: 'the guest did not start sshd in 180 s; last console line: x' });
  return [
    { id: 'smoke.intel-lazy', results: pass }, { id: 'smoke.intel-strict', results: fail }, { id: 'smoke.intel-pt', results: kernel },
    { id: 'smoke.amd', results: todo }, { id: 'smoke.virtio', results: infra },
  ];
}

async function writeCells(root: string, matrixCells: string[]): Promise<void> {
  for (const c of cells()) {
    const dir = path.join(root, `hwlab-cell-${c.id}`, 'cells', c.id);
    await mkdir(dir, { recursive: true });
    const meta: CellMeta = {
      id: c.id, matrix: { name: 'm', file: 'labs/m.yaml', cells: matrixCells }, axes: { lab: 'smoke', iommu: c.id.split('.')[1] },
      expectations: c.id === 'smoke.amd' ? [{ probe: 'importer-refusals', what: 'expected to fail: zeros', reason: 'amd-iommu under investigation', at: 'labs/m.yaml:9:11' }] : [],
      build: { key: 'k1', label: 'linux-source-7.2 + 1 patch' }, reproduce: `./hwlab matrix run labs/m.yaml --cell ${c.id}`,
    };
    await writeFile(path.join(dir, 'cell.json'), JSON.stringify(meta));
    await writeFile(path.join(dir, 'results.json'), JSON.stringify({ ...c.results, runDir: dir }));
    await writeFile(path.join(dir, 'lab.resolved.json'), JSON.stringify({ name: 'smoke', probes: SMOKE }));
    await writeFile(path.join(dir, 'console.log'), 'Linux version 7.2.13\n');
  }
}

async function tmp(t: { teardown: (f: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(path.join(os.tmpdir(), 'hwlab-reports-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
}

const ALL = ['smoke.intel-lazy', 'smoke.intel-strict', 'smoke.intel-pt', 'smoke.amd', 'smoke.virtio', 'smoke.none'];

test('merge: cells from CI artifacts, a planned cell without a folder counts as infra, the worst class wins', async (t) => {
  const root = await tmp(t);
  await writeCells(root, ALL);
  const { summary, notes } = await collectCells([root], { kind: 'merge' });
  t.is(summary.name, 'm');
  t.deepEqual(summary.cells.map((c) => c.id), ALL);
  t.deepEqual(summary.cells.map((c) => c.results.outcome.class), ['pass', 'fail', 'kernel', 'pass', 'infra', 'infra']);
  t.is(summary.cells[5].results.outcome.code, 'missing');
  t.regex(notes.join('\n'), /cell smoke\.none of matrix m: no results/);
  // Kernel report beats failed points beats infra; the error class (bad input) would beat them all.
  t.is(summary.outcome.class, 'kernel');
  t.regex(summary.outcome.title, /1 of 6 cells kernel: smoke\.intel-pt/);
  t.deepEqual(summary.cells[3].probes.map((p) => p.class), ['pass', 'todo', 'pass']);
  t.deepEqual(summary.cells[4].probes.map((p) => p.class), ['not-run', 'not-run', 'not-run'], 'the lab says which probes the broken run never reached');
  t.deepEqual(summary.columns, ['dmabuf-export(shm0)', 'importer-refusals(shm0)', 'lifetime(shm0)']);
  const grid = formatGrid(summary);
  t.regex(grid, /smoke\.intel-pt\s+kernel\s+20\.3 s\s+\.\s+K\s+\./);
  t.regex(grid, /smoke\.amd\s+pass\s+20\.3 s\s+\.\s+T\s+\./);
  t.regex(grid, /again: \.\/hwlab matrix run labs\/m\.yaml --cell smoke\.intel-strict/);
  // A job run twice: the newer folder counts, and the merge says so.
  const again = path.join(root, 'rerun', 'cells', 'smoke.intel-strict');
  await mkdir(again, { recursive: true });
  const newer = { ...cells()[0].results, startedAt: '2026-12-07T00:00:00.000Z', runDir: again };
  await writeFile(path.join(again, 'results.json'), JSON.stringify(newer));
  await writeFile(path.join(again, 'cell.json'), await readFile(path.join(root, 'hwlab-cell-smoke.intel-strict/cells/smoke.intel-strict/cell.json')));
  const twice = await collectCells([root], { kind: 'merge' });
  t.is(twice.summary.cells.find((c) => c.id === 'smoke.intel-strict')!.results.outcome.class, 'pass');
  t.regex(twice.notes.join('\n'), /smoke\.intel-strict is in two folders; kept the newer/);
});

test('JUnit: valid against junit-10.xsd; kernel reports are failures with title and excerpt, infra are errors, TODO and SKIP skipped', async (t) => {
  const root = await tmp(t);
  await writeCells(root, ALL);
  const { summary } = await collectCells([root], { kind: 'merge' });
  const xml = junitXml(summary);
  // The validator can fail: a testsuite without its required attributes is refused.
  t.false((await xmlValidate('<testsuites><testsuite name="x"/></testsuites>', 'junit-10.xsd')).ok);
  const v = await xmlValidate(xml, 'junit-10.xsd');
  t.true(v.ok, v.output);
  t.regex(xml, /<testsuite name="smoke\.intel-pt\/importer-refusals\(shm0\)" tests="2" failures="1" errors="0"/);
  t.regex(xml, /<failure message="WARNING in vfio_pci_dma_buf_move \(x3\)" type="kernel:WARNING">WARNING: CPU: 1 PID: 311 at drivers\/vfio\/pci\/vfio_pci_dmabuf\.c:305/);
  t.regex(xml, /\\u0001control &amp; &lt;xml&gt; chars/, 'control characters escaped, markup escaped');
  t.regex(xml, /<testsuite name="smoke\.virtio\/\(run\)" tests="1" failures="0" errors="1"[^]*?<error message="the guest did not start sshd in 180 s[^"]*" type="infra:boot-timeout">/);
  t.regex(xml, /<testsuite name="smoke\.none\/\(run\)"[^]*?type="infra:missing"/);
  t.regex(xml, /<skipped message="TODO \(expected failure\): amd: zeros after MEM off\/on">/);
  t.regex(xml, /<skipped message="device has none">/);
  t.regex(xml, /<failure message="map while revoked fails ENODEV" type="fail">\{\n {2}"got": "OK"/);
  t.regex(xml, /<testsuites name="hwlab merge m" tests="\d+" failures="2" errors="2"/);
});

test('KCIDB: valid against KernelCI\'s v5.3 schema; statuses by class; a known failure is an incident of an issue', async (t) => {
  const root = await tmp(t);
  await writeCells(root, ALL);
  const { summary } = await collectCells([root], { kind: 'merge' });
  const validate = jsonSchemaValidator('kcidb-io.schema.v5.3.json');
  t.false(validate({ version: { major: 5, minor: 3 }, tests: [{ id: 'no origin prefix', origin: 'hwlab', build_id: 'hwlab:b' }] }), 'the schema can fail');
  const k = kcidbReport(summary, 'hwlab');
  t.true(validate(k), JSON.stringify(validate.errors, null, 2));
  t.is(k.checkouts.length, 1);
  t.is(k.checkouts[0].patchset_hash, patchsetHash(['a'.repeat(64)]));
  t.is(k.builds.length, 1);
  const status = (cell: string, path_: string) => k.tests.find((x) => (x.environment as { misc: { cell: string } }).misc.cell === cell && x.path === path_)?.status;
  t.is(status('smoke.intel-lazy', 'hwlab.dmabuf-export'), 'PASS');
  t.is(status('smoke.intel-strict', 'hwlab.importer-refusals'), 'FAIL');
  t.is(status('smoke.intel-pt', 'hwlab.importer-refusals'), 'FAIL');
  t.is(status('smoke.virtio', 'hwlab.boot'), 'ERROR');
  t.is(status('smoke.virtio', 'hwlab.lifetime'), 'MISS');
  t.is(status('smoke.intel-lazy', 'hwlab.lifetime.p2_no_I_O_BAR'), 'SKIP');
  const known = k.tests.filter((x) => (x.environment as { misc: { cell: string } }).misc.cell === 'smoke.amd' && x.status === 'FAIL');
  t.true(known.length >= 1);
  t.is(k.issues.length, 1);
  t.true(k.incidents.every((i) => i.issue_id === k.issues[0].id && known.some((x) => x.id === i.test_id)));
  t.regex(String(k.tests.find((x) => x.path === 'hwlab.importer-refusals' && x.status === 'FAIL' && /WARNING/.test(String(x.log_excerpt)))?.log_excerpt), /WARNING in vfio_pci_dma_buf_move \(x3\)/);
  t.is(new Set(k.tests.map((x) => x.id)).size, k.tests.length, 'test ids are unique');
});

test('Markdown and HTML: the grid, the cells that did not pass, how to run them again; every report file is written', async (t) => {
  const root = await tmp(t);
  await writeCells(root, ALL);
  const { summary } = await collectCells([root], { kind: 'merge' });
  const md = markdownSummary(summary);
  t.regex(md, /^## hwlab merge m: 💥 KERNEL/);
  t.regex(md, /\| smoke\.intel-pt \| 💥 kernel \| 20\.3 s \| ✅ \| 💥 \| ✅ \|/);
  t.regex(md, /\| smoke\.amd \| ✅ pass \| 20\.3 s \| ✅ \| 🚧 \| ✅ \|/);
  t.regex(md, /<summary>⚠️ smoke\.virtio: infra<\/summary>/);
  t.regex(md, /\.\/hwlab matrix run labs\/m\.yaml --cell smoke\.intel-strict/);
  t.regex(md, /`smoke\.amd` importer-refusals: expected to fail: zeros \(amd-iommu under investigation\)/);
  const out = path.join(root, 'merged');
  const files = await writeReports(out, summary);
  const html = await readFile(files.html, 'utf8');
  t.regex(html, /<table class="grid" id="grid">/);
  t.is((html.match(/<td class="sq" data-class=/g) ?? []).length, 15, 'five cells with three probes each in the grid (the missing cell has none)');
  t.regex(html, /data-class="kernel" style="background:#6a1b9a"[^>]*><a href="#c2-importer-refusals_shm0_">/);
  t.regex(html, /<details id="c2-importer-refusals_shm0_" open>/);
  t.regex(html, /href="\.\.\/hwlab-cell-smoke\.intel-lazy\/cells\/smoke\.intel-lazy\/console\.log"/, 'links relative to the report');
  t.false(/<script src|<link /.test(html), 'self-contained: nothing fetched');
  const sj = JSON.parse(await readFile(files.summary, 'utf8'));
  t.is(sj.outcome.class, 'kernel');
  t.deepEqual(sj.cells.map((c: { probes: Array<{ class: string }> }) => c.probes.map((p) => p.class).join(' ')), [
    'pass pass pass', 'pass fail pass', 'pass kernel pass', 'pass todo pass', 'not-run not-run not-run', '',
  ]);
  t.regex(await readFile(files.grid, 'utf8'), /^cell\s+class\s+time/);
  t.truthy(parse(await readFile(files.kcidb, 'utf8')));
});

test('a single run is a summary of one cell; probes a cut-off stream lost stay on their rows', (t) => {
  const r = results('smoke', [probe('dmabuf-export', [point(1, 'export', true)]), probe('lifetime', [point(1, 'outlives', true)])]);
  const s = runSummary(r, { probes: SMOKE });
  t.is(s.kind, 'run');
  t.deepEqual(s.cells[0].probes.map((p) => `${p.key}=${p.class}`), ['dmabuf-export(shm0)=pass', 'importer-refusals(shm0)=not-run', 'lifetime(shm0)=pass']);
  t.deepEqual(probeRows(r).map((p) => p.key), ['dmabuf-export', 'lifetime'], 'without the lab, the probes the results name');
});
