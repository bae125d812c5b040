// dmabuf-bad-inputs: errno of VFIO_DEVICE_FEATURE_DMA_BUF for each invalid request.
// Expectations follow the contract (7.2 check order); the `expect` param may
// override any of them, which is how a lab proves a wrong errno gets reported.
import { describeSplats, findSplats, Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF as DMA_BUF, VFIO_DEVICE_FEATURE_GET as GET, VFIO_DEVICE_FEATURE_PROBE as PROBE,
  VFIO_DEVICE_FEATURE_SET as SET, VFIO_PCI_ROM_REGION_INDEX, type ExportRequest,
} from '../lib/vfio.ts';
import type { BadInputCase } from './catalog.ts';
import { closeFd, exportDiag, outcome, withDevice, type ProbeContext } from './common.ts';

interface Case {
  id: BadInputCase;
  what: string;
  req: (region: number, size: number, page: number) => ExportRequest;
  /** Expected outcome per ABI; null: the request cannot be expressed in that ABI. */
  ranges: string;
  v0: string | null;
}

const page1 = (region: number, page: number): ExportRequest => ({ region, ranges: [{ offset: 0, length: page }] });

const CASES: Case[] = [
  { id: 'rom_region', what: 'ROM region index 6', req: (_r, _s, p) => page1(VFIO_PCI_ROM_REGION_INDEX, p), ranges: 'ENODEV', v0: 'ENODEV' },
  { id: 'unaligned_offset', what: 'offset of half a page', req: (r, _s, p) => ({ region: r, ranges: [{ offset: p / 2, length: p }] }), ranges: 'EINVAL', v0: 'EINVAL' },
  // v0 had no zero-length check: it exports an empty dma-buf.
  { id: 'zero_length', what: 'zero length', req: (r) => ({ region: r, ranges: [{ offset: 0, length: 0 }] }), ranges: 'EINVAL', v0: 'OK' },
  { id: 'flags_nonzero', what: 'flags = 1', req: (r, _s, p) => ({ ...page1(r, p), flags: 1 }), ranges: 'EINVAL', v0: null },
  { id: 'nr_ranges_zero', what: 'nr_ranges = 0', req: (r, _s, p) => ({ ...page1(r, p), nrRangesOverride: 0 }), ranges: 'EINVAL', v0: null },
  { id: 'range_past_end', what: 'two pages starting one page before the region end', req: (r, s, p) => ({ region: r, ranges: [{ offset: s - p, length: 2 * p }] }), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'set_without_probe', what: 'SET without PROBE', req: (r, _s, p) => ({ ...page1(r, p), featureFlags: SET | DMA_BUF }), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'get_set_without_probe', what: 'GET|SET without PROBE', req: (r, _s, p) => ({ ...page1(r, p), featureFlags: GET | SET | DMA_BUF }), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'probe', what: 'PROBE|GET', req: (r, _s, p) => ({ ...page1(r, p), featureFlags: PROBE | GET | DMA_BUF }), ranges: 'OK', v0: 'OK' },
];

export default async function dmabufBadInputs(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const overrides = ctx.params.expect as Record<string, string>;
  const km = libc.trySyscall(() => Kmsg.mark());
  try {
    await withDevice(ctx, (dev) => {
      const info = dev.regionInfo(region);
      const page = libc.pageSize();
      if (!t.ok(info.size >= page, `region ${region} is at least one page`, { size: info.size })) return;
      for (const c of CASES) {
        const natural = abi === 'ranges' ? c.ranges : c.v0;
        const name = `${c.id}: ${c.what}`;
        if (natural === null) {
          t.skip(name, `not expressible in the ${abi} ABI`);
          continue;
        }
        const expected = overrides[c.id] ?? natural;
        const req = c.req(region, info.size, page);
        const r = dev.exportDmabuf(abi, req);
        // A real fd from an unexpected success must not leak; PROBE returns 0, which is not ours.
        if (r.ok && r.value > 0 && c.id !== 'probe') closeFd(r.value);
        t.equal(outcome(r), expected, `${name} -> ${expected}`, { case: c.id, ...exportDiag(abi, req, r) });
      }
    });
  } finally {
    if (km.ok) {
      const splats = findSplats(km.value.read());
      km.value.close();
      t.ok(splats.length === 0, 'no kernel splat during bad inputs', { splats: describeSplats(splats) });
    } else {
      t.skip('no kernel splat during bad inputs', `/dev/kmsg unavailable: ${km.name}`);
    }
  }
}
