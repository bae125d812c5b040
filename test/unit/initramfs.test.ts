import test from 'ava';
import { BOOT_MODULES, moduleLoadOrder, parseModuleIndex } from '../../src/image/initramfs.ts';

// modules.dep / modules.softdep lines as Debian's 7.2 kernel ships them.
const DEBIAN_DEP = `kernel/fs/mbcache.ko.xz:
kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz
kernel/fs/jbd2/jbd2.ko.xz:
kernel/lib/crc/crc16.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
`;
const DEBIAN_SOFTDEP = 'softdep jbd2 pre: crypto-crc32c\n';

test("Debian's kernel: virtio_blk and ext4 load after ext4's dependencies", (t) => {
  const idx = parseModuleIndex(DEBIAN_DEP, DEBIAN_SOFTDEP, 'kernel/drivers/virtio/virtio_pci.ko\n');
  // crypto-crc32c is an alias, not a module file: an absent soft dependency is skipped.
  t.deepEqual(moduleLoadOrder(idx, BOOT_MODULES), ['virtio_blk', 'crc16', 'mbcache', 'jbd2', 'ext4']);
});

test('a soft dependency that is a module is loaded before the module that wants it', (t) => {
  const idx = parseModuleIndex(`${DEBIAN_DEP}kernel/crypto/crc32c.ko.xz:\n`, 'softdep jbd2 pre: crc32c\n');
  const order = moduleLoadOrder(idx, BOOT_MODULES);
  t.true(order.indexOf('crc32c') < order.indexOf('jbd2'));
});

test("hwlab's lean kernel: both built in, nothing to load", (t) => {
  const idx = parseModuleIndex('kernel/drivers/vfio/vfio.ko:\n', '', 'kernel/fs/ext4/ext4.ko\nkernel/drivers/block/virtio_blk.ko\n');
  t.deepEqual(moduleLoadOrder(idx, BOOT_MODULES), []);
});

test('a boot module the kernel lacks is an error naming it', (t) => {
  const idx = parseModuleIndex('kernel/drivers/block/virtio_blk.ko:\n');
  const err = t.throws(() => moduleLoadOrder(idx, BOOT_MODULES));
  t.regex(err!.message, /module ext4 is neither built in nor in modules\.dep/);
});
