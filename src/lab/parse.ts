// Lab files (labs/*.yaml) -> LabSpec. YAML is parsed with its node ranges
// kept (src/util/yaml.ts), so every problem (syntax, schema, cross-reference)
// is reported as `file:line:col: path: message`, all of them at once, in one YamlError.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import {
  ACCELS, DEFAULT_DRIVER_DIRS, DMABUF_ABIS, IOMMU_KINDS,
  type Accel, type DmabufAbi, type EndpointSpec, type IommuKind, type IommuSpec, type LabSpec,
  type ProbeSpec, type SwitchSpec, type TopologySpec, type KernelSpec, type KernelSourceSpec, type PatchSourceSpec,
} from './types.ts';
import { describe, orEmpty, readYaml, strictObject, TYPE_WORDS, validate, valueAt, YamlError, type Path, type YamlSource } from '../util/yaml.ts';
import { PROBES, resolveParams, type ProbeSpec as CatalogProbe } from '../guest/probes/catalog.ts';

// ---------------------------------------------------------------------------
// The lab schema (snake_case, as written)

const ID_RE = /^[a-z][a-z0-9_-]*$/;
// Ids become QEMU -device/-object ids and bus names, so no commas, dots or '='.
const idSchema = z.string().regex(ID_RE, 'must be a lowercase letter followed by a-z, 0-9, _ or - (it becomes a QEMU id)');

const SIZE_RE = /^(\d+)\s*(M|MB|MiB|G|GB|GiB)?$/i;

/** A size in MiB: `64M`, `2G`, `2048M`; a bare integer is MiB, like QEMU's -m. */
// A BAR is a power of two (ivshmem's BAR2 is its backing memory, pci-testdev's membar is BAR2).
const powerOfTwo = (n: number, ctx: z.RefinementCtx) => {
  if ((n & (n - 1)) !== 0) ctx.addIssue({ code: 'custom', message: `must be a power of two (got ${n}M)` });
};

function sizeMiB(def?: number) {
  return z.unknown().transform((v, ctx): number => {
    if (v === undefined || v === null) {
      if (def !== undefined) return def;
      ctx.addIssue({ code: 'custom', message: 'is required' });
      return z.NEVER;
    }
    let mib: number | undefined;
    if (typeof v === 'number' && Number.isSafeInteger(v)) mib = v;
    else if (typeof v === 'string') {
      const m = SIZE_RE.exec(v.trim());
      if (m) mib = Number(m[1]) * (m[2] && m[2][0].toUpperCase() === 'G' ? 1024 : 1);
    }
    if (mib === undefined || mib < 1) {
      ctx.addIssue({ code: 'custom', message: `expected a size such as 512M or 2G, at least 1M (got ${describe(v)})` });
      return z.NEVER;
    }
    return mib;
  });
}

/** A string or a list of strings, split on whitespace into words. */
const cmdlineSchema = z.unknown().transform((v, ctx): string[] => {
  if (v === undefined || v === null) return [];
  if (typeof v === 'string') return v.split(/\s+/).filter(Boolean);
  if (!Array.isArray(v)) {
    ctx.addIssue({ code: 'custom', message: `expected a string or a list of strings (got ${describe(v)})` });
    return z.NEVER;
  }
  const words: string[] = [];
  v.forEach((item, i) => {
    if (typeof item !== 'string') ctx.addIssue({ code: 'custom', path: [i], message: `expected a string (got ${describe(item)})` });
    else words.push(...item.split(/\s+/).filter(Boolean));
  });
  return words;
});

const enumOf = <T extends string>(values: readonly T[]) => z.enum(values as unknown as [T, ...T[]]);

const positiveSeconds = (def: number) => z.number().positive().default(def);

const PKG_RE = /^[a-z0-9][a-z0-9+.-]+$/;
const relPath = z.string().min(1, 'must be a path');
const patchEntry = z.union([
  relPath.transform((p) => ({ file: p })),
  strictObject({ file: relPath }),
  strictObject({ quilt: relPath }),
  strictObject({ mbox: relPath }),
]);

/**
 * `debian: linux-image-7.2` is a prebuilt kernel; `debian: linux-source-7.2`,
 * `path:` (git tree, optional `ref:`) or `tarball:` build from source with
 * `patches:` and `config:`.
 */
