// Loading a matrix file: read it with locations kept (src/util/yaml.ts),
// validate it (src/matrix/schema.ts), check that every value it combines is
// defined, read each axis value the way a lab reads the same section (the
// lab's iommu and kernel schemas, its kernel paths), expand the combinations
// with GitHub Actions' rules (src/matrix/expand.ts) and resolve each into a
// runnable cell or a refusal (src/matrix/cells.ts). A mistake in the file
// itself (syntax, an unknown key, a value name that is not defined) is one
// YamlError for the whole file; a value whose files are missing or broken
// refuses only the cells that use it, each with the reason and its place.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { isProbeName } from '../guest/probes/catalog.ts';
import { kernelSpec, loadLab } from '../lab/load.ts';
import { kernelSchema, labSchema } from '../lab/schema.ts';
import type { IommuSpec, KernelSpec, LabSpec } from '../lab/types.ts';
import { readYaml, readYamlFile, validate, YamlError, type Path } from '../util/yaml.ts';
import { resolveCell, type ResolvedValue, type ValueTable } from './cells.ts';
import { expandMatrix, type Combination } from './expand.ts';
import { EXTRA_KEYS, matrixSchema, type Extras, type RawConfigValue, type RawExpectation, type RawLabValue } from './schema.ts';
import { AXES, type Axis, type CellSpec, type Expectation, type MatrixSpec, type RefusedCell } from './types.ts';

/** The lab file's own iommu section schema: a matrix's iommu values mean exactly what a lab's iommu section means. */
const iommuSectionSchema = labSchema.innerType().shape.iommu;

/** A schema that checks `schema` at `p` inside the whole document, so zod's issue paths are the document's. */
function atPath(p: Path, schema: z.ZodTypeAny): z.ZodTypeAny {
  return [...p].reverse().reduce<z.ZodTypeAny>((inner, seg) => z.object({ [String(seg)]: inner }).passthrough(), schema);
}

function withoutExtras(v: unknown): unknown {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return v;
  return Object.fromEntries(Object.entries(v).filter(([k]) => !(EXTRA_KEYS as string[]).includes(k)));
}

function extrasOf(v: unknown): Extras {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return {};
  const o = v as Record<string, unknown>;
  return { expect: o.expect as RawExpectation[] | undefined, probes: o.probes as string[] | undefined, cmdline: o.cmdline as string[] | undefined };
}

/** The same value with `p` replaced (a copy; the original data stays as parsed). */
function replaceAt(data: unknown, p: Path, value: unknown): unknown {
  if (p.length === 0) return value;
  const [head, ...rest] = p;
  const obj = (data ?? {}) as Record<string | number, unknown>;
  return Array.isArray(obj)
    ? obj.map((x, i) => (i === head ? replaceAt(x, rest, value) : x))
    : { ...obj, [head]: replaceAt(obj[head], rest, value) };
}

/** Same mapping as a lab file's iommu section (src/lab/load.ts). */
function iommuSpecOf(raw: z.output<typeof iommuSectionSchema>): IommuSpec {
  return { kind: raw.type, cachingMode: raw.type === 'intel' ? raw.caching_mode ?? true : false, strict: raw.strict, passthrough: raw.passthrough };
}

export interface LoadMatrixOptions {
  /** Where image recipes live for the labs; default: each lab's own (labs/../images). */
  imagesDir?: string;
}

export async function loadMatrix(file: string, opts: LoadMatrixOptions = {}): Promise<MatrixSpec> {
  return parseMatrix(await readYamlFile(file, 'matrix'), file, opts);
}

