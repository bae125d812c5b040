// What a run leaves for machines (results.json: the outcome, the kernel, the
// probes and kernel reports) and for people (a table plus failure details).

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AppliedPatch, Kernel, KernelKind } from '../kernel/types.ts';
import type { RebuildPlan } from '../kernel/targeted.ts';
import type { Outcome, RunFailure } from './outcome.ts';
import { countSuffix, describeReport, type KernelReport } from '../report/kernel-report.ts';
import type { SelftestResult } from './kselftest.ts';
import { probeStatus, type ProbeResult } from './tap.ts';
import type { ViommuRecord } from '../session/viommu.ts';

/** The kernel a run booted, as results.json records it. */
export interface KernelRecord {
  /** stock (a prebuilt Debian image), source (built here), overlay (prebuilt with driver dirs rebuilt: the fast path). */
  kind: KernelKind;
  package: string;
  version: string;
  release: string;
  /** The applied series, in order (source and overlay kernels). */
  patches?: AppliedPatch[];
  configSha256?: string;
  /** Whether make ran for this run (false: the cached build was reused). */
  built?: boolean;
  buildSeconds?: number;
  incrementalFrom?: string;
  /** Source builds that ran make: the whole tree or only the modules (a targeted rebuild), and why. */
  rebuild?: RebuildPlan;
  /** Overlay: the driver directories rebuilt against the prebuilt kernel's headers. */
  driverDirs?: string[];
  compilerNote?: string;
  /** Modules loaded in the guest whose srcversion (source builds) or GNU build-id (overlay, hwlab's own) matched the build output. */
  modulesVerified?: Array<{ module: string; srcversion?: string; buildId?: string }>;
}

export function kernelRecord(k: Kernel): KernelRecord {
  const base = { kind: k.kind, package: k.package, version: k.version, release: k.release };
  switch (k.kind) {
    case 'stock':
      return base;
    case 'source':
      return { ...base, patches: k.patches, configSha256: k.configSha256, built: k.built, buildSeconds: k.buildSeconds, ...(k.incrementalFrom ? { incrementalFrom: k.incrementalFrom } : {}), ...(k.rebuild ? { rebuild: k.rebuild } : {}) };
    case 'overlay':
      return { ...base, patches: k.patches, driverDirs: k.dirs, built: k.built, buildSeconds: k.buildSeconds, ...(k.compiler.note ? { compilerNote: k.compiler.note } : {}) };
  }
}

/**
 * Which probe runner ran the probes: `prestarted` (waiting in a restored
 * guest since before its save, node and koffi loaded: startupSavedSec is what
 * its start took at the save, the cold start this run did not pay) or `cold`
 * (node started for this run; prestartRefused says why a waiting one did not
 * take it, when one was asked).
 */
export type RunnerRecord =
  | { mode: 'prestarted'; startupSavedSec: number }
  | { mode: 'cold'; prestartRefused?: string };

export interface RunResults {
  lab: string;
  startedAt: string;
  /** The one class the run ended in, and why (see outcome.ts). */
  outcome: Outcome;
  /** Why the run stopped short, when it did (prepare, boot, setup, probes, teardown). */
  failure?: RunFailure;
  /** Absent when the run stopped before it had a kernel. */
  kernel?: KernelRecord;
  /** Which backend ran the guest, and under which accelerator. */
  machine?: { backend: string; accel: 'kvm' | 'tcg'; accelNote: string };
  /** The lab's vIOMMU (type, mode, its cmdline words) and what the guest showed of it per endpoint; absent before setup. */
  viommu?: ViommuRecord;
  probes: ProbeResult[];
  /** The kernel's own selftests (a lab's `selftests:`), one per test program, named `collection:test`; absent when the lab has none. */
  selftests?: SelftestResult[];
  /** How the selftests were built for this kernel (make ran, or the cached entry). */
  selftestsBuild?: { collections: string[]; cacheKey: string; built: boolean; buildSeconds?: number };
  /** Every kernel report of the run, one entry per title with its count (probes hold theirs too). */
  kernelReports: KernelReport[];
  timings: Record<string, number>;
  /** Which probe runner ran (absent when no probe phase ran). */
  runner?: RunnerRecord;
  runDir: string;
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

/** One table of results (probes, or selftests) and the details of the failing and TODO ones. */
function resultTable(title: string, list: readonly ProbeResult[], details: string[], selftests: boolean): string[] {
  const rows = list.map((p) => {
    const counted = p.subtests.filter((s) => s.skip === undefined);
    const passed = counted.filter((s) => s.ok).length;
    return [p.name, p.subtests.length > 0 ? `${passed}/${counted.length}` : '-', selftests && p.notRun !== undefined ? 'NOT RUN' : probeStatus(p), fmtDuration(p.durationMs)];
  });
  const header = [title, 'SUBTESTS', 'STATUS', 'DURATION'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => pad(c, widths[i])).join('  ').trimEnd();
  for (const p of list) {
    const st = probeStatus(p);
    // kselftest's skip reasons say what the guest lacks (a device QEMU does not emulate, a config).
    if (selftests && st === 'SKIP') details.push(`SKIP ${p.name}: ${p.skip}`);
    if (st !== 'FAIL' && st !== 'TODO') continue;
    details.push(`${st} ${p.name}${p.todo !== undefined ? ` (todo: ${p.todo})` : ''}`);
    if (p.diagnostics) details.push(indentBlock(fmtDiag(p.diagnostics), '    '));
    for (const s of p.subtests) {
      if (s.ok || s.skip !== undefined) continue;
      // A selftest's expected failure marks each failing point with the same reason: say it once.
      const todo = s.todo === undefined ? '' : selftests && s.todo === p.todo ? ' # TODO (as above)' : ` # TODO ${s.todo}`;
      details.push(`  not ok ${s.id} - ${s.name}${todo}`);
      if (s.diagnostics) details.push(indentBlock(fmtDiag(s.diagnostics), '      '));
    }
    for (const r of p.kernelReports) details.push(`  kernel ${r.kind}: ${r.title}${countSuffix(r)} (first at console line ${r.line})`);
  }
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)];
}

/** Probe table (and the selftests' when the lab has them), then each failing/TODO one's subtests with diagnostics, then each kernel report's head (once per title). */
export function formatResultTable(results: Pick<RunResults, 'probes' | 'kernelReports'> & Partial<RunResults>): string {
  const { probes, kernelReports } = results;
  const details: string[] = [];
  const out: string[] = [];
  if (probes.length || !results.selftests) out.push(...resultTable('PROBE', probes, details, false));
  if (results.selftests) out.push(...(out.length ? [''] : []), ...resultTable('SELFTEST', results.selftests, details, true));
  for (const r of kernelReports) {
    const lines = r.excerpt.split('\n');
    details.push(`KERNEL REPORT ${describeReport(r)}  [first at console line ${r.line}]`);
    details.push(indentBlock(lines.slice(0, REPORT_PREVIEW_LINES).join('\n'), '    '));
    if (lines.length > REPORT_PREVIEW_LINES) details.push(`    ... (${lines.length - REPORT_PREVIEW_LINES} more lines)`);
  }
  if (details.length > 0) out.push('', ...details);
  if (results.outcome) {
    const o = results.outcome;
    out.push('', `outcome: ${o.class.toUpperCase()}${o.class === 'pass' ? '' : `: ${o.title}`}`);
    if (o.class !== 'pass') for (const r of o.detail.split('\n').filter(Boolean)) out.push(`  - ${r}`);
  }
  return out.join('\n');
}
