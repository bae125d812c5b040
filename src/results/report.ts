// The verdict of a run and how it is shown: results.json for machines, a
// console table plus failure details for people.

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { attributeSplats, type ProbeWindow, type Splat } from './splat.ts';
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
  splats: Splat[];
  health: 'clean' | 'splat';
  verdict: 'pass' | 'fail';
  verdictReasons: string[];
  timings: Record<string, number>;
  runDir: string;
}

/**
 * Fail on any failed probe (TODO/SKIP excluded), on an empty run (nothing
 * proved), and on any kernel splat: a probe that passed while the kernel
 * WARNed has not shown the driver is healthy.
 */
export function judge(probes: readonly ProbeResult[], splats: readonly Splat[]): { verdict: 'pass' | 'fail'; reasons: string[] } {
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
  for (const s of splats) reasons.push(`kernel ${s.kind}${s.fatal ? ' (fatal)' : ''}: ${s.title}`);
  return { verdict: reasons.length === 0 ? 'pass' : 'fail', reasons };
}

/**
 * A splat inside a probe's window (see probeWindowsFromConsole) belongs to
 * that probe: it is attached to it and fails it, even if every assertion
 * passed. Windows are named "<n> <probe>", n counting probes from 1.
 */
export function attachSplatsToProbes(probes: ProbeResult[], splats: readonly Splat[], windows: readonly ProbeWindow[]): void {
  const { byProbe } = attributeSplats(splats, windows);
  const real = probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  for (const [key, list] of byProbe) {
    const [n, name] = key.split(' ');
    const p = real[Number(n) - 1];
    if (!p || p.name !== name) continue;
    p.splats.push(...list);
    if (p.ok && p.todo === undefined) {
      p.ok = false;
      p.diagnostics = { ...(p.diagnostics ?? {}), kernelSplats: list.map((s) => `${s.kind}: ${s.title}`) };
    }
  }
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

/** Lines of a splat excerpt shown under the table; results.json keeps it whole. */
const SPLAT_PREVIEW_LINES = 8;

/** Probe table, then each failing/TODO probe's subtests with diagnostics, then each splat's head. */
export function formatResultTable(results: Pick<RunResults, 'probes' | 'splats'> & Partial<RunResults>): string {
  const { probes, splats } = results;
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
    for (const sp of p.splats) details.push(`  kernel ${sp.kind}: ${sp.title} (console line ${sp.line})`);
  }
  for (const s of splats) {
    const lines = s.excerpt.split('\n');
    details.push(`SPLAT ${s.kind}${s.fatal ? ' (fatal)' : ''}: ${s.title}  [console line ${s.line}]`);
    details.push(indentBlock(lines.slice(0, SPLAT_PREVIEW_LINES).join('\n'), '    '));
    if (lines.length > SPLAT_PREVIEW_LINES) details.push(`    ... (${lines.length - SPLAT_PREVIEW_LINES} more lines)`);
  }
  if (details.length > 0) out.push('', ...details);
  if (results.verdict) {
    out.push('', `verdict: ${results.verdict.toUpperCase()}`);
    for (const r of results.verdictReasons ?? []) out.push(`  - ${r}`);
  }
  return out.join('\n');
}
