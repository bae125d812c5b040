// Boots real guests: the vIOMMU cells of labs/matrix.yaml on the smoke lab
// (intel lazy, strict and passthrough, amd, virtio), which share one kernel
// build, through `hwlab matrix run` with --json (stdout must be the JSON
// alone). Each cell must pass with its expectations and boot the vIOMMU it
// names; the plan comes before any cell; the reports are written and valid;
// `hwlab merge` of the folder agrees; and headless Chromium's screenshot of
// report.html shows the grid: each cell's row of squares in its classes'
// colours, in order.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CLASS_COLOURS } from '../../src/reports/html.ts';
import type { RunResults } from '../../src/results/report.ts';
import { installPackages, which } from '../../src/util/host-tools.ts';
import { jsonSchemaValidator, xmlValidate } from '../unit/helpers/validators.ts';
import { hwlab, qemuProcessesMentioning, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';
import { colourRuns, decodePng } from './png.ts';

cleanUpRunsDirs(test);

const CELLS = ['smoke.debug.intel-lazy', 'smoke.debug.intel-strict', 'smoke.debug.intel-pt', 'smoke.debug.amd', 'smoke.debug.virtio', 'smoke.debug.intel-fq'];

/** Headless Chromium from Debian, started as the workplace's notes say, on a fresh profile; a PNG of the page. */
async function screenshot(file: string, png: string): Promise<void> {
  if (!(await which('chromium'))) await installPackages(['chromium'], () => {});
  const profile = await mkdtemp(path.join(os.tmpdir(), 'hwlab-chromium-'));
  try {
    const r = await execa('chromium', [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', `--user-data-dir=${profile}`, '--window-size=1400,1100', '--hide-scrollbars', `--screenshot=${png}`, `file://${file}`,
    ], { reject: false, timeout: 120_000 });
    if (!existsSync(png)) throw new Error(`chromium wrote no screenshot (exit ${r.exitCode}): ${r.stderr.slice(-500)}`);
  } finally {
    await rm(profile, { recursive: true, force: true });
  }
}

test.serial('matrix run: the smoke lab\'s vIOMMU cells share one build, pass with their expectations, and the reports show it', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['matrix', 'run', 'labs/matrix.yaml', ...CELLS.flatMap((c) => ['--cell', c]), '--jobs', '1', '--runs-dir', dir, '--json'], { timeoutMs: 40 * 60_000 });
  t.log(r.stderr.split('\n').filter((l) => /done\]|MATRIX|total/.test(l)).join('\n'));
  t.is(r.exitCode, 0, r.stderr.slice(-3000));
  const out = JSON.parse(r.stdout) as { dir: string; seconds: Record<string, number>; builds: Array<{ key: string; state: string; cells: string[] }>; outcome: { class: string }; cells: Array<{ id: string; outcome: { class: string } }> };
  t.is(out.outcome.class, 'pass');
  // The plan first, before any build or cell; one build for all of them.
  const planAt = r.stderr.indexOf('builds (each built once');
  t.true(planAt >= 0 && planAt < r.stderr.indexOf('==> build b1/1') && planAt < r.stderr.indexOf(`[1/${CELLS.length}]`), 'the plan comes first');
  t.is(out.builds.length, 1);
  t.deepEqual(out.builds[0].cells, CELLS);
  t.deepEqual(out.cells.map((c) => `${c.id}=${c.outcome.class}`), CELLS.map((c) => `${c}=pass`));

  const cellDir = (id: string) => path.join(out.dir, 'cells', id);
  t.deepEqual((await readdir(path.join(out.dir, 'cells'))).sort(), [...CELLS].sort());
  const results = async (id: string) => JSON.parse(await readFile(path.join(cellDir(id), 'results.json'), 'utf8')) as RunResults;
  const cmdline = (id: string) => readFile(path.join(cellDir(id), 'qemu-cmdline.sh'), 'utf8');
  const consoleLog = (id: string) => readFile(path.join(cellDir(id), 'console.log'), 'utf8');
  // Each cell boots the vIOMMU and mode it names.
  t.regex(await cmdline('smoke.debug.intel-strict'), /iommu\.strict=1/);
  t.regex(await cmdline('smoke.debug.intel-pt'), /iommu\.passthrough=1/);
  t.regex(await cmdline('smoke.debug.amd'), /-device amd-iommu\b/);
  t.regex(await consoleLog('smoke.debug.amd'), /AMD-Vi/);
  t.regex(await cmdline('smoke.debug.virtio'), /-device virtio-iommu-pci\b/);
  t.regex(await cmdline('smoke.debug.virtio'), /vfio_iommu_type1\.allow_unsafe_interrupts=1/);
  t.regex(await consoleLog('smoke.debug.intel-lazy'), /DMAR: IOMMU enabled/);
  // hwlab asserted the vIOMMU after boot; results.json keeps what the guest showed: the unit in
  // front of each endpoint, its group's domain type, and each endpoint's PCI ID.
  const seen: Record<string, [RegExp, string]> = {
    'smoke.debug.intel-lazy': [/^dmar\d+$/, 'DMA'], 'smoke.debug.intel-strict': [/^dmar\d+$/, 'DMA'],
    'smoke.debug.intel-pt': [/^dmar\d+$/, 'identity'], 'smoke.debug.amd': [/^ivhd\d+$/, 'DMA'], 'smoke.debug.virtio': [/^0000:00:01\.0$/, 'DMA-FQ'],
    // Without caching mode the Intel driver batches: lazy for real.
    'smoke.debug.intel-fq': [/^dmar\d+$/, 'DMA-FQ'],
  };
  for (const id of CELLS) {
    const v = (await results(id)).viommu;
    t.truthy(v, `${id}: results.json records the vIOMMU`);
    for (const [ep, x] of Object.entries(v!.endpoints)) {
      t.regex(x.iommu ?? '(none)', seen[id][0], `${id} ${ep}: IOMMU unit`);
      t.is(x.domainType, seen[id][1], `${id} ${ep}: domain type`);
      t.true(typeof x.group === 'number', `${id} ${ep}: in an IOMMU group`);
    }
    t.is(v!.endpoints.shm0.pciId, '1af4:1110');
    t.is(v!.endpoints.edu0.pciId, '1234:11e8');
  }
  t.true((await results('smoke.debug.virtio')).viommu!.cmdline.includes('vfio_iommu_type1.allow_unsafe_interrupts=1'), 'virtio: the lab\'s unsafe-interrupts word is in the results');
  // amd: importer-refusals is an expected failure with its reason, the others pass outright.
  const amd = await results('smoke.debug.amd');
  t.regex(amd.probes.find((p) => p.name === 'importer-refusals')?.todo ?? '', /QEMU 7.2 amd-iommu bug/);
  t.true(amd.probes.filter((p) => p.name !== 'importer-refusals').every((p) => p.ok && p.todo === undefined));
  for (const id of CELLS) {
    const res = await results(id);
    t.deepEqual(res.kernelReports, [], `${id}: no kernel report`);
    t.is(res.kernel?.built, false, `${id}: the shared build came from the cache`);
    const meta = JSON.parse(await readFile(path.join(cellDir(id), 'cell.json'), 'utf8'));
    t.is(meta.reproduce, `./hwlab matrix run labs/matrix.yaml --cell ${id}`);
    t.deepEqual(await qemuProcessesMentioning(cellDir(id)), [], `${id}: no QEMU left`);
  }

  for (const f of ['plan.txt', 'plan.json', 'builds.json', 'summary.json', 'grid.txt', 'junit.xml', 'report.html', 'summary.md', 'kcidb.json']) {
    t.true(existsSync(path.join(out.dir, f)), `${f} written`);
  }
  const v = await xmlValidate(await readFile(path.join(out.dir, 'junit.xml'), 'utf8'), 'junit-10.xsd');
  t.true(v.ok, v.output);
  t.regex(await readFile(path.join(out.dir, 'grid.txt'), 'utf8'), /smoke\.debug\.amd\s+pass\s+\S+ s\s+\. \. \. \. \. T \./);
  const kcidb = jsonSchemaValidator('kcidb-io.schema.v5.3.json');
  t.true(kcidb(JSON.parse(await readFile(path.join(out.dir, 'kcidb.json'), 'utf8'))), JSON.stringify(kcidb.errors));

  // hwlab merge reads the same folder back to the same verdict.
  const merged = path.join(dir, 'merged');
  const m = await hwlab(['merge', out.dir, '--out', merged]);
  t.is(m.exitCode, 0, m.all);
  t.regex(m.stdout, new RegExp(`MERGE PASS: ${CELLS.length} cells passed`));
  t.is(JSON.parse(await readFile(path.join(merged, 'summary.json'), 'utf8')).cells.length, CELLS.length);

  // The report in a real browser: every cell's row of squares in its classes' colours.
  const png = path.join(dir, 'report.png');
  await screenshot(path.join(out.dir, 'report.html'), png);
  const rows = new Set(colourRuns(decodePng(await readFile(png)), CLASS_COLOURS, 15, 40));
  const summary = JSON.parse(await readFile(path.join(out.dir, 'summary.json'), 'utf8')) as { cells: Array<{ id: string; probes: Array<{ class: string }> }> };
  for (const c of summary.cells) {
    const expected = c.probes.map((p) => p.class).join(' ');
    t.true(rows.has(expected), `${c.id}: its grid row (${expected}) is on the screenshot; rows seen: ${[...rows].join(' | ')}`);
  }
  t.true(rows.has('pass pass pass pass pass todo pass'), 'the amd row shows the expected failure');
});
