// The schema of a lab file as written (labs/*.yaml): snake_case keys,
// shorthands (`iommu: amd`, a bare probe name, a bare root port id), units
// (`64M`) and defaults. Endpoint fields come from the table of endpoint kinds
// (src/lab/endpoints.ts). What one part of the file says about another
// (ports, probe devices, params naming endpoints) is checked after, in
// src/lab/checks.ts; src/lab/load.ts maps the result to a LabSpec.
import { z } from 'zod';
import { describe, orEmpty, strictObject } from '../util/yaml.ts';
import { ENDPOINT_TYPES, endpointKind, idStringPattern, type EndpointType, type FieldSpec } from './endpoints.ts';
import { MAX_FUNCTIONS } from './slots.ts';
import { ACCELS, DMABUF_ABIS, IOMMU_KINDS, type Accel, type DmabufAbi, type IommuKind } from './types.ts';

const ID_RE = /^[a-z][a-z0-9_-]*$/;
/**
 * Caps on what a lab file may ask for. Ids and names end up in QEMU
 * arguments, file names and messages; counts and sizes bound how long
 * validation and a run can take. Each is far above what a real lab needs.
 */
export const LAB_LIMITS = {
  idLength: 32,
  nameLength: 64,
  descriptionLength: 4000,
  textLength: 1000,
  pathLength: 4096,
  probes: 256,
  endpoints: 128,
  ports: 300,
  modules: 32,
  patches: 1000,
  fragments: 64,
  cmdlineWords: 64,
  /** Point names or errnos an expect_fail covers. */
  expectations: 64,
  /** QEMU's q35 takes more, but no lab needs a guest over 1 TiB. */
  memoryMiB: 1 << 20,
  /** A day: any timeout longer is a mistake, and Node clamps timers past 2^31-1 ms (24.8 days) to 1 ms. */
  timeoutSec: 86_400,
} as const;
const L = LAB_LIMITS;
// Ids become QEMU -device/-object ids and bus names, so no commas, dots or '='.
const idSchema = z.string().max(L.idLength).regex(ID_RE, 'must be a lowercase letter followed by a-z, 0-9, _ or - (it becomes a QEMU id)');

const SIZE_RE = /^(\d+)\s*(M|MB|MiB|G|GB|GiB)?$/i;

/** A size in MiB: `64M`, `2G`, `2048M`; a bare integer is MiB, like QEMU's -m. At most `max` MiB when given. */
function sizeMiB(def?: number, max?: number) {
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
    if (!Number.isSafeInteger(mib) || (max !== undefined && mib > max)) {
      ctx.addIssue({ code: 'custom', message: `must be at most ${max ?? Number.MAX_SAFE_INTEGER}M (got ${describe(v)})` });
      return z.NEVER;
    }
    return mib;
  });
}

/** A string or a list of strings, split on whitespace into words. */
const cmdlineSchema = z.unknown().transform((v, ctx): string[] => {
  if (v === undefined || v === null) return [];
  const checked = (words: string[], at: (string | number)[] = []) => {
    for (const w of words) {
      if (w.length > L.textLength || /[\u0000-\u001f\u007f]/.test(w)) {
        ctx.addIssue({ code: 'custom', path: at, message: `a kernel command-line word must be at most ${L.textLength} characters without control characters (got ${describe(w)})` });
      }
    }
    return words;
  };
  if (typeof v === 'string') {
    const words = checked(v.split(/\s+/).filter(Boolean));
    if (words.length > L.cmdlineWords) ctx.addIssue({ code: 'custom', message: `at most ${L.cmdlineWords} words (got ${words.length})` });
    return words;
  }
  if (!Array.isArray(v)) {
    ctx.addIssue({ code: 'custom', message: `expected a string or a list of strings (got ${describe(v)})` });
    return z.NEVER;
  }
  const words: string[] = [];
  v.forEach((item, i) => {
    if (typeof item !== 'string') ctx.addIssue({ code: 'custom', path: [i], message: `expected a string (got ${describe(item)})` });
    else words.push(...checked(item.split(/\s+/).filter(Boolean), [i]));
  });
  if (words.length > L.cmdlineWords) ctx.addIssue({ code: 'custom', message: `at most ${L.cmdlineWords} words (got ${words.length})` });
  return words;
});

/**
 * A list of at most `max` entries, counted before any entry is checked: a
 * file with 100,000 probes is refused at once instead of after every one of
 * them has been validated.
 */
function capped<T extends z.ZodTypeAny>(max: number, schema: T) {
  return z.unknown().transform((v, ctx) => {
    if (Array.isArray(v) && v.length > max) {
      ctx.addIssue({ code: 'custom', message: `must have at most ${max} entries (got ${v.length})` });
      return z.NEVER;
    }
    return v;
  }).pipe(schema);
}