const kernelSchema = strictObject({
  debian: z.string().regex(PKG_RE, 'must be a Debian package such as linux-image-7.2 or linux-source-7.2').optional(),
  path: relPath.optional(),
  ref: z.string().regex(/^[^\s-][^\s]*$/, 'must be a git ref (branch, tag or commit)').optional(),
  tarball: relPath.optional(),
  flavour: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'must be a kernel flavour such as amd64 or cloud-amd64').default('amd64'),
  suite: z.string().regex(/^[a-z][a-z0-9.-]*$/, 'must be a Debian suite name such as sid').default('sid'),
  mirror: z.string().regex(/^https?:\/\/[^\s,]+$/, 'must be an http:// or https:// URL').default('http://deb.debian.org/debian'),
  patches: orEmpty([], z.array(patchEntry)),
  driver: z.preprocess((v) => (v === null ? {} : v), strictObject({
    dirs: z.array(z.string().regex(/^[A-Za-z0-9_./-]+$/, 'must be a tree-relative directory such as drivers/vfio/pci')).min(1).optional(),
  })).optional(),
  config: orEmpty({}, strictObject({
    base: z.string().regex(/^[a-z0-9_.-]+$/, 'must be a make config target such as tinyconfig or defconfig').default('tinyconfig'),
    fragments: z.array(relPath).optional(),
  })),
}).superRefine((k, ctx) => {
  const given = (['debian', 'path', 'tarball'] as const).filter((x) => k[x] !== undefined);
  if (given.length !== 1) {
    ctx.addIssue({ code: 'custom', message: `needs exactly one of debian, path, tarball (got ${given.length ? given.join(', ') : 'none'})` });
    return;
  }
  const prebuilt = k.debian !== undefined && !k.debian.startsWith('linux-source-');
  if (k.debian !== undefined && !/^linux-(image|source)-/.test(k.debian)) {
    ctx.addIssue({ code: 'custom', path: ['debian'], message: `must be linux-image-<version> (prebuilt) or linux-source-<version> (build from source) (got "${k.debian}")` });
  }
  if (k.ref !== undefined && k.path === undefined) ctx.addIssue({ code: 'custom', path: ['ref'], message: 'only applies with path: (a git tree)' });
  if (!prebuilt && k.driver !== undefined) {
    ctx.addIssue({ code: 'custom', path: ['driver'], message: 'only applies to a prebuilt kernel (debian: linux-image-<version>); a source build rebuilds everything that changed' });
  }
  if (prebuilt) {
    if (k.patches.length && k.driver === undefined) {
      ctx.addIssue({ code: 'custom', path: ['patches'], message: `a prebuilt kernel (${k.debian}) takes patches only with driver: (the fast path that rebuilds driver modules); or use linux-source-<version>, path: or tarball:` });
    }
    if (k.config.fragments !== undefined) ctx.addIssue({ code: 'custom', path: ['config'], message: `a prebuilt kernel (${k.debian}) has a fixed config` });
  }
});

/**
 * hwlab's default fragments for source builds: the lean guest base, the
 * feature under test, and the debug options that catch its bug class when it
 * happens (lockdep, DMA-API debug, list/object debugging).
 */
export const DEFAULT_FRAGMENTS = ['guest-base.config', 'vfio-dmabuf.config', 'debug.config'];
const configsDir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../labs/configs');

