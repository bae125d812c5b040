// The verdict of a run and how it is shown: results.json for machines, a
// console table plus failure details for people.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { countSuffix, describeReport, type KernelReport } from '../report/kernel-report.ts';
import { probeStatus, TAP_STREAM_PROBE, type ProbeResult } from './tap.ts';

export interface RunResults {
  lab: string;
  startedAt: string;
  kernel: {
    package: string;
    version: string;
    release: string;
    source?: 'debian-prebuilt' | 'built';
    /** The applied series, in order (built kernels). */
    patches?: Array<{ name: string; sha256: string; origin: string }>;
    configSha256?: string;
    built?: boolean;
    buildSeconds?: number;
    /** Fast path: the driver directories rebuilt against the prebuilt kernel's headers. */
    driverDirs?: string[];
    compilerNote?: string;
    /** Modules loaded in the guest whose srcversion (source builds) or GNU build-id (fast path) matched the build output. */
    modulesVerified?: Array<{ module: string; srcversion?: string; buildId?: string }>;
  };
  accel: 'kvm' | 'tcg';
  accelNote?: string;
  probes: ProbeResult[];
  /** Every kernel report of the run, one entry per title with its count (probes hold theirs too). */
  kernelReports: KernelReport[];
  health: 'clean' | 'kernel-report';
  verdict: 'pass' | 'fail';
  verdictReasons: string[];
  timings: Record<string, number>;
  runDir: string;
}

/**
 * Fail on any failed probe (TODO/SKIP excluded), on an empty run (nothing
 * proved), and on any kernel report: a probe that passed while the kernel
 * WARNed has not shown the driver is healthy.
 */
export function judge(probes: readonly ProbeResult[], kernelReports: readonly KernelReport[]): { verdict: 'pass' | 'fail'; reasons: string[] } {
  const reasons: string[] = [];
  const ran = probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  if (ran.length === 0) reasons.push('no probe ran');
  for (const p of probes) {
    if (probeStatus(p) !== 'FAIL') continue;
    if (p.name === TAP_STREAM_PROBE) {
      const why = (p.diagnostics?.reasons as string[] | undefined)?.join('; ') ?? 'malformed TAP stream';
      reasons.push(`TAP stream broken: ${why}`);
      continue;
    }
    const failed = p.subtests.filter((s) => !s.ok && s.todo === undefined && s.skip === undefined).map((s) => s.name);
    reasons.push(`probe ${p.name} failed${failed.length > 0 ? `: ${failed.join(', ')}` : ''}`);
  }
  for (const r of kernelReports) reasons.push(`kernel ${describeReport(r)}`);
  return { verdict: reasons.length === 0 ? 'pass' : 'fail', reasons };
}

/** results.json in `dir` (created if needed); returns the file's path. */
export async function writeRunResults(dir: string, results: RunResults): Promise<string> {
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'results.json');
  await writeFile(file, JSON.stringify(results, null, 2) + '\n');
  return file;
}

function fmtDuration(ms: number | undefined): string {
  if (ms === undefined) return '-';
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)}s` : `${ms.toFixed(1)}ms`;
}

function pad(s: string, w: number): string {
  return s.length >= w ? s : s + ' '.repeat(w - s.length);
}

function indentBlock(text: string, prefix: string): string {
  return text
    .split('\n')
    .map((l) => prefix + l)
    .join('\n');
}

function fmtDiag(d: Record<string, unknown>): string {
  return Object.entries(d)
    .map(([k, v]) => {
      if (typeof v === 'string') return `${k}: ${v}`;
      // Reason lists read better one per line than as a JSON array.
      if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return [`${k}:`, ...v.map((x) => `  - ${x}`)].join('\n');
      return `${k}: ${JSON.stringify(v)}`;
    })
    .join('\n');
}

/** Lines of a kernel report's excerpt shown under the table; results.json keeps it whole. */
const REPORT_PREVIEW_LINES = 8;

/** Probe table, then each failing/TODO probe's subtests with diagnostics, then each kernel report's head (once per title). */
export function formatResultTable(results: Pick<RunResults, 'probes' | 'kernelReports'> & Partial<RunResults>): string {
  const { probes, kernelReports } = results;
  const rows = probes.map((p) => {
    const counted = p.subtests.filter((s) => s.skip === undefined);
    const passed = counted.filter((s) => s.ok).length;
    return [p.name, p.subtests.length > 0 ? `${passed}/${counted.length}` : '-', probeStatus(p), fmtDuration(p.durationMs)];
  });
  const header = ['PROBE', 'SUBTESTS', 'STATUS', 'DURATION'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i])).join('  ').trimEnd();
  const out: string[] = [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];

  const details: string[] = [];
  for (const p of probes) {
    const st = probeStatus(p);
    if (st !== 'FAIL' && st !== 'TODO') continue;
    details.push(`${st} ${p.name}${p.todo !== undefined ? ` (todo: ${p.todo})` : ''}`);
    if (p.diagnostics) details.push(indentBlock(fmtDiag(p.diagnostics), '    '));
    for (const s of p.subtests) {
      if (s.ok || s.skip !== undefined) continue;
      details.push(`  not ok ${s.id} - ${s.name}${s.todo !== undefined ? ` # TODO ${s.todo}` : ''}`);
      if (s.diagnostics) details.push(indentBlock(fmtDiag(s.diagnostics), '      '));
    }
    for (const r of p.kernelReports) details.push(`  kernel ${r.kind}: ${r.title}${countSuffix(r)} (first at console line ${r.line})`);
  }
  for (const r of kernelReports) {
    const lines = r.excerpt.split('\n');
    details.push(`KERNEL REPORT ${describeReport(r)}  [first at console line ${r.line}]`);
    details.push(indentBlock(lines.slice(0, REPORT_PREVIEW_LINES).join('\n'), '    '));
    if (lines.length > REPORT_PREVIEW_LINES) details.push(`    ... (${lines.length - REPORT_PREVIEW_LINES} more lines)`);
  }
  if (details.length > 0) out.push('', ...details);
  if (results.verdict) {
    out.push('', `verdict: ${results.verdict.toUpperCase()}`);
    for (const r of results.verdictReasons ?? []) out.push(`  - ${r}`);
  }
  return out.join('\n');
}
