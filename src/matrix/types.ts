// MatrixSpec: a matrix file (labs/*.yaml with `axes:` and `matrix:`) after
// validation and expansion. Every cell is either runnable, with the exact
// LabSpec `hwlab run` would run for it, or refused with the reasons, so
// nothing is built for a cell that cannot mean anything. Everything
// downstream (the plan, the run, the CI generators) takes these types.
import type { LabSpec } from '../lab/types.ts';

/** The axes a matrix may vary, in the order cell ids name them. */
export type Axis = 'lab' | 'config' | 'iommu' | 'kernel';
export const AXES: readonly Axis[] = ['lab', 'config', 'iommu', 'kernel'];

/**
 * Where the right result of a cell differs from the lab's: a probe's params
 * change (map-type expects host-bridge-direct under passthrough), or its
 * failures are expected (TAP TODO) until a bug is fixed. Always with a reason.
 */
export interface Expectation {
  probe: string;
  /** Only the probe on this endpoint. */
  device?: string;
  /** Only instances whose params (as resolved, defaults included) have these values. */
  where?: Record<string, unknown>;
  /** Merged into the probe's params. */
  params?: Record<string, unknown>;
  /** The probe's failures become TODO with this reason. */
  expectFail?: string;
  /** Only the failures of points whose name contains one of these. */
  points?: string[];
  reason: string;
  /** `file:line:col` of the expectation. */
  at: string;
}

/** What a cell's kernel build is made of: cells with equal keys share one build. */
export interface BuildInputs {
  /** Content key of (source, patches, config base, fragments); also the CI cache key. */
  key: string;
  /** One line for the plan: source, patch count, fragment names. */
  label: string;
  /** Built here from source (false: a prebuilt Debian kernel, nothing to build but maybe a driver overlay). */
  source: boolean;
}

export interface CellSpec {
  id: string;
  /** Axis -> value name, for the axes this cell sets. */
  axes: Partial<Record<Axis, string>>;
  /** The lab hwlab runs for this cell: the lab file with the cell's axes and expectations applied. */
  lab: LabSpec;
  /** The expectations that apply to this cell's probes, in the order they were applied. */
  expectations: Expectation[];
  build: BuildInputs;
  /** `file:line:col` of what made the cell (the matrix, or an include entry). */
  at: string;
}

export interface RefusedCell {
  id: string;
  axes: Partial<Record<Axis, string>>;
  /** Why, each naming the file and place it comes from. */
  reasons: string[];
  at: string;
}

export interface MatrixSpec {
  /** Absolute path of the matrix file. */
  file: string;
  name: string;
  description: string;
  /** Runnable cells, in expansion order (GitHub's: the product, then include's new combinations). */
  cells: CellSpec[];
  refused: RefusedCell[];
}