const labSchema = orEmpty({}, strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits, ., _ or - (it names result directories)').optional(),
  description: z.string().default(''),
  kernel: kernelSchema,
  image: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/, 'must be the name of a recipe in images/ (without .yaml)'),
  machine: orEmpty({}, strictObject({
    // No whitespace; commas are legitimate (`EPYC,+x2apic`): it is one -cpu argument.
    cpu: z.string().regex(/^\S+$/, 'must be a QEMU CPU model without spaces').default('EPYC'),
    memory: sizeMiB(2048),
    smp: z.number().int().min(1).max(255).default(2),
    accel: enumOf<Accel>(ACCELS).default('auto'),
    cmdline: cmdlineSchema,
  })),
  iommu: z.preprocess(
    (v) => (v === null || v === undefined ? {} : typeof v === 'string' ? { type: v } : v),
    strictObject({
      type: enumOf<IommuKind>(IOMMU_KINDS).default('intel'),
      caching_mode: z.boolean().optional(),
      strict: z.boolean().default(false),
      passthrough: z.boolean().default(false),
    }).superRefine((v, ctx) => {
      if (v.caching_mode !== undefined && v.type !== 'intel') {
        ctx.addIssue({ code: 'custom', path: ['caching_mode'], message: `only applies to iommu type intel (this lab uses ${v.type})` });
      }
      for (const k of ['strict', 'passthrough'] as const) {
        if (v.type === 'none' && v[k]) ctx.addIssue({ code: 'custom', path: [k], message: 'needs an IOMMU (type is none)' });
      }
    }),
  ),
  topology: orEmpty({}, strictObject({
    root_ports: orEmpty([], z.array(z.preprocess((v) => (typeof v === 'string' ? { id: v } : v), strictObject({ id: idSchema })))),
    switches: orEmpty([], z.array(strictObject({
      id: idSchema,
      port: idSchema,
      downstream: z.array(idSchema).min(1),
    }))),
    endpoints: orEmpty([], z.discriminatedUnion('type', [
      strictObject({
        id: idSchema,
        type: z.literal('ivshmem-plain'),
        port: idSchema,
        function: z.number().int().min(0).max(7).default(0),
        memory: sizeMiB(64).superRefine(powerOfTwo),
      }),
      strictObject({
        id: idSchema,
        type: z.literal('edu'),
        port: idSchema,
        function: z.number().int().min(0).max(7).default(0),
        dma_mask: z.number().int().min(28).max(64).default(28),
      }),
      strictObject({
        id: idSchema,
        type: z.literal('nvme'),
        port: idSchema,
        function: z.number().int().min(0).max(7).default(0),
        cmb_size: sizeMiB(64),
        // NVMe's serial number field is 20 bytes; no commas (QEMU option syntax).
        serial: z.string().regex(/^[A-Za-z0-9_.-]{1,20}$/, 'must be 1-20 characters of A-Z, a-z, 0-9, _, . or -').optional(),
      }),
      strictObject({
        id: idSchema,
        type: z.literal('pci-testdev'),
        port: idSchema,
        function: z.number().int().min(0).max(7).default(0),
        membar: sizeMiB(4).superRefine(powerOfTwo),
      }),
    ]).array().superRefine((eps, ctx) => eps.forEach((e, i) => {
      if (e.type === 'nvme' && e.serial === undefined && e.id.length > 20) {
        ctx.addIssue({ code: 'custom', path: [i, 'id'], message: 'the nvme serial defaults to the id, which is longer than 20 characters; set serial' });
      }
    }))),
  })),
  modules: orEmpty(['vfio-pci'], z.array(z.string().regex(/^[A-Za-z0-9_-]+$/, 'must be a kernel module name'))),
  dmabuf_abi: enumOf<DmabufAbi>(DMABUF_ABIS).default('ranges'),
  probes: orEmpty([], z.array(z.preprocess((v) => (typeof v === 'string' ? { name: v } : v), strictObject({
    name: z.string().min(1),
    device: idSchema.optional(),
    params: orEmpty({}, z.record(z.string(), z.unknown())),
    expect_fail: z.string().min(1).optional(),
    timeout: z.number().positive().optional(),
  })))),
  timeouts: orEmpty({}, strictObject({
    boot: positiveSeconds(180),
    probes: positiveSeconds(600),
    probe: positiveSeconds(120),
    shutdown: positiveSeconds(20),
  })),
}));

type RawLab = z.output<typeof labSchema>;

// ---------------------------------------------------------------------------
// Limits that come from how cmdline.ts lays the machine out.

/** Root ports sit at pcie.0 slots 0x10..0x1e (0x1f is q35's LPC/SATA/SMBus). */
export const MAX_ROOT_PORTS = 15;
/** Downstream ports are devices 0..31 on the switch's internal bus. */
export const MAX_DOWNSTREAM_PORTS = 32;
/** Every root and downstream port gets its own chassis number, a uint8 (0 unused). */
export const MAX_PORTS = 255;

// ---------------------------------------------------------------------------
// Cross-references

type Kind = 'root port' | 'switch' | 'downstream port' | 'endpoint';
const article = (k: Kind) => (k === 'endpoint' ? 'an' : 'a');

