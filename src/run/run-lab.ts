// One lab run, stage by stage: prepare (kernel, hwlab's modules, image,
// initramfs) -> boot -> setup -> probe phase -> collect. Every run writes a
// folder with what is needed to judge it afterwards (console log, QEMU
// command line, lab as resolved, TAP, results.json) and to run it again
// (lab/lab.yaml with copies of its patches and fragments, kernel.config:
// `hwlab rerun <run-dir>`, see reproduce.ts), and ends in exactly one
// outcome class, including a run that stopped before booting.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { installSignalHandlers } from '../util/cleanup.ts';
import { ensureHostTools } from '../util/host-tools.ts';
import type { LabSpec } from '../lab/types.ts';
import type { Kernel } from '../kernel/types.ts';
import { selectProbes } from '../lab/select.ts';
import type { MachineBackend, MachineInstance } from '../machine/instance.ts';
import { qemuBackendFor, snapshotSetting } from '../machine/snapshot.ts';
import { failureFromError } from '../results/outcome.ts';
import { formatResultTable, writeRunResults, type RunResults } from '../results/report.ts';
import { runSummary } from '../reports/summary.ts';
import { writeReports } from '../reports/write.ts';
import { ensureHwlabKey } from '../session/keys.ts';
import { resultsWithoutMachine } from './collect.ts';
import { runOnMachine } from './on-machine.ts';
import { checkHostMemory, preflightInputs } from './preflight.ts';
import { labsNeedImageBuild, prepareLab, type PrepareOptions } from './prepare.ts';
import { keepKernelConfig, labWithExtras, writeRunLab } from './reproduce.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface RunOptions extends PrepareOptions {
  /** Parent of run folders; default <repo>/runs. */
  runsDir?: string;
  /** This exact run folder instead of <runsDir>/<lab>-<stamp> (a matrix cell's). */
  runDir?: string;
  /** What runs the guest; default QEMU. */
  backend?: MachineBackend;
  /** false: boot and set up, upload the probes, run none (`hwlab shell`). */
  runProbes?: boolean;
  /** QEMU's gdbstub on a free loopback port, KASLR off (`--gdb`). */
  gdb?: boolean;
  /** Keep the guest up after the probes until this resolves (`--keep`, `hwlab shell`); results.json is written first. */
  hold?: (guest: HeldGuest) => Promise<void>;
  /** Only these probes of the lab (names or `name(device)`, see src/lab/select.ts): nightly reruns, bisect steps. */
  onlyProbes?: readonly string[];
  /** `--snapshot on|off|auto` (src/machine/snapshot.ts); default HWLAB_SNAPSHOT, else off. Ignored with `backend`. */
  snapshot?: string;
}

/** A guest kept up after its run, and what a person needs to reach it. */
export interface HeldGuest {
  machine: MachineInstance;
  /** The run's results so far (already in results.json) and its table. */
  outcome: RunOutcome;
  lab: LabSpec;
  kernel: Kernel;
  /** The image's host key (OpenSSH line): pinned for ssh. */
  hostKey: string;
  /** The command that runs the probes in the guest by hand. */
  runner: string[];
}

export interface RunOutcome {
  results: RunResults;
  runDir: string;
  table: string;
}

function stamp(): string {
  return new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');
}

/**
 * Makes a new folder `base`, or `base-2`, `base-3`... when that exists: two
 * runs of one lab started in the same millisecond (a script, a matrix with
 * jobs) would otherwise share a run folder and overwrite each other's files.
 */
export async function newFolder(base: string): Promise<string> {
  await mkdir(path.dirname(base), { recursive: true });
  for (let i = 1; ; i++) {
    const dir = i === 1 ? base : `${base}-${i}`;
    try {
      await mkdir(dir);
      return dir;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
}

async function openRunFolder(lab: LabSpec, opts: RunOptions): Promise<string> {
  // An explicit --run-dir is the caller's to choose (and may exist); a stamped one is always new.
  const runDir = opts.runDir ?? await newFolder(path.join(opts.runsDir ?? path.join(repoRoot, 'runs'), `${lab.name}-${stamp()}`));
  await mkdir(runDir, { recursive: true });
  opts.progress.info(`run folder: ${runDir}`);
  await writeFile(path.join(runDir, 'lab.resolved.json'), JSON.stringify(lab, null, 2));
  await writeRunLab(lab, runDir);
  return runDir;
}

async function finish(results: RunResults, lab: LabSpec, opts: RunOptions): Promise<RunOutcome> {
  await writeRunResults(results.runDir, results);
  // JUnit, HTML, Markdown and KCIDB beside results.json; a report that cannot be written never costs the run its results.
  await writeReports(results.runDir, runSummary(results, lab)).catch((err: Error) => opts.progress.info(`reports not written: ${err.message}`));
  return { results, runDir: results.runDir, table: formatResultTable(results) };
}

export async function runLab(fullLab: LabSpec, askedOpts: RunOptions): Promise<RunOutcome> {
  // Checked before anything is fetched or built: --snapshot / HWLAB_SNAPSHOT=on|off|auto.
  const backend = askedOpts.backend ?? qemuBackendFor(snapshotSetting(askedOpts.snapshot), fullLab, { gdb: askedOpts.gdb });
  // Before the folder: lab.resolved.json must list the probes that run, so reports read the folder right.
  const asked = askedOpts.onlyProbes?.length ? selectProbes(fullLab, askedOpts.onlyProbes) : fullLab;
  const startedAt = Date.now();
  // Ctrl-C at any stage (a kernel build too) ends the run with 130 and its cleanups.
  installSignalHandlers();
  // Bad input files are refused before the run folder, a download or a build exists.
  await preflightInputs(asked, askedOpts);
  // --patch and --fragment become part of the lab the folder keeps; where the
  // kernel kind cannot take them they stay options, for prepare to refuse.
  const lab = labWithExtras(asked, askedOpts.extraPatches ?? [], askedOpts.extraFragments ?? []);
  const opts = lab === asked ? askedOpts : { ...askedOpts, extraPatches: [], extraFragments: [] };
  const runDir = await openRunFolder(lab, opts);
  const timings: Record<string, number> = {};
  let prepared;
  try {
    if (!opts.backend) await ensureHostTools((l) => opts.progress.info(l), () => labsNeedImageBuild([lab]));
    prepared = await prepareLab(lab, opts, runDir);
    if (!opts.backend) await checkHostMemory(lab);
    await keepKernelConfig(prepared.kernel.config, runDir);
  } catch (err) {
    // Nothing booted; the folder still says why the run stopped, and results.json says which class that is.
    const failure = failureFromError('prepare', err);
    await writeFile(path.join(runDir, 'error.txt'), `${failure.message}\n`);
    timings.prepare = (Date.now() - startedAt) / 1000;
    return finish(resultsWithoutMachine(lab.name, startedAt, runDir, failure, timings), lab, opts);
  }
  timings.prepare = (Date.now() - startedAt) / 1000;
  const key = await ensureHwlabKey();
  const p = prepared;
  const hold = opts.hold && (async (machine: MachineInstance, held: RunResults, runner: string[]) => {
    await opts.hold!({ machine, outcome: await finish(held, lab, opts), lab, kernel: p.kernel, hostKey: p.image.hostKey, runner });
  });
  const results = await runOnMachine({
    lab, prepared, runDir, progress: opts.progress, privateKey: key.privateKey, startedAt, timings,
    runProbes: opts.runProbes, gdb: opts.gdb, ...(hold ? { hold } : {}),
  }, backend);
  return finish(results, lab, opts);
}
