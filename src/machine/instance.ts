// One small interface between a run and whatever runs its guest, after the
// idea of syzkaller's vm.Instance: start a machine from a lab, boot until the
// guest is ready, then exec and upload, read the console, serve host
// requests (QMP), diagnose a hang, power off, kill. QEMU is one backend
// (qemu.ts); a fake backend (fake.ts) drives the run's orchestration in unit
// tests without QEMU. Nothing above this file knows which one it talks to.
import type { LabSpec } from '../lab/types.ts';
import type { HostRequest } from '../protocol/protocol.ts';
import { InfraError } from '../util/errors.ts';

/** How a backend process ended. */
export interface ExitInfo {
  code: number | null;
  signal: string | null;
}

/** How the backend process ended, in words: `was killed by SIGKILL`, `exited with code 0`. */
export function describeExit(e: ExitInfo): string {
  return e.signal ? `was killed by ${e.signal}` : `exited with code ${e.code}`;
}

/** The machine's exit if it has ended or ends within `ms` (a channel closing is often seen just before the process exit). */
export async function exitWithin(m: { readonly exited: ExitInfo | null }, ms: number): Promise<ExitInfo | null> {
  const deadline = Date.now() + ms;
  while (!m.exited && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return m.exited;
}

/**
 * The error a run stops with when the machine process ended under it (killed
 * from outside, the host's OOM killer, a crash, or the guest rebooting on a
 * panic): infra unless the console holds a kernel report, which classifyRun
 * puts first anyway.
 */
export function machineGoneError(e: ExitInfo, phase: string): InfraError {
  return new InfraError(`QEMU ${describeExit(e)} during the ${phase}; the results up to then are kept (see console.log and qemu-stderr.log)`,
    e.signal ? 'something outside hwlab ended QEMU (the OOM killer, a user); run it again' : undefined, 'qemu-died');
}

export interface ExecOptions {
  timeoutMs: number;
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  /** Ends the command early (closes its channel) and resolves with the output so far. */
  signal?: AbortSignal;
}

export interface ExecResult {
  code: number | null;
  signal?: string;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** The caller's AbortSignal ended the command; output is what arrived before. */
  aborted?: boolean;
}

export interface UploadFile {
  local: string;
  remote: string;
  mode?: number;
}

/** What a backend needs to start a lab's machine. Paths are the host's. */
export interface MachineConfig {
  /** The lab's machine, IOMMU and topology sections decide the emulated hardware. */
  lab: LabSpec;
  /** bzImage to boot. */
  kernelImage: string;
  /** ext4 image of lib/modules, attached read-only. */
  modulesDisk: string;
  /** The directory that disk was made from (holding lib/modules/<release>): what a restored guest gets instead (snapshot.ts). */
  modulesRoot?: string;
  initrd: string;
  /** The cached root image (raw ext4); a backend boots it through a throwaway overlay. */
  rootImage: string;
  /** hwlab's SSH identity and the image's recorded host key (OpenSSH line); any other host key is refused. */
  privateKey: string;
  hostKey: string;
  /** Run folder: console.log and the backend's own records (qemu-cmdline.sh, qemu-stderr.log) go here. */
  runDir: string;
  /** hwlab's kernel command-line words, before the IOMMU words and the lab's own. */
  append: string[];
  /** Open the emulator's gdbstub on a free 127.0.0.1 port (`hwlab run --gdb`). */
  gdb?: boolean;
  /**
   * How to start the probe runner waiting in a guest about to be saved
   * (snapshot.ts), so that restored guests skip its cold start. Called only
   * when a guest is saved.
   */
  prestartRunner?: () => Promise<RunnerPrestart>;
}

/** A probe runner to start waiting in the guest (src/guest/prestart.sh): files to upload, then the command that returns once it waits. */
export interface RunnerPrestart {
  files: UploadFile[];
  start: string[];
  /** Bundle hash the runner is started from. */
  bundleHash: string;
  timeoutMs: number;
}

/** A probe runner waiting in the guest since before its save: node and koffi loaded. */
export interface WaitingRunner {
  bundleHash: string;
  /** Seconds node took, at the save, from its start to waiting with the probes loaded: what a restored run does not pay. */
  startupSec: number;
}

/** How a person reaches a running guest from outside hwlab: a kept guest, a shell, gdb. */
export interface GuestAccess {
  /** The emulator's process id: what `hwlab stop` ends. */
  pid: number;
  /** 127.0.0.1 port forwarded to the guest's sshd. */
  sshPort: number;
  /** 127.0.0.1 port of the emulator's gdbstub, when MachineConfig.gdb asked for it. */
  gdbPort?: number;
  /** The per-run scratch folder (root overlay, QMP socket, BAR files), removed when the machine ends. */
  scratch: string;
}

/** Why a boot did not reach a ready guest. */
export type BootFailure =
  | { kind: 'exited'; exit: ExitInfo }
  | { kind: 'guest'; line: string }
  | { kind: 'timeout'; seconds: number; lastLine: string }
  | { kind: 'ssh'; error: string };

/** The guest never became ready. Infra unless the console shows the kernel at fault (the run's classifier decides). */
export class BootError extends InfraError {
  constructor(readonly failure: BootFailure, message: string) {
    super(message, undefined, `boot-${failure.kind}`);
  }
}

/** The guest connection went away while a command ran (QEMU died, the kernel panicked, sshd was killed). */
export class ChannelLostError extends InfraError {
  constructor(message: string, readonly stdout: string, readonly stderr: string) {
    super(message, undefined, 'ssh-lost');
  }
}

export type HostRequestOutcome = { ok: true } | { ok: false; error: string };

/** What the guest is stuck on, for a probe that ran out of time. */
export interface Diagnosis {
  /** Tasks in uninterruptible sleep with their kernel stacks, as the guest listed them (or why it could not). */
  blockedTasks: string;
  /** The last console lines. */
  consoleTail: string[];
}

export interface PowerOffOutcome {
  /** The guest powered off by itself; false: the backend had to kill it. */
  clean: boolean;
}

/** Which accelerator runs the guest, and why (kept in the results). */
export interface AccelDecision {
  accel: 'kvm' | 'tcg';
  note: string;
}

export interface MachineInstance {
  /** The accelerator the backend chose for the lab's `machine.accel`. */
  readonly accel: AccelDecision;
  /** Endpoint id -> devfn path from the root complex, e.g. ['10.0', '00.0']: how the guest finds each endpoint. */
  readonly pciPaths: Readonly<Record<string, string[]>>;
  /** The backend process's exit, once it has exited. */
  readonly exited: ExitInfo | null;
  /** Process, ports and scratch folder of a real emulator; null for a backend without one (the fake). */
  readonly access: GuestAccess | null;
  /** A probe runner already started and waiting in the guest (a restored snapshot), once the guest is ready; absent otherwise. */
  readonly waitingRunner?: WaitingRunner;
  /** Resolves true when the machine has exited (whoever ended it), false after timeoutMs. */
  whenExited(timeoutMs: number): Promise<boolean>;
  /** Waits until the guest is ready (sshd up and SSH answering); throws BootError. */
  waitReady(opts: { timeoutMs: number; onProgress?: (lastConsoleLine: string) => void }): Promise<void>;
  /** Runs argv in the guest (each argument quoted; nothing is parsed as shell code). Throws ChannelLostError if the connection drops. */
  exec(argv: string[], opts: ExecOptions): Promise<ExecResult>;
  upload(files: UploadFile[], timeoutMs?: number): Promise<void>;
  /** The serial console so far, from the first kernel line. */
  console(): Promise<string>;
  /** Acts on a probe's request (hot removal of an endpoint). */
  hostRequest(req: HostRequest): Promise<HostRequestOutcome>;
  /** What the guest's blocked tasks wait for, plus the console tail. */
  diagnose(): Promise<Diagnosis>;
  /** Clean poweroff, then kill if it does not come in time; never returns with the machine alive. */
  powerOff(timeoutMs: number): Promise<PowerOffOutcome>;
  /** Ends the machine now, whatever it is doing. */
  kill(): Promise<void>;
}

export interface MachineBackend {
  /** Shown in results: which backend ran the machine. */
  readonly name: string;
  start(config: MachineConfig): Promise<MachineInstance>;
}

/**
 * Shell script (run with `sh -c`) that prints every task in uninterruptible
 * sleep with its kernel stack: what a hung probe is waiting for. Fixed text,
 * no lab values.
 */
export const BLOCKED_TASKS_SCRIPT = `for t in /proc/[0-9]*/task/[0-9]*; do
  st=$(sed -n 's/^State:[[:space:]]*//p' "$t/status" 2>/dev/null)
  case "$st" in D*)
    tid=\${t##*/}
    echo "task $(cat "$t/comm" 2>/dev/null) tid $tid state $st"
    sed 's/^/  /' "$t/stack" 2>/dev/null
  esac
done`;

/** Lines of console kept in a diagnosis. */
export const CONSOLE_TAIL_LINES = 40;

/** The diagnosis any backend can make through exec and the console. */
export async function diagnoseThroughExec(m: Pick<MachineInstance, 'exec' | 'console'>): Promise<Diagnosis> {
  const blockedTasks = await m.exec(['sh', '-c', BLOCKED_TASKS_SCRIPT], { timeoutMs: 20_000 })
    .then((r) => r.stdout.trim() || '(no task in uninterruptible sleep)')
    .catch((err: Error) => `(could not list blocked tasks: ${err.message})`);
  const text = await m.console().catch(() => '');
  return { blockedTasks, consoleTail: text.trimEnd().split('\n').slice(-CONSOLE_TAIL_LINES) };
}

/** Quotes one argument for the guest's POSIX shell. */
export function shq(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}
