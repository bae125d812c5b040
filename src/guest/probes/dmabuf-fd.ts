// dmabuf-fd: the exported fd really is a vfio_pci_core dma-buf of the exported size,
// honours open_flags, and refuses CPU access (mmap/read/write) with EINVAL.
import * as libc from '../lib/libc.ts';
import type { ExportRequest, VfioDevice } from '../lib/vfio.ts';
import { closeFd, exportDiag, fdinfo, hex, outcome, withDevice, type ProbeContext } from './common.ts';

const O_ACCMODE = 3;

/** Exports req, runs fn on the fd, closes it. Returns false when the export failed (already reported). */
function withDmabuf(ctx: ProbeContext, dev: VfioDevice, what: string, req: ExportRequest, fn: (fd: number) => void): boolean {
  const r = dev.exportDmabuf(ctx.abi, req);
  if (!ctx.t.ok(r.ok && r.value > 0, `export ${what}`, exportDiag(ctx.abi, req, r)) || !r.ok) return false;
  try {
    fn(r.value);
  } finally {
    closeFd(r.value);
  }
  return true;
}

export default async function dmabufFd(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const region = ctx.params.region as number;
  await withDevice(ctx, (dev) => {
    const info = dev.regionInfo(region);
    if (!t.ok(info.size > 0, `region ${region} has a size`, { size: info.size })) return;
    const page = libc.pageSize();
    const openFlags = libc.O_RDWR | libc.O_CLOEXEC;

    withDmabuf(ctx, dev, `whole region ${region} (${hex(info.size)} bytes)`, { region, openFlags, ranges: [{ offset: 0, length: info.size }] }, (fd) => {
      const text = fdinfo(fd);
      // dma_buf_show_fdinfo() prints "exp_name:\t%s"; the exporter name is KBUILD_MODNAME of vfio_pci_dmabuf.c.
      t.equal(/^exp_name:\t(.*)$/m.exec(text)?.[1], 'vfio_pci_core', 'fdinfo shows exp_name:\\tvfio_pci_core', { fdinfo: text });
      const flags = parseInt(/^flags:\t([0-7]+)$/m.exec(text)?.[1] ?? 'NaN', 8);
      t.equal(flags & O_ACCMODE, libc.O_RDWR, 'fd access mode is O_RDWR as requested', { fdinfo: text });
      t.ok((flags & libc.O_CLOEXEC) !== 0, 'fd has O_CLOEXEC as requested', { fdinfo: text });
      t.equal(libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END)), { ok: true, value: info.size }, 'lseek(fd, 0, SEEK_END) is the exported size');

      const m = libc.trySyscall(() => libc.mmap(Math.min(info.size, page), libc.PROT_READ, libc.MAP_SHARED, fd, 0));
      if (m.ok) libc.munmap(m.value, Math.min(info.size, page));
      t.equal(outcome(m), 'EINVAL', 'mmap(PROT_READ, MAP_SHARED) fails EINVAL');
      t.equal(outcome(libc.trySyscall(() => libc.read(fd, Buffer.alloc(64)))), 'EINVAL', 'read() fails EINVAL');
      t.equal(outcome(libc.trySyscall(() => libc.write(fd, Buffer.alloc(64)))), 'EINVAL', 'write() fails EINVAL');
    });

    if (info.size < 2 * page) {
      t.skip('one-page slice at offset one page', `region ${region} is smaller than two pages (${hex(info.size)})`);
      return;
    }
    withDmabuf(ctx, dev, `one-page slice at ${hex(page)}`, { region, openFlags, ranges: [{ offset: page, length: page }] }, (fd) => {
      t.equal(libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END)), { ok: true, value: page }, 'slice size is one page');
      t.equal(/^exp_name:\t(.*)$/m.exec(fdinfo(fd))?.[1], 'vfio_pci_core', 'slice fdinfo shows exp_name vfio_pci_core');
    });
  });
}
