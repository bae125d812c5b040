// A prepared lab that points at nothing: what the fake machine backend needs
// to drive runOnMachine in unit tests (it never opens these paths).
import type { PreparedLab } from '../../../src/run/prepare.ts';

export const FAKE_PREPARED: PreparedLab = {
  kernel: {
    kind: 'stock', package: 'linux-image-7.2.13+deb14-amd64', version: '7.2.13-1', release: '7.2.13+deb14-amd64',
    vmlinuz: '/fake/vmlinuz', modulesRoot: '/fake/modroot', modulesDisk: '/fake/modules.ext4', cacheDir: '/fake', cacheKey: 'fake',
  },
  hwlabModules: [],
  image: { rootDisk: '/fake/rootfs.ext4', hostKey: 'ssh-ed25519 AAAA', nodeVersion: 'v18' } as PreparedLab['image'],
  initrd: '/fake/initrd',
};
