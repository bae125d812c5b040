// What probes exist and what parameters they take. Pure data plus a pure
// validator: imported by the host to check lab files, and by the guest runner
// to fill defaults. Must not import anything that touches koffi.
import type { EndpointType } from '../protocol.ts';

export type ParamType = 'number' | 'string' | 'boolean' | 'object';

export interface ParamSpec {
  name: string;
  type: ParamType;
  default: unknown;
  description: string;
  /** For objects: the only keys allowed. */
  keys?: readonly string[];
}

/** Guest facilities a probe needs; the host provides them before the probes run. */
export type ProbeRequirement = 'importer';

export interface ProbeSpec {
  name: string;
  description: string;
  endpoints: readonly EndpointType[];
  params: readonly ParamSpec[];
  /** 'importer': hwlab builds hwlab_importer.ko against the lab's kernel and loads it. */
  requires?: readonly ProbeRequirement[];
}

/** What a set of probes needs from the host. */
export function requirementsOf(names: readonly string[]): Set<ProbeRequirement> {
  const out = new Set<ProbeRequirement>();
  for (const n of names) if (isProbeName(n)) for (const r of (PROBES[n] as ProbeSpec).requires ?? []) out.add(r);
  return out;
}

const ALL: readonly EndpointType[] = ['ivshmem-plain', 'edu', 'nvme'];

/** Case ids of dmabuf-bad-inputs, in the order they run. */
export const BAD_INPUT_CASES = [
  'rom_region', 'unaligned_offset', 'zero_length', 'flags_nonzero', 'nr_ranges_zero',
  'range_past_end', 'set_without_probe', 'get_set_without_probe', 'probe',
] as const;
export type BadInputCase = (typeof BAD_INPUT_CASES)[number];

const region: ParamSpec = {
  name: 'region', type: 'number', default: 2,
  description: 'VFIO region index (BAR number) to export; ivshmem-plain has its RAM at BAR 2, edu and nvme registers at BAR 0',
};

export const PROBES = {
  'dmabuf-export': {
    name: 'dmabuf-export',
    description: 'Open the device through VFIO, read the BAR\'s region info and export it (or a slice) as a dma-buf',
    endpoints: ALL,
    params: [
      region,
      { name: 'offset', type: 'number', default: 0, description: 'Byte offset of the exported slice within the BAR (page aligned)' },
      { name: 'length', type: 'number', default: 0, description: 'Length of the slice; 0 exports from offset to the end of the BAR' },
    ],
  },
  'dmabuf-fd': {
    name: 'dmabuf-fd',
    description: 'The exported fd is a vfio_pci_core dma-buf: fdinfo exp_name, lseek size, mmap/read/write refused with EINVAL, one-page slice size',
    endpoints: ALL,
    params: [region],
  },
  'dmabuf-bad-inputs': {
    name: 'dmabuf-bad-inputs',
    description: 'errno of VFIO_DEVICE_FEATURE_DMA_BUF for invalid requests (ROM region, unaligned, zero length, flags, nr_ranges, past end, SET, PROBE)',
    endpoints: ALL,
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
    description: 'With a dma-buf alive: VFIO_DEVICE_RESET, clear and set PCI_COMMAND.MEM, close everything; no kernel splat, dma-buf gone from debugfs bufinfo',
    endpoints: ALL,
    params: [
      region,
      {
        name: 'closeWhileMemOff', type: 'boolean', default: false,
        description: 'Close the device fd while memory decoding is still off (the 7.1 refcount_t underflow regression path) instead of setting MEM back first',
      },
    ],
  },
} as const satisfies Record<string, ProbeSpec>;

export type ProbeName = keyof typeof PROBES;

export function isProbeName(name: string): name is ProbeName {
  return Object.prototype.hasOwnProperty.call(PROBES, name);
}

const ERRNO_OR_OK = /^(OK|E[A-Z0-9]+)$/;

/**
 * Checks params against the probe's spec and fills defaults. Unknown params,
 * wrong types, negative/non-integer numbers and unknown object keys are errors.
 */
export function resolveParams(
  probe: string, params: Record<string, unknown> = {}, endpoint?: EndpointType,
): { ok: true; params: Record<string, unknown> } | { ok: false; errors: string[] } {
  if (!isProbeName(probe)) return { ok: false, errors: [`unknown probe "${probe}"`] };
  const spec: ProbeSpec = PROBES[probe];
  const errors: string[] = [];
  if (endpoint && !spec.endpoints.includes(endpoint)) errors.push(`${probe} does not accept endpoint type ${endpoint}`);
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(params)) {
    if (!spec.params.some((p) => p.name === key)) errors.push(`${probe}: unknown parameter "${key}"`);
  }
  for (const p of spec.params) {
    const v = params[p.name] === undefined ? p.default : params[p.name];
    const where = `${probe}.${p.name}`;
    if (p.type === 'number') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) errors.push(`${where}: expected a non-negative integer`);
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
    out[p.name] = v;
  }
  return errors.length ? { ok: false, errors } : { ok: true, params: out };
}
