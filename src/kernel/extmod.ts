// hwlab's own kernel modules (src/guest/kmod/<name>/, e.g. the hwlab_importer
// dma-buf importer), built with M= against the kernel a lab boots: against the
// build tree of a kernel built from source, or against the matching
// linux-headers for a prebuilt Debian kernel. Cached by (module sources,
// the kernel's build interface: builtKernelInterface); the .ko's GNU build-id
// is what the guest check compares.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DebianKernelSpec } from '../lab/types.ts';
import { cacheKey, ensureEntry, sha256 } from '../util/cache.ts';

import type { Step } from '../util/progress.ts';
import { compilerId, touchedFiles, withPatchedSource } from './build.ts';
import { elfBuildId, headersForPrebuilt, makeModules, type PreparedHeaders } from './driver-build.ts';
import type { PatchFile } from './patches.ts';
import type { KernelTree } from './source.ts';
import type { SourceKernel, StockKernel } from './types.ts';
import { InfraError } from '../util/errors.ts';

export const KMOD_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../guest/kmod');

/** A module of hwlab's, built for one kernel. */
export interface HwlabModule {
  /** Module name as the kernel knows it (hwlab_importer). */
  name: string;
  /** The built .ko on the host. */
  ko: string;
  buildId: string;
  vermagic: string;
  /** sha256 over the module's source files. */
  sourceSha256: string;
  built: boolean;
}

/** How to reach a kernel's build interface. */
export type ModuleTarget =
  | { kind: 'built'; kernel: SourceKernel; tree: KernelTree; patches: PatchFile[] }
  | { kind: 'prebuilt'; kernel: StockKernel; debian: Pick<DebianKernelSpec, 'suite' | 'mirror'> };

async function sourceFiles(dir: string): Promise<Array<{ name: string; text: string }>> {
  if (!existsSync(dir)) throw new InfraError(`no module sources at ${dir}`);
  const names = (await readdir(dir)).filter((f) => /^(Kbuild|Makefile)$|\.[ch]$/.test(f)).sort();
  if (!names.includes('Kbuild') && !names.includes('Makefile')) throw new InfraError(`${dir} has no Kbuild or Makefile`);
  return Promise.all(names.map(async (name) => ({ name, text: await readFile(path.join(dir, name), 'utf8') })));
}

/**
 * What an M= build against a kernel built from source reads: the tree's
 * headers and Kbuild files, the config, the compiler and the exported
 * symbols' CRCs (Module.symvers). A series that touches only .c files
 * changes none of the first, so the module built for the same tree, config
 * and compiler is reused: a kernel build key would rebuild it (2 s) on every
 * edit of the developer's loop for an identical .ko. Any other file touched
 * keys it by the whole series, as the kernel build is.
 */
export async function builtKernelInterface(target: Extract<ModuleTarget, { kind: 'built' }>): Promise<string> {
  const touched = touchedFiles(target.patches);
  if (!touched.every((f) => f.endsWith('.c'))) return target.kernel.cacheKey;
  // As a set: a targeted rebuild's modpost appends the rebuilt modules' exports at the end.
  const symvers = await readFile(path.join(target.kernel.objDir, 'Module.symvers'), 'utf8')
    .then((text) => sha256(text.split('\n').filter(Boolean).sort().join('\n')), () => 'none');
  return cacheKey({
    tree: target.tree.id, config: target.kernel.configSha256, release: target.kernel.release, compiler: await compilerId(), symvers,
  });
}

export async function buildHwlabModule(name: string, target: ModuleTarget, logFile: string, step: Step): Promise<HwlabModule> {
  if (!/^[a-z0-9_]+$/.test(name)) throw new InfraError(`"${name}" is not a module name`);
  const srcDir = path.join(KMOD_ROOT, name);
  const files = await sourceFiles(srcDir);
  const sourceSha256 = sha256(files.map((f) => `${f.name}\0${f.text}`).join('\0'));

  // Kernels from source: make -C <tree's src/ at this kernel's patches> O=<entry's obj/>.
  // Prebuilt: linux-headers, prepared once per kernel (cached by prepareHeaders).
  let prebuilt: PreparedHeaders | undefined;
  if (target.kind === 'prebuilt') prebuilt = (await headersForPrebuilt(target.kernel, target.debian, step)).headers;
  const kernelId = target.kind === 'built' ? await builtKernelInterface(target) : `${target.kernel.cacheKey}/${prebuilt!.cacheKey}`;
  const key = cacheKey({ v: 2, name, source: sourceSha256, kernel: kernelId });
  let built = false;
  const log: string[] = [];
  const { dir } = await ensureEntry('kmod', key, `${name} for ${target.kernel.release}`, async (tmp) => {
    const work = path.join(tmp, 'src');
    await execa('cp', ['-r', '--', srcDir, work]);
    step.update(`make M=src/guest/kmod/${name}`);
    const make = (h: Pick<PreparedHeaders, 'dir' | 'makeArgs'>) => makeModules(h, work, (s) => log.push(s), step);
    try {
      const kos = target.kind === 'built'
        ? await withPatchedSource({ tree: target.tree, patches: target.patches, step, objDir: target.kernel.objDir },
          (src) => make({ dir: src, makeArgs: [`O=${target.kernel.objDir}`, 'ARCH=x86_64'] }))
        : await make(prebuilt!);
      const ko = kos.find((k) => path.basename(k) === `${name}.ko`);
      if (!ko) throw new InfraError(`make M=src/guest/kmod/${name} produced ${kos.join(', ') || 'no modules'}, not ${name}.ko`);
      // Like INSTALL_MOD_STRIP=1: debug info out, the build-id note stays.
      await execa('strip', ['--strip-debug', '-o', path.join(tmp, `${name}.ko`), path.join(work, ko)]);
    } finally {
      await writeFile(logFile, log.join(''));
    }
    built = true;
  });
  if (!built) await writeFile(logFile, `cache hit: ${dir}\n`);
  const ko = path.join(dir, `${name}.ko`);
  const vermagic = (await execa('modinfo', ['-F', 'vermagic', ko])).stdout.trim();
  if (!vermagic.startsWith(`${target.kernel.release} `)) {
    throw new InfraError(`${name}.ko has vermagic "${vermagic}", not for kernel ${target.kernel.release}`);
  }
  return { name, ko, buildId: await elfBuildId(ko), vermagic, sourceSha256, built };
}
