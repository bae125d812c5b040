import { existsSync } from 'node:fs';
import path from 'node:path';

/** A kernel ready to boot: image, modules tree and the disk that carries the modules into the guest. */
export interface KernelArtifact {
  source: 'debian-prebuilt' | 'built';
  /** Exact binary package, e.g. linux-image-7.2.13+deb14-amd64. */
  package: string;
  /** Exact Debian version, e.g. 7.2.13-1. */
  version: string;
  /** uname -r in the guest. */
  release: string;
  vmlinuz: string;
  config?: string;
  /** Directory holding lib/modules/<release>, depmod'ed. */
  modulesRoot: string;
  /** ext4 image of lib/modules (label hwlab-mods), attached read-only. */
  modulesDisk: string;
  cacheDir: string;
  cacheKey: string;
}

/**
 * The artifact stored in a kernel cache entry: every kind of entry (prebuilt,
 * source build, driver overlay) lays out vmlinuz, config, modroot/ and
 * modules.ext4 the same way.
 */
export function artifactInEntry(
  dir: string,
  key: string,
  id: Pick<KernelArtifact, 'source' | 'package' | 'version' | 'release'>,
): KernelArtifact {
  return {
    ...id,
    vmlinuz: path.join(dir, 'vmlinuz'),
    config: existsSync(path.join(dir, 'config')) ? path.join(dir, 'config') : undefined,
    modulesRoot: path.join(dir, 'modroot'),
    modulesDisk: path.join(dir, 'modules.ext4'),
    cacheDir: dir,
    cacheKey: key,
  };
}
