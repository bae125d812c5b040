// What probes exist and what parameters they take. Pure data plus a pure
// validator: imported by the host to check lab files, and by the guest runner
// to fill defaults. Must not import anything that touches koffi.
//
// Which endpoints a probe takes follows from what it needs of the device
// (capabilities of the endpoint kinds, src/lab/endpoints.ts), not from a list
// of kind names: a new kind with the right facts is taken where it fits.
import {
  ENDPOINT_TYPES, guestFacts, isEndpointType, kindsWith, type EndpointType, type GuestFacts,
} from '../../protocol/protocol.ts';

export type ParamType = 'number' | 'string' | 'boolean' | 'object';

export interface ParamSpec {
  name: string;
  type: ParamType;
  default: unknown;
  description: string;
  /** For objects: the only keys allowed. */
  keys?: readonly string[];
  /** For strings: the only values allowed. */
  choices?: readonly string[];
  /** For numbers: the smallest and largest value that makes sense (default: 0 and none). */
  min?: number;
  max?: number;
  /** For strings naming another endpoint of the lab (checked when the lab is parsed, default included). */
  endpoint?: EndpointRef;
  /** The default depends on the probe's endpoint: this fact of its kind (region: the BAR the kind exports). */
  kindDefault?: keyof GuestFacts;
}

export interface EndpointRef {
  /** Types the named endpoint may have; default: the types the probe itself takes. */
  types?: readonly EndpointType[];
  /** The probe opens it through VFIO too: the host binds it to vfio-pci, and it must not be the probe's own device. */
  vfio?: boolean;
}

/** Relative weights of the stress probe's operations (a device open always comes first). */
export type StressWeights = Partial<Record<'export' | 'map' | 'unmap' | 'closeBuf' | 'memOff' | 'memOn' | 'reset' | 'closeDev', number>>;
/**
 * The stress probe's operation mixes (its param `mix`; stress.ts runs them).
 * `all` is the general mix. The others repeat one racing pair of the
 * contract as often as they can, for a race
 * detector that samples (KCSAN watches one access in skip_watch and sees a
 * race only when both sides touch the word within its stall):
 * `map-vs-revoke` MAP_FILE-imports while MEM toggles revoke and un-revoke
 * (priv->revoked, read by the map under the reservation lock);
 * `close-vs-revoke` closes dma-bufs while MEM toggles walk the device's
 * dma-buf list (the release unlinks under memory_lock).
 */
export const STRESS_MIXES: Record<string, StressWeights> = {
  all: { export: 25, map: 20, unmap: 10, closeBuf: 15, memOff: 6, memOn: 8, reset: 4, closeDev: 5 },
  'map-vs-revoke': { export: 10, map: 40, unmap: 30, memOff: 10, memOn: 10 },
  'close-vs-revoke': { export: 40, closeBuf: 40, memOff: 10, memOn: 10 },
};

/** Guest facilities a probe needs; the host provides them before the probes run. */
export type ProbeRequirement = 'importer' | 'fault';

export interface ProbeSpec {
  name: string;
  description: string;
  endpoints: readonly EndpointType[];
  params: readonly ParamSpec[];
  /** 'importer' / 'fault': hwlab builds hwlab_importer.ko / hwlab_fault.ko against the lab's kernel and loads it. */
  requires?: readonly ProbeRequirement[];
}

/** Endpoint ids a probe opens through VFIO: its own device and those its `endpoint: { vfio }` params name. */
export function vfioEndpointsOf(probe: { name: string; device: string; params: Record<string, unknown> }): string[] {
  const spec = isProbeName(probe.name) ? (PROBES[probe.name] as ProbeSpec) : undefined;
  const extra = (spec?.params ?? []).filter((ps) => ps.endpoint?.vfio).map((ps) => probe.params[ps.name]).filter((v): v is string => typeof v === 'string');
  return [probe.device, ...extra];
}

