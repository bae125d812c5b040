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
  /** With expectFail: only failures of points whose name contains one of these are. */
  expectFailPoints?: string[];
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

/** The runner's first argument when it runs a stress worker (the stress probe starts the bundle again). */
export const STRESS_WORKER_FLAG = '--stress-worker';

// ---------------------------------------------------------------------------
// 3. TAP and the probe markers.

export const TAP_VERSION_LINE = 'TAP version 14';
/** A top-level subtest (one per probe) opens with this comment. */
export const SUBTEST_PREFIX = '# Subtest: ';
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
} as const;
