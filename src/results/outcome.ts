// Every run ends in exactly one outcome class, as data: nightly runs, the
// matrix and the mutant catalogue read the class, never a message.
//
//   pass    every probe passed and the kernel stayed quiet
//   fail    a probe point failed (the driver broke the contract)
//   kernel  the kernel printed a report (WARNING, BUG, KASAN, lockdep, hung
//           task, panic, RCU stall), whatever the probes said; or it kept a
//           device from its driver after the probes' processes had exited
//   infra   the host or the emulator let the run down (QEMU died or never
//           booted without a kernel report, SSH lost, a host tool missing,
//           the disk full, a probe's own processes never started in a
//           starved guest): the kernel is not to blame, run it again
//   error   bad input (lab, patch, fragment) or a patch that does not build
//
// When several apply, the strongest evidence about the kernel wins: a bad
// input stops everything, then a kernel report, then failed points, and only
// a run with no evidence at all is infra.
import type { ErrorClass } from '../util/errors.ts';
import { classOfError, HwlabError } from '../util/errors.ts';
import { countSuffix, describeReport, type KernelReport } from '../report/kernel-report.ts';
import { isFailingPoint, probeStatus, TAP_STREAM_PROBE, type ProbeResult } from './tap.ts';

export type OutcomeClass = 'pass' | 'fail' | 'kernel' | 'infra' | 'error';
export const OUTCOME_CLASSES: readonly OutcomeClass[] = ['pass', 'fail', 'kernel', 'infra', 'error'];

export interface Outcome {
  class: OutcomeClass;
  /** Machine-readable reason: `pass`, `probe-failed`, the kernel report kind, or the failure's code (`boot-timeout`, `patch-does-not-apply`, ...). */
  code: string;
  /** One line: the first failing point, the kernel report's title, or why the run broke. */
  title: string;
  /** Everything that went wrong, one item per line. */
  detail: string;
}

/** hwlab's exit code for each class (documented in the README). */
export const EXIT_CODE: Record<OutcomeClass, number> = { pass: 0, fail: 1, kernel: 1, error: 2, infra: 3 };

export type RunPhase = 'prepare' | 'boot' | 'setup' | 'probes' | 'selftests' | 'teardown';

/** Why a run stopped short of finishing its probes normally. */
export interface RunFailure {
  phase: RunPhase;
  class: ErrorClass;
  code: string;
  message: string;
  /** What the user can do about it, when hwlab knows. */
  hint?: string;
}

export function failureFromError(phase: RunPhase, err: unknown): RunFailure {
  const message = err instanceof Error ? err.message : String(err);
  const hint = err instanceof HwlabError ? err.hint : undefined;
  return { phase, class: classOfError(err), code: err instanceof HwlabError ? err.code : 'internal', message, ...(hint ? { hint } : {}) };
}

/** A failing test point that is evidence about the kernel: not a TODO or SKIP, in a probe that ran. */
export interface FailingPoint {
  probe: string;
  /** 0-based position of the probe among the run's probes. */
  index: number;
  subtest: string;
}

export function failingPoints(probes: readonly ProbeResult[]): FailingPoint[] {
  const out: FailingPoint[] = [];
  probes.filter((p) => p.name !== TAP_STREAM_PROBE).forEach((p, index) => {
    if (probeStatus(p) !== 'FAIL' || p.notRun !== undefined) return;
    for (const s of p.subtests) if (isFailingPoint(s)) out.push({ probe: p.name, index, subtest: s.name });
  });
  return out;
}

/** Points a probe could not judge because the guest harness failed its part (tap.ts `harness`). */
export function harnessPoints(probes: readonly ProbeResult[]): Array<{ probe: string; subtest: string; reason: string }> {
  return probes.filter((p) => p.name !== TAP_STREAM_PROBE && p.notRun === undefined)
    .flatMap((p) => p.subtests.filter((s) => s.harness !== undefined).map((s) => ({ probe: p.name, subtest: s.name, reason: s.harness! })));
}

/** Stream-level trouble: the runner's TAP was cut short or malformed. */
function streamProblems(probes: readonly ProbeResult[]): string[] {
  const s = probes.find((p) => p.name === TAP_STREAM_PROBE);
  return s ? ((s.diagnostics?.reasons as string[] | undefined) ?? ['malformed TAP stream']) : [];
}

const first = (s: string) => s.split('\n')[0];

/** A kernel selftest's result (src/results/kselftest.ts) among the probes' (classification treats both alike; messages name which). */
const isSelftest = (p: ProbeResult): boolean => 'collection' in p;
/** `probe` or `selftest`, for the n-th (0-based, stream entry left out) result. */
const what = (probes: readonly ProbeResult[], index: number): string => (isSelftest(probes.filter((p) => p.name !== TAP_STREAM_PROBE)[index]) ? 'selftest' : 'probe');