/** What a set of probes needs from the host. */
export function requirementsOf(names: readonly string[]): Set<ProbeRequirement> {
  const out = new Set<ProbeRequirement>();
  for (const n of names) if (isProbeName(n)) for (const r of (PROBES[n] as ProbeSpec).requires ?? []) out.add(r);
  return out;
}

/** Any memory BAR: the export's errno table can be posed (pci-testdev's empty window included). */
const EXPORTERS = kindsWith('exports');
/** Device memory or registers behind the BAR: exporting, mapping, revoking and importing mean something. */
const DEVICE_MEMORY = kindsWith('exports-device-memory');
/** Memory that keeps what is written: the probes whose DMA data checks compare bytes. */
const MEMORY = kindsWith('exports-memory');

/** Case ids of dmabuf-bad-inputs, in the order they run. */
export const BAD_INPUT_CASES = [
  'set_without_probe', 'get_set_without_probe', 'probe', 'argsz_short', 'flags_nonzero', 'nr_ranges_zero',
  'rom_region', 'config_region', 'unimplemented_bar', 'upper_half_bar', 'io_bar',
  'zero_length', 'unaligned_offset', 'lengths_wrap', 'offset_wraps', 'range_past_end',
] as const;
export type BadInputCase = (typeof BAD_INPUT_CASES)[number];

const region: ParamSpec = {
  name: 'region', type: 'number', default: null, kindDefault: 'exportBar',
  description: `VFIO region index (BAR number) to export; default: the BAR the endpoint's kind exports (${ENDPOINT_TYPES.map((t) => `${t} ${guestFacts(t).exportBar ?? 'none'}`).join(', ')})`,
};

const importerParam: ParamSpec = {
  name: 'importer', type: 'string', default: 'edu0', endpoint: { types: kindsWith('dma-engine') },
  description: 'Endpoint id of the QEMU edu device the hwlab_importer module attaches for (its DMA engine does the data checks)',
};

/** Values of dmabuf-export's expect param: the export works, or the kernel was built without the feature. */
export const DMABUF_EXPORT_EXPECTATIONS = ['OK', 'ENOTTY'] as const;

/** Values of map-type's expect param: the rows of the contract's section 4 table. */
export const MAP_TYPE_EXPECTATIONS = ['bus-address', 'host-bridge-iova', 'host-bridge-direct', 'not-supported'] as const;
export type MapTypeExpectation = (typeof MAP_TYPE_EXPECTATIONS)[number];

/** Values of fault-inject's kind param: the faults hwlab_fault makes. */
export const FAULT_KINDS = ['panic', 'softlockup', 'hung'] as const;

