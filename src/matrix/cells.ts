// One matrix cell, from its axis value names to the lab hwlab runs for it, or
// to a refusal with the reasons. The cell's lab is the lab file with the
// cell's vIOMMU, kernel source and config fragments put in, its probes
// narrowed and its expectations applied (params through the probe
// catalogue's own validator), so `hwlab run`'s code path runs it unchanged.
// A cell is refused before anything is built when it cannot mean anything:
// a value whose files are missing, a config change on a prebuilt kernel, a
// vIOMMU the kernel config leaves out (iommu none without VFIO_NOIOMMU), a
// map type the vIOMMU mode cannot give, KASAN and KCSAN together, an
// expectation that matches no probe, a probe param the catalogue refuses.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { resolveParams } from '../guest/probes/catalog.ts';
import { loadPatchSeries } from '../kernel/patches.ts';
import { parseDotConfig } from '../kernel/dotconfig.ts';
import type { IommuSpec, KernelSpec, LabSpec, ProbeSpec } from '../lab/types.ts';
import { cacheKey, sha256 } from '../util/cache.ts';
import { partialMatch } from './expand.ts';
import { AXES, type Axis, type BuildInputs, type CellSpec, type Expectation, type RefusedCell } from './types.ts';

/** An axis value as the matrix defines it, read once: its meaning (spec), what is wrong with it, and what it adds to its cells. */
export interface ResolvedValue<S> {
  name: string;
  at: string;
  /** Undefined when the value is broken (problems says why). */
  spec: S | undefined;
  problems: string[];
  expect: Expectation[];
  probes?: string[];
  cmdline?: string[];
}

export interface ConfigValue {
  /** add: after the lab's fragments; replace: instead of them. */
  mode: 'add' | 'replace';
  /** Absolute paths. */
  fragments: string[];
  base?: string;
}

export interface KernelValue {
  spec: KernelSpec;
  /** Which sections the value wrote itself (the others come from the lab). */
  gave: { patches: boolean; config: boolean };
}

export interface ValueTable {
  lab: Map<string, ResolvedValue<LabSpec>>;
  config: Map<string, ResolvedValue<ConfigValue>>;
  iommu: Map<string, ResolvedValue<IommuSpec>>;
  kernel: Map<string, ResolvedValue<KernelValue>>;
}

export interface CellInput {
  axes: Partial<Record<Axis, string>>;
  /** Where the cell comes from, `file:line:col`. */
  at: string;
  base?: ResolvedValue<LabSpec>;
  table: ValueTable;
  /** The include entry's own extras. */
  cell: { expect: Expectation[]; probes?: string[]; cmdline?: string[] };
}

export function cellId(axes: Partial<Record<Axis, string>>, fallback: string): string {
  const parts = AXES.filter((a) => axes[a] !== undefined).map((a) => axes[a]!);
  return parts.length ? parts.join('.') : fallback;
}

/** Symbols a vIOMMU needs in the guest kernel (source builds): without them the lab's vIOMMU is silently not used. */
const IOMMU_SYMBOLS: Record<IommuSpec['kind'], string> = {
  intel: 'INTEL_IOMMU', amd: 'AMD_IOMMU', virtio: 'VIRTIO_IOMMU', none: 'VFIO_NOIOMMU',
};
/** Base configs that start with everything off, so a symbol no fragment sets is off. */
const MINIMAL_BASES = new Set(['tinyconfig', 'allnoconfig']);

/**
 * The vIOMMU and the default domain mode the guest really gets: intel lazy
 * under caching mode is strict in effect (the driver disallows batching).
 */
export function iommuWords(i: IommuSpec): string {
  if (i.kind === 'none') return 'no IOMMU';
  const mode = i.passthrough ? 'passthrough' : i.strict ? 'strict' : 'lazy';
  if (i.kind !== 'intel') return `${i.kind} ${mode}`;
  if (!i.cachingMode) return `intel ${mode}, no caching mode`;
  return mode === 'lazy' ? 'intel lazy under caching mode (strict in effect)' : `intel ${mode}`;
}

/** What the fragments set, the later ones winning (as merge_config.sh merges them). */
async function fragmentSettings(files: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of files) for (const [k, v] of parseDotConfig(await readFile(f, 'utf8'))) out.set(k, v);
  return out;
}

