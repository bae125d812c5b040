// The host-side artifacts a boot needs, each cached by content: the kernel
// the lab names (a prebuilt Debian image, the fast path's driver overlay, or
// a tree + patch series + checked fragments built here), hwlab's own modules
// that the probes require, the guest image and the initramfs. Errors here
// say whose fault they are (bad input or the host), so a run that stops
// before booting still ends in a class.
import path from 'node:path';
import { requirementsOf, type ProbeRequirement } from '../guest/probes/catalog.ts';
import { buildImage, imageNeedsBuild, type GuestImage } from '../image/build.ts';
import { buildInitramfs } from '../image/initramfs.ts';
import { loadImageRecipe } from '../image/recipe.ts';
import { assembledConfig, buildKernel, touchedFiles, withPatchedScratch } from '../kernel/build.ts';
import { fetchDebianKernel } from '../kernel/debian.ts';
import { buildOverlayKernel } from '../kernel/driver-build.ts';
import { buildHwlabModule, type HwlabModule, type ModuleTarget } from '../kernel/extmod.ts';
import { loadPatchSeries } from '../kernel/patches.ts';
import { resolveKernelTree } from '../kernel/source.ts';
import type { Kernel } from '../kernel/types.ts';
import { imagesDirFor } from '../lab/load.ts';
import type { LabSpec } from '../lab/types.ts';
import { buildSelftests, type BuiltSelftests } from '../selftests/build.ts';
import { formatUnmet, unmetSelftestSymbols } from '../selftests/config.ts';
import { checkSelftestsAgainstTree, collectionsOf, parseKselftestList, planSelftests, SELFTESTS_DIR, type PlannedSelftest } from '../selftests/plan.ts';
import { InputError } from '../util/errors.ts';
import { silentProgress, type Progress } from '../util/progress.ts';
import { readFragment } from './preflight.ts';

export interface PrepareOptions {
  progress: Progress;
  /** Re-resolve the kernel version even if a recent resolution is cached. */
  refresh?: boolean;
  /** Patch files applied on top of the lab's series for this run (`--patch`). */
  extraPatches?: string[];
  /** Config fragments merged after the lab's for this run (`--fragment`), e.g. labs/configs/kasan.config. */
  extraFragments?: string[];
}

export interface PreparedLab {
  kernel: Kernel;
  /** hwlab's own modules the probes need (hwlab_importer), built for this kernel. */
  hwlabModules: HwlabModule[];
  image: GuestImage;
  initrd: string;
  /** The kernel's selftests the lab asks for: built for this kernel, and the tests to run in order. */
  selftests?: { built: BuiltSelftests; plan: PlannedSelftest[] };
}

const builtNote = (k: { built: boolean; buildSeconds?: number }) => (k.built ? `built in ${k.buildSeconds?.toFixed(0)} s` : 'from cache, make not run');

/** The kernel a lab names, and how hwlab's own modules reach its build interface. */
async function prepareKernel(lab: LabSpec, opts: PrepareOptions, logDir: string, beforeFetch: () => void): Promise<{ kernel: Kernel; target: ModuleTarget }> {
  const { progress } = opts;
  const spec = lab.kernel;
  const extra = (opts.extraPatches ?? []).map((p) => ({ kind: 'file' as const, path: path.resolve(p) }));
  if (spec.kind === 'debian-prebuilt') {
    if (opts.extraFragments?.length) {
      throw new InputError(`--fragment needs a kernel built from source; ${lab.file} uses the prebuilt ${spec.package}`);
    }
    beforeFetch();
    const stock = await progress.run(`kernel ${spec.package}`, (s) => fetchDebianKernel(spec, s, { refresh: opts.refresh }), (k) => `${k.package} ${k.version}`);
    // hwlab's modules build against the stock headers: the fast path only changes driver dirs.
    const target: ModuleTarget = { kind: 'prebuilt', kernel: stock, debian: spec };
    if (!spec.driver) {
      if (extra.length) {
        throw new InputError(`--patch needs kernel.driver (the fast path) or a kernel built from source; ${lab.file} uses the prebuilt ${spec.package}`);
      }
      return { kernel: stock, target };
    }
    const dirs = spec.driver.dirs;
    const patches = await loadPatchSeries([...spec.patches, ...extra]);
    const overlay = await progress.run(`driver build (${dirs.join(' ')}, ${patches.length} patches)`,
      (step) => buildOverlayKernel({ kernel: stock, debian: spec, dirs, patches, logFile: path.join(logDir, 'driver-build.log'), step }),
      (k) => `${k.replaced.map((m) => m.module).join(' ')} ${builtNote(k)}`);
    return { kernel: overlay, target };
  }
  beforeFetch();
  const tree = await progress.run('kernel source', (s) => resolveKernelTree(spec.source, s), (t) => t.label);
  const patches = await loadPatchSeries([...spec.patches, ...extra]);
  const fragmentFiles = [...spec.config.fragments, ...(opts.extraFragments ?? []).map((f) => path.resolve(f))];
  const fragments = await Promise.all(fragmentFiles.map((file) => readFragment(file, 'config fragment')));
  const request = { tree, patches, base: spec.config.base, fragments, logFile: path.join(logDir, 'kernel-build.log') };
  if (lab.selftests?.length) {
    // What each selftest collection's config file asks for must hold in the assembled config, before anything is built.
    // Patches that change a collection (a new test in its Makefile, a symbol in its config): the
    // kernel's series and selftests.patches, in the order the selftests build applies them.
    const series = [...patches, ...(await loadPatchSeries(lab.selftestPatches ?? []))];
    const selftests = lab.selftests;
    const changed = touchedFiles(series).filter((f) => collectionsOf(selftests).some((c) => f.startsWith(`${SELFTESTS_DIR}/${c}/`)));
    const collections = changed.length
      ? await progress.run('selftests: checking the patched collections', () => withPatchedScratch(tree, series, (dir) => checkSelftestsAgainstTree(selftests, dir)), () => changed.join(', '))
      : await checkSelftestsAgainstTree(selftests, tree.dir);
    const config = await progress.run('selftests: kernel config check', (step) => assembledConfig({ ...request, step }),
      () => `${collections.map((c) => c.file).join(', ') || 'no collection config files'}`);
    const unmet = unmetSelftestSymbols(collections, config);
    if (unmet.length) {
      throw new InputError(`${lab.file}: the kernel config does not have what the selftests ask for:\n${unmet.map(formatUnmet).join('\n')}`,
        'add the symbols to a fragment of the lab (kernel.config.fragments), as labs/configs/kselftest.config does', 'selftest-config');
    }
  }
  const built = await progress.run(`kernel build (${patches.length} patches, ${fragments.length} fragments)`,
    (step) => buildKernel({ ...request, step }),
    (k) => `${k.release} ${builtNote(k)}${k.incrementalFrom ? ` (incremental from ${k.incrementalFrom}${k.rebuild?.kind === 'modules' ? ', modules only' : ''})` : ''}`);
  return { kernel: built, target: { kind: 'built', kernel: built, tree, patches } };
}

