// Cross-checks of a lab: what one part of the file says about another. Ids
// are unique across the topology, ports exist and hold one device (or the
// functions of one), switches hang below a root port, the topology fits the
// slot plan (src/lab/slots.ts); probes exist, run on an endpoint of a kind
// they take, and their params pass the catalogue's checks, including params
// that name another endpoint. Every problem is added to the YamlSource with
// its location; nothing is thrown here.
import { describe, TYPE_WORDS, valueAt, type Path, type YamlSource } from '../util/yaml.ts';
import { PROBES, resolveParams, type ProbeSpec as CatalogProbe } from '../guest/probes/catalog.ts';
import { endpointKind } from './endpoints.ts';
import type { RawLab } from './schema.ts';
import { slotIssues } from './slots.ts';
import type { EndpointSpec, ProbeSpec, SwitchSpec, TopologySpec } from './types.ts';

/** What the probe checks need of src/guest/probes/catalog.ts (injectable for tests). */
export interface ProbeCatalog {
  probes: Readonly<Record<string, CatalogProbe>>;
  resolveParams: typeof resolveParams;
}

export const DEFAULT_CATALOG: ProbeCatalog = { probes: PROBES, resolveParams };

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

export function checkTopology(src: YamlSource, topo: TopologySpec): void {
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

  for (const issue of slotIssues(topo)) src.add(issue.path, issue.message);

  const portNames = [...ids].filter(([, v]) => v.kind === 'root port' || v.kind === 'downstream port').map(([k]) => k);
  const users = new Map<string, { what: string; at: Path; functions: Set<number> | null }>();
  /** fns: the PCI functions an endpoint takes; null for a switch, which takes the whole port. */
  const plug = (what: string, port: string, at: Path, fns: number[] | null): boolean => {
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
    const taken = prev?.functions && fns?.find((f) => prev.functions!.has(f));
    if (prev && (fns === null || prev.functions === null || taken !== undefined)) {
      src.add(at, `port "${port}" is already used by ${prev.what} at ${src.at(prev.at)} (one device per port${fns !== null && prev.functions !== null ? `; endpoints sharing a port need distinct function numbers, and function ${taken} is taken` : ''})`);
      return false;
    }
    if (prev) for (const f of fns!) prev.functions!.add(f);
    else users.set(port, { what, at, functions: fns === null ? null : new Set(fns) });
    return true;
  };
  topo.switches.forEach((sw, i) => plug(`switch "${sw.id}"`, sw.port, [...T, 'switches', i, 'port'], null));
  topo.endpoints.forEach((ep, i) => {
    // An endpoint takes `slot.functions` functions from its function number on (one, for every kind so far).
    const first = ep.function ?? 0;
    const fns = Array.from({ length: endpointKind(ep.type).slot.functions }, (_, k) => first + k);
    plug(`endpoint "${ep.id}"`, ep.port, [...T, 'endpoints', i, 'port'], fns);
  });
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

/** The probes of a lab, resolved: device chosen, params checked and defaulted. */
export function checkProbes(src: YamlSource, raw: RawLab, topo: TopologySpec, catalog: ProbeCatalog): ProbeSpec[] {
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
    if (p.expect_fail_points !== undefined) {
      if (p.expect_fail === undefined) src.add([...at, 'expect_fail_points'], 'needs expect_fail (the reason those points fail)');
      else probe.expectFailPoints = p.expect_fail_points;
    }
    out.push(probe);
  });
  return out;
}