/** Every id the topology declares, with its kind (ids share one namespace: they are all QEMU ids). */
function topologyKinds(topo: TopologySpec): Map<string, Kind> {
  const kinds = new Map<string, Kind>();
  const put = (id: string, k: Kind) => { if (!kinds.has(id)) kinds.set(id, k); };
  topo.rootPorts.forEach((r) => put(r.id, 'root port'));
  topo.switches.forEach((s) => { put(s.id, 'switch'); s.downstream.forEach((d) => put(d, 'downstream port')); });
  topo.endpoints.forEach((e) => put(e.id, 'endpoint'));
  return kinds;
}

function checkTopology(src: YamlSource, topo: TopologySpec): void {
  const T = ['topology'];
  const ids = new Map<string, { kind: Kind; at: Path }>();
  const declare = (id: string, kind: Kind, at: Path) => {
    const prev = ids.get(id);
    if (prev) src.add(at, `duplicate id "${id}" (already the ${prev.kind} at ${src.at(prev.at)})`);
    else ids.set(id, { kind, at });
  };
  topo.rootPorts.forEach((rp, i) => declare(rp.id, 'root port', [...T, 'root_ports', i, 'id']));
  topo.switches.forEach((sw, i) => {
    declare(sw.id, 'switch', [...T, 'switches', i, 'id']);
    sw.downstream.forEach((dp, j) => declare(dp, 'downstream port', [...T, 'switches', i, 'downstream', j]));
  });
  topo.endpoints.forEach((ep, i) => declare(ep.id, 'endpoint', [...T, 'endpoints', i, 'id']));

  if (topo.rootPorts.length > MAX_ROOT_PORTS) {
    src.add([...T, 'root_ports', MAX_ROOT_PORTS], `at most ${MAX_ROOT_PORTS} root ports fit on pcie.0 (slots 0x10-0x1e)`);
  }
  topo.switches.forEach((sw, i) => {
    if (sw.downstream.length > MAX_DOWNSTREAM_PORTS) {
      src.add([...T, 'switches', i, 'downstream', MAX_DOWNSTREAM_PORTS], `a switch has at most ${MAX_DOWNSTREAM_PORTS} downstream ports`);
    }
  });
  const nPorts = topo.rootPorts.length + topo.switches.reduce((n, s) => n + s.downstream.length, 0);
  if (nPorts > MAX_PORTS) src.add([...T], `at most ${MAX_PORTS} root and downstream ports in all (got ${nPorts})`);

  const portNames = [...ids].filter(([, v]) => v.kind === 'root port' || v.kind === 'downstream port').map(([k]) => k);
  const users = new Map<string, { what: string; at: Path; functions: Set<number> | null }>();
  /** fn: the endpoint's PCI function; null for a switch, which takes the whole port. */
  const plug = (what: string, port: string, at: Path, fn: number | null): boolean => {
    const decl = ids.get(port);
    if (!decl) {
      src.add(at, `no port "${port}" (ports: ${portNames.join(', ') || 'none; add topology.root_ports'})`);
      return false;
    }
    if (decl.kind !== 'root port' && decl.kind !== 'downstream port') {
      src.add(at, `"${port}" is ${article(decl.kind)} ${decl.kind}, not a root port or downstream port`);
      return false;
    }
    // One device per port; endpoints may share one as the functions of a multifunction device.
    const prev = users.get(port);
    if (prev && (fn === null || prev.functions === null || prev.functions.has(fn))) {
      src.add(at, `port "${port}" is already used by ${prev.what} at ${src.at(prev.at)} (one device per port${fn !== null && prev.functions !== null ? `; endpoints sharing a port need distinct function numbers, and function ${fn} is taken` : ''})`);
      return false;
    }
    if (prev) prev.functions!.add(fn!);
    else users.set(port, { what, at, functions: fn === null ? null : new Set([fn]) });
    return true;
  };
  topo.switches.forEach((sw, i) => plug(`switch "${sw.id}"`, sw.port, [...T, 'switches', i, 'port'], null));
  topo.endpoints.forEach((ep, i) => plug(`endpoint "${ep.id}"`, ep.port, [...T, 'endpoints', i, 'port'], ep.function ?? 0));
  // A multifunction device needs its function 0: Linux scans functions 1-7 only after finding it.
  for (const [port, u] of users) {
    if (u.functions && !u.functions.has(0)) {
      const i = topo.endpoints.findIndex((ep) => ep.port === port);
      src.add([...T, 'endpoints', i, 'function'], `port "${port}" has functions ${[...u.functions].join(', ')} but no function 0, which the guest needs to find the others`);
    }
  }

  // A switch must hang below a root port; a chain that loops never does.
  const owner = new Map<string, SwitchSpec>();
  for (const sw of topo.switches) for (const dp of sw.downstream) owner.set(dp, sw);
  topo.switches.forEach((sw, i) => {
    const seen = new Set<string>();
    let cur: SwitchSpec | undefined = sw;
    while (cur && !seen.has(cur.id)) {
      seen.add(cur.id);
      const decl = ids.get(cur.port);
      if (!decl || decl.kind !== 'downstream port') return; // root port (fine) or already reported
      cur = owner.get(cur.port);
    }
    if (cur) src.add([...T, 'switches', i, 'port'], `switch "${sw.id}" is not below any root port: its port "${sw.port}" leads back into a loop of switches`);
  });
}

