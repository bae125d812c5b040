// The schema of a matrix file as written: `axes:` defines named values of
// each axis (lab files, config fragment sets, vIOMMUs, kernel sources), and
// `matrix:` combines them exactly as GitHub Actions' strategy.matrix does
// (variables, include, exclude). A value may carry `expect`, `probes` and
// `cmdline`, which every cell using it gets; an include entry may carry them
// for its cells. What a value means (a lab file that loads, a fragment that
// exists, a probe param the catalogue knows) is checked per cell later, in
// src/matrix/cells.ts, so one broken value refuses only the cells using it.
import { z } from 'zod';
import { orEmpty, strictObject } from '../util/yaml.ts';
import { AXES, type Axis } from './types.ts';

/** Value names become parts of cell ids (joined with '.') and CI job and artifact names. */
export const VALUE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_-]*$/;
const valueName = z.string().regex(VALUE_NAME_RE, 'must be letters, digits, _ or - (it becomes part of cell ids)');
const relPath = z.string().min(1, 'must be a path');

export const expectationSchema = strictObject({
  probe: z.string().min(1),
  device: z.string().min(1).optional(),
  where: z.record(z.string(), z.unknown()).optional(),
  params: z.record(z.string(), z.unknown()).optional(),
  expect_fail: z.string().min(1).optional(),
  // With expect_fail: only the points whose name contains one of these are expected to fail.
  points: z.array(z.string().min(1)).min(1).optional(),
  reason: z.string().min(1, 'must say why this cell expects something else'),
}).superRefine((e, ctx) => {
  if (e.params === undefined && e.expect_fail === undefined) ctx.addIssue({ code: 'custom', message: 'needs params or expect_fail (what is different in this cell)' });
  if (e.points !== undefined && e.expect_fail === undefined) ctx.addIssue({ code: 'custom', path: ['points'], message: 'needs expect_fail (the reason those points fail)' });
});
export type RawExpectation = z.output<typeof expectationSchema>;

/** What any axis value and any include entry may add to its cells. */
export const extrasShape = {
  expect: z.array(expectationSchema).optional(),
  /** Only these probes of the lab run (by name). */
  probes: z.array(z.string().min(1)).min(1).optional(),
  /** Extra kernel command-line words, after the lab's. */
  cmdline: z.array(z.string().regex(/^\S+$/, 'must be one word')).optional(),
};
export const EXTRA_KEYS = Object.keys(extrasShape) as Array<keyof typeof extrasShape>;
export type Extras = { expect?: RawExpectation[]; probes?: string[]; cmdline?: string[] };

/**
 * A config value: a list of fragments merged after the lab's own, or
 * `{ add: [...] }` (the same), or `{ fragments: [...], base: tinyconfig }`,
 * which replaces the lab's config.
 */
export const configValueSchema = z.preprocess(
  (v) => (Array.isArray(v) ? { add: v } : v === null ? { add: [] } : v),
  strictObject({
    add: z.array(relPath).optional(),
    fragments: z.array(relPath).optional(),
    base: z.string().regex(/^[a-z0-9_.-]+$/, 'must be a make config target such as tinyconfig').optional(),
    ...extrasShape,
  }).superRefine((c, ctx) => {
    if (c.add !== undefined && c.fragments !== undefined) ctx.addIssue({ code: 'custom', message: 'add (after the lab\'s fragments) and fragments (instead of them) exclude each other' });
    if (c.base !== undefined && c.fragments === undefined) ctx.addIssue({ code: 'custom', path: ['base'], message: 'only applies with fragments: (a config that replaces the lab\'s)' });
  }),
);

/** A lab value: a lab file, or `{ file: ..., expect: ... }`. */
export const labValueSchema = z.preprocess(
  (v) => (typeof v === 'string' ? { file: v } : v),
  strictObject({ file: relPath, ...extrasShape }),
);

/**
 * iommu and kernel values are the lab file's own sections (checked against
 * the lab schema per value, src/matrix/load.ts) plus the extras; here they
 * are only a string or a map.
 */
const sectionValue = z.union([z.string(), z.record(z.string(), z.unknown())], {
  errorMap: () => ({ message: 'expected a string or a map, as in a lab file' }),
});

const axisValues = <T extends z.ZodTypeAny>(value: T) => z.record(valueName, value).refine((r) => Object.keys(r).length > 0, 'must define at least one value');

const names = z.array(valueName).min(1);
const axisKeys = Object.fromEntries(AXES.map((a) => [a, valueName.optional()])) as Record<Axis, z.ZodOptional<typeof valueName>>;

export const includeEntrySchema = strictObject({ ...axisKeys, ...extrasShape });
export const excludeEntrySchema = strictObject(axisKeys).refine((e) => Object.keys(e).length > 0, 'must name at least one axis value');

export const matrixSchema = strictObject({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, 'must be letters, digits, ., _ or - (it names result folders)').optional(),
  description: z.string().default(''),
  /** The lab of cells that name none (no lab axis). */
  base: relPath.optional(),
  axes: strictObject({
    lab: axisValues(labValueSchema).optional(),
    config: axisValues(configValueSchema).optional(),
    iommu: axisValues(sectionValue).optional(),
    kernel: axisValues(sectionValue).optional(),
  }),
  matrix: orEmpty({}, strictObject({
    lab: names.optional(),
    config: names.optional(),
    iommu: names.optional(),
    kernel: names.optional(),
    include: orEmpty([], z.array(includeEntrySchema)),
    exclude: orEmpty([], z.array(excludeEntrySchema)),
  })),
});
export type RawMatrix = z.output<typeof matrixSchema>;
export type RawLabValue = z.output<typeof labValueSchema>;
export type RawConfigValue = z.output<typeof configValueSchema>;
