// Every report of a summary, written into one folder: summary.json (the
// model, without the per-point results, which stay in each cell's
// results.json), grid.txt, junit.xml, report.html, summary.md and
// kcidb.json. The same files for a run, a matrix and a merge.
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { formatGrid } from './grid.ts';
import { htmlReport } from './html.ts';
import { junitXml } from './junit.ts';
import { kcidbReport } from './kcidb.ts';
import { markdownSummary } from './markdown.ts';
import type { ReportSummary } from './summary.ts';

export const REPORT_FILES = {
  summary: 'summary.json', grid: 'grid.txt', junit: 'junit.xml', html: 'report.html', markdown: 'summary.md', kcidb: 'kcidb.json',
} as const;

/** summary.json: the summary with each cell's outcome and probe classes, pointing at the cell folders for the rest. */
export function summaryJson(s: ReportSummary): unknown {
  return {
    kind: s.kind, name: s.name, createdAt: s.createdAt, outcome: s.outcome, counts: s.counts, columns: s.columns,
    cells: s.cells.map((c) => ({
      id: c.id, dir: c.dir, outcome: c.results.outcome, ...(c.results.failure ? { failure: c.results.failure } : {}),
      lab: c.results.lab, startedAt: c.results.startedAt, timings: c.results.timings,
      ...(c.results.kernel ? { kernel: { package: c.results.kernel.package, release: c.results.kernel.release, built: c.results.kernel.built ?? false } } : {}),
      ...(c.meta ? { axes: c.meta.axes, expectations: c.meta.expectations, build: c.meta.build, reproduce: c.meta.reproduce } : {}),
      probes: c.probes.map((p) => ({ key: p.key, class: p.class, ...(p.result?.durationMs !== undefined ? { durationMs: p.result.durationMs } : {}) })),
      kernelReports: c.results.kernelReports.map((r) => ({ kind: r.kind, title: r.title, count: r.count })),
    })),
  };
}

export interface WriteReportsOptions {
  /** KCIDB origin (the CI system's name there). */
  kcidbOrigin?: string;
}

/** Writes the reports into `dir`; returns the paths by kind. */
export async function writeReports(dir: string, s: ReportSummary, opts: WriteReportsOptions = {}): Promise<Record<keyof typeof REPORT_FILES, string>> {
  await mkdir(dir, { recursive: true });
  const out = Object.fromEntries(Object.entries(REPORT_FILES).map(([k, f]) => [k, path.join(dir, f)])) as Record<keyof typeof REPORT_FILES, string>;
  const link = (cell: { dir: string }, file: string) => {
    if (!cell.dir || !existsSync(path.join(cell.dir, file))) return undefined;
    return path.relative(dir, path.join(cell.dir, file)).split(path.sep).map(encodeURIComponent).join('/');
  };
  await writeFile(out.summary, `${JSON.stringify(summaryJson(s), null, 2)}\n`);
  await writeFile(out.grid, `${formatGrid(s)}\n`);
  await writeFile(out.junit, junitXml(s));
  await writeFile(out.html, htmlReport(s, { link }));
  await writeFile(out.markdown, markdownSummary(s));
  await writeFile(out.kcidb, `${JSON.stringify(kcidbReport(s, opts.kcidbOrigin), null, 2)}\n`);
  return out;
}
