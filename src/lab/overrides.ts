// Command-line changes to a lab's probes for one run: `--probe-param
// probe.key=value` sets a probe parameter, and `--only PROBE[,PROBE]` is read
// here into the selectors that the run option `onlyProbes` takes (the one
// probe selection, src/lab/select.ts, applied by runLab for `run --only`,
// nightly reruns and bisect steps alike). The changed lab goes through the
// loader's checks again (dumped and parsed, src/lab/dump.ts), so a parameter
// the probe catalogue refuses is refused here, before anything is built.
import path from 'node:path';
import { parse } from 'yaml';
import { InputError } from '../util/errors.ts';
import { YamlError } from '../util/yaml.ts';
import { dumpLab } from './dump.ts';
import { imagesDirFor, parseLab } from './load.ts';
import { selectProbes } from './select.ts';
import type { LabSpec } from './types.ts';

export interface ProbeParamOverride {
  probe: string;
  /** Key path inside params: `expect.zero_length` -> ['expect', 'zero_length']. */
  key: string[];
  value: unknown;
}

/** `dmabuf-bad-inputs.expect.zero_length=EINVAL`; the value is read as YAML (numbers, booleans, lists). */
export function parseProbeParam(text: string): ProbeParamOverride {
  const m = /^([a-z0-9][a-z0-9-]*)\.([A-Za-z0-9_.]+)=(.*)$/s.exec(text);
  if (!m || m[2].split('.').some((k) => k === '')) {
    throw new InputError(`--probe-param ${text}: expected probe.key=value, e.g. dmabuf-bad-inputs.expect.zero_length=EINVAL`);
  }
  let value: unknown;
  try {
    value = m[3] === '' ? '' : parse(m[3]);
  } catch (err) {
    throw new InputError(`--probe-param ${text}: the value is not YAML: ${(err as Error).message.split('\n')[0]}`);
  }
  return { probe: m[1], key: m[2].split('.'), value };
}

/** `--only a,b --only c` -> [a, b, c]. */
export function parseOnly(values: readonly string[]): string[] {
  return values.flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean);
}

function setPath(obj: Record<string, unknown>, key: string[], value: unknown): Record<string, unknown> {
  const [head, ...rest] = key;
  const inner = obj[head];
  return { ...obj, [head]: rest.length ? setPath(inner && typeof inner === 'object' && !Array.isArray(inner) ? inner as Record<string, unknown> : {}, rest, value) : value };
}

/**
 * The lab with the given params; unchanged when there are none. `only` (the
 * run's selectors, applied later by runLab) is read to refuse a parameter
 * for a probe that will not run, which would otherwise be dropped silently.
 */
export function applyProbeParams(lab: LabSpec, params: readonly ProbeParamOverride[], only: readonly string[] = []): LabSpec {
  if (!params.length) return lab;
  const running = only.length ? selectProbes(lab, only).probes : lab.probes;
  let probes = lab.probes;
  for (const o of params) {
    if (!running.some((p) => p.name === o.probe)) {
      throw new InputError(`--probe-param ${o.probe}.${o.key.join('.')}: ${o.probe} is not a probe of this run (probes: ${[...new Set(running.map((p) => p.name))].join(', ')})`);
    }
    probes = probes.map((p) => (p.name === o.probe ? { ...p, params: setPath(p.params, o.key, o.value) } : p));
  }
  const changed: LabSpec = { ...lab, probes };
  // Checked by the loader like a lab file: the catalogue's params, the probes' devices.
  const label = `${lab.file} (with --probe-param)`;
  try {
    const again = parseLab(dumpLab(changed, label), label, { imagesDir: imagesDirFor(lab.file, lab.image) });
    return { ...again, file: lab.file };
  } catch (err) {
    if (err instanceof YamlError) throw new InputError(`${label}: ${err.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    throw err;
  }
}
