// The host/guest protocol: everything that crosses between hwlab on the host
// and the code it runs in the guest, in one module that both sides import
// (the in-guest bundle included, so nothing here may import host-only code).
//
// What crosses, in the order of a run:
// 1. The guest init reports on the console (the serial line the host reads)
//    that sshd is up, or why the boot failed.
// 2. The host uploads the probe bundle and a GuestRunConfig (JSON) to
//    GUEST_DIR and runs `node runner.cjs config.json`.
// 3. The runner prints TAP 14 on stdout, one subtest per probe, and writes a
//    begin/end marker per probe to /dev/kmsg, which the host reads back from
//    the console to attribute kernel reports to probes.
// 4. A probe may ask the host for something (a hot removal) with a request
//    line on stdout; the host acts and the probe watches for the effect.
// 5. The runner exits with one of RUNNER_EXIT.
// 2b. A guest restored from a snapshot (src/machine/snapshot.ts) may hold a
//    runner started before the save and waiting (node and koffi already
//    loaded): the host uploads the run's bundle and config as in 2, then runs
//    `prestart.sh go` instead of node, which hands the config to the waiting
//    runner and streams its TAP and stderr as node's own would be.
import type { DmabufAbi } from '../lab/types.ts';
import type { EndpointType } from '../lab/endpoints.ts';

// What both sides know of the lab: the ABIs, and the endpoint kinds with what
// the guest needs of each (src/lab/endpoints.ts, plain data without host-only imports).
export type { DmabufAbi, EndpointType };
export { DMABUF_ABIS } from '../lab/types.ts';
export { ENDPOINT_TYPES, guestFacts, isEndpointType, kindsWith, type Capability, type GuestFacts } from '../lab/endpoints.ts';

// ---------------------------------------------------------------------------
// 1. Boot: what the guest init and initramfs print (to /dev/kmsg, so it lands
//    on the console with the kernel's own lines).

/** Prefix of every line the guest init (src/image/guest-files.ts) logs. */
export const INIT_LOG_PREFIX = 'hwlab-init:';
/** Prefix of every line the initramfs logs. */
export const INITRAMFS_LOG_PREFIX = 'hwlab-initramfs:';
/** The guest is ready: sshd listens. Connecting before it stalls in slirp's SYN retries. */
export const READY_MESSAGE = 'sshd started';
export const READY_LINE = `${INIT_LOG_PREFIX} ${READY_MESSAGE}`;
/** Messages of the guest init and initramfs that end a boot. */
export const BOOT_FAILURE_MESSAGES = {
  sshd: 'sshd failed to start',
  rootDisk: 'root disk (LABEL=hwlab-root) did not appear',
  mount: 'cannot mount',
} as const;

/**
 * A console line that says the boot failed, or null. Kernel panics are not
 * matched here: the kernel-report scanner classifies those.
 */
export function bootFailure(line: string): string | null {
  const i = line.indexOf(INIT_LOG_PREFIX);
  if (i >= 0 && line.includes(BOOT_FAILURE_MESSAGES.sshd, i)) return line.slice(i).trim();
  const j = line.indexOf(INITRAMFS_LOG_PREFIX);
  if (j >= 0 && (line.includes('did not appear', j) || line.includes(BOOT_FAILURE_MESSAGES.mount, j))) return line.slice(j).trim();
  return null;
}

// ---------------------------------------------------------------------------
// 2. The run config.

/** Where the bundle, the config and hwlab's modules go in the guest (a tmpfs). */
export const GUEST_DIR = '/run/hwlab';
export const GUEST_CONFIG_FILE = `${GUEST_DIR}/config.json`;
export const GUEST_KMOD_DIR = `${GUEST_DIR}/kmod`;

export interface GuestDevice {
  /** Endpoint id from the lab. */
  id: string;
  type: EndpointType;
  /** Resolved PCI address in the guest, e.g. 0000:02:00.0. */
  bdf: string;
  /** IOMMU group number in the guest, or null when the device has none (noiommu). */
  iommuGroup: number | null;
}

