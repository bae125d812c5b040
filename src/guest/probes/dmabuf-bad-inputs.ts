// dmabuf-bad-inputs: errno of VFIO_DEVICE_FEATURE_DMA_BUF for each invalid request.
// Expectations follow the contract (7.2 check order); the `expect` param may
// override any of them, which is how a lab proves a wrong errno gets reported.
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import {
  VFIO_DEVICE_FEATURE_DMA_BUF as DMA_BUF, VFIO_DEVICE_FEATURE_GET as GET, VFIO_DEVICE_FEATURE_PROBE as PROBE,
  VFIO_DEVICE_FEATURE_SET as SET, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ROM_REGION_INDEX, FEATURE_HEADER_SIZE, type ExportRequest,
} from '../lib/vfio.ts';
import type { BadInputCase } from './catalog.ts';
import { closeFd, exportDiag, outcome, withDevice, type ProbeContext } from './common.ts';
import { checkNoKernelReports } from './observe.ts';

/** What the cases need to know about the device: the region under test and the shape of its BARs. */
interface Geometry {
  region: number;
  size: number;
  page: number;
  /** First BAR of each kind on this device (from the BAR registers and VFIO's region sizes), if any. */
  unimplementedBar?: number;
  upperHalfBar?: number;
  ioBar?: number;
}

interface Case {
  id: BadInputCase;
  what: string;
  /** The request, or why this device cannot pose it (the case is skipped with that reason). */
  req: (g: Geometry) => ExportRequest | string;
  /** Expected outcome per ABI; null: the request cannot be expressed in that ABI. */
  ranges: string;
  v0: string | null;
}

const page1 = (region: number, page: number): ExportRequest => ({ region, ranges: [{ offset: 0, length: page }] });
/** Cases on the region under test need a whole page of it. */
const inRegion = (f: (g: Geometry) => ExportRequest) => (g: Geometry) =>
  g.size >= g.page ? f(g) : `region ${g.region} is ${g.size} bytes, less than a page`;
const onBar = (kind: 'unimplementedBar' | 'upperHalfBar' | 'ioBar', what: string) => (g: Geometry) =>
  g[kind] === undefined ? `this device has no ${what}` : page1(g[kind]!, g.page);
const U64_END = 1n << 64n;

// In the order 7.2 checks them (contract section 1). v0 refused every non-memory BAR
// with EINVAL, had no zero-length or wrap (EOVERFLOW) check, and only one range.
const CASES: Case[] = [
  { id: 'set_without_probe', what: 'SET without PROBE', req: inRegion((g) => ({ ...page1(g.region, g.page), featureFlags: SET | DMA_BUF })), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'get_set_without_probe', what: 'GET|SET without PROBE', req: inRegion((g) => ({ ...page1(g.region, g.page), featureFlags: GET | SET | DMA_BUF })), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'probe', what: 'PROBE|GET', req: inRegion((g) => ({ ...page1(g.region, g.page), featureFlags: PROBE | GET | DMA_BUF })), ranges: 'OK', v0: 'OK' },
  // One byte short of struct vfio_device_feature_dma_buf (16 bytes; v0's was 24).
  { id: 'argsz_short', what: 'argsz one byte short of the dma_buf header', req: inRegion((g) => ({ ...page1(g.region, g.page), argsz: FEATURE_HEADER_SIZE + 15 })), ranges: 'EINVAL', v0: 'EINVAL' },
  { id: 'flags_nonzero', what: 'flags = 1', req: inRegion((g) => ({ ...page1(g.region, g.page), flags: 1 })), ranges: 'EINVAL', v0: null },
  { id: 'nr_ranges_zero', what: 'nr_ranges = 0', req: inRegion((g) => ({ ...page1(g.region, g.page), nrRangesOverride: 0 })), ranges: 'EINVAL', v0: null },
  { id: 'rom_region', what: 'ROM region index 6', req: (g) => page1(VFIO_PCI_ROM_REGION_INDEX, g.page), ranges: 'ENODEV', v0: 'ENODEV' },
  { id: 'config_region', what: 'config space region index 7', req: (g) => page1(VFIO_PCI_CONFIG_REGION_INDEX, g.page), ranges: 'ENODEV', v0: 'ENODEV' },
  { id: 'unimplemented_bar', what: 'an unimplemented BAR', req: onBar('unimplementedBar', 'unimplemented BAR'), ranges: 'ENODEV', v0: 'EINVAL' },
  { id: 'upper_half_bar', what: 'the upper half of a 64-bit BAR', req: onBar('upperHalfBar', '64-bit memory BAR'), ranges: 'ENODEV', v0: 'EINVAL' },
  { id: 'io_bar', what: 'an I/O-port BAR', req: onBar('ioBar', 'I/O-port BAR'), ranges: 'EINVAL', v0: 'EINVAL' },
  // v0 had no zero-length check: it exports an empty dma-buf.
  { id: 'zero_length', what: 'zero length', req: inRegion((g) => ({ region: g.region, ranges: [{ offset: 0, length: 0 }] })), ranges: 'EINVAL', v0: 'OK' },
  { id: 'unaligned_offset', what: 'offset of half a page', req: inRegion((g) => ({ region: g.region, ranges: [{ offset: g.page / 2, length: g.page }] })), ranges: 'EINVAL', v0: 'EINVAL' },
  // Two page-aligned lengths of 2^63 each: their sum wraps size_t.
  { id: 'lengths_wrap', what: 'two ranges whose lengths sum past 2^64', req: inRegion((g) => ({ region: g.region, ranges: [{ offset: 0, length: 1n << 63n }, { offset: 0, length: 1n << 63n }] })), ranges: 'EINVAL', v0: null },
  // BAR start + offset wraps 64 bits (v0 compared offset + length with the BAR size: EINVAL).
  { id: 'offset_wraps', what: 'offset 2^64 - one page (BAR start + offset wraps)', req: inRegion((g) => ({ region: g.region, ranges: [{ offset: U64_END - BigInt(g.page), length: g.page }] })), ranges: 'EOVERFLOW', v0: 'EINVAL' },
  { id: 'range_past_end', what: 'two pages starting one page before the region end', req: inRegion((g) => ({ region: g.region, ranges: [{ offset: g.size - g.page, length: 2 * g.page }] })), ranges: 'EINVAL', v0: 'EINVAL' },
];