export async function buildInputs(kernel: KernelSpec): Promise<BuildInputs> {
  const patches = await loadPatchSeries(kernel.patches);
  const patchShas = patches.map((p) => p.sha256);
  if (kernel.kind === 'debian-prebuilt') {
    const key = cacheKey({ v: 1, prebuilt: { package: kernel.package, flavour: kernel.flavour, suite: kernel.suite, mirror: kernel.mirror }, driver: kernel.driver ?? null, patches: patchShas });
    const label = `${kernel.package} (prebuilt${kernel.driver ? `, ${kernel.driver.dirs.join(' ')} rebuilt with ${patches.length} patch${patches.length === 1 ? '' : 'es'}` : ''})`;
    return { key, label, source: false };
  }
  const fragments = await Promise.all(kernel.config.fragments.map(async (f) => ({ name: path.basename(f), sha: sha256(await readFile(f, 'utf8')) })));
  const key = cacheKey({ v: 1, source: kernel.source, patches: patchShas, base: kernel.config.base, fragments });
  const src = kernel.source.kind === 'debian-source' ? kernel.source.package
    : kernel.source.kind === 'git' ? `${kernel.source.path}${kernel.source.ref ? `@${kernel.source.ref}` : ''}` : kernel.source.path;
  const label = `${src} + ${patches.length} patch${patches.length === 1 ? '' : 'es'}, ${kernel.config.base} + ${fragments.map((f) => f.name.replace(/\.config$/, '')).join(' ')}`;
  return { key, label, source: true };
}

/** The cell, or why it is refused. Never throws for what the matrix says. */
export async function resolveCell(input: CellInput): Promise<CellSpec | RefusedCell> {
  const { axes, at, table } = input;
  const reasons: string[] = [];
  const refuse = (): RefusedCell => ({ id, axes, at, reasons });
  const labValue = axes.lab !== undefined ? table.lab.get(axes.lab) : input.base;
  const id = cellId(axes, input.base?.name ?? 'cell');
  if (!labValue) {
    reasons.push(`${at}: the cell names no lab and the matrix has no base lab`);
    return refuse();
  }
  const used = {
    lab: labValue,
    config: axes.config !== undefined ? table.config.get(axes.config) : undefined,
    iommu: axes.iommu !== undefined ? table.iommu.get(axes.iommu) : undefined,
    kernel: axes.kernel !== undefined ? table.kernel.get(axes.kernel) : undefined,
  };
  for (const v of Object.values(used)) if (v) reasons.push(...v.problems);
  if (reasons.length || !labValue.spec) return refuse();
  const lab: LabSpec = structuredClone(labValue.spec);
  const labName = axes.lab ?? 'base';

  if (used.iommu?.spec) lab.iommu = { ...used.iommu.spec };

  if (used.kernel?.spec) {
    const { spec: k, gave } = used.kernel.spec;
    const labPatches = lab.kernel.patches;
    if (k.kind === 'source') {
      const labConfig = lab.kernel.kind === 'source' ? lab.kernel.config : k.config;
      lab.kernel = { ...k, patches: gave.patches ? k.patches : labPatches, config: gave.config ? k.config : labConfig };
    } else {
      lab.kernel = { ...k, patches: gave.patches ? k.patches : labPatches };
      if (lab.kernel.patches.length && !k.driver) {
        reasons.push(`${used.kernel.at}: kernel ${used.kernel.name} is the prebuilt ${k.package}, which cannot take lab ${labName}'s patches (give the value driver: for the fast path, or a source)`);
      }
    }
  }

  if (used.config?.spec) {
    const c = used.config.spec;
    if (lab.kernel.kind !== 'source') {
      if (c.fragments.length || c.mode === 'replace') {
        reasons.push(`${used.config.at}: config ${used.config.name} changes the kernel config, but ${axes.kernel ? `kernel ${axes.kernel}` : `lab ${labName}`} uses the prebuilt ${lab.kernel.package}, whose config is fixed`);
      }
    } else if (c.mode === 'add') {
      lab.kernel = { ...lab.kernel, config: { ...lab.kernel.config, fragments: [...lab.kernel.config.fragments, ...c.fragments] } };
    } else {
      lab.kernel = { ...lab.kernel, config: { base: c.base ?? lab.kernel.config.base, fragments: [...c.fragments] } };
    }
  }

  // What the values and the include entry add, in axis order, then the cell's own.
  const sources = [...AXES.map((a) => used[a]).filter((v): v is NonNullable<typeof v> => v !== undefined), { ...input.cell, at, name: 'cell' }];
  for (const s of sources) if (s.cmdline?.length) lab.machine = { ...lab.machine, cmdline: [...lab.machine.cmdline, ...s.cmdline] };
  for (const s of sources) {
    if (!s.probes) continue;
    const unknown = s.probes.filter((n) => !lab.probes.some((p) => p.name === n));
    if (unknown.length) reasons.push(`${s.at}: probes ${unknown.join(', ')} not in lab ${labName} (it runs ${[...new Set(lab.probes.map((p) => p.name))].join(', ')})`);
    lab.probes = lab.probes.filter((p) => s.probes!.includes(p.name));
  }
  if (!reasons.length && lab.probes.length === 0) reasons.push(`${at}: no probe left to run in lab ${labName}`);

  const applied: Expectation[] = [];
  for (const s of sources) {
    // A value's expectation may not concern every lab it is combined with; the lab's own and the cell's must hit.
    const mustHit = s === used.lab || s.name === 'cell';
    for (const e of s.expect) {
      const targets = lab.probes.filter((p) => p.name === e.probe && (e.device === undefined || p.device === e.device) && (!e.where || partialMatch(e.where, p.params)));
      if (targets.length === 0) {
        if (mustHit) reasons.push(`${e.at}: expects something of ${e.probe}${e.device ? ` on ${e.device}` : ''}${e.where ? ` where ${JSON.stringify(e.where)}` : ''}, but lab ${labName} runs no such probe in this cell`);
        continue;
      }
      for (const p of targets) applyExpectation(lab, p, e, reasons);
      applied.push(e);
    }
  }

  reasons.push(...consistency(lab, at, id));
  if (lab.kernel.kind === 'source') reasons.push(...(await configProblems(lab, used.config?.at ?? labValue.at, used.iommu?.at ?? labValue.at)));
  if (reasons.length) return refuse();

  let build: BuildInputs;
  try {
    build = await buildInputs(lab.kernel);
  } catch (err) {
    reasons.push(`${at}: ${(err as Error).message}`);
    return refuse();
  }
  return { id, axes, lab, expectations: applied, build, at };
}

