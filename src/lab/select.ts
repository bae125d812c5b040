// Running part of a lab: the probes a selector names, in the lab's order.
// A selector is a probe's name (every device it runs on) or `name(device)`,
// the column key reports use, so a failing column can be named as printed.
// Nightly reruns, bisect steps and the run options share this; a selector
// that names nothing is bad input, never an empty run that passes.
import { InputError } from '../util/errors.ts';
import type { LabSpec, ProbeSpec } from './types.ts';

export const probeKey = (p: Pick<ProbeSpec, 'name' | 'device'>): string => `${p.name}(${p.device})`;

const matches = (p: ProbeSpec, selector: string) => selector === p.name || selector === probeKey(p);

/** The lab with only the probes the selectors name; every selector must name at least one. */
export function selectProbes(lab: LabSpec, selectors: readonly string[]): LabSpec {
  const unknown = selectors.filter((s) => !lab.probes.some((p) => matches(p, s)));
  if (unknown.length) {
    throw new InputError(
      `${lab.file}: no probe matches ${unknown.map((s) => `"${s}"`).join(', ')}`,
      `a selector is a probe name or name(device); this lab has ${[...new Set(lab.probes.map(probeKey))].join(', ')}`,
      'unknown-probe',
    );
  }
  return { ...lab, probes: lab.probes.filter((p) => selectors.some((s) => matches(p, s))) };
}
