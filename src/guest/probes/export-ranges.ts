// export-ranges: the shapes the ranges ABI allows (contract section 1): several
// ranges, overlapping, repeated and out of order ranges, the whole BAR more
// than once. The dma-buf's size is the sum of the lengths (lseek SEEK_END,
// fdinfo size). A buffer exported while PCI_COMMAND.MEM is off is born revoked:
// iommufd's MAP_FILE of it fails ENODEV until MEM goes back on. With a lab that
// speaks the v0 ABI, its single-range export instead.
import { existsSync } from 'node:fs';
import { Iommufd, IOMMU_DEV } from '../lib/iommufd.ts';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import type { DmaRange, ExportRequest, VfioDevice } from '../lib/vfio.ts';
import { closeFd, exportDiag, fdinfo, hex, outcome, withDevice, type ProbeContext } from './common.ts';
import { checkNoKernelReports, commandDiag, setMemoryDecoding } from './observe.ts';

interface Shape { what: string; ranges: (bar: number, page: number) => DmaRange[] }

const SHAPES: Shape[] = [
  { what: 'two disjoint ranges', ranges: (_b, p) => [{ offset: 0, length: p }, { offset: 2 * p, length: 2 * p }] },
  { what: 'two overlapping ranges', ranges: (_b, p) => [{ offset: 0, length: 2 * p }, { offset: p, length: 2 * p }] },
  { what: 'the same range three times', ranges: (_b, p) => [{ offset: p, length: p }, { offset: p, length: p }, { offset: p, length: p }] },
  { what: 'three ranges out of order', ranges: (_b, p) => [{ offset: 3 * p, length: p }, { offset: 0, length: p }, { offset: p, length: 2 * p }] },
  { what: 'the whole BAR twice (sum larger than the BAR)', ranges: (b) => [{ offset: 0, length: b }, { offset: 0, length: b }] },
  {
    what: '64 one-page ranges walking the first four pages backwards',
    ranges: (_b, p) => Array.from({ length: 64 }, (_, i) => ({ offset: (3 - (i % 4)) * p, length: p })),
  },
];

const sum = (ranges: DmaRange[]) => ranges.reduce((n, r) => n + Number(r.length), 0);
const fdinfoSize = (fd: number) => Number(/^size:\s*(\d+)$/m.exec(fdinfo(fd))?.[1] ?? NaN);
const seekEnd = (fd: number) => {
  const r = libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END));
  return r.ok ? r.value : r.name;
};

export default async function exportRanges(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const page = libc.pageSize();
  const km = libc.trySyscall(() => Kmsg.mark());
  const haveIommufd = existsSync(IOMMU_DEV);
  const iommufd = haveIommufd ? Iommufd.open() : undefined;
  const fds: number[] = [];
  try {
    await withDevice(ctx, (dev) => {
      const info = dev.regionInfo(region);
      if (!t.ok(info.size >= 4 * page, `region ${region} has at least four pages`, { size: info.size, page })) return;
      const on = setMemoryDecoding(dev, true);
      if (!t.ok(on.ok, 'PCI_COMMAND.MEM is on before exporting', commandDiag(on))) return;
      const ioasId = iommufd?.allocIoas();
      const exportAndSize = (req: ExportRequest, what: string): number | null => {
        const r = dev.exportDmabuf(abi, req);
        if (!t.ok(r.ok && r.value > 0, `export ${what}`, exportDiag(abi, req, r)) || !r.ok) return null;
        fds.push(r.value);
        const want = sum(req.ranges);
        t.equal(seekEnd(r.value), want, `${what}: lseek(SEEK_END) is the sum of the lengths (${hex(want)})`);
        t.equal(fdinfoSize(r.value), want, `${what}: fdinfo size is the sum of the lengths`);
        return r.value;
      };
      const mapOutcome = (fd: number, length: number) => {
        const m = iommufd!.mapFile({ ioasId: ioasId!, fd, start: 0, length });
        if (m.ok) iommufd!.unmap(ioasId!, m.value.iova, m.value.length);
        return outcome(m);
      };

      if (abi === 'ranges') {
        let multi: number | null = null;
        for (const s of SHAPES) {
          const fd = exportAndSize({ region, ranges: s.ranges(info.size, page) }, s.what);
          multi ??= fd;
        }
        // iommufd reaches the BAR through a private call that takes one physical range (vfio_pci_dma_buf_iommufd_map).
        if (iommufd && multi !== null) {
          t.equal(mapOutcome(multi, 3 * page), 'EOPNOTSUPP', 'MAP_FILE of a multi-range dma-buf fails EOPNOTSUPP (iommufd takes a single range)');
        } else t.skip('MAP_FILE of a multi-range dma-buf fails EOPNOTSUPP', iommufd ? 'no multi-range buffer was exported' : `no ${IOMMU_DEV}`);
      } else {
        for (const s of SHAPES) t.skip(`export ${s.what}`, 'the lab speaks the v0 ABI, which takes exactly one range');
      }

      if (abi === 'v0') {
        exportAndSize({ region, ranges: [{ offset: page, length: 2 * page }] }, 'one range at offset one page, two pages long (v0 ABI)');
      } else {
        t.skip('export one range through the v0 ABI', 'the lab speaks the ranges ABI (dmabuf_abi: ranges); v0 is the first posted series\' layout');
      }

      bornRevoked(ctx, dev, page, iommufd ? mapOutcome : null, exportAndSize);
    });
  } finally {
    for (const fd of fds) closeFd(fd);
    iommufd?.close();
    checkNoKernelReports(t, km, 'during the range exports');
  }
}

/** A buffer exported with MEM off is revoked from birth; MEM on un-revokes it like any other. */
function bornRevoked(
  ctx: ProbeContext, dev: VfioDevice, page: number,
  mapOutcome: ((fd: number, length: number) => string) | null,
  exportAndSize: (req: ExportRequest, what: string) => number | null,
): void {
  const { t } = ctx;
  const region = ctx.params.region as number;
  const off = setMemoryDecoding(dev, false);
  if (!t.ok(off.ok, 'PCI_COMMAND.MEM reads back 0 after clearing it', commandDiag(off))) return;
  let restored = false;
  try {
    const fd = exportAndSize({ region, ranges: [{ offset: 0, length: 2 * page }] }, 'two pages while MEM is off');
    const why = mapOutcome ? 'the export failed' : `no ${IOMMU_DEV} to import with`;
    const bornName = 'a buffer exported while MEM is off is born revoked: MAP_FILE fails ENODEV';
    if (fd !== null && mapOutcome) t.equal(mapOutcome(fd, 2 * page), 'ENODEV', bornName);
    else t.skip(bornName, why);
    const on = setMemoryDecoding(dev, true);
    restored = true;
    t.ok(on.ok, 'PCI_COMMAND.MEM reads back 1 after setting it again', commandDiag(on));
    const liveName = 'after MEM on, MAP_FILE of the born-revoked buffer succeeds (un-revoked)';
    if (fd !== null && mapOutcome) t.equal(mapOutcome(fd, 2 * page), 'OK', liveName);
    else t.skip(liveName, why);
  } finally {
    if (!restored) setMemoryDecoding(dev, true);
  }
}