/**
 * The catalog's validator words its errors `probe.param[.key]: message`;
 * point at that param (or key) when the lab wrote it, else at the probe.
 */
function locateCatalogError(e: string, params: Record<string, unknown>, paramsAt: Path, probeAt: Path): [Path, string, boolean] {
  const m = /^[^.:\s]+\.([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?: (.*)$/.exec(e);
  if (!m || !(m[1] in params)) return [probeAt, e, false];
  const [, param, key, msg] = m;
  if (key !== undefined && valueAt(params, [param, key]) !== undefined) return [[...paramsAt, param, key], msg, false];
  const unknownKey = /^unknown key "([^"]+)"/.exec(msg);
  if (unknownKey) return [[...paramsAt, param, unknownKey[1]], msg, true];
  return [[...paramsAt, param], msg, false];
}

function checkProbes(src: YamlSource, raw: RawLab, topo: TopologySpec, catalog: ProbeCatalog): ProbeSpec[] {
  const endpoints = topo.endpoints;
  const kinds = topologyKinds(topo);
  const out: ProbeSpec[] = [];
  raw.probes.forEach((p, i) => {
    const at: Path = ['probes', i];
    const spec = Object.prototype.hasOwnProperty.call(catalog.probes, p.name) ? catalog.probes[p.name] : undefined;
    if (!spec) {
      src.add([...at, 'name'], `unknown probe "${p.name}" (known: ${Object.keys(catalog.probes).join(', ')})`);
      return;
    }
    let device: EndpointSpec | undefined;
    if (p.device !== undefined) {
      device = endpoints.find((e) => e.id === p.device);
      const kind = kinds.get(p.device);
      if (!device && kind) {
        src.add([...at, 'device'], `"${p.device}" is ${article(kind)} ${kind}, not an endpoint`);
        return;
      }
      if (!device) {
        src.add([...at, 'device'], `no endpoint "${p.device}" (endpoints: ${endpoints.map((e) => e.id).join(', ') || 'none'})`);
        return;
      }
      if (!spec.endpoints.includes(device.type)) {
        src.add([...at, 'device'], `probe ${p.name} does not work on ${device.type} ("${device.id}"); it takes ${spec.endpoints.join(', ')}`);
        return;
      }
    } else {
      device = endpoints.find((e) => spec.endpoints.includes(e.type));
      if (!device) {
        src.add(at, `probe ${p.name} needs an endpoint of type ${spec.endpoints.join(' or ')} and the topology has none`);
        return;
      }
    }

    // Names and basic types here, with locations; the catalog's own validator
    // (value rules such as errno names) runs after.
    const paramsAt: Path = [...at, 'params'];
    let ok = true;
    for (const [key, value] of Object.entries(p.params)) {
      const ps = spec.params.find((x) => x.name === key);
      if (!ps) {
        const known = spec.params.map((x) => x.name).join(', ');
        src.add([...paramsAt, key], `unknown param "${key}" for probe ${p.name} (${known ? `params: ${known}` : 'it takes none'})`, true);
        ok = false;
        continue;
      }
      const isObject = typeof value === 'object' && value !== null && !Array.isArray(value);
      if (ps.type === 'object' ? !isObject : typeof value !== ps.type) {
        src.add([...paramsAt, key], `expected ${TYPE_WORDS[ps.type]} (got ${describe(value)})`);
        ok = false;
      }
    }
    if (!ok) return;
    const r = catalog.resolveParams(p.name, p.params, device.type);
    if (!r.ok) {
      for (const e of r.errors) src.add(...locateCatalogError(e, p.params, paramsAt, at));
      return;
    }
    // Params naming another endpoint (the importer's edu, a reset-set partner) must
    // name one of the right type, default included: a lab without it fails here, not in the guest.
    for (const ps of spec.params) {
      if (!ps.endpoint) continue;
      const name = ps.name;
      const v = r.params[name];
      const types = ps.endpoint.types ?? spec.endpoints;
      const other = endpoints.find((e) => e.id === v);
      const where: Path = p.params[name] === undefined ? at : [...paramsAt, name];
      if (!other) {
        const given = p.params[name] === undefined && v !== '' ? ` (the default; set params.${name})` : '';
        const ofType = endpoints.filter((e) => types.includes(e.type)).map((e) => e.id);
        const known = ps.endpoint.types
          ? `; it names the ${types.join(' or ')} endpoint the probe uses (${types.join(' or ')} endpoints in this lab: ${ofType.join(', ') || 'none'})`
          : ` (endpoints: ${endpoints.map((e) => e.id).join(', ')})`;
        src.add(where, `${p.name}.${name}: ${v === '' ? 'required' : `no endpoint "${String(v)}"`}${given}${known}`);
      } else if (ps.endpoint.vfio && other.id === device.id) {
        src.add(where, `${p.name}.${name}: must be another endpoint than the probe's device "${device.id}"`);
      } else if (!types.includes(other.type)) {
        src.add(where, `${p.name}.${name}: "${other.id}" is ${other.type}; ${types.length === 1 ? `it must be ${types[0]}` : `it takes ${types.join(', ')}`}`);
      }
    }
    // Defaults come from the catalog's own objects: never share them.
    const params = structuredClone(r.params);
    const probe: ProbeSpec = { name: p.name, device: device.id, params, timeoutSec: p.timeout ?? raw.timeouts.probe };
    if (p.expect_fail !== undefined) probe.expectFail = p.expect_fail;
    out.push(probe);
  });
  return out;
}

