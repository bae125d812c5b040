// `hwlab merge`: one summary from cell folders wherever they ran, this
// machine's matrix folders or a CI engine's downloaded artifacts (one folder
// per job, nested as the engine lays them out). A cell that two folders
// hold (a job run again) counts once, the newest; a cell its matrix planned
// but no folder holds (a job that died before uploading) is not silently
// absent: it becomes an infra cell "missing", so the merge cannot pass.
import path from 'node:path';
import type { RunResults } from '../results/report.ts';
import { InputError } from '../util/errors.ts';
import { findRunFolders, readRunFolder } from './folders.ts';
import { summarize, type CellRecord, type ReportSummary, type SummaryKind } from './summary.ts';

export interface MergeResult {
  summary: ReportSummary;
  /** What the merge decided that a reader should know (duplicates dropped, cells missing). */
  notes: string[];
}

function missingCell(id: string, matrix: string): CellRecord {
  const results: RunResults = {
    lab: '(unknown)',
    startedAt: new Date(0).toISOString(),
    outcome: { class: 'infra', code: 'missing', title: `no results for cell ${id} of matrix ${matrix}`, detail: 'no folder with this cell\'s results.json was given to the merge (its CI job failed before uploading, or was cancelled)' },
    probes: [],
    kernelReports: [],
    timings: {},
    runDir: '',
  };
  return { id, dir: '', results, probes: [] };
}

/** Cells from the folders under `roots`; `expect` adds the cells that must be there (a matrix run's selection). */
export async function collectCells(roots: readonly string[], opts: { kind: SummaryKind; name?: string; expect?: string[] }): Promise<MergeResult> {
  const notes: string[] = [];
  const byId = new Map<string, CellRecord>();
  for (const dir of await findRunFolders(roots)) {
    const rec = await readRunFolder(dir);
    if (!rec) continue;
    // Plain run folders (no cell.json) of the same lab are told apart by their folder.
    if (!rec.meta && byId.has(rec.id)) rec.id = path.basename(rec.dir);
    const prev = byId.get(rec.id);
    if (prev) {
      const [keep, drop] = prev.results.startedAt >= rec.results.startedAt ? [prev, rec] : [rec, prev];
      notes.push(`cell ${rec.id} is in two folders; kept the newer ${keep.dir}, dropped ${drop.dir}`);
      byId.set(rec.id, keep);
    } else byId.set(rec.id, rec);
  }
  const matrices = new Map<string, Set<string>>();
  for (const c of byId.values()) {
    if (!c.meta) continue;
    const s = matrices.get(c.meta.matrix.name) ?? new Set<string>();
    for (const id of c.meta.matrix.cells) s.add(id);
    matrices.set(c.meta.matrix.name, s);
  }
  const expected = new Map<string, string>();
  for (const [m, ids] of matrices) for (const id of ids) expected.set(id, m);
  for (const id of opts.expect ?? []) if (!expected.has(id)) expected.set(id, opts.name ?? 'matrix');
  // Only cells of the selection count as missing when a selection was given (a run with --cell).
  const mustHave = opts.expect ? new Map([...expected].filter(([id]) => opts.expect!.includes(id))) : expected;
  for (const [id, m] of mustHave) {
    if (!byId.has(id)) {
      byId.set(id, missingCell(id, m));
      notes.push(`cell ${id} of matrix ${m}: no results (counted as infra, code missing)`);
    }
  }
  if (byId.size === 0) throw new InputError(`no run folders (with results.json) under ${roots.join(', ')}`);
  // Cells in their matrix's order where one is known, then the rest by id.
  const order = [...matrices.values()].flatMap((s) => [...s]);
  const cells = [...byId.values()].sort((a, b) => {
    const ia = order.indexOf(a.id);
    const ib = order.indexOf(b.id);
    return (ia === -1 ? Infinity : ia) - (ib === -1 ? Infinity : ib) || a.id.localeCompare(b.id);
  });
  const name = opts.name ?? (matrices.size === 1 ? [...matrices.keys()][0] : cells.length === 1 ? cells[0].id : 'merge');
  return { summary: summarize(opts.kind, name, cells), notes };
}
