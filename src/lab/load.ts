// Loading a lab file (labs/*.yaml): read it, parse it with locations kept
// (src/util/yaml.ts), validate it against the schema (src/lab/schema.ts), run
// the cross-checks (src/lab/checks.ts) and map it to a LabSpec
// (src/lab/types.ts): camelCase, paths resolved, defaults the schema cannot
// know (an endpoint field that defaults to the id, the kernel's fragments).
// Every problem is reported at once, in one YamlError.
import { existsSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readYaml, readYamlFile, validate, type YamlSource } from '../util/yaml.ts';
import { checkProbes, checkSelftests, checkTopology, DEFAULT_CATALOG, type ProbeCatalog } from './checks.ts';
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
/** hwlab's own image recipes, for labs kept anywhere else (a kernel tree's .hwlab/, /tmp). */
const hwlabImagesDir = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../../images');

/**
 * Where the recipe of `image` is for a lab file: `images/` beside the lab's
 * directory (labs/../images) when it has the recipe, else hwlab's own.
 */
export function imagesDirFor(labFile: string, image: string): string {
  const beside = path.resolve(path.dirname(path.resolve(labFile)), '..', 'images');
  return existsSync(path.join(beside, `${image}.yaml`)) ? beside : hwlabImagesDir;
}

/** What the host leaves a guest: its RAM less this much for the host itself, hwlab and QEMU. */
export const HOST_RESERVE_MIB = 1024;

export interface ParseOptions {
  /** Where image recipes live; default: `images/` beside the lab file's directory (labs/../images). */
  imagesDir?: string;
  /** Default: the real catalog. */
  catalog?: ProbeCatalog;
  /** The host's RAM in MiB, which the guest and its endpoints' memory must fit in; default: this host's (os.totalmem). */
  hostMemoryMiB?: number;
}

/** Parse and fully validate a lab file's text. `file` is used in messages as given. */
export function parseLab(text: string, file: string, opts: ParseOptions = {}): LabSpec {
  const { src, data } = readYaml(text, file, 'lab');
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
  const selftests = checkSelftests(src, raw, topology);

  const imagesDir = opts.imagesDir ?? imagesDirFor(file, raw.image);
  const recipe = path.join(imagesDir, `${raw.image}.yaml`);
  if (!existsSync(recipe)) {
    const beside = path.resolve(path.dirname(path.resolve(file)), '..', 'images', `${raw.image}.yaml`);
    const tried = opts.imagesDir || beside === recipe ? recipe : `${beside} and ${recipe}`;
    src.add(['image'], `no image recipe "${raw.image}" (looked for ${tried})`);
  }

  // The guest's RAM and the endpoints' backing memory (ivshmem files in /dev/shm) are all host RAM.
  const hostMiB = opts.hostMemoryMiB ?? Math.floor(os.totalmem() / 2 ** 20);
  const endpointMiB = endpoints.reduce((n, e) => n + ('memoryMiB' in e && typeof e.memoryMiB === 'number' ? e.memoryMiB : 0), 0);
  if (raw.machine.memory + endpointMiB > hostMiB - HOST_RESERVE_MIB) {
    src.add(['machine', 'memory'], `${raw.machine.memory}M${endpointMiB ? ` plus ${endpointMiB}M of endpoint memory` : ''} does not fit in this host's ${hostMiB}M of RAM less ${HOST_RESERVE_MIB}M for the host (at most ${Math.max(0, hostMiB - HOST_RESERVE_MIB - endpointMiB)}M)`);
  }

  const kernel = kernelSpec(src, raw.kernel, path.dirname(path.resolve(file)));
  const selftestPatches = patchSpecs(src, raw.selftests.patches, path.dirname(path.resolve(file)), ['selftests', 'patches']);
  if (selftests.length && kernel.kind !== 'source') {
    src.add(['selftests'], `the kernel's selftests are built from the kernel's own source tree, so they need a kernel built from source (kernel.debian: linux-source-<version>, path: or tarball:), not the prebuilt ${raw.kernel.debian}`);
  }
  if (src.issues.length) src.fail();
  return {
    file: path.resolve(file),
    // A name from the file name is cut like a written one: it names run folders.
    name: raw.name ?? path.basename(file).replace(/\.ya?ml$/, '').replace(/[^A-Za-z0-9._-]/g, '_').slice(0, 64),
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
    // Only labs that have selftests carry the keys (lab.resolved.json and LabSpec literals stay as they were).
    ...(selftests.length ? { selftests } : {}),
    ...(selftestPatches.length ? { selftestPatches } : {}),
    timeouts: {
      bootSec: raw.timeouts.boot,
      probesSec: raw.timeouts.probes,
      probeSec: raw.timeouts.probe,
      shutdownSec: raw.timeouts.shutdown,
      runnerExitSec: raw.timeouts.runner_exit,
    },
  };
}