/** The module of hwlab's (src/guest/kmod/<name>) that provides each probe requirement. */
const MODULE_FOR: Record<ProbeRequirement, string> = { importer: 'hwlab_importer', fault: 'hwlab_fault' };

/** Modules of hwlab's that the lab's probes require (catalog `requires`). */
function hwlabModulesFor(lab: LabSpec): string[] {
  return [...requirementsOf(lab.probes.map((p) => p.name))].map((r) => MODULE_FOR[r]);
}

/** Whether preparing these labs would build a guest image (an image not yet in the cache). */
export async function labsNeedImageBuild(labs: LabSpec[]): Promise<boolean> {
  for (const lab of labs) {
    if (await imageNeedsBuild(await loadImageRecipe(lab.image, imagesDirFor(lab.file, lab.image)))) return true;
  }
  return false;
}

export async function prepareLab(lab: LabSpec, opts: PrepareOptions, logDir: string): Promise<PreparedLab> {
  const { progress } = opts;
  // A missing image is built while the kernel is fetched, configured and built:
  // mmdebstrap is the network and mostly one core, and on a first run the
  // source download and unpack leave a core idle. It starts once the kernel
  // options have passed their checks, and is awaited (and reported, errors
  // included) after the kernel; if the kernel stage fails first, the build
  // still finishes its cache entry, or ends with hwlab (execa's cleanup).
  let imageEarly: Promise<{ image: GuestImage; seconds: number } | undefined> | undefined;
  const startImage = () => {
    imageEarly ??= (async () => {
      const recipe = await loadImageRecipe(lab.image, imagesDirFor(lab.file, lab.image));
      if (!(await imageNeedsBuild(recipe))) return undefined;
      progress.info(`    image ${recipe.name}: not in the cache; building it (mmdebstrap) beside the kernel`);
      const started = Date.now();
      const image = await buildImage(recipe, silentProgress().step('image'));
      return { image, seconds: (Date.now() - started) / 1000 };
    })();
    imageEarly.catch(() => {});
  };
  const { kernel, target } = await prepareKernel(lab, opts, logDir, startImage);
  const hwlabModules: HwlabModule[] = [];
  for (const name of hwlabModulesFor(lab)) {
    hwlabModules.push(await progress.run(`module ${name}`, (step) => buildHwlabModule(name, target, path.join(logDir, `${name}-build.log`), step),
      (m) => `${m.built ? 'built' : 'from cache'}, build-id ${m.buildId.slice(0, 12)}`));
  }
  const recipe = await loadImageRecipe(lab.image, imagesDirFor(lab.file, lab.image));
  let builtBeside: number | undefined;
  const image = await progress.run(`image ${recipe.name}`, async (s) => {
    const early = await imageEarly;
    builtBeside = early?.seconds;
    return early ? early.image : buildImage(recipe, s);
  }, (i) => `node ${i.nodeVersion} (${i.nodeSource === 'official' ? 'official build' : 'Debian nodejs'})${builtBeside !== undefined ? `; built beside the kernel in ${builtBeside.toFixed(0)} s` : ''}`);
  const initrd = await progress.run('initramfs', () => buildInitramfs(kernel, image));
  const selftests = await prepareSelftests(lab, target, progress, logDir);
  return { kernel, hwlabModules, image, initrd, ...(selftests ? { selftests } : {}) };
}

/** The lab's selftests built for its kernel (source builds only; the lab loader refuses others) and planned from what was built. */
async function prepareSelftests(lab: LabSpec, target: ModuleTarget, progress: Progress, logDir: string): Promise<PreparedLab['selftests']> {
  if (!lab.selftests?.length) return undefined;
  if (target.kind !== 'built') throw new InputError(`${lab.file}: selftests need a kernel built from source`);
  const collections = collectionsOf(lab.selftests);
  const selftestPatches = await loadPatchSeries(lab.selftestPatches ?? []);
  const built = await progress.run(`selftests build (${collections.join(' ')})`,
    (step) => buildSelftests({ kernel: target.kernel, tree: target.tree, patches: target.patches, selftestPatches, collections, logFile: path.join(logDir, 'selftests-build.log'), step }),
    (b) => (b.built ? `built in ${b.buildSeconds?.toFixed(0)} s` : 'from cache, make not run'));
  return { built, plan: planSelftests(lab.selftests, parseKselftestList(built.list)) };
}
