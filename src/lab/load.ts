// Loading a lab file (labs/*.yaml): read it, parse it with locations kept
// (src/util/yaml.ts), validate it against the schema (src/lab/schema.ts), run
// the cross-checks (src/lab/checks.ts) and map it to a LabSpec
// (src/lab/types.ts): camelCase, paths resolved, defaults the schema cannot
// know (an endpoint field that defaults to the id, the kernel's fragments).
// Every problem is reported at once, in one YamlError.
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { readYaml, validate, YamlError, type YamlSource } from '../util/yaml.ts';
import { checkProbes, checkTopology, DEFAULT_CATALOG, type ProbeCatalog } from './checks.ts';
import { endpointKind, type EndpointSpec } from './endpoints.ts';
import { labSchema, type RawEndpoint, type RawKernel } from './schema.ts';
import {
  DEFAULT_DRIVER_DIRS,
  type IommuSpec, type KernelSourceSpec, type KernelSpec, type LabSpec, type PatchSourceSpec, type TopologySpec,
} from './types.ts';

/**
 * hwlab's default fragments for source builds: the lean guest base, the
 * feature under test, and the debug options that catch its bug class when it
 * happens (lockdep, DMA-API debug, list/object debugging).
 */
export const DEFAULT_FRAGMENTS = ['guest-base.config', 'vfio-dmabuf.config', 'debug.config'];
const configsDir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../labs/configs');

export interface ParseOptions {
  /** Where image recipes live; default: `images/` beside the lab file's directory (labs/../images). */
  imagesDir?: string;
  /** Default: the real catalog. */
  catalog?: ProbeCatalog;
}

/** Parse and fully validate a lab file's text. `file` is used in messages as given. */
export function parseLab(text: string, file: string, opts: ParseOptions = {}): LabSpec {
  const { src, data } = readYaml(text, file);
  const raw = validate(src, data, labSchema);
  if (!raw) return src.fail();

  const iommuKind = raw.iommu.type;
  const iommu: IommuSpec = {
    kind: iommuKind,
    cachingMode: iommuKind === 'intel' ? raw.iommu.caching_mode ?? true : false,
    strict: raw.iommu.strict,
    passthrough: raw.iommu.passthrough,
  };

  const t = raw.topology;
  const endpoints = (t.endpoints as RawEndpoint[]).map(endpointSpec);
  const topology: TopologySpec = {
    rootPorts: t.root_ports.map((r) => ({ id: r.id })),
    switches: t.switches.map((s) => ({ id: s.id, port: s.port, downstream: [...s.downstream] })),
    endpoints,
  };
  checkTopology(src, topology);
  const probes = checkProbes(src, raw, topology, opts.catalog ?? DEFAULT_CATALOG);

  const imagesDir = opts.imagesDir ?? path.resolve(path.dirname(path.resolve(file)), '..', 'images');
  const recipe = path.join(imagesDir, `${raw.image}.yaml`);
  if (!existsSync(recipe)) src.add(['image'], `no image recipe "${raw.image}" (looked for ${recipe})`);

  const kernel = kernelSpec(src, raw.kernel, path.dirname(path.resolve(file)));
  if (src.issues.length) src.fail();
  return {
    file: path.resolve(file),
    name: raw.name ?? path.basename(file).replace(/\.ya?ml$/, ''),
    description: raw.description,
    kernel,
    image: raw.image,
    machine: {
      cpu: raw.machine.cpu,
      memoryMiB: raw.machine.memory,
      smp: raw.machine.smp,
      accel: raw.machine.accel,
      cmdline: raw.machine.cmdline,
      trace: raw.machine.trace,
    },
    iommu,
    topology,
    modules: raw.modules,
    dmabufAbi: raw.dmabuf_abi,
    probes,
    timeouts: {
      bootSec: raw.timeouts.boot,
      probesSec: raw.timeouts.probes,
      probeSec: raw.timeouts.probe,
      shutdownSec: raw.timeouts.shutdown,
    },
  };
}

/** Raw kernel section -> KernelSpec, with paths resolved against the lab's directory and checked to exist (a matrix file's kernel axis values too). */
export function kernelSpec(src: YamlSource, k: RawKernel, labDir: string): KernelSpec {
  const abs = (p: string) => path.resolve(labDir, p.replace(/^~(?=\/)/, process.env.HOME ?? '~'));
  const mustExist = (p: string, at: (string | number)[]) => {
    if (!existsSync(p)) src.add(at, `${p} does not exist`);
    return p;
  };
  const patchSpecs = (): PatchSourceSpec[] => k.patches.map((p, i) => {
    const at = ['kernel', 'patches', i];
    if ('file' in p) return { kind: 'file', path: mustExist(abs(p.file), at) };
    if ('quilt' in p) return { kind: 'quilt', dir: mustExist(abs(p.quilt), at) };
    return { kind: 'mbox', path: mustExist(abs(p.mbox), at) };
  });
  if (k.debian !== undefined && !k.debian.startsWith('linux-source-')) {
    return {
      kind: 'debian-prebuilt', package: k.debian, flavour: k.flavour, suite: k.suite, mirror: k.mirror,
      patches: patchSpecs(),
      ...(k.driver ? { driver: { dirs: k.driver.dirs ?? [...DEFAULT_DRIVER_DIRS] } } : {}),
    };
  }
  const source: KernelSourceSpec =
    k.debian !== undefined ? { kind: 'debian-source', package: k.debian, suite: k.suite, mirror: k.mirror }
      : k.path !== undefined ? { kind: 'git', path: mustExist(abs(k.path), ['kernel', 'path']), ...(k.ref ? { ref: k.ref } : {}) }
        : { kind: 'tarball', path: mustExist(abs(k.tarball!), ['kernel', 'tarball']) };
  const patches = patchSpecs();
  const fragments = k.config.fragments
    ? k.config.fragments.map((f, i) => mustExist(abs(f), ['kernel', 'config', 'fragments', i]))
    : DEFAULT_FRAGMENTS.map((f) => path.join(configsDir, f));
  return { kind: 'source', source, patches, config: { base: k.config.base, fragments } };
}

/** An endpoint as written -> LabSpec form: its kind's fields by their camelCase names, in table order. */
function endpointSpec(e: RawEndpoint): EndpointSpec {
  const out: Record<string, unknown> = { id: e.id, type: e.type, port: e.port };
  if (e.function) out.function = e.function;
  for (const [name, f] of Object.entries(endpointKind(e.type).fields)) {
    // The schema filled in every default but the id's.
    out[name] = e[f.key] ?? (f.kind === 'id-string' ? e.id : undefined);
  }
  return out as unknown as EndpointSpec;
}

/** Read and parse a lab file; every problem is thrown as one YamlError. */
export async function loadLab(file: string, opts: ParseOptions = {}): Promise<LabSpec> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new YamlError([{ file, line: 1, col: 1, path: '', message: `cannot read lab file: ${(e as Error).message}` }]);
  }
  return parseLab(text, file, opts);
}