/** Raw kernel section -> KernelSpec, with paths resolved against the lab's directory and checked to exist (a matrix file's kernel axis values too). */
export function kernelSpec(src: YamlSource, k: RawKernel, labDir: string): KernelSpec {
  const abs = (p: string) => path.resolve(labDir, p.replace(/^~(?=\/)/, process.env.HOME ?? '~'));
  // A file where a file is meant, a directory where a directory is (a patch path that is a directory used to be accepted).
  const mustExist = (p: string, at: (string | number)[], kind: 'file' | 'directory' | 'any' = 'any') => {
    let st;
    try {
      st = statSync(p);
    } catch {
      src.add(at, `${p} does not exist`);
      return p;
    }
    if (kind === 'file' && !st.isFile()) src.add(at, `${p} is ${st.isDirectory() ? 'a directory' : 'not a regular file'}; expected a file`);
    if (kind === 'directory' && !st.isDirectory()) src.add(at, `${p} is not a directory; expected a directory`);
    return p;
  };
  const patchSpecs_ = () => patchSpecs(src, k.patches, labDir, ['kernel', 'patches']);
  if (k.debian !== undefined && !k.debian.startsWith('linux-source-')) {
    return {
      kind: 'debian-prebuilt', package: k.debian, flavour: k.flavour, suite: k.suite, mirror: k.mirror,
      patches: patchSpecs_(),
      ...(k.driver ? { driver: { dirs: k.driver.dirs ?? [...DEFAULT_DRIVER_DIRS] } } : {}),
    };
  }
  const source: KernelSourceSpec =
    k.debian !== undefined ? { kind: 'debian-source', package: k.debian, suite: k.suite, mirror: k.mirror }
      : k.path !== undefined ? { kind: 'git', path: mustExist(abs(k.path), ['kernel', 'path']), ...(k.ref ? { ref: k.ref } : {}) }
        : { kind: 'tarball', path: mustExist(abs(k.tarball!), ['kernel', 'tarball'], 'file') };
  const patches = patchSpecs_();
  const fragments = k.config.fragments
    ? k.config.fragments.map((f, i) => mustExist(abs(f), ['kernel', 'config', 'fragments', i], 'file'))
    : DEFAULT_FRAGMENTS.map((f) => path.join(configsDir, f));
  return { kind: 'source', source, patches, config: { base: k.config.base, fragments } };
}

/** Patch entries as written (file, quilt, mbox) -> PatchSourceSpecs, resolved against the lab's directory and checked to exist. */
function patchSpecs(src: YamlSource, entries: RawKernel['patches'], labDir: string, at: (string | number)[]): PatchSourceSpec[] {
  const abs = (p: string) => path.resolve(labDir, p.replace(/^~(?=\/)/, process.env.HOME ?? '~'));
  // A patch file that is a directory (or a quilt series that is a file) is refused here, not after a download.
  const mustExist = (p: string, i: number, kind: 'file' | 'directory') => {
    let st;
    try {
      st = statSync(p);
    } catch {
      src.add([...at, i], `${p} does not exist`);
      return p;
    }
    if (kind === 'file' && !st.isFile()) src.add([...at, i], `${p} is ${st.isDirectory() ? 'a directory' : 'not a regular file'}; expected a file`);
    if (kind === 'directory' && !st.isDirectory()) src.add([...at, i], `${p} is not a directory; expected a directory`);
    return p;
  };
  return entries.map((p, i) => {
    if ('file' in p) return { kind: 'file', path: mustExist(abs(p.file), i, 'file') };
    if ('quilt' in p) return { kind: 'quilt', dir: mustExist(abs(p.quilt), i, 'directory') };
    return { kind: 'mbox', path: mustExist(abs(p.mbox), i, 'file') };
  });
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
  return parseLab(await readYamlFile(file, 'lab'), file, opts);
}