export const PROBES = {
  'dmabuf-export': {
    name: 'dmabuf-export',
    description: 'Open the device through VFIO, read the BAR\'s region info and export it (or a slice) as a dma-buf',
    endpoints: DEVICE_MEMORY,
    params: [
      region,
      { name: 'offset', type: 'number', default: 0, description: 'Byte offset of the exported slice within the BAR (page aligned)' },
      { name: 'length', type: 'number', default: 0, description: 'Length of the slice; 0 exports from offset to the end of the BAR' },
      {
        name: 'expect', type: 'string', default: 'OK', choices: DMABUF_EXPORT_EXPECTATIONS,
        description: 'OK: the export returns a dma-buf fd; ENOTTY: the kernel has no VFIO_PCI_DMABUF, so the feature (PROBE and SET alike) is ENOTTY',
      },
    ],
  },
  'dmabuf-fd': {
    name: 'dmabuf-fd',
    description: 'The exported fd is a vfio_pci_core dma-buf: fdinfo exp_name, lseek size, mmap/read/write refused with EINVAL, one-page slice size',
    endpoints: DEVICE_MEMORY,
    params: [region],
  },
  'dmabuf-bad-inputs': {
    name: 'dmabuf-bad-inputs',
    description: 'errno of VFIO_DEVICE_FEATURE_DMA_BUF for each invalid request of the contract table: SET/PROBE, short argsz, flags, nr_ranges, ROM and config regions, unimplemented / upper-half / I/O BARs, zero length, unaligned, lengths or offset wrapping 64 bits, past the end',
    endpoints: EXPORTERS,
    params: [
      region,
      {
        name: 'expect', type: 'object', default: {}, keys: BAD_INPUT_CASES,
        description: 'Override the expected outcome per case id: an errno name such as "EINVAL", or "OK" for success',
      },
    ],
  },
  'reset-and-mem-toggle': {
    name: 'reset-and-mem-toggle',
    description: 'With a dma-buf alive: VFIO_DEVICE_RESET, clear and set PCI_COMMAND.MEM, close everything; no kernel report, dma-buf gone from debugfs bufinfo',
    endpoints: DEVICE_MEMORY,
    params: [
      region,
      {
        name: 'closeWhileMemOff', type: 'boolean', default: false,
        description: 'Close the device fd while memory decoding is still off (the 7.1 refcount_t underflow regression path) instead of setting MEM back first',
      },
    ],
  },
  'importer-refusals': {
    name: 'importer-refusals',
    description: 'What an importer is refused: no-p2p and pinned attach EOPNOTSUPP; with COMMAND.MEM off a new attach and a map ENODEV (and the refusal order), a buffer born revoked; after MEM on, map and attach work again',
    endpoints: DEVICE_MEMORY,
    params: [region, importerParam],
    requires: ['importer'],
  },
  'revoke-triggers': {
    name: 'revoke-triggers',
    description: 'Every revoke trigger of the contract the device offers (MEM off/on, PMCSR D3hot/D0, DEVCTL FLR, AF FLR, VFIO_DEVICE_RESET, PCI hot reset, low-power entry/exit, device close): invalidate, map and attach ENODEV while revoked, un-revoke only where the table says, then a fresh map and the DMA data path through it',
    endpoints: DEVICE_MEMORY,
    params: [region, importerParam],
    requires: ['importer'],
  },
  'map-type': {
    name: 'map-type',
    description: 'Which p2pdma mapping the exporter made for the importer (bus address, host bridge IOVA or direct), judged from the sg addresses against the BAR\'s bus and CPU addresses, the topology and the importer\'s IOMMU domain; not-supported must fail the map with EINVAL',
    endpoints: DEVICE_MEMORY,
    params: [
      region, importerParam,
      {
        name: 'expect', type: 'string', default: 'bus-address', choices: MAP_TYPE_EXPECTATIONS,
        description: 'The map type this topology must give: bus-address, host-bridge-iova, host-bridge-direct or not-supported (map fails EINVAL)',
      },
    ],
    requires: ['importer'],
  },
  'importer-multirange': {
    name: 'importer-multirange',
    description: 'A dma-buf of two out-of-order ranges of one BAR, imported and mapped for the edu: the map succeeds, covers the sum of the ranges, and edu DMA reads each range\'s bytes at its dma-buf offset',
    endpoints: MEMORY,
    params: [region, importerParam],
    requires: ['importer'],
  },
  'rdma-reg-dmabuf-mr': {
    name: 'rdma-reg-dmabuf-mr',
    description: 'rdma-core ibv_reg_dmabuf_mr as the importer, where the guest has an RDMA device that imports dma-bufs (mlx5, irdma): register the exported BAR, and a registration while revoked fails ENODEV; skips with the reason otherwise (QEMU emulates no RDMA device)',
    endpoints: MEMORY,
    params: [region],
  },
  'iommufd-map-file': {
    name: 'iommufd-map-file',
    description: 'iommufd as importer: IOMMU_IOAS_MAP_FILE of the whole dma-buf and a slice; MEM off revokes (new MAP_FILE ENODEV, areas unmapped); MEM on: a new MAP_FILE works, the old areas stay dead; device close revokes for good. With an edu DMA engine, DMA through the areas proves which are live',
    endpoints: MEMORY,
    params: [
      region,
      {
        name: 'dmaEngine', type: 'string', default: 'edu0',
        description: 'Endpoint id of an edu device the probe binds to vfio-pci and attaches to the IOAS to DMA through the areas; "" skips the data checks',
      },
    ],
  },
  'export-ranges': {
    name: 'export-ranges',
    description: 'Ranges ABI shapes (several, overlapping, repeated, out of order, whole BAR twice, 64 ranges): size is the sum of the lengths; a multi-range buffer is refused by MAP_FILE (EOPNOTSUPP); a buffer exported with MEM off is born revoked (MAP_FILE ENODEV until MEM on); the v0 single-range export where the lab speaks v0',
    endpoints: DEVICE_MEMORY,
    params: [region],
  },
  'lifetime': {
    name: 'lifetime',
    description: 'A dma-buf fd outliving the device fd (valid, sized, revoked for good); EMFILE from a full fd table leaks nothing; MEM off then device close (the 7.1 refcount_t regression) returns without a kernel report; bufinfo and the vfio_pci_core refcnt back to the baseline',
    endpoints: DEVICE_MEMORY,
    params: [region],
  },
  'rough-edges': {
    name: 'rough-edges',
    description: 'Low-power rough edges: after LOW_POWER_ENTRY without eventfd a COMMAND write with MEM=1 un-revokes while runtime PM is engaged; with the wakeup variant a wakeup does not un-revoke. Needs a PCI PM capability (nvme); skips on devices without one',
    endpoints: DEVICE_MEMORY,
    params: [region],
  },
  'stress': {
    name: 'stress',
    description: 'Processes (each with several threads) concurrently exporting, MAP_FILE-importing, unmapping, toggling MEM, resetting and closing buffers and the device for a bounded time; then no kernel report, no stuck call, bufinfo and refcnt back to the baseline, the device still exports',
    endpoints: DEVICE_MEMORY,
    params: [
      region,
      { name: 'seconds', type: 'number', default: 5, min: 1, description: 'How long the workers run' },
      { name: 'processes', type: 'number', default: 3, min: 1, description: 'Number of worker processes, each given the VFIO group fd' },
      { name: 'threads', type: 'number', default: 2, min: 1, description: 'Syscall threads per worker process, each with its own device fd' },
      { name: 'seed', type: 'number', default: 0, description: 'Seed of the operation mix; 0 picks one from the clock (printed in the TAP)' },
      {
        name: 'mix', type: 'string', default: 'all', choices: Object.keys(STRESS_MIXES),
        description: 'Operations: all of them, or one racing pair repeated (MAP_FILE against MEM toggles; dma-buf closes against MEM toggles) for KCSAN',
      },
    ],
  },
  'surprise-removal': {
    name: 'surprise-removal',
    description: 'The host hot-removes the exporter (QMP device_del; the guest\'s pciehp or acpiphp removes it) while its dma-buf is imported and mapped: the VFIO device request eventfd fires, closing the device fd invalidates the importer, the mapping is gone (DMA ENODEV), remap and a new attach fail ENODEV, the dma-buf fd stays valid and sized, the device leaves sysfs, release and close give no kernel report and empty bufinfo. The device is gone afterwards: list it last for its device. Skips when no hotplug driver manages the exporter\'s slot (kernel without CONFIG_HOTPLUG_PCI_ACPI / _PCIE)',
    endpoints: MEMORY,
    params: [
      region, importerParam,
      {
        name: 'requestTimeout', type: 'number', default: 30,
        description: 'Seconds to wait for vfio-pci\'s device request after device_del (pciehp alone waits 5 s after the attention button)',
      },
    ],
    requires: ['importer'],
  },
  'hot-reset-set': {
    name: 'hot-reset-set',
    description: 'VFIO_DEVICE_PCI_HOT_RESET resets every device of the reset set (two functions of one device), so it revokes the dma-bufs of both, not only of the device whose fd made the call: both importers invalidated, both mappings gone, both remap after the reset (un-revoked where MEM came back). Skips when the partner is not in the reset set',
    endpoints: MEMORY,
    params: [
      region, importerParam,
      {
        name: 'partner', type: 'string', default: '', endpoint: { vfio: true },
        description: 'Endpoint id of the other device in the reset set (e.g. function 1 on the same port); opened through VFIO too',
      },
    ],
    requires: ['importer'],
  },
  'fault-inject': {
    name: 'fault-inject',
    description: 'hwlab\'s own fault-suite probe (labs/faults/, test/e2e/faults.test.ts), never for testing a kernel: the hwlab_fault module makes a real kernel panic, soft lockup or hung task in the middle of the probe, so the suite checks that the run ends `kernel` with the report titled and attributed to this probe. The endpoint is not touched',
    endpoints: ENDPOINT_TYPES,
    params: [
      { name: 'kind', type: 'string', default: 'panic', choices: FAULT_KINDS, description: 'panic: panic() at once; softlockup: spin with preemption disabled past the soft lockup detector; hung: sleep uninterruptibly past the hung-task detector' },
      // watchdog_thresh takes 0 to 60, and 0 turns the detector off: the fault would never be reported.
      { name: 'threshold', type: 'number', default: 4, min: 1, max: 60, description: 'Seconds: watchdog_thresh (softlockup; the report comes after 2x) or hung_task_timeout_secs (hung) for the length of the fault, restored after it' },
    ],
    requires: ['fault'],
  },
} as const satisfies Record<string, ProbeSpec>;

