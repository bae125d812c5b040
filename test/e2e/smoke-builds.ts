// Kernel build requests as `hwlab run labs/smoke.yaml` makes them (src/run/prepare.ts),
// with extra patches after the lab's: for e2e tests that build through buildKernel
// directly (targeted rebuilds, snapshot restore) and remove their own entries.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { KernelBuildRequest } from '../../src/kernel/build.ts';
import { loadPatchSeries } from '../../src/kernel/patches.ts';
import { resolveKernelTree, type KernelTree } from '../../src/kernel/source.ts';
import { loadLab } from '../../src/lab/load.ts';
import type { Progress } from '../../src/util/progress.ts';
import { repoRoot } from './helpers.ts';

export const smokeLab = path.join(repoRoot, 'labs/smoke.yaml');

export interface SmokeBuilds {
  tree: KernelTree;
  /** The request for the lab's series plus `extra` patch files; the build log goes to `logFile`. */
  request(extra: string[], logFile: string, rebuild?: KernelBuildRequest['rebuild']): Promise<KernelBuildRequest>;
}

export async function smokeBuilds(progress: Progress): Promise<SmokeBuilds> {
  const lab = await loadLab(smokeLab);
  if (lab.kernel.kind !== 'source') throw new Error('labs/smoke.yaml must build from source');
  const spec = lab.kernel;
  const tree = await resolveKernelTree(spec.source, progress.step('tree'));
  const fragments = await Promise.all(spec.config.fragments.map(async (file) => ({ file, text: await readFile(file, 'utf8') })));
  return {
    tree,
    request: async (extra, logFile, rebuild) => ({
      tree, base: spec.config.base, fragments, step: progress.step('kernel'), logFile, ...(rebuild ? { rebuild } : {}),
      patches: await loadPatchSeries([...spec.patches, ...extra.map((p) => ({ kind: 'file' as const, path: p }))]),
    }),
  };
}
