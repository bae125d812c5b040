// hwlab_importer's cache key for kernels built from source
// (src/kernel/extmod.ts builtKernelInterface): a series of .c changes reuses
// the module built without it; a header, a Kbuild file or another exported
// symbol builds it again.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { builtKernelInterface, type ModuleTarget } from '../../src/kernel/extmod.ts';
import type { PatchFile } from '../../src/kernel/patches.ts';
import { sha256 } from '../../src/util/cache.ts';

const SYMS = [
  '0x00000000\tdma_buf_get\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF',
  '0x00000000\tvfio_pci_core_enable\tdrivers/vfio/pci/vfio-pci-core\tEXPORT_SYMBOL_GPL\t',
  '0x00000000\tpci_enable_device\tvmlinux\tEXPORT_SYMBOL\t',
];

function patchOf(file: string): PatchFile {
  const text = `--- a/${file}\n+++ b/${file}\n@@ -1,1 +1,2 @@\n line\n+/* change */\n`;
  return { name: `${path.basename(file)}.patch`, origin: 'test', sha256: sha256(text), text, strip: 1 } as PatchFile;
}

async function targetWith(t: { teardown: (f: () => Promise<void>) => void }, patches: PatchFile[], symvers: string[], cacheKey: string): Promise<Extract<ModuleTarget, { kind: 'built' }>> {
  const objDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-extmod-'));
  t.teardown(() => rm(objDir, { recursive: true, force: true }));
  await writeFile(path.join(objDir, 'Module.symvers'), `${symvers.join('\n')}\n`);
  return {
    kind: 'built', patches,
    tree: { id: 'debian:linux-source-7.2=7.2.13-1' },
    kernel: { cacheKey, objDir, configSha256: 'c'.repeat(64), release: '7.2.13' },
  } as unknown as Extract<ModuleTarget, { kind: 'built' }>;
}

test('.c-only series: the same key as no series, also when modpost reordered Module.symvers', async (t) => {
  const base = await builtKernelInterface(await targetWith(t, [], SYMS, 'kernel-a'));
  const edited = await builtKernelInterface(await targetWith(t, [patchOf('drivers/vfio/pci/vfio_pci_core.c')], [SYMS[0], SYMS[2], SYMS[1]], 'kernel-b'));
  t.is(edited, base);
});

test('a header or a Kbuild file in the series keys by the kernel build; another export set changes the key', async (t) => {
  const base = await builtKernelInterface(await targetWith(t, [], SYMS, 'kernel-a'));
  t.is(await builtKernelInterface(await targetWith(t, [patchOf('include/linux/dma-buf.h')], SYMS, 'kernel-h')), 'kernel-h');
  t.is(await builtKernelInterface(await targetWith(t, [patchOf('drivers/vfio/pci/vfio_pci_core.c'), patchOf('drivers/vfio/pci/Makefile')], SYMS, 'kernel-m')), 'kernel-m');
  const moreSyms = await builtKernelInterface(await targetWith(t, [patchOf('drivers/dma-buf/dma-buf.c')], [...SYMS, '0x00000000\tdma_buf_new\tvmlinux\tEXPORT_SYMBOL_GPL\tDMA_BUF'], 'kernel-s'));
  t.not(moreSyms, base);
});