// ---------------------------------------------------------------------------
// Entry points

/** What parseLab needs of guest/probes/catalog.ts (injectable for tests). */
export interface ProbeCatalog {
  probes: Readonly<Record<string, CatalogProbe>>;
  resolveParams: typeof resolveParams;
}

export const DEFAULT_CATALOG: ProbeCatalog = { probes: PROBES, resolveParams };

export interface ParseOptions {
  /** Where image recipes live; default: `images/` beside the lab file's directory (labs/../images). */
  imagesDir?: string;
  /** Default: the real catalog. */
  catalog?: ProbeCatalog;
}

/** Parse and fully validate a lab file's text. `file` is used in messages as given. */
export function parseLab(text: string, file: string, opts: ParseOptions = {}): LabSpec {
  const { src, data } = readYaml(text, file);
  const raw = validate(src, data, labSchema);
  if (!raw) return src.fail();

  const iommuKind = raw.iommu.type;
  const iommu: IommuSpec = {
    kind: iommuKind,
    cachingMode: iommuKind === 'intel' ? raw.iommu.caching_mode ?? true : false,
    strict: raw.iommu.strict,
    passthrough: raw.iommu.passthrough,
  };

  const t = raw.topology;
  const endpoints: EndpointSpec[] = t.endpoints.map((e) => {
    const fn = e.function ? { function: e.function } : {};
    switch (e.type) {
      case 'ivshmem-plain':
        return { id: e.id, type: e.type, port: e.port, ...fn, memoryMiB: e.memory };
      case 'edu':
        return { id: e.id, type: e.type, port: e.port, ...fn, dmaMaskBits: e.dma_mask };
      case 'nvme':
        return { id: e.id, type: e.type, port: e.port, ...fn, cmbSizeMiB: e.cmb_size, serial: e.serial ?? e.id };
      case 'pci-testdev':
        return { id: e.id, type: e.type, port: e.port, ...fn, membarMiB: e.membar };
    }
  });
  const topology: TopologySpec = {
    rootPorts: t.root_ports.map((r) => ({ id: r.id })),
    switches: t.switches.map((s) => ({ id: s.id, port: s.port, downstream: [...s.downstream] })),
    endpoints,
  };
  checkTopology(src, topology);
  const probes = checkProbes(src, raw, topology, opts.catalog ?? DEFAULT_CATALOG);

  const imagesDir = opts.imagesDir ?? path.resolve(path.dirname(path.resolve(file)), '..', 'images');
  const recipe = path.join(imagesDir, `${raw.image}.yaml`);
  if (!existsSync(recipe)) src.add(['image'], `no image recipe "${raw.image}" (looked for ${recipe})`);

  const kernel = kernelSpec(src, raw.kernel, path.dirname(path.resolve(file)));
  if (src.issues.length) src.fail();
  return {
    file: path.resolve(file),
    name: raw.name ?? path.basename(file).replace(/\.ya?ml$/, ''),
    description: raw.description,
    kernel,
    image: raw.image,
    machine: {
      cpu: raw.machine.cpu,
      memoryMiB: raw.machine.memory,
      smp: raw.machine.smp,
      accel: raw.machine.accel,
      cmdline: raw.machine.cmdline,
    },
    iommu,
    topology,
    modules: raw.modules,
    dmabufAbi: raw.dmabuf_abi,
    probes,
    timeouts: {
      bootSec: raw.timeouts.boot,
      probesSec: raw.timeouts.probes,
      probeSec: raw.timeouts.probe,
      shutdownSec: raw.timeouts.shutdown,
    },
  };
}