function applyExpectation(lab: LabSpec, p: ProbeSpec, e: Expectation, reasons: string[]): void {
  if (e.params) {
    const type = lab.topology.endpoints.find((x) => x.id === p.device)?.type;
    const r = type ? resolveParams(p.name, { ...p.params, ...e.params }, type) : { ok: false as const, errors: [`no endpoint ${p.device}`] };
    if (!r.ok) reasons.push(...r.errors.map((m) => `${e.at}: ${m}`));
    else p.params = r.params;
  }
  if (e.expectFail !== undefined) p.expectFail = `${e.expectFail} (${e.reason})`;
  if (e.points !== undefined) p.expectFailScope = { points: e.points };
}

/** Meaningless combinations of what the cell's lab now says. */
function consistency(lab: LabSpec, at: string, id: string): string[] {
  const out: string[] = [];
  const i = lab.iommu;
  if (i.strict && i.passthrough) out.push(`${at}: cell ${id}: iommu strict and passthrough together mean nothing (identity domains have no IOTLB to flush)`);
  for (const p of lab.probes) {
    if (p.name !== 'map-type') continue;
    const expect = p.params.expect;
    const identity = i.kind === 'none' || i.passthrough;
    if (expect === 'host-bridge-iova' && identity) {
      out.push(`${at}: cell ${id}: map-type on ${p.device} expects host-bridge-iova, which needs a DMA domain, but the vIOMMU is ${iommuWords(i)}: the map type there is host-bridge-direct (add an expectation)`);
    }
    if (expect === 'host-bridge-direct' && !identity) {
      out.push(`${at}: cell ${id}: map-type on ${p.device} expects host-bridge-direct, which needs an identity domain, but the vIOMMU is ${iommuWords(i)}`);
    }
  }
  return out;
}

/** Kernel config the cell cannot do without, judged from its fragments before anything is built. */
async function configProblems(lab: LabSpec, configAt: string, iommuAt: string): Promise<string[]> {
  if (lab.kernel.kind !== 'source') return [];
  const { base, fragments } = lab.kernel.config;
  const set = await fragmentSettings(fragments);
  const out: string[] = [];
  const names = fragments.map((f) => path.basename(f)).join(', ');
  const symbol = IOMMU_SYMBOLS[lab.iommu.kind];
  const value = set.get(symbol);
  if (value === 'n' || (value === undefined && MINIMAL_BASES.has(base))) {
    out.push(`${iommuAt}: iommu ${lab.iommu.kind} needs CONFIG_${symbol}, which the cell's config (${base} + ${names}) ${value === 'n' ? 'turns off' : 'never sets'}${lab.iommu.kind === 'none' ? ': vfio-pci binds without an IOMMU only in no-IOMMU mode' : ''}`);
  }
  if (set.get('KASAN') === 'y' && set.get('KCSAN') === 'y') {
    out.push(`${configAt}: the cell's config sets both CONFIG_KASAN and CONFIG_KCSAN; KCSAN depends on !KASAN, so one of them would silently drop out`);
  }
  return out;
}
