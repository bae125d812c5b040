// The one model every report reads: a summary of cells, each a run folder
// (results.json, lab.resolved.json, and for a matrix cell its cell.json),
// with one class per probe and one outcome for the whole. A single `hwlab
// run` is a summary of one cell, a matrix run and a merge of CI artifacts
// are summaries of many, so JUnit, HTML, Markdown and KCIDB are written the
// same way for all three. Classes come from the results as data (outcome
// classes, probe status, kernel reports), never from parsing a message.
import type { LabSpec } from '../lab/types.ts';
import { failingPoints, type Outcome, type OutcomeClass } from '../results/outcome.ts';
import type { RunResults } from '../results/report.ts';
import { probeStatus, TAP_STREAM_PROBE, type ProbeResult } from '../results/tap.ts';

/** What a matrix cell's folder says about the cell, beside its results (cell.json). */
export interface CellMeta {
  id: string;
  matrix: {
    name: string;
    /** The matrix file, relative to the directory hwlab ran in. */
    file: string;
    /** Every cell of the run this cell is part of (all the CI workflow's jobs, or one `matrix run`'s selection), so a merge can tell which ones have no results. */
    cells: string[];
  };
  /** Axis -> value name. */
  axes: Record<string, string>;
  /** Where this cell's right result differs from the lab's, with the reason. */
  expectations: Array<{ probe: string; device?: string; what: string; reason: string; at: string }>;
  build: { key: string; label: string };
  /** The one command that runs this cell alone. */
  reproduce: string;
}

/** One probe's place in the grid. */
export type ProbeClass = 'pass' | 'fail' | 'kernel' | 'infra' | 'todo' | 'skip' | 'not-run';

export interface ProbeRow {
  /** Column key: `name(device)`, or the name when the device is unknown. */
  key: string;
  name: string;
  device?: string;
  class: ProbeClass;
  /** Undefined when the probe never ran (the run stopped before it). */
  result?: ProbeResult;
  /** Set for a kernel selftest's row (a lab's `selftests:`): its kselftest collection, the suite it belongs to. */
  collection?: string;
}

export interface CellRecord {
  id: string;
  /** Absolute path of the cell's run folder. */
  dir: string;
  meta?: CellMeta;
  results: RunResults;
  probes: ProbeRow[];
}

export type SummaryKind = 'run' | 'matrix' | 'merge';

export interface ReportSummary {
  kind: SummaryKind;
  name: string;
  createdAt: string;
  /** The worst class of any cell (see WORST_FIRST), with the cells that have it. */
  outcome: Outcome;
  cells: CellRecord[];
  /** Probe keys in order of first appearance: the grid's columns. */
  columns: string[];
  counts: Record<OutcomeClass, number>;
}

/**
 * Classes from worst to best, for the matrix's exit: bad input stops
 * everything, then the strongest evidence about the kernel (a report, then
 * failed points), and a run the host broke only when nothing says more; the
 * same order a single run's outcome follows (src/results/outcome.ts).
 */
export const WORST_FIRST: readonly OutcomeClass[] = ['error', 'kernel', 'fail', 'infra', 'pass'];

export function worstClass(classes: Iterable<OutcomeClass>): OutcomeClass {
  let worst: OutcomeClass = 'pass';
  for (const c of classes) if (WORST_FIRST.indexOf(c) < WORST_FIRST.indexOf(worst)) worst = c;
  return worst;
}

/** A probe's class from its result: a kernel report in its window beats failed points; a probe that stopped without a failing point is infra. */
export function probeClass(p: ProbeResult): ProbeClass {
  if (p.notRun !== undefined) return 'not-run';
  const st = probeStatus(p);
  if (st === 'SKIP') return 'skip';
  if (st === 'TODO') return 'todo';
  if (st === 'PASS') return 'pass';
  if (p.kernelReports.length) return 'kernel';
  return failingPoints([p]).length ? 'fail' : 'infra';
}

const keyOf = (name: string, device?: string) => (device ? `${name}(${device})` : name);

/** What a cell's lab planned to run (LabSpec.probes, or lab.resolved.json's). */
export type PlannedProbes = { probes: ReadonlyArray<Pick<LabSpec['probes'][number], 'name' | 'device'>> };

/**
 * The probes of a cell, in the lab's order: each with its result when it ran.
 * Results follow the lab's probe order (the runner's TAP, not-run probes
 * included); a probe the run never reached is `not-run`.
 */
export function probeRows(results: RunResults, lab?: PlannedProbes): ProbeRow[] {
  const ran = results.probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  const planned = lab?.probes ?? ran.map((p) => ({ name: p.name, device: undefined as string | undefined }));
  let next = 0;
  const rows: ProbeRow[] = planned.map((p) => {
    // In order; a probe missing from a cut-off stream does not shift the ones after it onto the wrong row.
    const r = ran[next]?.name === p.name ? ran[next++] : undefined;
    return { key: keyOf(p.name, p.device), name: p.name, ...(p.device ? { device: p.device } : {}), class: r ? probeClass(r) : 'not-run', ...(r ? { result: r } : {}) };
  });
  // Results the lab does not account for (a lab file changed under a folder): shown, never dropped.
  for (const r of ran.slice(next)) rows.push({ key: keyOf(r.name), name: r.name, class: probeClass(r), result: r });
  // The kernel's selftests after the probes, one row per test program: `kselftest:collection:test(devices)`.
  for (const r of results.selftests ?? []) {
    const device = r.devices?.join('+');
    rows.push({ key: keyOf(`kselftest:${r.name}`, device), name: `kselftest:${r.name}`, ...(device ? { device } : {}), class: probeClass(r), result: r, collection: r.collection });
  }
  return rows;
}

/** Every probe and selftest result of a run: what kernel reports are attributed to. */
export function testResults(r: Pick<RunResults, 'probes' | 'selftests'>): ProbeResult[] {
  return [...r.probes, ...(r.selftests ?? [])];
}

export function summarize(kind: SummaryKind, name: string, cells: CellRecord[]): ReportSummary {
  const counts = { pass: 0, fail: 0, kernel: 0, infra: 0, error: 0 } as Record<OutcomeClass, number>;
  for (const c of cells) counts[c.results.outcome.class]++;
  const worst = worstClass(cells.map((c) => c.results.outcome.class));
  const bad = cells.filter((c) => c.results.outcome.class === worst);
  const columns: string[] = [];
  for (const c of cells) for (const p of c.probes) if (!columns.includes(p.key)) columns.push(p.key);
  const outcome: Outcome = cells.length === 0
    ? { class: 'infra', code: 'no-cells', title: 'no cell results found', detail: '' }
    : worst === 'pass'
      ? { class: 'pass', code: 'pass', title: `${cells.length} cell${cells.length === 1 ? '' : 's'} passed`, detail: '' }
      : {
        class: worst,
        code: bad.length === 1 ? bad[0].results.outcome.code : worst,
        title: `${bad.length} of ${cells.length} cell${cells.length === 1 ? '' : 's'} ${worst}: ${bad.map((c) => c.id).join(', ')}`,
        detail: cells.filter((c) => c.results.outcome.class !== 'pass').map((c) => `${c.id}: ${c.results.outcome.class} (${c.results.outcome.code}): ${c.results.outcome.title}`).join('\n'),
      };
  return { kind, name, createdAt: new Date().toISOString(), outcome, cells, columns, counts };
}

/** A single `hwlab run` as a summary of one cell. */
export function runSummary(results: RunResults, lab?: PlannedProbes): ReportSummary {
  return summarize('run', results.lab, [{ id: results.lab, dir: results.runDir, results, probes: probeRows(results, lab) }]);
}