/** Parse, check and expand a matrix file's text; `file` is used in messages as given, and relative paths are resolved against its directory. */
export async function parseMatrix(text: string, file: string, opts: LoadMatrixOptions = {}): Promise<MatrixSpec> {
  const { src, data } = readYaml(text, file, 'matrix');
  const raw = validate(src, data ?? {}, matrixSchema);
  if (!raw || src.issues.length) return src.fail();
  const dir = path.dirname(path.resolve(file));
  const loc = (p: Path) => `${file}:${src.at(p)}`;

  // Every value name the matrix combines must be defined under axes.
  const defined = (axis: Axis) => Object.keys(raw.axes[axis] ?? {});
  const checkName = (axis: Axis, name: string, at: Path) => {
    if (!defined(axis).includes(name)) {
      src.add(at, defined(axis).length
        ? `no ${axis} value "${name}" (axes.${axis} defines ${defined(axis).join(', ')})`
        : `no ${axis} value "${name}": the file defines no axes.${axis}`);
    }
  };
  const rawMatrix = (data as { matrix?: Record<string, unknown> }).matrix ?? {};
  // GitHub's order: the variables as written, the first outermost (zod's output follows the schema's order instead).
  const variables: Array<[Axis, string[]]> = Object.keys(rawMatrix ?? {})
    .filter((k): k is Axis => (AXES as string[]).includes(k))
    .map((axis) => [axis, raw.matrix[axis] as string[]]);
  for (const [axis, values] of variables) values.forEach((v, i) => checkName(axis, v, ['matrix', axis, i]));
  for (const kind of ['include', 'exclude'] as const) {
    raw.matrix[kind].forEach((entry, i) => {
      for (const axis of AXES) if (entry[axis] !== undefined) checkName(axis, entry[axis]!, ['matrix', kind, i, axis]);
    });
  }
  for (const axis of AXES) {
    const vs = variables.find(([a]) => a === axis)?.[1] ?? [];
    const dup = vs.find((v, i) => vs.indexOf(v) !== i);
    if (dup) src.add(['matrix', axis], `lists "${dup}" twice`);
  }

  // iommu and kernel values are checked with the lab's own section schemas, without the extras.
  const parsedIommu = new Map<string, IommuSpec>();
  const parsedKernel = new Map<string, { raw: z.output<typeof kernelSchema>; gave: { patches: boolean; config: boolean } }>();
  for (const name of defined('iommu')) {
    const p: Path = ['axes', 'iommu', name];
    const value = (raw.axes.iommu as Record<string, unknown>)[name];
    const r = validate(src, replaceAt(data, p, withoutExtras(value)), atPath(p, iommuSectionSchema));
    if (r) parsedIommu.set(name, iommuSpecOf(((r as Record<string, unknown>).axes as Record<string, Record<string, unknown>>).iommu[name] as z.output<typeof iommuSectionSchema>));
  }
  for (const name of defined('kernel')) {
    const p: Path = ['axes', 'kernel', name];
    const value = (raw.axes.kernel as Record<string, unknown>)[name];
    if (typeof value !== 'object' || value === null) {
      src.add(p, 'expected a kernel section as in a lab file, e.g. { debian: linux-source-7.2 } or { path: ~/src/linux, ref: v7.2 }');
      continue;
    }
    const r = validate(src, replaceAt(data, p, withoutExtras(value)), atPath(p, kernelSchema));
    const rk = r && (((r as Record<string, unknown>).axes as Record<string, Record<string, unknown>>).kernel[name] as z.output<typeof kernelSchema>);
    if (rk) parsedKernel.set(name, { raw: rk, gave: { patches: 'patches' in value, config: 'config' in value } });
  }

  // Expectations name probes of the catalogue; a typo here is the file's, not a cell's.
  const expectationsAt = (extras: Extras, at: Path): Expectation[] => (extras.expect ?? []).map((e, i) => {
    const p: Path = [...at, 'expect', i];
    if (!isProbeName(e.probe)) src.add([...p, 'probe'], `unknown probe "${e.probe}"`);
    return {
      probe: e.probe, reason: e.reason, at: loc(p),
      ...(e.device !== undefined ? { device: e.device } : {}), ...(e.where ? { where: e.where } : {}),
      ...(e.params ? { params: e.params } : {}), ...(e.expect_fail !== undefined ? { expectFail: e.expect_fail } : {}),
      ...(e.points !== undefined ? { points: e.points } : {}),
    };
  });
  const value = <S>(axis: Axis, name: string, spec: S | undefined, problems: string[]): ResolvedValue<S> => {
    const p: Path = ['axes', axis, name];
    const v = (raw.axes[axis] as Record<string, unknown>)[name];
    const extras = extrasOf(v);
    return { name, at: loc(p), spec, problems, expect: expectationsAt(extras, p), probes: extras.probes, cmdline: extras.cmdline };
  };

  const table: ValueTable = { lab: new Map(), config: new Map(), iommu: new Map(), kernel: new Map() };
  const labCache = new Map<string, Promise<{ lab?: LabSpec; problems: string[] }>>();
  const readLab = (f: string) => {
    const abs = path.resolve(dir, f);
    if (!labCache.has(abs)) {
      labCache.set(abs, loadLab(abs, opts.imagesDir ? { imagesDir: opts.imagesDir } : {}).then(
        (lab) => ({ lab, problems: [] }),
        (err: unknown) => ({ problems: err instanceof YamlError ? err.message.split('\n') : [`${abs}: ${(err as Error).message}`] }),
      ));
    }
    return labCache.get(abs)!;
  };
  for (const name of defined('lab')) {
    const v = (raw.axes.lab as Record<string, RawLabValue>)[name];
    const { lab, problems } = await readLab(v.file);
    table.lab.set(name, value('lab', name, lab, problems.map((m) => `lab ${name} (${loc(['axes', 'lab', name])}): ${m}`)));
  }
  let base: ResolvedValue<LabSpec> | undefined;
  if (raw.base !== undefined) {
    const { lab, problems } = await readLab(raw.base);
    base = { name: lab?.name ?? path.basename(raw.base).replace(/\.ya?ml$/, ''), at: loc(['base']), spec: lab, problems: problems.map((m) => `base lab (${loc(['base'])}): ${m}`), expect: [] };
  }
  for (const name of defined('config')) {
    const v = (raw.axes.config as Record<string, RawConfigValue>)[name];
    const at = loc(['axes', 'config', name]);
    const files = (v.fragments ?? v.add ?? []).map((f) => path.resolve(dir, f.replace(/^~(?=\/)/, process.env.HOME ?? '~')));
    const problems = files.filter((f) => !existsSync(f)).map((f) => `config ${name} (${at}): fragment ${f} does not exist`);
    table.config.set(name, value('config', name, { mode: v.fragments ? 'replace' : 'add', fragments: files, ...(v.base ? { base: v.base } : {}) }, problems));
  }
  for (const [name, spec] of parsedIommu) table.iommu.set(name, value('iommu', name, spec, []));
  for (const [name, k] of parsedKernel) {
    // A scratch source collects what kernelSpec finds wrong (a patch or tree that does not exist): those refuse the cells using the value.
    const scratch = readYaml('{}\n', file).src;
    const spec: KernelSpec = kernelSpec(scratch, k.raw, dir);
    const at = loc(['axes', 'kernel', name]);
    table.kernel.set(name, value('kernel', name, { spec, gave: k.gave }, scratch.issues.map((i) => `kernel ${name} (${at}): ${i.message}`)));
  }
  // Include entries' own extras (expectations located at the entry).
  const includeExtras = raw.matrix.include.map((entry, i) => ({
    expect: expectationsAt(entry, ['matrix', 'include', i]), probes: entry.probes, cmdline: entry.cmdline, at: loc(['matrix', 'include', i]),
  }));
  if (src.issues.length) src.fail();

  const expanded = expandMatrix({
    variables: variables.map(([a, vs]) => [a, vs]),
    // Extras travel as opaque values (GitHub's rules: a later entry's value replaces an earlier one's), keyed by entry.
    include: raw.matrix.include.map((entry, i) => {
      const c: Combination = {};
      for (const a of AXES) if (entry[a] !== undefined) c[a] = entry[a];
      for (const k of EXTRA_KEYS) if (entry[k] !== undefined) c[k] = { entry: i, key: k };
      return c;
    }),
    exclude: raw.matrix.exclude.map((entry) => Object.fromEntries(AXES.filter((a) => entry[a] !== undefined).map((a) => [a, entry[a]]))),
  });

  const cells: CellSpec[] = [];
  const refused: RefusedCell[] = [];
  const seen = new Map<string, string>();
  for (const e of expanded) {
    const at = e.origin.kind === 'include' ? loc(['matrix', 'include', e.origin.entry]) : loc(['matrix']);
    const extra = (k: (typeof EXTRA_KEYS)[number]) => {
      const ref = e.combination[k] as { entry: number } | undefined;
      if (!ref) return undefined;
      const inc = includeExtras[ref.entry];
      return k === 'expect' ? inc.expect : k === 'probes' ? inc.probes : inc.cmdline;
    };
    const axes: Partial<Record<Axis, string>> = {};
    for (const a of AXES) if (typeof e.combination[a] === 'string') axes[a] = e.combination[a] as string;
    const r = await resolveCell({
      axes, at, base, table,
      cell: { expect: (extra('expect') as Expectation[] | undefined) ?? [], probes: extra('probes') as string[] | undefined, cmdline: extra('cmdline') as string[] | undefined },
    });
    const first = seen.get(r.id);
    if (first !== undefined) {
      refused.push({ id: r.id, axes, at, reasons: [`${at}: the same axis values as the cell made at ${first}; cell ids must be unique`] });
      continue;
    }
    seen.set(r.id, at);
    if ('reasons' in r) refused.push(r);
    else cells.push(r);
  }
  return {
    file: path.resolve(file),
    name: raw.name ?? path.basename(file).replace(/\.ya?ml$/, ''),
    description: raw.description,
    cells,
    refused,
  };
}

/** The cells `--cell` names (all when none); an id that names no cell is bad input, with the ids there are. */
export function selectCells(m: MatrixSpec, ids: readonly string[]): { cells: CellSpec[]; refused: RefusedCell[]; unknown: string[] } {
  if (ids.length === 0) return { cells: m.cells, refused: m.refused, unknown: [] };
  const known = new Set([...m.cells, ...m.refused].map((c) => c.id));
  return {
    cells: m.cells.filter((c) => ids.includes(c.id)),
    refused: m.refused.filter((c) => ids.includes(c.id)),
    unknown: ids.filter((id) => !known.has(id)),
  };
}
