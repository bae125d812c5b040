// The matrix commands of the command line: `hwlab matrix plan|run|key|ci`
// and `hwlab merge`. Parsing here, the work in src/matrix and src/reports;
// with --json, stdout carries the JSON alone and the human lines go to
// stderr. Exit codes: the worst class of the cells (0 pass, 1 fail or
// kernel, 2 bad input or a refused cell, 3 infra).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { githubWorkflow, gitlabPipeline, type CiOptions } from '../matrix/ci.ts';
import { loadMatrix, selectCells } from '../matrix/load.ts';
import { formatPlan, plannedBuilds, reproduceCommand } from '../matrix/plan.ts';
import { runMatrix } from '../matrix/run.ts';
import type { MatrixSpec } from '../matrix/types.ts';
import { formatGrid } from '../reports/grid.ts';
import { collectCells } from '../reports/merge.ts';
import { summaryJson, writeReports } from '../reports/write.ts';
import { EXIT_CODE } from '../results/outcome.ts';
import { InputError } from '../util/errors.ts';
import { Progress } from '../util/progress.ts';
import { ownParserCommand } from './command.ts';

export const MATRIX_USAGE = `  matrix plan <matrix.yaml> [--cell ID]... [--json]
                        the cells, the kernel builds they share, the cells refused and why
  matrix run <matrix.yaml> [--jobs N] [--cell ID]... [--runs-dir DIR | --out DIR] [--refresh] [--json] [--whole-matrix]
                        run the cells here (default: as many guests as the host allows),
                        each distinct kernel built once; prints a grid of cells x probes;
                        --whole-matrix: this is one part of a run of every cell (a CI job)
  matrix key <matrix.yaml> --cell ID
                        the cell's kernel build key (the CI cache key)
  matrix ci github|gitlab <matrix.yaml> [--out FILE] [--runs-on LABEL | --image IMAGE] [--tag TAG]... [--hwlab-dir DIR]
                        a GitHub Actions workflow / GitLab CI pipeline: a job per cell, a merge job;
                        --hwlab-dir: hwlab is a submodule there (a kernel tree's repository)
  merge <dir>... [--out DIR] [--json] [--kcidb-origin NAME]
                        one summary and its reports from cell folders (matrix runs, CI artifacts)
`;

function relativeArg(file: string): string {
  const rel = path.relative(process.cwd(), path.resolve(file));
  return rel.startsWith('..') ? path.resolve(file) : rel;
}

/** A matrix whose selected cells are all runnable, or a refusal (exit 2) printed with the plan. */
async function selection(file: string, ids: string[], human: NodeJS.WritableStream): Promise<{ m: MatrixSpec; ok: boolean; cells: MatrixSpec['cells'] }> {
  const m = await loadMatrix(file);
  const sel = selectCells(m, ids);
  if (sel.unknown.length) {
    throw new InputError(`--cell ${sel.unknown.join(', ')}: no such cell in ${file} (cells: ${[...m.cells, ...m.refused].map((c) => c.id).join(', ')})`);
  }
  if (sel.refused.length) {
    human.write(`${formatPlan(m, sel.cells, sel.refused, plannedBuilds(sel.cells))}\n\nhwlab: ${sel.refused.length} cell${sel.refused.length === 1 ? '' : 's'} refused; nothing was built. Fix the matrix, or run the others with --cell.\n`);
    return { m, ok: false, cells: sel.cells };
  }
  return { m, ok: true, cells: sel.cells };
}

