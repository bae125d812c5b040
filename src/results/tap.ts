// Turns the guest runner's TAP 14 stream (one subtest per probe) into
// ProbeResults. A stream that is cut short or malformed must never read as
// success, so stream-level problems become a synthetic failed probe.

import { Parser } from 'tap-parser';
import type { FinalResults, Result } from 'tap-parser';
import { HARNESS_DIAG_KEY } from '../protocol/protocol.ts';
import type { KernelReport } from '../report/kernel-report.ts';

export interface SubtestResult {
  id: number;
  name: string;
  /** The point as written: a known failure is `ok: false` with `todo` set. */
  ok: boolean;
  /** SKIP directive reason ('(no reason)' when the directive had none). */
  skip?: string;
  /** TODO directive reason ('(no reason)' when the directive had none). */
  todo?: string;
  diagnostics?: Record<string, unknown>;
  /** Not ok because the guest harness failed its part (its reason): evidence of nothing, classed infra. */
  harness?: string;
}

export interface ProbeResult {
  name: string;
  /** The probe's point is ok, or not ok with a TODO directive (a known failure; `todo` says so). */
  ok: boolean;
  skip?: string;
  todo?: string;
  durationMs?: number;
  subtests: SubtestResult[];
  diagnostics?: Record<string, unknown>;
  /** Kernel reports in this probe's time window, one per title (see src/results/attribution.ts). */
  kernelReports: KernelReport[];
  /** The probe never started (an earlier probe hung): a failure that says nothing about this probe. */
  notRun?: string;
}

/** A probe the host stopped waiting for (see src/run/probe-watchdog.ts). */
export interface HungProbe {
  index: number;
  name: string;
  timeoutSec: number;
  /** Tasks in uninterruptible sleep with their kernel stacks, as the guest listed them. */
  blockedTasks: string;
}

/** A point that is evidence of a failure: not ok, not a known failure (TODO), not skipped, not a harness point. */
export function isFailingPoint(s: SubtestResult): boolean {
  return !s.ok && s.todo === undefined && s.skip === undefined && s.harness === undefined;
}

/** Name of the synthetic result that carries stream-level failures. */
export const TAP_STREAM_PROBE = '(tap stream)';

const NO_REASON = '(no reason)';

function directive(v: boolean | string): string | undefined {
  if (v === false) return undefined;
  return v === true || v === '' ? NO_REASON : v;
}

function diagOf(r: Result): Record<string, unknown> | undefined {
  return r.diag && typeof r.diag === 'object' && Object.keys(r.diag).length > 0
    ? (r.diag as Record<string, unknown>)
    : undefined;
}

function toSubtest(r: Result): SubtestResult {
  const s: SubtestResult = { id: r.id, name: r.name, ok: r.ok };
  const skip = directive(r.skip);
  const todo = directive(r.todo);
  const diagnostics = diagOf(r);
  if (skip !== undefined) s.skip = skip;
  if (todo !== undefined) s.todo = todo;
  if (diagnostics) s.diagnostics = diagnostics;
  const harness = diagnostics?.[HARNESS_DIAG_KEY];
  if (!r.ok && typeof harness === 'string') s.harness = harness;
  return s;
}

/** Spec violations a parser recorded (plan/count mismatch, ids past the plan, missing plan). */
function tapErrors(res: FinalResults): string[] {
  const out: string[] = [];
  for (const f of res.failures) {
    const err = (f as { tapError?: string | null }).tapError;
    if (!err) continue;
    const name = (f as { name?: string }).name;
    out.push(name ? `${err} (${name})` : err);
  }
  return out;
}

interface ChildState {
  name: string;
  subtests: SubtestResult[];
  final?: FinalResults;
}

export function parseProbeTap(tap: string): ProbeResult[] {
  const probes: ProbeResult[] = [];
  let pending: ChildState | undefined;
  let final: FinalResults | undefined;

  const parser = new Parser({}, (r: FinalResults) => {
    final = r;
  });
  parser.on('child', (child: Parser) => {
    const state: ChildState = { name: child.name, subtests: [] };
    pending = state;
    child.on('assert', (r: Result) => state.subtests.push(toSubtest(r)));
    child.on('complete', (r: FinalResults) => {
      state.final = r;
    });
  });
  parser.on('assert', (r: Result) => {
    // A point closing a "# Subtest:" block owns the subtests parsed just before it.
    const child = r.closingTestPoint ? pending : undefined;
    if (r.closingTestPoint) pending = undefined;
    const skip = directive(r.skip);
    const todo = directive(r.todo);
    // A known failure (not ok # TODO) must not fail the run; `todo` keeps it visible.
    const probe: ProbeResult = { name: r.name, ok: r.ok || todo !== undefined, subtests: child?.subtests ?? [], kernelReports: [] };
    if (skip !== undefined) probe.skip = skip;
    if (todo !== undefined) probe.todo = todo;
    if (r.time !== null && r.time !== undefined) probe.durationMs = r.time;
    const diagnostics: Record<string, unknown> = { ...(diagOf(r) ?? {}) };
    // A child whose own plan/count is broken was garbled; don't let its parent point vouch for it.
    const childErrors = child?.final ? tapErrors(child.final) : [];
    if (childErrors.length > 0 && probe.todo === undefined && probe.skip === undefined) {
      probe.ok = false;
      diagnostics.tapErrors = childErrors;
    }
    if (Object.keys(diagnostics).length > 0) probe.diagnostics = diagnostics;
    probes.push(probe);
  });
  parser.end(tap);

  const reasons: string[] = [];
  // Checked on the text: for empty input tap-parser synthesizes both a version line and a "1..0" plan.
  if (!/^TAP version \d+\s*$/m.test(tap)) reasons.push("no 'TAP version' line: runner output missing or garbled");
  const hasPlan = /^\d+\.\.\d+/m.test(tap);
  if (pending) {
    // The runner died inside a probe: report that probe as failed with what it got through.
    probes.push({
      name: pending.name || '(unnamed subtest)',
      ok: false,
      subtests: pending.subtests,
      diagnostics: { error: 'interrupted: subtest has no closing test point' },
      kernelReports: [],
    });
    reasons.push(`stream ended inside subtest '${pending.name}'`);
  }
  if (final) {
    if (final.bailout !== false) reasons.push(`bail out: ${final.bailout === true ? NO_REASON : final.bailout}`);
    if (!hasPlan) reasons.push('no plan: stream truncated before its trailing plan');
    for (const e of tapErrors(final)) {
      if (e === 'no plan') continue;
      else if (e === 'incorrect number of tests')
        reasons.push(`incorrect number of tests: planned ${planned(final)}, got ${final.count}`);
      else reasons.push(e);
    }
  } else {
    reasons.push('parser did not complete');
  }
  if (reasons.length > 0) {
    probes.push({
      name: TAP_STREAM_PROBE,
      ok: false,
      subtests: [],
      diagnostics: { reasons },
      kernelReports: [],
    });
  }
  return probes;
}

