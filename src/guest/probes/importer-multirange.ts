// importer-multirange: a dma-buf made of several ranges of one BAR (out of
// order), imported and mapped the RDMA way. The mapping must cover the sum of
// the ranges, and each range's bytes must sit at its dma-buf offset: bytes
// written into the BAR at range k come back through edu's DMA at the offset
// where range k starts in the buffer. On the host-bridge IOVA path this is
// dma_buf_phys_vec_to_sgt()'s dma_iova_link() loop, one link per range; on the
// bus-address and direct paths, one sg entry per range.
import { randomBytes } from 'node:crypto';
import { Importer } from '../lib/importer.ts';
import * as libc from '../lib/libc.ts';
import { closeFd, exportDiag, hex, withDevice, type ProbeContext } from './common.ts';
import { ensureMemoryOn, importDiag, importerDevice, importFor, pairTopology, prepareDataPath, iommuDomainType } from './importer-common.ts';

const CHUNK = 64 * 1024;
const BYTES = 512;

export default async function importerMultirange(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const region = ctx.params.region as number;
  const edu = importerDevice(ctx);
  const topo = pairTopology(ctx.device.bdf, edu.bdf);
  t.comment(`exporter ${ctx.device.id}, importer ${edu.id}; common bridge ${topo.commonBridge ?? 'none (host bridge)'}; importer IOMMU domain ${iommuDomainType(edu.bdf) ?? 'none'}`);
  const imp = Importer.open();
  try {
    await withDevice(ctx, (dev) => {
      ensureMemoryOn(dev);
      const info = dev.regionInfo(region);
      if (info.size < 4 * CHUNK) return void t.skip('multi-range import', `BAR ${region} is ${hex(info.size)} bytes, too small for ranges of ${hex(CHUNK)}`);
      // The BAR's last chunk first, then its first chunk: the buffer's order is not the BAR's.
      const ranges = [{ offset: info.size - CHUNK, length: CHUNK }, { offset: 0, length: CHUNK }];
      const req = { region, ranges };
      const r = dev.exportDmabuf(ctx.abi, req);
      if (!t.ok(r.ok, `export ${ranges.length} ranges of BAR ${region} as one dma-buf`, exportDiag(ctx.abi, req, r)) || !r.ok) return;
      const fd = r.value;
      const setup = prepareDataPath(t, ctx.device, edu);
      try {
        const im = importFor(imp, fd, edu, ctx.device, region);
        if (!t.ok(im.ok, `import the ${ranges.length}-range dma-buf for ${edu.id}`, importDiag(im)) || !im.ok) return;
        const h = im.value.handle;
        t.equal(im.value.dmabufSize, ranges.length * CHUNK, 'the dma-buf size is the sum of the ranges');
        const m = imp.map(h);
        const mapped = t.ok(m.ok, `map the ${ranges.length}-range dma-buf`,
          { errno: m.ok ? undefined : m.name, mapError: m.value.errorName, nents: m.value.nents, totalLen: hex(m.value.totalLen) });
        if (!mapped) return;
        t.equal(m.value.totalLen, ranges.length * CHUNK, 'the sg lengths add up to the sum of the ranges', { nents: m.value.nents });
        if (setup.skip) return void t.skip('data through each range', setup.skip);
        let bufOff = 0;
        for (const [k, range] of ranges.entries()) {
          const down = randomBytes(BYTES);
          const w = libc.trySyscall(() => libc.pwrite(dev.deviceFd, down, info.offset + range.offset));
          const rd = w.ok ? imp.dmaRead(h, bufOff, BYTES) : undefined;
          t.ok(w.ok && !!rd?.ok && down.equals(rd.value.data),
            `range ${k} (BAR offset ${hex(range.offset)}): edu DMA read at dma-buf offset ${hex(bufOff)} returns the bytes written into the BAR there`,
            { regionWrite: w.ok ? 'OK' : w.name, dmaRead: rd ? (rd.ok ? 'OK' : rd.name) : 'not attempted', dmaError: rd?.value.errorName,
              first16: rd?.ok ? { expected: down.subarray(0, 16), actual: rd.value.data.subarray(0, 16) } : undefined });
          bufOff += range.length;
        }
        imp.release(h);
      } finally {
        setup.restore();
        closeFd(fd);
      }
    });
  } finally {
    imp.close();
  }
}