type RawKernel = z.output<typeof kernelSchema>;

/** Raw kernel section -> KernelSpec, with paths resolved against the lab's directory and checked to exist. */
function kernelSpec(src: YamlSource, k: RawKernel, labDir: string): KernelSpec {
  const abs = (p: string) => path.resolve(labDir, p.replace(/^~(?=\/)/, process.env.HOME ?? '~'));
  const mustExist = (p: string, at: (string | number)[]) => {
    if (!existsSync(p)) src.add(at, `${p} does not exist`);
    return p;
  };
  const patchSpecs = (): PatchSourceSpec[] => k.patches.map((p, i) => {
    const at = ['kernel', 'patches', i];
    if ('file' in p) return { kind: 'file', path: mustExist(abs(p.file), at) };
    if ('quilt' in p) return { kind: 'quilt', dir: mustExist(abs(p.quilt), at) };
    return { kind: 'mbox', path: mustExist(abs(p.mbox), at) };
  });
  if (k.debian !== undefined && !k.debian.startsWith('linux-source-')) {
    return {
      kind: 'debian-prebuilt', package: k.debian, flavour: k.flavour, suite: k.suite, mirror: k.mirror,
      patches: patchSpecs(),
      ...(k.driver ? { driver: { dirs: k.driver.dirs ?? [...DEFAULT_DRIVER_DIRS] } } : {}),
    };
  }
  const source: KernelSourceSpec =
    k.debian !== undefined ? { kind: 'debian-source', package: k.debian, suite: k.suite, mirror: k.mirror }
      : k.path !== undefined ? { kind: 'git', path: mustExist(abs(k.path), ['kernel', 'path']), ...(k.ref ? { ref: k.ref } : {}) }
        : { kind: 'tarball', path: mustExist(abs(k.tarball!), ['kernel', 'tarball']) };
  const patches = patchSpecs();
  const fragments = k.config.fragments
    ? k.config.fragments.map((f, i) => mustExist(abs(f), ['kernel', 'config', 'fragments', i]))
    : DEFAULT_FRAGMENTS.map((f) => path.join(configsDir, f));
  return { kind: 'source', source, patches, config: { base: k.config.base, fragments } };
}

/** Read and parse a lab file; every problem is thrown as one YamlError. */
export async function loadLab(file: string, opts: ParseOptions = {}): Promise<LabSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new YamlError([{ file, line: 1, col: 1, path: '', message: `cannot read lab file: ${(e as Error).message}` }]);
  }
  return parseLab(text, file, opts);
}