/** Everything that went wrong in a run, one line each (the outcome's detail, the table's reasons). */
export function runReasons(probes: readonly ProbeResult[], kernelReports: readonly KernelReport[], failure?: RunFailure): string[] {
  const reasons: string[] = [];
  if (failure) reasons.push(`${failure.phase}: ${failure.message}`);
  for (const r of kernelReports) reasons.push(`kernel ${describeReport(r)}`);
  const byProbe = new Map<number, FailingPoint[]>();
  for (const f of failingPoints(probes)) byProbe.set(f.index, [...(byProbe.get(f.index) ?? []), f]);
  for (const [i, fs] of byProbe) reasons.push(`${what(probes, i)} ${fs[0].probe} failed: ${fs.map((f) => f.subtest).join(', ')}`);
  for (const h of harnessPoints(probes)) reasons.push(`probe ${h.probe} could not judge "${h.subtest}": ${h.reason}`);
  for (const p of probes) {
    if (p.name === TAP_STREAM_PROBE || probeStatus(p) !== 'FAIL' || p.notRun !== undefined) continue;
    if (!p.subtests.some((s) => isFailingPoint(s) || s.harness !== undefined)) {
      // A probe that finished with every point ok fails for the kernel reports in its window (attribution.ts).
      const kind = isSelftest(p) ? 'selftest' : 'probe';
      reasons.push(p.kernelReports.length && p.diagnostics?.error === undefined
        ? `${kind} ${p.name} failed: kernel reported ${p.kernelReports.map((r) => `${r.title}${countSuffix(r)}`).join(', ')} during it`
        : `${kind} ${p.name} did not finish: ${String(p.diagnostics?.error ?? (p.diagnostics?.reasons as string[] | undefined)?.join('; ') ?? 'no closing result')}`);
    }
  }
  const notRun = probes.filter((p) => p.notRun !== undefined);
  const notRunProbes = notRun.filter((p) => !isSelftest(p));
  const notRunSelftests = notRun.filter(isSelftest);
  if (notRunProbes.length) reasons.push(`${notRunProbes.length} probe(s) not run: ${notRunProbes.map((p) => p.name).join(', ')}`);
  if (notRunSelftests.length) reasons.push(`${notRunSelftests.length} selftest(s) not run: ${notRunSelftests.map((p) => p.name).join(', ')}`);
  for (const r of streamProblems(probes)) reasons.push(`TAP stream: ${r}`);
  return reasons;
}

/** The one class a run ends in, from what it produced. */
export function classifyRun(probes: readonly ProbeResult[], kernelReports: readonly KernelReport[], failure?: RunFailure): Outcome {
  const detail = runReasons(probes, kernelReports, failure).join('\n');
  if (failure?.class === 'error') return { class: 'error', code: failure.code, title: first(failure.message), detail };
  if (kernelReports.length) {
    // A fatal report (oops, panic) outranks a warning; otherwise the first one printed. One entry per title.
    const top = kernelReports.find((r) => r.fatal) ?? kernelReports[0];
    const more = kernelReports.length > 1 ? ` (and ${kernelReports.length - 1} more kernel report title${kernelReports.length > 2 ? 's' : ''})` : '';
    return { class: 'kernel', code: top.kind, title: `${top.title}${countSuffix(top)}${more}`, detail };
  }
  // The kernel misbehaved without a report (a teardown unbind blocked on a reference it never dropped).
  if (failure?.class === 'kernel') return { class: 'kernel', code: failure.code, title: first(failure.message), detail };
  const points = failingPoints(probes);
  if (points.length) {
    const more = points.length > 1 ? ` (and ${points.length - 1} more failing point${points.length > 2 ? 's' : ''})` : '';
    return { class: 'fail', code: 'probe-failed', title: `${points[0].probe}: ${points[0].subtest}${more}`, detail };
  }
  if (failure) return { class: 'infra', code: failure.code, title: first(failure.message), detail };
  const harness = harnessPoints(probes);
  if (harness.length) return { class: 'infra', code: 'probe-harness', title: `${harness[0].probe} could not judge "${harness[0].subtest}": ${harness[0].reason}`, detail };
  const stream = streamProblems(probes);
  if (stream.length) return { class: 'infra', code: 'tap-stream', title: `the probe runner's TAP stream is broken: ${stream[0]}`, detail };
  const ran = probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  if (ran.length === 0) return { class: 'infra', code: 'no-probe-ran', title: 'no probe ran', detail };
  const unfinished = ran.filter((p) => probeStatus(p) === 'FAIL');
  if (unfinished.length) return { class: 'infra', code: 'probe-unfinished', title: `probe ${unfinished[0].name} did not finish`, detail };
  const points_ = ran.reduce((n, p) => n + p.subtests.length, 0);
  return { class: 'pass', code: 'pass', title: `${ran.length} probes, ${points_} points passed`, detail };
}