export type ProbeName = keyof typeof PROBES;

export function isProbeName(name: string): name is ProbeName {
  return Object.prototype.hasOwnProperty.call(PROBES, name);
}

const ERRNO_OR_OK = /^(OK|E[A-Z0-9]+)$/;

/**
 * Checks params against the probe's spec and fills defaults (some depend on
 * the kind of the endpoint the probe runs on). Unknown params, wrong types,
 * negative/non-integer numbers and unknown object keys are errors.
 */
export function resolveParams(
  probe: string, params: Record<string, unknown>, endpoint: EndpointType,
): { ok: true; params: Record<string, unknown> } | { ok: false; errors: string[] } {
  if (!isProbeName(probe)) return { ok: false, errors: [`unknown probe "${probe}"`] };
  const spec: ProbeSpec = PROBES[probe];
  const errors: string[] = [];
  if (!spec.endpoints.includes(endpoint)) errors.push(`${probe} does not accept endpoint type ${endpoint}`);
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(params)) {
    if (!spec.params.some((p) => p.name === key)) errors.push(`${probe}: unknown parameter "${key}"`);
  }
  for (const p of spec.params) {
    const v = params[p.name] !== undefined ? params[p.name]
      : p.kindDefault && isEndpointType(endpoint) ? guestFacts(endpoint)[p.kindDefault] : p.default;
    const where = `${probe}.${p.name}`;
    if (p.type === 'number') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) errors.push(`${where}: expected a non-negative integer`);
      else if ((p.min !== undefined && v < p.min) || (p.max !== undefined && v > p.max)) {
        errors.push(`${where}: must be ${p.max === undefined ? `at least ${p.min}` : `from ${p.min ?? 0} to ${p.max}`} (got ${v})`);
      }
    } else if (p.type === 'object') {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) errors.push(`${where}: expected an object`);
      else {
        for (const [k, x] of Object.entries(v)) {
          if (p.keys && !p.keys.includes(k)) errors.push(`${where}: unknown key "${k}" (known: ${p.keys.join(', ')})`);
          if (p.name === 'expect' && (typeof x !== 'string' || !ERRNO_OR_OK.test(x))) {
            errors.push(`${where}.${k}: expected an errno name like "EINVAL" or "OK"`);
          }
        }
      }
    } else if (typeof v !== p.type) errors.push(`${where}: expected a ${p.type}`);
    else if (p.choices && !p.choices.includes(v as string)) errors.push(`${where}: must be one of ${p.choices.join(', ')} (got ${JSON.stringify(v)})`);
    out[p.name] = v;
  }
  return errors.length ? { ok: false, errors } : { ok: true, params: out };
}
