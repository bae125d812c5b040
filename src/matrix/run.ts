// `hwlab matrix run`: the cells of a matrix on this machine, through the
// same code path as `hwlab run` (runLab) and the same cache. First every
// distinct kernel build, one at a time and alone on the machine (prepareLab
// of the build's first cell: kernel, hwlab's modules, image, initramfs); a
// build that fails ends its cells without booting them. Then the cells, at
// most `jobs` guests at once, each into its own folder (cells/<id>/, with
// cell.json saying which cell it is and how to run it again, and its
// progress in hwlab.log). Last, the cell folders are read back the way
// `hwlab merge` reads CI artifacts, and the reports are written for the
// whole: one folder, a grid of cells x probes, the worst class.
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MachineBackend } from '../machine/instance.ts';
import { collectCells } from '../reports/merge.ts';
import { formatGrid } from '../reports/grid.ts';
import { runSummary, type ReportSummary } from '../reports/summary.ts';
import { writeReports } from '../reports/write.ts';
import { failureFromError, type RunFailure } from '../results/outcome.ts';
import { writeRunResults } from '../results/report.ts';
import { resultsWithoutMachine } from '../run/collect.ts';
import { labsNeedImageBuild, prepareLab } from '../run/prepare.ts';
import { runLab } from '../run/run-lab.ts';
import { ensureHostTools } from '../util/host-tools.ts';
import { Progress } from '../util/progress.ts';
import { cellMeta, decideJobs, formatPlan, hostResources, plannedBuilds, type HostResources, type JobsDecision, type PlannedBuild } from './plan.ts';
import type { CellSpec, MatrixSpec } from './types.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface MatrixRunOptions {
  progress: Progress;
  /** The matrix file as the user named it: the reproduce commands use it. */
  matrixArg: string;
  /** Parent of the matrix folder; default <repo>/runs. */
  runsDir?: string;
  /** This exact folder (CI: a known path to upload). */
  out?: string;
  /** Guests at once; default: what the host allows (decideJobs). */
  jobs?: number;
  refresh?: boolean;
  backend?: MachineBackend;
  host?: HostResources;
  /** The cells of the whole run this one is part of (CI: every job's cell); default: the cells run here. */
  planned?: string[];
}

export interface BuildRecord extends PlannedBuild {
  state: 'built' | 'cached' | 'failed';
  seconds: number;
  release?: string;
  /** make's output (or the cache entry reused), relative to the matrix folder. */
  log: string;
  failure?: RunFailure;
}

export interface MatrixRunResult {
  dir: string;
  summary: ReportSummary;
  grid: string;
  builds: BuildRecord[];
  jobs: JobsDecision;
  /** Wall time of the whole run, of the cell phase, and from the last cell's end to the written reports. */
  seconds: { total: number; builds: number; cells: number; reports: number };
}

const stamp = () => new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');

/** A Progress into a file: a cell's steps, while several cells share the terminal. */
function fileProgress(file: string): { progress: Progress; close: () => Promise<void> } {
  const stream = createWriteStream(file, { flags: 'a' });
  const sink = Object.assign(stream, { isTTY: false, columns: 120 }) as unknown as NodeJS.WriteStream;
  return { progress: new Progress(sink, false), close: () => new Promise((r) => stream.end(r)) };
}

async function runBuilds(m: MatrixSpec, cells: readonly CellSpec[], dir: string, opts: MatrixRunOptions): Promise<BuildRecord[]> {
  const planned = plannedBuilds(cells);
  const records: BuildRecord[] = [];
  for (const [i, b] of planned.entries()) {
    const first = cells.find((c) => c.id === b.cells[0])!;
    const bdir = path.join(dir, 'builds', b.key);
    await mkdir(bdir, { recursive: true });
    const log = fileProgress(path.join(bdir, 'hwlab.log'));
    const start = Date.now();
    const step = opts.progress.step(`build b${i + 1}/${planned.length} ${b.label}`);
    try {
      const prepared = await prepareLab(first.lab, { progress: log.progress, refresh: opts.refresh }, bdir);
      const k = prepared.kernel;
      const built = k.kind !== 'stock' && k.built;
      records.push({ ...b, state: built ? 'built' : 'cached', seconds: (Date.now() - start) / 1000, release: k.release, log: path.relative(dir, path.join(bdir, k.kind === 'overlay' ? 'driver-build.log' : 'kernel-build.log')) });
      step.done(`${k.release}, ${built ? `built in ${(k.buildSeconds ?? 0).toFixed(0)} s` : 'from cache'}; ${b.cells.length} cell${b.cells.length === 1 ? '' : 's'}`);
    } catch (err) {
      const failure = failureFromError('prepare', err);
      records.push({ ...b, state: 'failed', seconds: (Date.now() - start) / 1000, log: path.relative(dir, path.join(bdir, 'kernel-build.log')), failure });
      step.fail(`${failure.code}: ${failure.message.split('\n')[0]}; its ${b.cells.length} cell${b.cells.length === 1 ? '' : 's'} will not boot`);
    } finally {
      await log.close();
    }
  }
  await writeFile(path.join(dir, 'builds.json'), `${JSON.stringify({ matrix: m.name, builds: records }, null, 2)}\n`);
  return records;
}

