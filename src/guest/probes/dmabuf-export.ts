// dmabuf-export: the BAR's region info is sane and the BAR (or a slice) exports as a dma-buf;
// or, on a kernel built without VFIO_PCI_DMABUF (params.expect ENOTTY), the feature is absent:
// the contract's errno row for it, which no other probe can pose.
import {
  VFIO_DEVICE_FEATURE_DMA_BUF, VFIO_DEVICE_FEATURE_GET, VFIO_DEVICE_FEATURE_PROBE,
  VFIO_REGION_INFO_FLAG_CAPS, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
  type ExportRequest,
} from '../lib/vfio.ts';
import { closeFd, exportDiag, hex, outcome, withDevice, type ProbeContext } from './common.ts';

const KNOWN_FLAGS = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE | VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_CAPS;
const RW = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;

export default async function dmabufExport(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const offset = ctx.params.offset as number;
  const expect = ctx.params.expect as string;
  await withDevice(ctx, (dev) => {
    t.pass(`open ${dev.bdf} through ${dev.groupPath} (IOMMU type ${dev.iommuType})`);
    const info = dev.regionInfo(region);
    const diag = { size: hex(info.size), flags: hex(info.flags), offset: hex(info.offset) };
    t.equal(info.index, region, `region info echoes index ${region}`, diag);
    if (!t.ok(info.size > 0, `region ${region} has a size`, diag)) return;
    t.ok((info.flags & RW) === RW, `region ${region} is readable and writable`, diag);
    t.ok((info.flags & ~KNOWN_FLAGS) === 0, `region ${region} has no unknown flag bits`, diag);
    if (!t.ok(offset < info.size, `offset ${hex(offset)} lies inside the region`, diag)) return;

    const length = (ctx.params.length as number) || info.size - offset;
    const req: ExportRequest = { region, ranges: [{ offset, length }] };
    if (expect === 'ENOTTY') {
      // Without the feature vfio-pci knows no VFIO_DEVICE_FEATURE_DMA_BUF: the PROBE a user asks
      // first and the export itself must both say ENOTTY (unknown feature), never EINVAL or an fd.
      const probeReq: ExportRequest = { ...req, featureFlags: VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF };
      const p = dev.exportDmabuf(abi, probeReq);
      t.equal(outcome(p), 'ENOTTY', 'PROBE of VFIO_DEVICE_FEATURE_DMA_BUF -> ENOTTY (kernel without VFIO_PCI_DMABUF)', exportDiag(abi, probeReq, p));
      const r = dev.exportDmabuf(abi, req);
      if (r.ok && r.value > 0) closeFd(r.value);
      t.equal(outcome(r), 'ENOTTY', `export ${hex(length)} bytes at ${hex(offset)} of region ${region} -> ENOTTY (kernel without VFIO_PCI_DMABUF)`,
        exportDiag(abi, req, r));
      return;
    }
    const r = dev.exportDmabuf(abi, req);
    t.ok(r.ok && r.value > 0, `export ${hex(length)} bytes at ${hex(offset)} of region ${region} (${abi} ABI) returns an fd`,
      exportDiag(abi, req, r));
    if (r.ok && r.value > 0) t.ok(closeFd(r.value).ok, 'close the dma-buf fd');
  });
}