const PCI_BASE_ADDRESS_0 = 0x10;

/** BAR shapes from the (VFIO-virtualised) BAR registers and region sizes. */
function barShapes(dev: { regionInfo(i: number): { size: number }; configRead(o: number, s: 4): number }): Pick<Geometry, 'unimplementedBar' | 'upperHalfBar' | 'ioBar'> {
  const out: Pick<Geometry, 'unimplementedBar' | 'upperHalfBar' | 'ioBar'> = {};
  for (let bar = 0; bar < 6; bar++) {
    const reg = dev.configRead(PCI_BASE_ADDRESS_0 + 4 * bar, 4);
    const size = dev.regionInfo(bar).size;
    if (size > 0 && (reg & 1) === 1) out.ioBar ??= bar;
    else if (size > 0 && (reg & 0x6) === 0x4 && bar < 5) {
      out.upperHalfBar ??= bar + 1;
      bar++;
    } else if (size === 0) out.unimplementedBar ??= bar;
  }
  return out;
}

export default async function dmabufBadInputs(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const overrides = ctx.params.expect as Record<string, string>;
  const km = libc.trySyscall(() => Kmsg.mark());
  try {
    await withDevice(ctx, (dev) => {
      const info = dev.regionInfo(region);
      const g: Geometry = { region, size: info.size, page: libc.pageSize(), ...barShapes(dev) };
      t.comment(`region ${region}: ${info.size} bytes; BARs: unimplemented ${g.unimplementedBar ?? '-'}, upper half ${g.upperHalfBar ?? '-'}, I/O ${g.ioBar ?? '-'}`);
      for (const c of CASES) {
        const natural = abi === 'ranges' ? c.ranges : c.v0;
        const name = `${c.id}: ${c.what}`;
        if (natural === null) {
          t.skip(name, `not expressible in the ${abi} ABI`);
          continue;
        }
        const req = c.req(g);
        if (typeof req === 'string') {
          t.skip(name, req);
          continue;
        }
        const expected = overrides[c.id] ?? natural;
        const r = dev.exportDmabuf(abi, req);
        // A real fd from an unexpected success must not leak; PROBE returns 0, which is not ours.
        if (r.ok && r.value > 0 && c.id !== 'probe') closeFd(r.value);
        t.equal(outcome(r), expected, `${name} -> ${expected}`, { case: c.id, ...exportDiag(abi, req, r) });
      }
    });
  } finally {
    checkNoKernelReports(t, km, 'during bad inputs');
  }
}