/** A cell whose build failed: its folder says so, as a run that stopped before booting does. */
async function stoppedCell(cell: CellSpec, cdir: string, failure: RunFailure): Promise<void> {
  const now = Date.now();
  await writeFile(path.join(cdir, 'lab.resolved.json'), JSON.stringify(cell.lab, null, 2));
  await writeFile(path.join(cdir, 'error.txt'), `the cell's kernel build failed (see builds/ in the matrix folder):\n${failure.message}\n`);
  const results = resultsWithoutMachine(cell.lab.name, now, cdir, failure, { prepare: 0 });
  await writeRunResults(cdir, results);
  await writeReports(cdir, runSummary(results, cell.lab));
}

export async function runMatrix(m: MatrixSpec, cells: readonly CellSpec[], opts: MatrixRunOptions): Promise<MatrixRunResult> {
  const t0 = Date.now();
  const dir = path.resolve(opts.out ?? path.join(opts.runsDir ?? path.join(repoRoot, 'runs'), `matrix-${m.name}-${stamp()}`));
  await mkdir(path.join(dir, 'cells'), { recursive: true });
  const jobs = decideJobs(opts.jobs, cells, opts.host ?? hostResources());
  const planned = opts.planned ?? cells.map((c) => c.id);
  const builds = plannedBuilds(cells);
  const plan = formatPlan(m, cells, [], builds, jobs);
  opts.progress.info(plan);
  opts.progress.info(`matrix folder: ${dir}`);
  await writeFile(path.join(dir, 'plan.txt'), `${plan}\n`);
  await writeFile(path.join(dir, 'plan.json'), `${JSON.stringify({
    matrix: m.name, file: opts.matrixArg, jobs,
    builds, cells: cells.map((c) => ({ ...cellMeta(m, c, opts.matrixArg, planned), lab: c.lab.name })),
  }, null, 2)}\n`);

  if (!opts.backend) await ensureHostTools((l) => opts.progress.info(l), () => labsNeedImageBuild(cells.map((c) => c.lab)));
  const records = await runBuilds(m, cells, dir, opts);
  const tBuilds = Date.now();

  // The cells: a fixed number of workers taking the next cell in plan order.
  let next = 0;
  let done = 0;
  let lastEnd = tBuilds;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= cells.length) return;
      const cell = cells[i];
      const cdir = path.join(dir, 'cells', cell.id);
      await mkdir(cdir, { recursive: true });
      await writeFile(path.join(cdir, 'cell.json'), `${JSON.stringify(cellMeta(m, cell, opts.matrixArg, planned), null, 2)}\n`);
      const failed = records.find((b) => b.key === cell.build.key && b.state === 'failed');
      const start = Date.now();
      opts.progress.info(`[${i + 1}/${cells.length}] ${cell.id}: started`);
      let line: string;
      if (failed) {
        await stoppedCell(cell, cdir, failed.failure!);
        line = `${failed.failure!.class.toUpperCase()} (${failed.failure!.code}): the kernel build failed`;
      } else {
        const log = fileProgress(path.join(cdir, 'hwlab.log'));
        try {
          const out = await runLab(cell.lab, { progress: log.progress, runDir: cdir, backend: opts.backend });
          const o = out.results.outcome;
          line = `${o.class.toUpperCase()}${o.class === 'pass' ? '' : ` (${o.code}): ${o.title}`}`;
        } catch (err) {
          // runLab turns what happens in a run into results; this is hwlab itself failing: still the cell's result.
          const failure = failureFromError('prepare', err);
          await stoppedCell(cell, cdir, failure);
          line = `${failure.class.toUpperCase()} (${failure.code}): ${failure.message.split('\n')[0]}`;
        } finally {
          await log.close();
        }
      }
      done++;
      lastEnd = Date.now();
      opts.progress.info(`[${done}/${cells.length} done] ${cell.id}: ${line} (${((Date.now() - start) / 1000).toFixed(1)} s)`);
    }
  };
  await Promise.all(Array.from({ length: jobs.jobs }, () => worker()));
  const tCells = Date.now();

  const { summary, notes } = await collectCells([path.join(dir, 'cells')], { kind: 'matrix', name: m.name, expect: cells.map((c) => c.id) });
  for (const n of notes) opts.progress.info(`note: ${n}`);
  await writeReports(dir, summary);
  const tReports = Date.now();
  return {
    dir, summary, grid: formatGrid(summary), builds: records, jobs,
    seconds: { total: (tReports - t0) / 1000, builds: (tBuilds - t0) / 1000, cells: (tCells - tBuilds) / 1000, reports: (tReports - lastEnd) / 1000 },
  };
}
