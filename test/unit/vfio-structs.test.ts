// VFIO struct encodings against hand-written byte images, ioctl numbers against
// the values _IO(';', 100 + n) gives, and the koffi libc bindings on the host.
import test from 'ava';
import koffi from 'koffi';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import * as libc from '../../src/guest/lib/libc.ts';
import * as v from '../../src/guest/lib/vfio.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('ioctl numbers are _IO(0x3b, 100 + n)', (t) => {
  t.is(v.VFIO_GET_API_VERSION, 0x3b64);
  t.is(v.VFIO_CHECK_EXTENSION, 0x3b65);
  t.is(v.VFIO_SET_IOMMU, 0x3b66);
  t.is(v.VFIO_GROUP_GET_STATUS, 0x3b67);
  t.is(v.VFIO_GROUP_SET_CONTAINER, 0x3b68);
  t.is(v.VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
  t.is(v.VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
  t.is(v.VFIO_DEVICE_GET_INFO, 0x3b6b);
  t.is(v.VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
  t.is(v.VFIO_DEVICE_RESET, 0x3b6f);
  t.is(v.VFIO_DEVICE_FEATURE, 0x3b75);
  t.is(v.VFIO_TYPE1v2_IOMMU, 3);
  t.is(v.VFIO_NOIOMMU_IOMMU, 8);
  t.is(v.VFIO_DEVICE_FEATURE_GET | v.VFIO_DEVICE_FEATURE_DMA_BUF, 0x1000b);
  t.is(v.VFIO_DEVICE_FEATURE_PROBE, 0x40000);
  t.is(v.VFIO_DEVICE_FEATURE_SET, 0x20000);
});

test('group status: 8 bytes, argsz first', (t) => {
  t.deepEqual(v.encodeGroupStatus(), hex('08000000 00000000'));
  t.deepEqual(v.decodeGroupStatus(hex('08000000 03000000')), { argsz: 8, flags: v.VFIO_GROUP_FLAGS_VIABLE | v.VFIO_GROUP_FLAGS_CONTAINER_SET });
});

test('region info: 32 bytes, index at 8, size at 16, offset at 24', (t) => {
  t.deepEqual(v.encodeRegionInfo(7), hex('20000000 00000000 07000000 00000000 0000000000000000 0000000000000000'));
  // A BAR2 reply: READ|WRITE|MMAP, 4 MiB, at vfio-pci's fixed offset 2 << 40.
  const r = v.decodeRegionInfo(hex('20000000 07000000 02000000 00000000 0000400000000000 0000000000020000'));
  t.deepEqual(r, { argsz: 32, flags: 7, index: 2, capOffset: 0, size: 0x400000, offset: 2 * 2 ** 40 });
  t.throws(() => v.decodeRegionInfo(hex('20000000 00000000 00000000 00000000 ffffffffffffffff 0000000000000000')), { instanceOf: RangeError });
});

test('device info: 24 bytes', (t) => {
  t.deepEqual(v.encodeDeviceInfo(), hex('18000000 00000000 00000000 00000000 00000000 00000000'));
  t.deepEqual(v.decodeDeviceInfo(hex('18000000 03000000 09000000 05000000 00000000 00000000')),
    { argsz: 24, flags: 3, numRegions: 9, numIrqs: 5 });
});

test('dma_buf ranges ABI: header, 16-byte fixed part, 16 bytes per range', (t) => {
  const b = v.encodeDmabufRanges(2, libc.O_RDWR | libc.O_CLOEXEC, 0, [
    { offset: 0, length: 0x1000 }, { offset: 0x2000, length: 0x3000 },
  ]);
  t.deepEqual(b, hex(`
    38000000 0b000100
    02000000 02000800 00000000 02000000
    0000000000000000 0010000000000000
    0020000000000000 0030000000000000`));
});

test('dma_buf ranges ABI: nr_ranges override and bigint offsets', (t) => {
  const zero = v.encodeDmabufRanges(0, 0, 1, [{ offset: 0, length: 0x1000 }], { nrRanges: 0 });
  t.deepEqual(zero, hex('28000000 0b000100 00000000 00000000 01000000 00000000 0000000000000000 0010000000000000'));
  // More ranges claimed than given: zero padding keeps the kernel inside our buffer.
  const more = v.encodeDmabufRanges(0, 0, 0, [{ offset: 2n ** 64n - 0x1000n, length: 0x1000 }], { nrRanges: 2 });
  t.is(more.length, 8 + 16 + 32);
  t.is(more.readUInt32LE(0), more.length);
  t.is(more.readUInt32LE(20), 2);
  t.deepEqual(more.subarray(24, 40), hex('00f0ffffffffffff 0010000000000000'));
  t.deepEqual(more.subarray(40), Buffer.alloc(16));
  const probe = v.encodeDmabufRanges(2, 0, 0, [], { featureFlags: v.VFIO_DEVICE_FEATURE_PROBE | v.VFIO_DEVICE_FEATURE_DMA_BUF });
  t.deepEqual(probe, hex('18000000 0b000400 02000000 00000000 00000000 00000000'));
});

test('argsz override: the header says less than the buffer holds (the kernel must refuse, not read short)', (t) => {
  const req = { region: 2, ranges: [{ offset: 0, length: 0x1000 }], argsz: v.FEATURE_HEADER_SIZE + 15 };
  const r = v.encodeExport('ranges', req);
  t.is(r.readUInt32LE(0), 23);
  t.is(r.length, 8 + 16 + 16);
  const v0 = v.encodeExport('v0', req);
  t.is(v0.readUInt32LE(0), 23);
  t.is(v0.length, 8 + 24);
});

test('dma_buf v0 ABI: u32 region, u32 open_flags, u64 offset, u64 length', (t) => {
  t.deepEqual(v.encodeDmabufV0(2, libc.O_RDWR | libc.O_CLOEXEC, 0x1000, 0x2000),
    hex('20000000 0b000100 02000000 02000800 0010000000000000 0020000000000000'));
});

test('encodeExport picks the ABI and refuses what v0 cannot say', (t) => {
  const req = { region: 2, ranges: [{ offset: 0, length: 0x1000 }] };
  t.deepEqual(v.encodeExport('v0', req), v.encodeDmabufV0(2, libc.O_RDWR | libc.O_CLOEXEC, 0, 0x1000));
  t.deepEqual(v.encodeExport('ranges', req), v.encodeDmabufRanges(2, libc.O_RDWR | libc.O_CLOEXEC, 0, req.ranges));
  t.throws(() => v.encodeExport('v0', { ...req, flags: 1 }));
  t.throws(() => v.encodeExport('v0', { ...req, nrRangesOverride: 0 }));
  t.throws(() => v.encodeExport('v0', { region: 2, ranges: [req.ranges[0], req.ranges[0]] }));
});

test('errno table matches the host libc (via Node and koffi)', (t) => {
  const node = osConstants.errno as Record<string, number>;
  let compared = 0;
  for (const [name, num] of Object.entries(libc.ERRNO)) {
    if (name in node) { t.is(node[name], num, name); compared++; }
    if (name in koffi.os.errno) t.is(koffi.os.errno[name], num, `${name} (koffi)`);
  }
  t.true(compared > 70);
  t.is(libc.errnoName(22), 'EINVAL');
  t.is(libc.errnoName(11), 'EAGAIN'); // canonical name wins over the EWOULDBLOCK alias
  t.is(libc.errnoName(95), 'EOPNOTSUPP');
  t.is(libc.errnoName(9999), 'E9999');
});

test('koffi bindings: pwrite/pread/lseek on a temp file', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hwlab-libc-'));
  try {
    const path = join(dir, 'f');
    const fd = libc.open(path, libc.O_RDWR | libc.O_CREAT | libc.O_CLOEXEC, 0o600);
    t.true(fd > 2);
    t.is(libc.pwrite(fd, Buffer.from('hello world'), 4), 11);
    t.is(libc.lseek(fd, 0, libc.SEEK_END), 15);
    const b = Buffer.alloc(5);
    t.is(libc.pread(fd, b, 10), 5);
    t.is(b.toString(), 'world');
    t.is(libc.lseek(fd, 6n, libc.SEEK_SET), 6);
    t.is(libc.read(fd, b), 5);
    t.is(b.toString(), 'llo w'); // file is 4 NULs then 'hello world'
    const addr = libc.mmap(4096, libc.PROT_READ, libc.MAP_SHARED, fd, 0);
    t.true(addr > 0n);
    libc.munmap(addr, 4096);
    libc.close(fd);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('koffi bindings: errno names for failing calls', (t) => {
  t.deepEqual(libc.trySyscall(() => libc.close(-1)), { ok: false, errno: 9, name: 'EBADF' });
  const err = t.throws(() => libc.close(-1), { instanceOf: libc.SyscallError });
  t.is(err?.code, 'EBADF');
  t.is(err?.syscall, 'close');
  t.deepEqual(libc.trySyscall(() => libc.open('/nonexistent/hwlab', libc.O_RDONLY)), { ok: false, errno: 2, name: 'ENOENT' });

  const fd = libc.open('/dev/null', libc.O_RDWR | libc.O_CLOEXEC);
  try {
    // TCGETS with a pointer, a VFIO ioctl with no argument and one with an integer: /dev/null has no ioctls.
    t.deepEqual(libc.trySyscall(() => libc.ioctl(fd, 0x5401, Buffer.alloc(64))), { ok: false, errno: 25, name: 'ENOTTY' });
    t.deepEqual(libc.trySyscall(() => libc.ioctl(fd, v.VFIO_GET_API_VERSION)), { ok: false, errno: 25, name: 'ENOTTY' });
    t.deepEqual(libc.trySyscall(() => libc.ioctl(fd, v.VFIO_CHECK_EXTENSION, v.VFIO_TYPE1v2_IOMMU)), { ok: false, errno: 25, name: 'ENOTTY' });
    t.is(libc.write(fd, Buffer.from('x')), 1);
  } finally {
    libc.close(fd);
  }
  t.deepEqual(libc.trySyscall(() => libc.mmap(4096, libc.PROT_READ, libc.MAP_SHARED, -1)), { ok: false, errno: 9, name: 'EBADF' });

  const dfd = openSync(tmpdir(), 'r');
  try {
    t.deepEqual(libc.trySyscall(() => libc.read(dfd, Buffer.alloc(8))), { ok: false, errno: 21, name: 'EISDIR' });
  } finally {
    closeSync(dfd);
  }
});

test('koffi bindings: rlimit and page size', (t) => {
  const r = libc.getrlimit(libc.RLIMIT_NOFILE);
  t.true(r.cur > 0n && r.cur <= r.max);
  libc.setrlimit(libc.RLIMIT_NOFILE, r.cur, r.max); // same values: harmless, proves the call shape
  t.is(libc.pageSize(), 4096);
});

test('sysfsIommuGroup reads the group number from the iommu_group link', (t) => {
  t.is(v.sysfsIommuGroup('0000:ff:1f.7'), null);
  // Cross-check on whatever real PCI device the host has with an IOMMU group.
  const devs = existsSync('/sys/bus/pci/devices') ? readdirSync('/sys/bus/pci/devices') : [];
  const withGroup = devs.find((d) => existsSync(`/sys/bus/pci/devices/${d}/iommu_group`));
  if (!withGroup) return t.pass('host has no PCI device with an IOMMU group');
  const link = readlinkSync(`/sys/bus/pci/devices/${withGroup}/iommu_group`);
  t.is(v.sysfsIommuGroup(withGroup), Number(link.split('/').pop()));
});

test('hot reset ioctl numbers and low-power feature ids', (t) => {
  t.is(v.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
  t.is(v.VFIO_DEVICE_PCI_HOT_RESET, 0x3b71);
  t.is(v.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, 3);
  t.is(v.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, 4);
  t.is(v.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, 5);
});

test('hot reset info: 12-byte header, 8 bytes per dependent device (group, segment, bus, devfn)', (t) => {
  t.deepEqual(v.encodeHotResetInfo(2), hex('1c000000 00000000 00000000 0000000000000000 0000000000000000'));
  // Two devices: group 5 at 0000:03:00.0 and group 9 at 0001:04:1f.7 (devfn 0xff).
  const r = v.decodeHotResetInfo(hex('1c000000 00000000 02000000 05000000 0000 03 00 09000000 0100 04 ff'));
  t.deepEqual(r, {
    argsz: 28, flags: 0, count: 2, devices: [
      { groupId: 5, segment: 0, bus: 3, devfn: 0, bdf: '0000:03:00.0' },
      { groupId: 9, segment: 1, bus: 4, devfn: 0xff, bdf: '0001:04:1f.7' },
    ],
  });
  // ENOSPC reply: count says how many, no room for any entry.
  t.deepEqual(v.decodeHotResetInfo(hex('0c000000 00000000 03000000')), { argsz: 12, flags: 0, count: 3, devices: [] });
});

test('hot reset: 12-byte header, then s32 group fds', (t) => {
  t.deepEqual(v.encodeHotReset([7, 12]), hex('14000000 00000000 02000000 07000000 0c000000'));
  t.deepEqual(v.encodeHotReset([]), hex('0c000000 00000000 00000000'));
});

test('low power entry/exit: bare SET header; entry with wakeup: s32 eventfd, u32 reserved', (t) => {
  t.deepEqual(v.encodeLowPower(v.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY), hex('08000000 03000200'));
  t.deepEqual(v.encodeLowPower(v.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT), hex('08000000 05000200'));
  t.deepEqual(v.encodeLowPower(v.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, v.VFIO_DEVICE_FEATURE_PROBE | v.VFIO_DEVICE_FEATURE_SET),
    hex('08000000 03000600'));
  t.deepEqual(v.encodeLowPowerEntryWithWakeup(9), hex('10000000 04000200 09000000 00000000'));
  t.deepEqual(v.encodeLowPowerEntryWithWakeup(-1), hex('10000000 04000200 ffffffff 00000000'));
});

test('irq ioctl numbers, indexes and flag bits', (t) => {
  t.is(v.VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
  t.is(v.VFIO_DEVICE_SET_IRQS, 0x3b6e);
  t.is(v.VFIO_PCI_ERR_IRQ_INDEX, 3);
  t.is(v.VFIO_PCI_REQ_IRQ_INDEX, 4);
  t.is(v.VFIO_IRQ_SET_DATA_EVENTFD | v.VFIO_IRQ_SET_ACTION_TRIGGER, 0x24);
});

test('irq info: 16 bytes, index at 8, count at 12', (t) => {
  t.deepEqual(v.encodeIrqInfo(v.VFIO_PCI_REQ_IRQ_INDEX), hex('10000000 00000000 04000000 00000000'));
  // vfio-pci's REQ reply: EVENTFD|NORESIZE, one vector.
  t.deepEqual(v.decodeIrqInfo(hex('10000000 09000000 04000000 01000000')),
    { argsz: 16, flags: v.VFIO_IRQ_INFO_EVENTFD | v.VFIO_IRQ_INFO_NORESIZE, index: 4, count: 1 });
});

test('irq set with eventfds: 20-byte header (argsz, flags, index, start, count), then s32 fds', (t) => {
  t.deepEqual(v.encodeIrqSetEventfds(v.VFIO_PCI_REQ_IRQ_INDEX, 0, [7]),
    hex('18000000 24000000 04000000 00000000 01000000 07000000'));
  t.deepEqual(v.encodeIrqSetEventfds(v.VFIO_PCI_MSIX_IRQ_INDEX, 2, [5, -1]),
    hex('1c000000 24000000 02000000 02000000 02000000 05000000 ffffffff'));
});