export interface GuestProbeRequest {
  name: string;
  device: GuestDevice;
  params: Record<string, unknown>;
  /** When set, failures of this probe are reported as TAP todo with this reason. */
  expectFail?: string;
  /** Only the failures this names are expected (every failure when absent); see ExpectFailScope. */
  expectFailScope?: ExpectFailScope;
}

/**
 * Which failures of a probe a lab's expect_fail covers: points whose name
 * contains one of `points`, or whose diagnostics carry one of `errno` as a
 * value. Any other failure of the probe still fails it.
 */
export interface ExpectFailScope {
  points?: string[];
  errno?: string[];
}

/** Whether a failing point is one the scope expects (no scope: every failure is). */
export function expectedByScope(scope: ExpectFailScope | undefined, point: string, diag: Record<string, unknown> | undefined): boolean {
  if (!scope) return true;
  if (scope.points?.some((p) => point.includes(p))) return true;
  if (scope.errno?.length && diag) {
    // An errno is a value somewhere in the diagnostics ({ errno: 'EADDRINUSE' }, { actual: 'ENODEV' }, an error's code).
    const seen = JSON.stringify(diag, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    return scope.errno.some((e) => seen.includes(`"${e}"`));
  }
  return false;
}

export interface GuestRunConfig {
  abi: DmabufAbi;
  probes: GuestProbeRequest[];
  /**
   * Every endpoint of the lab by id, whether or not a probe targets it: probes
   * that need a second device (the edu DMA engine an importer attaches for, a
   * second exporter) find it here by the id a param names.
   */
  devices: Record<string, GuestDevice>;
}

// ---------------------------------------------------------------------------
// 2b. The prestarted runner (issue 12). The host uploads the bundle to
// GUEST_PRESTART_DIR before a booted guest is saved and runs
// `prestart.sh start HASH TIMEOUT`, which starts `node runner.cjs --wait HASH DIR`
// detached, with its stdout and stderr on FIFOs, and returns once the runner has
// loaded its probes and koffi. After a restore, `prestart.sh go HASH CONFIG`
// hands the waiting runner the config (read from disk then) and this run's
// bundle hash: the same hash, it runs the probes and the script streams its
// output and exits with its exit code; another hash (the bundle changed since
// the save) or no waiting runner, it exits RUNNER_EXIT.notPrestarted having
// run nothing, and the host starts a cold runner.

/** Where the bundle a waiting runner was started from lives (never overwritten by a run's upload: koffi.node is mapped). */
export const GUEST_PRESTART_DIR = `${GUEST_DIR}/prestart`;
/** The guest-side script (src/guest/prestart.sh), part of the bundle. */
export const PRESTART_SCRIPT_NAME = 'prestart.sh';
/** The runner's first argument when it starts waiting: `--wait HASH DIR`. */
export const RUNNER_WAIT_FLAG = '--wait';
/**
 * Files in the prestart directory both sides of `prestart.sh` use: `control`
 * (FIFO: the go line `HASH CONFIG`), `out` and `err` (FIFOs: the runner's
 * stdout and stderr), `ready` (written by the runner once it waits: its pid and
 * the seconds its start took), `status` (its exit code, written as it exits).
 */
export const PRESTART_FILES = { control: 'control', out: 'out', err: 'err', ready: 'ready', status: 'status' } as const;

/** The go line the script writes to the control FIFO. */
export function formatPrestartGo(bundleHash: string, configFile: string): string {
  if (!/^[0-9a-f]{64}$/.test(bundleHash)) throw new Error(`"${bundleHash}" is not a sha256 bundle hash`);
  if (/\s/.test(configFile)) throw new Error(`config path "${configFile}" has white space`);
  return `${bundleHash} ${configFile}`;
}

/** The go line parsed, or null when it is not one. */
export function parsePrestartGo(line: string): { bundleHash: string; configFile: string } | null {
  const m = /^([0-9a-f]{64}) (\S+)\s*$/.exec(line);
  return m ? { bundleHash: m[1], configFile: m[2] } : null;
}

/** What the runner writes to `ready`: its pid and how long node took to start and load the probes. */
export function formatPrestartReady(pid: number, startupSec: number): string {
  return `${pid} ${startupSec.toFixed(3)}`;
}

export function parsePrestartReady(text: string): { pid: number; startupSec: number } | null {
  const m = /^(\d+) (\d+(?:\.\d+)?)\s*$/.exec(text);
  return m ? { pid: Number(m[1]), startupSec: Number(m[2]) } : null;
}

/**
 * The stress probe's worker processes run this file of the bundle, next to
 * the runner (`node stress-worker.cjs <json>`): it holds only what a worker
 * needs (56 KB against the runner's 512 KB), so three of them start in less
 * of the probe's time on two vCPUs under TCG.
 */
export const STRESS_WORKER_ENTRY = 'stress-worker.cjs';

// ---------------------------------------------------------------------------
// 3. TAP and the probe markers.

export const TAP_VERSION_LINE = 'TAP version 14';
/** A top-level subtest (one per probe) opens with this comment. */
export const SUBTEST_PREFIX = '# Subtest: ';
/**
 * The YAML diagnostic key of a point the probe could not judge because the
 * guest could not do its part in time (a worker process that never started
 * on an overloaded host): not ok, but evidence about neither the kernel nor
 * the driver, so the host classes it infra, never fail.
 */
export const HARNESS_DIAG_KEY = 'harness';
const SUBTEST_LINE = /^# Subtest: (.*)$/;
const TEST_POINT = /^(not )?ok \d+/;

/** The probe name of a top-level `# Subtest:` line, or null. */
export function subtestName(line: string): string | null {
  return SUBTEST_LINE.exec(line)?.[1] ?? null;
}

/** Is this a top-level test point (the line that closes a probe's subtest)? */
export function isTopLevelPoint(line: string): boolean {
  return TEST_POINT.test(line);
}

/** Counts test points at any depth in a chunk of TAP (progress display). */
export function countPoints(chunk: string): number {
  return (chunk.match(/^\s*(not )?ok \d+/gm) ?? []).length;
}

export type ProbeEdge = 'begin' | 'end';
export interface ProbeMarker {
  edge: ProbeEdge;
  /** 1-based position of the probe in the run config. */
  index: number;
  probe: string;
}

const MARKER_PREFIX = 'hwlab-probe:';
const MARKER = /^hwlab-probe: (begin|end) (\d+) (\S+)\s*$/;

/** The kmsg line the runner writes at a probe's start and end. */
export function formatProbeMarker(m: ProbeMarker): string {
  return `${MARKER_PREFIX} ${m.edge} ${m.index} ${m.probe}`;
}

/** A marker from a kernel message (printk prefixes already removed), or null. */
export function parseProbeMarker(message: string): ProbeMarker | null {
  const m = MARKER.exec(message.trim());
  return m ? { edge: m[1] as ProbeEdge, index: Number(m[2]), probe: m[3] } : null;
}

// ---------------------------------------------------------------------------
// 3b. The kernel's own selftests (src/selftests/, src/run/selftest-phase.ts).
// The host uploads the kselftest install tree to GUEST_SELFTEST_DIR and runs
// each test alone through src/guest/kselftest/run-one.sh, which writes a
// begin/end marker per test to /dev/kmsg (for kernel report attribution, as
// the probe markers do) around kselftest's own run_kselftest.sh.

export const GUEST_SELFTEST_DIR = `${GUEST_DIR}/kselftest`;
/**
 * The wrapper hwlab puts beside run_kselftest.sh (src/guest/kselftest/run-one.sh):
 * `INDEX COLLECTION TEST TIMEOUT ARGS_VAR [ARG...]` runs a test; `--stacks` lists
 * the running test's processes with their kernel stacks; `--kill` kills them.
 */
export const GUEST_SELFTEST_RUNNER = `${GUEST_SELFTEST_DIR}/hwlab-run-one.sh`;
export const SELFTEST_RUNNER_STACKS = '--stacks';
export const SELFTEST_RUNNER_KILL = '--kill';

export interface SelftestMarker {
  edge: ProbeEdge;
  /** 1-based position of the test in the run's list of selftests. */
  index: number;
  /** `collection:test`, as kselftest-list.txt names it. */
  test: string;
}

const SELFTEST_MARKER_PREFIX = 'hwlab-selftest:';
const SELFTEST_MARKER = /^hwlab-selftest: (begin|end) (\d+) (\S+)\s*$/;

/** The kmsg line run-one.sh writes at a selftest's start and end. */
export function formatSelftestMarker(m: SelftestMarker): string {
  return `${SELFTEST_MARKER_PREFIX} ${m.edge} ${m.index} ${m.test}`;
}

/** A selftest marker from a kernel message (printk prefixes removed), or null. */
export function parseSelftestMarker(message: string): SelftestMarker | null {
  const m = SELFTEST_MARKER.exec(message.trim());
  return m ? { edge: m[1] as ProbeEdge, index: Number(m[2]), test: m[3] } : null;
}

/**
 * The environment variable kselftest's runner.sh appends to a test's command
 * line: KSELFTEST_<NAME>_ARGS, the name upper-cased with every character
 * other than letters, digits and _ turned into _ (runner.sh run_one). The vfio
 * selftests take their device BDFs as trailing arguments
 * (tools/testing/selftests/vfio/lib/libvfio.c, vfio_selftests_get_bdfs).
 */
export function kselftestArgsVar(test: string): string {
  return `KSELFTEST_${test.replace(/[\s\x00-\x1f]/g, '').replace(/[^A-Za-z0-9_]/g, '_').toUpperCase()}_ARGS`;
}

// ---------------------------------------------------------------------------
// 4. Requests from a probe to the host.

export const HOST_REQUEST_VERBS = ['device_del'] as const;
export type HostRequestVerb = (typeof HOST_REQUEST_VERBS)[number];
export interface HostRequest { verb: HostRequestVerb; id: string }

const REQUEST_PREFIX = '# hwlab-request:';
const REQUEST_LINE = /^\s*# hwlab-request: (\S+) (\S+)\s*$/;
const ENDPOINT_ID = /^[A-Za-z0-9_.-]+$/;

/** The stdout line a probe prints to ask the host for `req` (a TAP comment, so parsers ignore it). */
export function formatHostRequest(req: HostRequest): string {
  if (!ENDPOINT_ID.test(req.id)) throw new Error(`"${req.id}" is not an endpoint id`);
  return `${REQUEST_PREFIX} ${req.verb} ${req.id}`;
}

/**
 * A request line, checked against the verbs and the lab's endpoint ids;
 * null for a line that is not a request at all.
 */
export function parseHostRequest(line: string, endpoints: readonly string[]): HostRequest | { error: string } | null {
  const m = REQUEST_LINE.exec(line);
  if (!m) return null;
  const [, verb, id] = m;
  if (!(HOST_REQUEST_VERBS as readonly string[]).includes(verb)) return { error: `unknown request "${verb}" (known: ${HOST_REQUEST_VERBS.join(', ')})` };
  if (!endpoints.includes(id)) return { error: `${verb} ${id}: not an endpoint of this lab (${endpoints.join(', ')})` };
  return { verb: verb as HostRequestVerb, id };
}

// ---------------------------------------------------------------------------
// 5. How the runner ends.

export const RUNNER_EXIT = {
  /** The probes ran; the TAP says how they went. */
  ok: 0,
  /** The runner itself broke (it printed `Bail out!`). */
  crashed: 1,
  /** The config was unusable. */
  badConfig: 2,
  /** `prestart.sh go` only: no runner was waiting, or it was started from another bundle; nothing ran (start a cold one). */
  notPrestarted: 3,
} as const;
