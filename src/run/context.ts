// What the phases of a run on a machine share: the context they read (the
// lab, the prepared artifacts, the run folder) and the state they fill in as
// they go, which collect() turns into results whatever happened.
import type { MachineInstance } from '../machine/instance.ts';
import type { RunnerRecord, RunResults } from '../results/report.ts';
import type { GuestPciDevice } from '../session/pci.ts';
import type { ViommuRecord } from '../session/viommu.ts';
import type { LabSpec } from '../lab/types.ts';
import type { RunFailure, RunPhase } from '../results/outcome.ts';
import type { HungProbe } from '../results/tap.ts';
import type { Progress } from '../util/progress.ts';
import type { PreparedLab } from './prepare.ts';

/** What every phase of a run on a machine reads. */
export interface RunContext {
  lab: LabSpec;
  prepared: PreparedLab;
  runDir: string;
  progress: Progress;
  /** SSH identity and the image's host key. */
  privateKey: string;
  /** When the run started (ms), for the total time. */
  startedAt: number;
  /** Seconds per phase, filled as the phases end. */
  timings: Record<string, number>;
  /** false: set the guest up and upload the probes, but run none (`hwlab shell`). */
  runProbes?: boolean;
  /** QEMU's gdbstub on, KASLR off (`--gdb`). */
  gdb?: boolean;
  /**
   * After the probes the guest stays up until this resolves (`--keep`,
   * `hwlab shell`), devices still bound; it gets the results so far and
   * the command that runs the probes by hand. Then the guest powers off.
   */
  hold?: (m: MachineInstance, results: RunResults, runner: string[]) => Promise<void>;
}

/** A module the guest runs, proven to be the one hwlab built. */
export interface ModuleProof {
  module: string;
  srcversion?: string;
  buildId?: string;
}

/** What the phases produce as they go; collect() reads it whatever happened. */
export interface RunState {
  phase: RunPhase;
  /** The first thing that stopped the run. */
  failure?: RunFailure;
  devices?: Record<string, GuestPciDevice>;
  /** The lab's vIOMMU and what the guest showed of it (recorded before it is checked). */
  viommu?: ViommuRecord;
  verified: ModuleProof[];
  /** Endpoints a probe had the host remove (device_del); nothing to unbind afterwards. */
  removed: Set<string>;
  /**
   * The probe bundle's upload to GUEST_DIR, started beside the setup
   * (startBundleUpload); undefined when the bundle goes up with the config
   * or a waiting runner already has it.
   */
  bundleUpload?: Promise<void>;
  /** The runner's TAP; undefined when the probe phase never started. */
  tap?: string;
  /** Which probe runner ran: prestarted (waiting since a snapshot's save) or cold. */
  runner?: RunnerRecord;
  /** The probe that ran out of time, with what the guest was stuck on. */
  hung?: HungProbe;
  /** The kernel's selftests as one kselftest TAP 13 stream; undefined when the selftest phase never started. */
  selftestTap?: string;
  selftestPlanLength?: number;
  /** Wall time of each selftest (by 1-based index), as the host measured its command. */
  selftestDurationsMs: Record<number, number>;
  /** Selftests hwlab killed at their timeout, with what the guest was stuck on. */
  selftestTimeouts: SelftestTimeout[];
}

/** A selftest past its time budget: what the guest's blocked tasks and the test's own processes were doing when it was killed. */
export interface SelftestTimeout {
  /** 1-based position in the run's selftests. */
  index: number;
  test: string;
  timeoutSec: number;
  blockedTasks: string;
  testStacks: string;
}