export async function matrixCommand(args: string[], progress: Progress): Promise<number> {
  const [sub, ...rest] = args;
  switch (sub) {
    case 'plan': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { cell: { type: 'string', multiple: true }, json: { type: 'boolean' } } });
      if (positionals.length !== 1) throw new InputError('hwlab matrix plan takes exactly one matrix file');
      const m = await loadMatrix(positionals[0]);
      const sel = selectCells(m, values.cell ?? []);
      if (sel.unknown.length) throw new InputError(`--cell ${sel.unknown.join(', ')}: no such cell in ${positionals[0]}`);
      const builds = plannedBuilds(sel.cells);
      if (values.json) {
        const arg = relativeArg(positionals[0]);
        process.stdout.write(`${JSON.stringify({
          matrix: m.name, file: arg, builds,
          cells: sel.cells.map((c) => ({ id: c.id, axes: c.axes, lab: c.lab.name, build: c.build, reproduce: reproduceCommand(arg, c.id) })),
          refused: sel.refused,
        }, null, 2)}\n`);
      } else process.stdout.write(`${formatPlan(m, sel.cells, sel.refused, builds)}\n`);
      return sel.refused.length ? 2 : 0;
    }
    case 'key': {
      const { values, positionals } = parseArgs({ args: rest, allowPositionals: true, options: { cell: { type: 'string', multiple: true } } });
      if (positionals.length !== 1 || values.cell?.length !== 1) throw new InputError('usage: hwlab matrix key <matrix.yaml> --cell ID');
      const { m, ok, cells } = await selection(positionals[0], values.cell, process.stderr);
      if (!ok) return 2;
      void m;
      process.stdout.write(`${cells[0].build.key}\n`);
      return 0;
    }
    case 'run': {
      const { values, positionals } = parseArgs({
        args: rest, allowPositionals: true,
        options: {
          jobs: { type: 'string' }, cell: { type: 'string', multiple: true }, 'runs-dir': { type: 'string' }, out: { type: 'string' },
          refresh: { type: 'boolean' }, json: { type: 'boolean' }, 'whole-matrix': { type: 'boolean' },
        },
      });
      if (positionals.length !== 1) throw new InputError('hwlab matrix run takes exactly one matrix file');
      if (values.out && values['runs-dir']) throw new InputError('--out and --runs-dir exclude each other');
      const jobs = values.jobs === undefined ? undefined : Number(values.jobs);
      if (jobs !== undefined && (!Number.isSafeInteger(jobs) || jobs < 1)) throw new InputError(`--jobs must be a positive integer (got ${values.jobs})`);
      const human = values.json ? process.stderr : process.stdout;
      const { m, ok, cells } = await selection(positionals[0], values.cell ?? [], human);
      if (!ok) return 2;
      if (cells.length === 0) throw new InputError(`${positionals[0]}: no cells to run`);
      const r = await runMatrix(m, cells, {
        progress, matrixArg: relativeArg(positionals[0]), jobs, runsDir: values['runs-dir'], out: values.out, refresh: values.refresh,
        // A CI job runs one cell of a run of every cell: its merge must miss none of them.
        ...(values['whole-matrix'] ? { planned: m.cells.map((c) => c.id) } : {}),
      });
      if (values.json) process.stdout.write(`${JSON.stringify({ dir: r.dir, seconds: r.seconds, jobs: r.jobs.jobs, builds: r.builds, ...summaryJson(r.summary) as object }, null, 2)}\n`);
      else human.write(`\n${r.grid}\n`);
      const o = r.summary.outcome;
      human.write(`\nmatrix folder: ${r.dir} (report.html, junit.xml, summary.md, kcidb.json)\n`);
      human.write(`MATRIX ${o.class.toUpperCase()}: ${o.title}\n`);
      human.write(`total ${r.seconds.total.toFixed(0)} s (builds ${r.seconds.builds.toFixed(0)} s, cells ${r.seconds.cells.toFixed(0)} s with ${r.jobs.jobs} at a time)\n`);
      return EXIT_CODE[o.class];
    }
    case 'ci': {
      const [engine, ...more] = rest;
      const { values, positionals } = parseArgs({
        args: more, allowPositionals: true,
        options: { out: { type: 'string' }, 'runs-on': { type: 'string' }, image: { type: 'string' }, tag: { type: 'string', multiple: true }, 'hwlab-dir': { type: 'string' } },
      });
      if ((engine !== 'github' && engine !== 'gitlab') || positionals.length !== 1) throw new InputError('usage: hwlab matrix ci github|gitlab <matrix.yaml> [--out FILE]');
      const { m, ok } = await selection(positionals[0], [], process.stderr);
      if (!ok) return 2;
      const hwlabDir = values['hwlab-dir'];
      if (hwlabDir !== undefined && !/^[A-Za-z0-9_./-]+$/.test(hwlabDir)) throw new InputError(`--hwlab-dir must be a relative path of letters, digits, _ . / - (got ${hwlabDir})`);
      const opts: CiOptions = { matrixArg: relativeArg(positionals[0]), runsOn: values['runs-on'], image: values.image, tags: values.tag, hwlabDir };
      const text = engine === 'github' ? githubWorkflow(m, opts) : gitlabPipeline(m, opts);
      if (values.out) {
        await writeFile(values.out, text);
        process.stderr.write(`wrote ${values.out}: ${m.cells.length} cell jobs and a merge job\n`);
      } else process.stdout.write(text);
      return 0;
    }
    default:
      throw new InputError(`usage:\n${MATRIX_USAGE}`);
  }
}

export async function mergeCommand(args: string[], progress: Progress): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: { out: { type: 'string' }, json: { type: 'boolean' }, 'kcidb-origin': { type: 'string' } },
  });
  if (positionals.length === 0) throw new InputError('hwlab merge takes one or more folders (matrix folders, cell folders, CI artifacts)');
  const origin = values['kcidb-origin'];
  if (origin !== undefined && !/^[a-z0-9_]+$/.test(origin)) throw new InputError(`--kcidb-origin must be lowercase letters, digits and _ (KCIDB's origin; got ${origin})`);
  const { summary, notes } = await collectCells(positionals, { kind: 'merge' });
  const out = path.resolve(values.out ?? 'hwlab-merged');
  const files = await writeReports(out, summary, { kcidbOrigin: origin });
  const human = values.json ? process.stderr : process.stdout;
  for (const n of notes) progress.info(`note: ${n}`);
  if (values.json) process.stdout.write(`${JSON.stringify({ dir: out, notes, ...summaryJson(summary) as object }, null, 2)}\n`);
  else human.write(`${formatGrid(summary)}\n`);
  human.write(`\nmerged ${summary.cells.length} cell${summary.cells.length === 1 ? '' : 's'} into ${out}: ${Object.values(files).map((f) => path.basename(f)).join(', ')}\n`);
  human.write(`MERGE ${summary.outcome.class.toUpperCase()}: ${summary.outcome.title}\n`);
  return EXIT_CODE[summary.outcome.class];
}

// The command table's entries (src/cli/main.ts): these two parse their own arguments.
export const matrixCommandSpec = ownParserCommand(
  'matrix',
  'a matrix of kernel configs, vIOMMUs and topologies: plan, run here, key, CI files',
  'plan|run|key|ci ...',
  MATRIX_USAGE.split('\n').filter((l) => !l.trimStart().startsWith('merge') && !l.includes('one summary and its reports')).join('\n'),
  (argv) => matrixCommand(argv, new Progress()),
);

export const mergeCommandSpec = ownParserCommand(
  'merge',
  'one summary and its reports from cell folders (matrix runs, CI artifacts)',
  '<dir>...',
  MATRIX_USAGE.slice(MATRIX_USAGE.indexOf('  merge')),
  (argv) => mergeCommand(argv, new Progress()),
);