function planned(r: FinalResults): string {
  const { start, end } = r.plan;
  return start === null || end === null ? '?' : String(end - start + 1);
}

export type ProbeStatus = 'PASS' | 'FAIL' | 'SKIP' | 'TODO';

/** One status per probe: SKIP/TODO directives win, then the point's ok. */
export function probeStatus(p: ProbeResult): ProbeStatus {
  if (p.skip !== undefined) return 'SKIP';
  if (p.todo !== undefined) return 'TODO';
  return p.ok ? 'PASS' : 'FAIL';
}

export interface TapSummary {
  total: number;
  pass: number;
  fail: number;
  skip: number;
  todo: number;
}

export function tapSummary(results: readonly ProbeResult[]): TapSummary {
  const s: TapSummary = { total: results.length, pass: 0, fail: 0, skip: 0, todo: 0 };
  for (const p of results) {
    const st = probeStatus(p);
    if (st === 'PASS') s.pass++;
    else if (st === 'FAIL') s.fail++;
    else if (st === 'SKIP') s.skip++;
    else s.todo++;
  }
  return s;
}

/**
 * After a probe timeout: the interrupted probe fails with a point of its own
 * (it did not finish in its budget) carrying the blocked tasks, and the probes
 * after it are reported as not run, so none of them reads as passed.
 */
export function markHungProbe(probes: ProbeResult[], hung: HungProbe, order: readonly string[]): void {
  const diag = { error: `timed out: no result after ${hung.timeoutSec} s`, blockedTasks: hung.blockedTasks };
  let p = probes.find((x) => x.name === hung.name && !x.ok && (x.diagnostics?.error as string | undefined)?.startsWith('interrupted'));
  if (!p) {
    p = { name: hung.name, ok: false, subtests: [], kernelReports: [] };
    const stream = probes.findIndex((x) => x.name === TAP_STREAM_PROBE);
    probes.splice(stream === -1 ? probes.length : stream, 0, p);
  }
  p.ok = false;
  p.diagnostics = { ...p.diagnostics, ...diag };
  p.subtests.push({ id: p.subtests.length + 1, name: `finishes within ${hung.timeoutSec} s`, ok: false, diagnostics: diag });
  const at = probes.indexOf(p) + 1;
  const rest = order.slice(hung.index + 1).map((name): ProbeResult => ({
    name, ok: false, subtests: [], kernelReports: [], notRun: `not run: ${hung.name} hung before it`,
    diagnostics: { error: `not run: ${hung.name} (probe ${hung.index + 1}) did not finish in ${hung.timeoutSec} s` },
  }));
  probes.splice(at, 0, ...rest);
}

/**
 * After the run stopped in the middle of the probes (the guest panicked, QEMU
 * died, the channel broke): the probes the TAP never reached are reported as
 * not run, so the results say what was lost rather than ending at the cut.
 * The runner runs the lab's probes in order, so those are the ones after the
 * last probe that has a result.
 */
export function markUnreachedProbes(probes: ProbeResult[], order: readonly string[], why: string): void {
  const reached = probes.filter((p) => p.name !== TAP_STREAM_PROBE).length;
  if (reached >= order.length) return;
  const last = reached > 0 ? order[reached - 1] : undefined;
  const rest = order.slice(reached).map((name): ProbeResult => ({
    name, ok: false, subtests: [], kernelReports: [], notRun: `not run: ${why}${last ? ` during ${last}` : ''}`,
    diagnostics: { error: `not run: ${why}${last ? ` during ${last} (probe ${reached})` : ' before the first probe'}` },
  }));
  const stream = probes.findIndex((x) => x.name === TAP_STREAM_PROBE);
  probes.splice(stream === -1 ? probes.length : stream, 0, ...rest);
}
