// LabSpec -> a lab file again (snake_case, the schema of src/lab/schema.ts),
// so that a run folder holds its lab in the form `hwlab run` reads, and a
// run can be repeated from its folder alone (`hwlab rerun`). Paths are
// written as `place` maps them: the run folder's copies, or absolute paths.
// Loading the dump gives back the same LabSpec (test/unit/lab-dump.test.ts).
import { stringify } from 'yaml';
import { endpointKind, type EndpointSpec } from './endpoints.ts';
import type { KernelSpec, LabSpec, PatchSourceSpec, ProbeSpec, SelftestSpec } from './types.ts';

/** What a path in the lab is, so the caller can decide where its copy goes. */
export type PathKind = 'patch' | 'quilt' | 'mbox' | 'fragment' | 'tree' | 'tarball';

/** Absolute path in the LabSpec -> the text written in the lab file. */
export type PlacePath = (abs: string, kind: PathKind) => string;

const asIs: PlacePath = (p) => p;

function patchEntry(p: PatchSourceSpec, place: PlacePath): unknown {
  switch (p.kind) {
    case 'file': return place(p.path, 'patch');
    case 'quilt': return { quilt: place(p.dir, 'quilt') };
    case 'mbox': return { mbox: place(p.path, 'mbox') };
  }
}

function kernelDoc(k: KernelSpec, place: PlacePath): Record<string, unknown> {
  const patches = k.patches.map((p) => patchEntry(p, place));
  if (k.kind === 'debian-prebuilt') {
    return { debian: k.package, flavour: k.flavour, suite: k.suite, mirror: k.mirror, patches, ...(k.driver ? { driver: { dirs: k.driver.dirs } } : {}) };
  }
  const s = k.source;
  const source = s.kind === 'debian-source' ? { debian: s.package, suite: s.suite, mirror: s.mirror }
    : s.kind === 'git' ? { path: place(s.path, 'tree'), ...(s.ref ? { ref: s.ref } : {}) }
      : { tarball: place(s.path, 'tarball') };
  return { ...source, patches, config: { base: k.config.base, fragments: k.config.fragments.map((f) => place(f, 'fragment')) } };
}

function endpointDoc(ep: EndpointSpec): Record<string, unknown> {
  const out: Record<string, unknown> = { id: ep.id, type: ep.type, port: ep.port };
  if (ep.function) out.function = ep.function;
  const values = ep as unknown as Record<string, unknown>;
  for (const [name, f] of Object.entries(endpointKind(ep.type).fields)) {
    const v = values[name];
    if (v === undefined) continue;
    out[f.key] = f.kind === 'mib' ? `${v}M` : v;
  }
  return out;
}

function probeDoc(p: ProbeSpec): Record<string, unknown> {
  return { name: p.name, device: p.device, params: p.params, ...(p.expectFail !== undefined ? { expect_fail: p.expectFailScope ? { reason: p.expectFail, ...p.expectFailScope } : p.expectFail } : {}), timeout: p.timeoutSec };
}

function selftestDoc(t: SelftestSpec): Record<string, unknown> {
  return { collection: t.collection, ...(t.test ? { test: t.test } : {}), devices: t.devices, timeout: t.timeoutSec, ...(t.expectFail !== undefined ? { expect_fail: t.expectFail } : {}) };
}

/** The lab as a lab-file document: every default written out, nothing left to the loader's defaults. */
export function labDocument(lab: LabSpec, place: PlacePath = asIs): Record<string, unknown> {
  return {
    name: lab.name,
    description: lab.description,
    kernel: kernelDoc(lab.kernel, place),
    image: lab.image,
    machine: { cpu: lab.machine.cpu, memory: `${lab.machine.memoryMiB}M`, smp: lab.machine.smp, accel: lab.machine.accel, cmdline: lab.machine.cmdline, trace: lab.machine.trace },
    iommu: {
      type: lab.iommu.kind,
      ...(lab.iommu.kind === 'intel' ? { caching_mode: lab.iommu.cachingMode } : {}),
      strict: lab.iommu.strict,
      passthrough: lab.iommu.passthrough,
    },
    topology: {
      root_ports: lab.topology.rootPorts.map((r) => r.id),
      switches: lab.topology.switches.map((s) => ({ id: s.id, port: s.port, downstream: s.downstream })),
      endpoints: lab.topology.endpoints.map(endpointDoc),
    },
    modules: lab.modules,
    dmabuf_abi: lab.dmabufAbi,
    probes: lab.probes.map(probeDoc),
    ...(lab.selftests?.length || lab.selftestPatches?.length ? {
      selftests: { patches: (lab.selftestPatches ?? []).map((p) => patchEntry(p, place)), tests: (lab.selftests ?? []).map(selftestDoc) },
    } : {}),
    timeouts: {
      boot: lab.timeouts.bootSec, probes: lab.timeouts.probesSec, probe: lab.timeouts.probeSec, shutdown: lab.timeouts.shutdownSec,
      runner_exit: lab.timeouts.runnerExitSec,
    },
  };
}

/** The lab file's text, with a header saying where it came from. */
export function dumpLab(lab: LabSpec, header: string, place: PlacePath = asIs): string {
  const comment = header.split('\n').map((l) => `# ${l}`.trimEnd()).join('\n');
  return `${comment}\n${stringify(labDocument(lab, place), { lineWidth: 0 })}`;
}
