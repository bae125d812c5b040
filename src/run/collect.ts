// Turns what a run produced into its results, whatever happened: the TAP
// kept so far, the console, a hung probe, the failure that stopped the run.
// Kernel reports come from the console and are attached to the probe whose
// window they fall in; the outcome class comes from all of it together.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { MachineInstance } from '../machine/instance.ts';
import { classifyRun, type RunFailure } from '../results/outcome.ts';
import { dedupByTitle } from '../report/kernel-report.ts';
import { findConsoleReports } from '../report/scan.ts';
import { attachKernelReports, probeWindowsFromConsole, selftestWindowsFromConsole } from '../results/attribution.ts';
import { markExpectedFailure, parseKselftestTap, type SelftestResult } from '../results/kselftest.ts';
import { kernelRecord, type RunResults } from '../results/report.ts';
import { markHungProbe, markUnreachedProbes, parseProbeTap, type ProbeResult } from '../results/tap.ts';
import type { RunContext, RunState } from './context.ts';

export async function collect(ctx: RunContext, m: MachineInstance | undefined, backend: string, state: RunState): Promise<RunResults> {
  const { lab, runDir } = ctx;
  if (state.tap !== undefined) await writeFile(path.join(runDir, 'probes.tap'), state.tap);
  const consoleText = m ? await m.console().catch(() => '') : '';
  const found = findConsoleReports(consoleText);
  // No probe phase (boot or setup failed): no probe results, rather than a "broken TAP stream".
  const probes: ProbeResult[] = state.tap === undefined ? [] : parseProbeTap(state.tap);
  if (state.hung) markHungProbe(probes, state.hung, lab.probes.map((p) => p.name));
  else if (state.tap !== undefined && state.failure?.phase === 'probes') markUnreachedProbes(probes, lab.probes.map((p) => p.name), 'the run stopped');
  attachKernelReports(probes, found, probeWindowsFromConsole(consoleText));
  const selftests = selftestResults(ctx, state, found, consoleText);
  const kernelReports = dedupByTitle(found);
  const kernel = kernelRecord(ctx.prepared.kernel);
  if (state.verified.length) kernel.modulesVerified = state.verified;
  const built = ctx.prepared.selftests?.built;
  return {
    lab: lab.name,
    startedAt: new Date(ctx.startedAt).toISOString(),
    outcome: classifyRun([...probes, ...(selftests ?? [])], kernelReports, state.failure),
    ...(state.failure ? { failure: state.failure } : {}),
    kernel,
    ...(m ? { machine: { backend, accel: m.accel.accel, accelNote: m.accel.note } } : {}),
    ...(state.viommu ? { viommu: state.viommu } : {}),
    probes,
    ...(selftests ? { selftests } : {}),
    ...(built ? { selftestsBuild: { collections: built.collections, cacheKey: built.cacheKey, built: built.built, ...(built.buildSeconds !== undefined ? { buildSeconds: built.buildSeconds } : {}) } } : {}),
    kernelReports,
    timings: { ...ctx.timings, total: (Date.now() - ctx.startedAt) / 1000 },
    ...(state.runner ? { runner: state.runner } : {}),
    runDir,
  };
}

/**
 * The selftests' results from the joined kselftest stream: each with the
 * endpoints it was given and the lab's expected failure, a test hwlab killed
 * at its timeout with the stacks, tests the phase never reached as not run,
 * and the kernel reports inside each test's markers. Undefined when the lab
 * has no selftests.
 */
function selftestResults(ctx: RunContext, state: RunState, found: Parameters<typeof attachKernelReports>[1], consoleText: string): SelftestResult[] | undefined {
  const plan = ctx.prepared.selftests?.plan;
  if (!plan?.length) return undefined;
  const { results, problems } = state.selftestTap === undefined ? { results: [], problems: [] } : parseKselftestTap(state.selftestTap);
  for (const r of results) {
    const p = plan[r.index - 1];
    if (!p || `${p.collection}:${p.test}` !== r.name) continue;
    if (p.devices.length) r.devices = p.devices;
    if (state.selftestDurationsMs[r.index] !== undefined) r.durationMs = state.selftestDurationsMs[r.index];
    if (p.expectFail) markExpectedFailure(r, p.expectFail);
  }
  for (const to of state.selftestTimeouts) {
    const r = results.find((x) => x.index === to.index);
    if (!r) continue;
    const diag = { error: `timed out: no result after ${to.timeoutSec} s; hwlab killed it`, blockedTasks: to.blockedTasks, testStacks: to.testStacks };
    r.ok = false;
    delete r.todo;
    r.diagnostics = { ...r.diagnostics, ...diag };
    const point = r.subtests.find((s) => s.name.startsWith('finishes within'));
    if (point) point.diagnostics = { ...point.diagnostics, ...diag };
    else r.subtests.push({ id: r.subtests.length + 1, name: `finishes within ${to.timeoutSec} s`, ok: false, diagnostics: diag });
  }
  for (const p of plan.slice(results.length)) {
    results.push({
      name: `${p.collection}:${p.test}`, collection: p.collection, test: p.test, index: p.index, ok: false, subtests: [], kernelReports: [],
      ...(p.devices.length ? { devices: p.devices } : {}),
      notRun: `not run: the selftest phase stopped before it${state.failure ? ` (${state.failure.phase}: ${state.failure.message.split('\n')[0]})` : ''}`,
      diagnostics: { error: 'not run' },
    });
  }
  attachKernelReports(results, found, selftestWindowsFromConsole(consoleText));
  if (problems.length && !state.failure) {
    results.push({ name: '(kselftest stream)', collection: '(stream)', test: '(stream)', index: results.length + 1, ok: false, subtests: [], kernelReports: [], diagnostics: { reasons: problems } });
  }
  return results;
}

/** Results of a run that stopped before it had a machine (bad input, a build that failed, a host tool missing). */
export function resultsWithoutMachine(lab: string, startedAt: number, runDir: string, failure: RunFailure, timings: Record<string, number>): RunResults {
  return {
    lab,
    startedAt: new Date(startedAt).toISOString(),
    outcome: classifyRun([], [], failure),
    failure,
    probes: [],
    kernelReports: [],
    timings: { ...timings, total: (Date.now() - startedAt) / 1000 },
    runDir,
  };
}