/** Collection and test names travel to the guest as arguments and kmsg markers: no spaces, no shell syntax. */
export const SELFTEST_COLLECTION_RE = /^[a-z0-9][a-z0-9_.-]*(\/[a-z0-9][a-z0-9_.-]*)*$/;
export const SELFTEST_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]*$/;

const enumOf = <T extends string>(values: readonly T[]) => z.enum(values as unknown as [T, ...T[]]);

const seconds = () => z.number().positive().max(L.timeoutSec);
const positiveSeconds = (def: number) => seconds().default(def);

const PKG_RE = /^[a-z0-9][a-z0-9+.-]+$/;
const relPath = z.string().min(1, 'must be a path').max(L.pathLength);
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
export const kernelSchema = strictObject({
  debian: z.string().max(L.nameLength).regex(PKG_RE, 'must be a Debian package such as linux-image-7.2 or linux-source-7.2').optional(),
  path: relPath.optional(),
  ref: z.string().max(L.textLength).regex(/^[^\s-][^\s]*$/, 'must be a git ref (branch, tag or commit)').optional(),
  tarball: relPath.optional(),
  flavour: z.string().regex(/^[a-z0-9][a-z0-9-]*$/, 'must be a kernel flavour such as amd64 or cloud-amd64').default('amd64'),
  suite: z.string().regex(/^[a-z][a-z0-9.-]*$/, 'must be a Debian suite name such as sid').default('sid'),
  mirror: z.string().regex(/^https?:\/\/[^\s,]+$/, 'must be an http:// or https:// URL').default('http://deb.debian.org/debian'),
  patches: orEmpty([], z.array(patchEntry).max(L.patches)),
  driver: z.preprocess((v) => (v === null ? {} : v), strictObject({
    dirs: z.array(z.string().max(L.pathLength).regex(/^[A-Za-z0-9_./-]+$/, 'must be a tree-relative directory such as drivers/vfio/pci')).min(1).max(L.modules).optional(),
  })).optional(),
  config: orEmpty({}, strictObject({
    base: z.string().max(L.nameLength).regex(/^[a-z0-9_.-]+$/, 'must be a make config target such as tinyconfig or defconfig').default('tinyconfig'),
    fragments: z.array(relPath).max(L.fragments).optional(),
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

// ---------------------------------------------------------------------------
// Endpoints: one object schema per kind of the table (src/lab/endpoints.ts),
// built from its field declarations.

function fieldSchema(f: FieldSpec): z.ZodTypeAny {
  switch (f.kind) {
    case 'mib':
      return sizeMiB(f.default).superRefine((n, ctx) => {
        if (f.powerOfTwo && (n & (n - 1)) !== 0) ctx.addIssue({ code: 'custom', message: `must be a power of two (got ${n}M)` });
        if (f.max !== undefined && n > f.max) ctx.addIssue({ code: 'custom', message: `must be at most ${f.max}M (got ${n}M)` });
      });
    case 'int':
      return z.number().int().min(f.min).max(f.max).default(f.default);
    case 'id-string':
      return z.string().regex(idStringPattern(f), `must be 1-${f.maxLength} characters of ${f.charsWords}`).optional();
  }
}

const endpointSchemas = ENDPOINT_TYPES.map((type) => strictObject({
  id: idSchema,
  type: z.literal(type),
  port: idSchema,
  function: z.number().int().min(0).max(MAX_FUNCTIONS - 1).default(0),
  ...Object.fromEntries(Object.values(endpointKind(type).fields).map((f) => [f.key, fieldSchema(f)])),
}));

/** An endpoint as written: id, type, port, function, and its kind's fields by their lab-file keys. */
export type RawEndpoint = { id: string; type: EndpointType; port: string; function: number } & Record<string, unknown>;

const endpointsSchema = z
  .discriminatedUnion('type', endpointSchemas as [(typeof endpointSchemas)[number], ...(typeof endpointSchemas)[number][]])
  .array()
  .superRefine((eps, ctx) => (eps as RawEndpoint[]).forEach((e, i) => {
    // A field that defaults to the id must accept the id (nvme's serial is at most 20 characters).
    for (const f of Object.values(endpointKind(e.type).fields)) {
      if (f.kind !== 'id-string' || e[f.key] !== undefined || idStringPattern(f).test(e.id)) continue;
      const why = e.id.length > f.maxLength ? `is longer than ${f.maxLength} characters` : `has characters other than ${f.charsWords}`;
      ctx.addIssue({ code: 'custom', path: [i, 'id'], message: `the ${e.type} ${f.key} defaults to the id, which ${why}; set ${f.key}` });
    }
  }));

// ---------------------------------------------------------------------------
// The whole file

/** A lab file as written (snake_case keys, shorthands expanded, defaults filled in). */
export const labSchema = orEmpty({}, strictObject({
  name: z.string().max(L.nameLength).regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits, ., _ or - (it names result directories)').optional(),
  description: z.string().max(L.descriptionLength).default(''),
  kernel: kernelSchema,
  image: z.string().max(L.nameLength).regex(/^[a-z0-9][a-z0-9._-]*$/, 'must be the name of a recipe in images/ (without .yaml)'),
  machine: orEmpty({}, strictObject({
    // No whitespace; commas are legitimate (`EPYC,+x2apic`): it is one -cpu argument.
    // Only what QEMU's CPU model names and feature flags use (`EPYC,+x2apic,-svm`, `host`, `Skylake-Server-v4`).
    cpu: z.string().max(L.textLength).regex(/^[A-Za-z0-9][A-Za-z0-9_.+=,-]*$/, 'must be a QEMU CPU model such as EPYC or Skylake-Server, optionally with ,+feature or ,-feature').default('EPYC'),
    memory: sizeMiB(2048, L.memoryMiB),
    smp: z.number().int().min(1).max(255).default(2),
    accel: enumOf<Accel>(ACCELS).default('auto'),
    cmdline: cmdlineSchema,
    // QEMU trace events (`-trace enable=`), e.g. amdvi_* to see the emulated IOMMU translate and invalidate.
    trace: z.array(z.string().regex(/^[A-Za-z0-9_*]+$/, 'must be a QEMU trace event name or pattern (letters, digits, _ and *), e.g. amdvi_*')).default([]),
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
    root_ports: orEmpty([], z.array(z.preprocess((v) => (typeof v === 'string' ? { id: v } : v), strictObject({ id: idSchema }))).max(L.ports)),
    switches: orEmpty([], z.array(strictObject({
      id: idSchema,
      port: idSchema,
      downstream: z.array(idSchema).min(1).max(L.ports),
    })).max(L.ports)),
    endpoints: orEmpty([], capped(L.endpoints, endpointsSchema)),
  })),
  modules: orEmpty(['vfio-pci'], z.array(z.string().max(L.nameLength).regex(/^[A-Za-z0-9_-]+$/, 'must be a kernel module name')).max(L.modules)),
  dmabuf_abi: enumOf<DmabufAbi>(DMABUF_ABIS).default('ranges'),
  probes: orEmpty([], capped(L.probes, z.array(z.preprocess((v) => (typeof v === 'string' ? { name: v } : v), strictObject({
    name: z.string().min(1).max(L.nameLength),
    device: idSchema.optional(),
    params: orEmpty({}, z.record(z.string(), z.unknown())),
    // A reason (every failure of the probe is expected), or the reason and the points / errnos it covers.
    expect_fail: z.union([z.string().min(1).max(L.textLength), strictObject({
      reason: z.string().min(1).max(L.textLength),
      points: z.array(z.string().min(1).max(L.textLength)).min(1).max(L.expectations).optional(),
      errno: z.array(z.string().regex(/^E[A-Z0-9]+$/, 'must be an errno name like EADDRINUSE')).min(1).max(L.expectations).optional(),
    })]).optional(),
    timeout: seconds().optional(),
  }))))),
  // The kernel's own selftests (src/selftests/): `collection` is a directory
  // under tools/testing/selftests, checked against the kernel tree once it is there.
  selftests: orEmpty({ timeout: 300, patches: [], tests: [] }, strictObject({
    timeout: positiveSeconds(300),
    // Fixes to the selftests themselves, applied after the kernel's series to the selftests build only.
    patches: orEmpty([], z.array(patchEntry).max(L.patches)),
    tests: orEmpty([], capped(L.probes, z.array(strictObject({
      collection: z.string().max(L.nameLength).regex(SELFTEST_COLLECTION_RE, 'must be a directory under tools/testing/selftests, such as vfio or drivers/dma-buf'),
      test: z.string().max(L.nameLength).regex(SELFTEST_NAME_RE, 'must be the name of a test program, such as vfio_pci_device_test').optional(),
      devices: orEmpty([], z.array(idSchema).max(L.endpoints)),
      timeout: seconds().optional(),
      expect_fail: z.string().min(1).max(L.textLength).optional(),
    })))),
  })),
  timeouts: orEmpty({}, strictObject({
    boot: positiveSeconds(180),
    probes: positiveSeconds(600),
    probe: positiveSeconds(120),
    shutdown: positiveSeconds(20),
    runner_exit: positiveSeconds(30),
  })),
}));

export type RawLab = z.output<typeof labSchema>;
export type RawKernel = z.output<typeof kernelSchema>;
