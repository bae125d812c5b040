// iommufd and VFIO cdev struct encodings against hand-written byte images,
// their ioctl numbers against _IO(';', nr), and the host-side behaviour of the
// libc additions (memfd, eventfd) and the syscall thread the stress and
// lifetime probes use.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as iommufd from '../../src/guest/lib/iommufd.ts';
import * as libc from '../../src/guest/lib/libc.ts';
import { SyscallThread } from '../../src/guest/lib/systhread.ts';
import * as v from '../../src/guest/lib/vfio.ts';
import { pattern, whichBytes } from '../../src/guest/probes/observe.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

test('iommufd ioctl numbers are _IO(0x3b, 0x80 + n); VFIO cdev ones _IO(0x3b, 100 + n)', (t) => {
  t.is(iommufd.IOMMU_DESTROY, 0x3b80);
  t.is(iommufd.IOMMU_IOAS_ALLOC, 0x3b81);
  t.is(iommufd.IOMMU_IOAS_UNMAP, 0x3b86);
  t.is(iommufd.IOMMU_IOAS_MAP_FILE, 0x3b8f);
  t.is(v.VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
  t.is(v.VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
  t.is(v.VFIO_DEVICE_DETACH_IOMMUFD_PT, 0x3b78);
  t.is(iommufd.IOMMU_IOAS_MAP_FIXED_IOVA | iommufd.IOMMU_IOAS_MAP_WRITEABLE | iommufd.IOMMU_IOAS_MAP_READABLE, 7);
});

test('iommu_destroy: u32 size, u32 id', (t) => {
  t.deepEqual(iommufd.encodeDestroy(5), hex('08000000 05000000'));
});

test('iommu_ioas_alloc: 12 bytes, out_ioas_id at 8', (t) => {
  t.deepEqual(iommufd.encodeIoasAlloc(), hex('0c000000 00000000 00000000'));
  t.deepEqual(iommufd.decodeIoasAlloc(hex('0c000000 00000000 2a000000')), { size: 12, flags: 0, ioasId: 42 });
});

test('iommu_ioas_map_file: 40 bytes, s32 fd at 12, start/length/iova u64 at 16/24/32', (t) => {
  const b = iommufd.encodeIoasMapFile({ ioasId: 3, fd: 17, start: 0x1000, length: 0x4000000 });
  t.deepEqual(b, hex(`
    28000000 06000000 03000000 11000000
    0010000000000000 0000000400000000 0000000000000000`));
  const fixed = iommufd.encodeIoasMapFile({
    ioasId: 1, fd: -1, start: 2n ** 64n - 0x1000n, length: 0x1000,
    flags: iommufd.IOMMU_IOAS_MAP_FIXED_IOVA | iommufd.IOMMU_IOAS_MAP_READABLE, iova: 0xfee00000,
  });
  t.deepEqual(fixed, hex(`
    28000000 05000000 01000000 ffffffff
    00f0ffffffffffff 0010000000000000 0000e0fe00000000`));
  // The kernel writes the chosen IOVA back at 32.
  const reply = Buffer.from(b);
  reply.writeBigUInt64LE(0x3000n, 32);
  t.is(iommufd.decodeIoasMapFileIova(reply), 0x3000);
  reply.writeBigUInt64LE(2n ** 60n, 32);
  t.throws(() => iommufd.decodeIoasMapFileIova(reply), { instanceOf: RangeError });
});

test('iommu_ioas_unmap: 24 bytes, iova at 8, length at 16 (unmapped bytes on return)', (t) => {
  t.deepEqual(iommufd.encodeIoasUnmap(2, 0x3000, 0x1000), hex('18000000 02000000 0030000000000000 0010000000000000'));
  // iova 0, length U64_MAX: "unmap everything".
  t.deepEqual(iommufd.encodeIoasUnmap(2, 0, 2n ** 64n - 1n), hex('18000000 02000000 0000000000000000 ffffffffffffffff'));
  t.is(iommufd.decodeIoasUnmapLength(hex('18000000 02000000 0030000000000000 0000000400000000')), 0x4000000);
});

test('vfio_device_bind_iommufd: 24 bytes, s32 iommufd at 8, out_devid at 12, token pointer 0', (t) => {
  t.deepEqual(v.encodeBindIommufd(9), hex('18000000 00000000 09000000 00000000 0000000000000000'));
  t.is(v.decodeBindIommufdDevid(hex('18000000 00000000 09000000 02000000 0000000000000000')), 2);
});

test('vfio_device_attach_iommufd_pt: 16 bytes, pt_id at 8 (the HWPT id on return); detach: 12 bytes', (t) => {
  t.deepEqual(v.encodeAttachIommufdPt(1), hex('10000000 00000000 01000000 00000000'));
  t.is(v.decodeAttachIommufdPtId(hex('10000000 00000000 03000000 00000000')), 3);
  t.deepEqual(v.encodeDetachIommufdPt(), hex('0c000000 00000000 00000000'));
});

test('vfioCdevPath is null for a device that does not exist', (t) => {
  t.is(v.vfioCdevPath('0000:ff:1f.7'), null);
});

test('memfd: ftruncate sizes it, pwrite/pread round-trip', (t) => {
  const fd = libc.memfdCreate('hwlab-test');
  try {
    libc.ftruncate(fd, 8192);
    t.is(libc.lseek(fd, 0, libc.SEEK_END), 8192);
    const p = pattern(7, 4096);
    t.is(libc.pwrite(fd, p, 4096), 4096);
    const back = Buffer.alloc(4096);
    t.is(libc.pread(fd, back, 4096), 4096);
    t.true(back.equals(p));
    libc.pread(fd, back, 0);
    t.true(back.equals(Buffer.alloc(4096)), 'the first page is still zeros');
  } finally {
    libc.close(fd);
  }
});

test('eventfd: non-blocking read is EAGAIN at 0, returns the count once written', (t) => {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    const b = Buffer.alloc(8);
    t.like(libc.trySyscall(() => libc.read(fd, b)), { ok: false, name: 'EAGAIN' });
    const one = Buffer.alloc(8);
    one.writeBigUInt64LE(3n);
    libc.write(fd, one);
    t.is(libc.read(fd, b), 8);
    t.is(b.readBigUInt64LE(), 3n);
  } finally {
    libc.close(fd);
  }
});

test('pattern: distinct per tag, never a zero page; whichBytes names the match', (t) => {
  const a = pattern(1, 2048), b = pattern(2, 2048);
  t.false(a.equals(b));
  t.false(a.equals(Buffer.alloc(2048)));
  t.is(a.readUInt32LE(4), (1 << 20) | 1);
  t.is(whichBytes(b, { a, b }), 'b');
  t.regex(whichBytes(Buffer.alloc(2048, 0xff), { a, b }), /^other \(starts ffffffff/);
});

test('syscall thread: errno names, ioctl output copied back, pread/pwrite', async (t) => {
  const th = await SyscallThread.start(5000);
  const fd = libc.memfdCreate('hwlab-thread-test');
  try {
    t.like(await th.close(-1), { ok: false, errno: 9, name: 'EBADF' });
    // FIGETBSZ (_IO(0, 2)) writes the block size into an int: tmpfs says one page.
    const bsz = Buffer.alloc(4, 0xff);
    t.like(await th.ioctl(fd, 2, bsz), { ok: true, value: 0 });
    t.is(bsz.readInt32LE(), 4096);
    t.like(await th.ioctl(fd, 0x5401, Buffer.alloc(64)), { ok: false, name: 'ENOTTY' });
    t.like(await th.pwrite(fd, Buffer.from('thread'), 10), { ok: true, value: 6 });
    const back = Buffer.alloc(6);
    t.like(await th.pread(fd, back, 10), { ok: true, value: 6 });
    t.is(back.toString(), 'thread');
    const o = await th.open('/dev/null', libc.O_RDONLY | libc.O_CLOEXEC);
    t.true(o.ok && o.value > 2);
    if (o.ok) libc.close(o.value); // threads share the fd table
    t.is(th.hung, 0);
  } finally {
    libc.close(fd);
    await th.stop();
  }
});

test('syscall thread: a call past its deadline is reported HUNG instead of blocking the caller', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'hwlab-thread-'));
  const th = await SyscallThread.start(5000);
  try {
    const fifo = join(dir, 'fifo');
    execFileSync('mkfifo', [fifo]);
    // Opening a FIFO for reading blocks until a writer opens it.
    const r = await th.open(fifo, libc.O_RDONLY | libc.O_CLOEXEC, 200);
    t.like(r, { ok: false, name: 'HUNG' });
    t.true(r.ms >= 190);
    t.is(th.hung, 1);
    // Let the stuck open finish so the thread can end.
    const w = libc.open(fifo, libc.O_WRONLY | libc.O_NONBLOCK | libc.O_CLOEXEC);
    libc.close(w);
  } finally {
    await th.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('syscall thread: a prestarted thread is what the next take() gets, with the deadline asked for; the take after starts a new one', async (t) => {
  await SyscallThread.prestart();
  const first = await SyscallThread.take(1234);
  const second = await SyscallThread.take(5678);
  try {
    t.is(first.defaultTimeoutMs, 1234);
    t.is(second.defaultTimeoutMs, 5678);
    t.not(first, second);
    for (const th of [first, second]) {
      const r = await th.open('/dev/null', libc.O_RDONLY | libc.O_CLOEXEC);
      t.true(r.ok, JSON.stringify(r));
      if (r.ok) libc.close(r.value);
    }
  } finally {
    await first.stop();
    await second.stop();
  }
});

test('syscall thread: an unused prestarted thread does not keep the process from exiting', async (t) => {
  const mod = new URL('../../src/guest/lib/systhread.ts', import.meta.url).href;
  const started = Date.now();
  // CommonJS -e (the thread's eval'd source inherits the input type); take() after exit would say whether the thread had started.
  const out = execFileSync(process.execPath, ['--import', 'tsx', '-e',
    `import(${JSON.stringify(mod)}).then(async ({ SyscallThread }) => { await SyscallThread.prestart(); const th = await SyscallThread.take(); console.log(typeof th.open); await th.stop(); await SyscallThread.prestart(); console.log('prestarted again'); })`,
  ], { timeout: 30_000 }).toString();
  t.is(out.trim(), 'function\nprestarted again');
  t.true(Date.now() - started < 30_000);
});
