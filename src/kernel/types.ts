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
