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
import { attachKernelReports, probeWindowsFromConsole } from '../results/attribution.ts';
import { kernelRecord, type RunResults } from '../results/report.ts';
import { markHungProbe, parseProbeTap, type ProbeResult } from '../results/tap.ts';
import type { RunContext, RunState } from './context.ts';

export async function collect(ctx: RunContext, m: MachineInstance | undefined, backend: string, state: RunState): Promise<RunResults> {
  const { lab, runDir } = ctx;
  if (state.tap !== undefined) await writeFile(path.join(runDir, 'probes.tap'), state.tap);
  const consoleText = m ? await m.console().catch(() => '') : '';
  const found = findConsoleReports(consoleText);
  // No probe phase (boot or setup failed): no probe results, rather than a "broken TAP stream".
  const probes: ProbeResult[] = state.tap === undefined ? [] : parseProbeTap(state.tap);
  if (state.hung) markHungProbe(probes, state.hung, lab.probes.map((p) => p.name));
  attachKernelReports(probes, found, probeWindowsFromConsole(consoleText));
  const kernelReports = dedupByTitle(found);
  const kernel = kernelRecord(ctx.prepared.kernel);
  if (state.verified.length) kernel.modulesVerified = state.verified;
  return {
    lab: lab.name,
    startedAt: new Date(ctx.startedAt).toISOString(),
    outcome: classifyRun(probes, kernelReports, state.failure),
    ...(state.failure ? { failure: state.failure } : {}),
    kernel,
    ...(m ? { machine: { backend, accel: m.accel.accel, accelNote: m.accel.note } } : {}),
    ...(state.viommu ? { viommu: state.viommu } : {}),
    probes,
    kernelReports,
    timings: { ...ctx.timings, total: (Date.now() - ctx.startedAt) / 1000 },
    runDir,
  };
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
