// Matrix benchmark (issue E): four cells of labs/matrix.yaml that share one
// kernel build, run with --jobs 1 and then --jobs 2 through runMatrix (the
// code `hwlab matrix run` runs), with wall time and peak memory for each:
// the resident memory of this process and everything it started (QEMU), and
// how far the host's MemAvailable fell (which also sees the RAM-backed BAR
// files in /dev/shm). Then the time from the last cell's end to the written
// reports, and what `hwlab merge` of the folder takes on its own. Prints
// figures; asserts nothing. Timings on a shared 2-core machine are noisy.
//   node --import tsx test/bench/matrix.ts [--cell ID]... [--matrix labs/matrix.yaml]
import { readdir, readFile, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadMatrix, selectCells } from '../../src/matrix/load.ts';
import { runMatrix } from '../../src/matrix/run.ts';
import { collectCells } from '../../src/reports/merge.ts';
import { writeReports } from '../../src/reports/write.ts';
import { runCleanups } from '../../src/util/cleanup.ts';
import { silentProgress } from '../../src/util/progress.ts';

const DEFAULT_CELLS = ['smoke.debug.intel-lazy', 'smoke.debug.intel-strict', 'smoke.debug.intel-pt', 'smoke.debug.virtio'];
const { values } = parseArgs({ options: { cell: { type: 'string', multiple: true }, matrix: { type: 'string', default: 'labs/matrix.yaml' } } });
const ids = values.cell ?? DEFAULT_CELLS;
const m = await loadMatrix(values.matrix!);
const sel = selectCells(m, ids);
if (sel.unknown.length || sel.refused.length) throw new Error(`cells not runnable: ${[...sel.unknown, ...sel.refused.map((r) => r.id)].join(', ')}`);
if (new Set(sel.cells.map((c) => c.build.key)).size !== 1) console.log('note: these cells do not share one build');

/** RSS (kB) of a process and all its descendants, from /proc. */
async function treeRssKb(root: number): Promise<number> {
  const parent = new Map<number, number>();
  const rss = new Map<number, number>();
  for (const e of await readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const status = await readFile(`/proc/${e}/status`, 'utf8');
      parent.set(Number(e), Number(/^PPid:\s+(\d+)/m.exec(status)?.[1] ?? 0));
      rss.set(Number(e), Number(/^VmRSS:\s+(\d+)/m.exec(status)?.[1] ?? 0));
    } catch { /* gone */ }
  }
  let total = 0;
  for (const [pid, kb] of rss) {
    for (let p: number | undefined = pid; p; p = parent.get(p)) {
      if (p === root) { total += kb; break; }
    }
  }
  return total;
}

async function memAvailableKb(): Promise<number> {
  return Number(/^MemAvailable:\s+(\d+)/m.exec(await readFile('/proc/meminfo', 'utf8'))?.[1] ?? 0);
}

interface Row { jobs: number; wall: number; builds: number; cells: number; reports: number; peakTreeMiB: number; peakDropMiB: number; classes: string }

async function measure(jobs: number): Promise<{ row: Row; dir: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `hwlab-bench-matrix-j${jobs}-`));
  const baseline = await memAvailableKb();
  let peakTree = 0;
  let minAvail = baseline;
  let stop = false;
  const sampler = (async () => {
    while (!stop) {
      peakTree = Math.max(peakTree, await treeRssKb(process.pid));
      minAvail = Math.min(minAvail, await memAvailableKb());
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  const t0 = Date.now();
  const r = await runMatrix(m, sel.cells, { progress: silentProgress(), matrixArg: values.matrix!, jobs, out: dir, host: { cpus: os.cpus().length, availMiB: Math.floor(baseline / 1024) } });
  const wall = (Date.now() - t0) / 1000;
  stop = true;
  await sampler;
  return {
    dir,
    row: {
      jobs, wall, builds: r.seconds.builds, cells: r.seconds.cells, reports: r.seconds.reports,
      peakTreeMiB: peakTree / 1024, peakDropMiB: (baseline - minAvail) / 1024,
      classes: r.summary.cells.map((c) => c.results.outcome.class).join(' '),
    },
  };
}

console.log(`matrix ${m.name}: ${sel.cells.map((c) => c.id).join(', ')} (build ${sel.cells[0].build.key}); ${os.cpus().length} cores, load ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
const rows: Row[] = [];
const dirs: string[] = [];
for (const jobs of [1, 2]) {
  const { row, dir } = await measure(jobs);
  rows.push(row);
  dirs.push(dir);
  console.log(`--jobs ${jobs}: wall ${row.wall.toFixed(1)} s (builds ${row.builds.toFixed(1)} s, cells ${row.cells.toFixed(1)} s), reports ${row.reports.toFixed(2)} s after the last cell; peak RSS of hwlab+QEMU ${row.peakTreeMiB.toFixed(0)} MiB, MemAvailable fell by up to ${row.peakDropMiB.toFixed(0)} MiB; cells: ${row.classes}`);
}
// hwlab merge of the --jobs 2 folder, on its own: read the cell folders back, write every report.
const t = Date.now();
const { summary } = await collectCells([dirs[1]], { kind: 'merge' });
await writeReports(path.join(dirs[1], 'merged'), summary);
const merge = (Date.now() - t) / 1000;
console.log(`hwlab merge of ${summary.cells.length} cells: ${merge.toFixed(2)} s`);
console.log(`\n| jobs | wall | cells phase | last cell -> reports | peak RSS (hwlab + QEMU) | MemAvailable drop |\n|---|---|---|---|---|---|`);
for (const r of rows) console.log(`| ${r.jobs} | ${r.wall.toFixed(0)} s | ${r.cells.toFixed(0)} s | ${r.reports.toFixed(2)} s | ${r.peakTreeMiB.toFixed(0)} MiB | ${r.peakDropMiB.toFixed(0)} MiB |`);
console.log(`speed-up with 2 jobs: ${(rows[0].wall / rows[1].wall).toFixed(2)}x; merge alone ${merge.toFixed(2)} s`);
for (const d of dirs) await rm(d, { recursive: true, force: true });
await runCleanups();
