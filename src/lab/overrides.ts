// Command-line changes to a lab for one run: `--only PROBE[,PROBE]` keeps
// those probes (in the lab's order; a name or name(device), as nightly and
// bisect select them: src/lab/select.ts), `--probe-param probe.key=value`
// sets a probe parameter. The changed lab goes through the loader's checks again
// (dumped and parsed, src/lab/dump.ts), so a parameter the probe catalogue
// refuses is refused here, before anything is built.
import path from 'node:path';
import { parse } from 'yaml';
import { InputError } from '../util/errors.ts';
import { YamlError } from '../util/yaml.ts';
import { dumpLab } from './dump.ts';
import { parseLab } from './load.ts';
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

/** The lab with only the named probes and the given params; unchanged when there is nothing to apply. */
export function applyProbeOverrides(lab: LabSpec, only: readonly string[], params: readonly ProbeParamOverride[]): LabSpec {
  if (!only.length && !params.length) return lab;
  // The same selectors as nightly reruns and bisect steps: a probe name or name(device).
  let probes = only.length ? selectProbes(lab, only).probes : lab.probes;
  for (const o of params) {
    if (!probes.some((p) => p.name === o.probe)) {
      throw new InputError(`--probe-param ${o.probe}.${o.key.join('.')}: ${o.probe} is not a probe of this run (probes: ${[...new Set(probes.map((p) => p.name))].join(', ')})`);
    }
    probes = probes.map((p) => (p.name === o.probe ? { ...p, params: setPath(p.params, o.key, o.value) } : p));
  }
  const changed: LabSpec = { ...lab, probes };
  // Checked by the loader like a lab file: the catalogue's params, the probes' devices.
  const label = `${lab.file} (with ${[only.length ? '--only' : '', params.length ? '--probe-param' : ''].filter(Boolean).join(' and ')})`;
  try {
    const again = parseLab(dumpLab(changed, label), label, { imagesDir: path.join(path.dirname(path.dirname(lab.file)), 'images') });
    return { ...again, file: lab.file };
  } catch (err) {
    if (err instanceof YamlError) throw new InputError(`${label}: ${err.issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`);
    throw err;
  }
}
