// Shared plumbing of the probes that drive the hwlab_importer module: the
// exporter/importer pair, the PCI topology and IOMMU facts a map type depends
// on, and the DMA data check (edu's DMA engine through the importer's current
// mapping, compared with the exporter's BAR read and written through VFIO).
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readlinkSync, realpathSync, writeFileSync } from 'node:fs';
import type { GuestDevice } from '../../protocol/protocol.ts';
import { Importer, type ImportMode, type ImportOut, type IoctlResult } from '../lib/importer.ts';
import * as libc from '../lib/libc.ts';
import type { Subtest } from '../lib/tap.ts';
import { ACS_BITS, acsBitNames, EXT_CAP, extCapabilities, PCI_ACS_CTRL, sysfsConfig } from '../lib/pci-config.ts';
import { PCI_COMMAND, PCI_COMMAND_MEMORY, VfioDevice, type RegionInfo } from '../lib/vfio.ts';
import { deviceById, exportDiag, hex, type ProbeContext } from './common.ts';

/** The edu endpoint the importer attaches for (ctx.params.importer). */
export function importerDevice(ctx: ProbeContext): GuestDevice {
  return deviceById(ctx, ctx.params.importer as string, 'edu');
}

/** Sets PCI_COMMAND.MEM if it is clear: a buffer exported with it clear is born revoked. */
export function ensureMemoryOn(dev: VfioDevice): { before: number; after: number } {
  const before = dev.configRead(PCI_COMMAND, 2);
  if (!(before & PCI_COMMAND_MEMORY)) dev.configWrite(PCI_COMMAND, 2, before | PCI_COMMAND_MEMORY);
  return { before, after: dev.configRead(PCI_COMMAND, 2) };
}

/** Exports the whole BAR as one range and records the result as a TAP point. */
export function exportBar(t: Subtest, ctx: ProbeContext, dev: VfioDevice, info: RegionInfo, what: string): number | null {
  const req = { region: info.index, ranges: [{ offset: 0, length: info.size }] };
  const r = dev.exportDmabuf(ctx.abi, req);
  return t.ok(r.ok && r.value > 0, what, exportDiag(ctx.abi, req, r)) && r.ok ? r.value : null;
}

/** IMPORT on behalf of the edu, naming the exporter so REPORT can place the sg addresses. */
export function importFor(
  imp: Importer, fd: number, importer: GuestDevice, exporter: GuestDevice, bar: number, mode: ImportMode = 'dynamic',
): IoctlResult<ImportOut> {
  // 64-bit mask: a 64-bit BAR above 4 GiB is otherwise out of the driverless edu's 32-bit default.
  return imp.import({ fd, mode, importerBdf: importer.bdf, exporterBdf: exporter.bdf, exporterBar: bar, dmaMaskBits: 64 });
}

export function importDiag(r: IoctlResult<ImportOut>): Record<string, unknown> {
  return r.ok ? { handle: r.value.handle, dmabufSize: hex(r.value.dmabufSize) }
    : { errno: r.name, error: r.value.errorName, stage: r.value.stage };
}

/** errno name of a failed importer call, 'OK' on success. */
export const result = (r: { ok: boolean; name?: string }): string => (r.ok ? 'OK' : (r as { name: string }).name);

// ---- topology and IOMMU facts from sysfs ----------------------------------

const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** PCI devices from the root complex down to bdf (bridges first, bdf last). */
export function pciPath(bdf: string): string[] {
  return realpathSync(`/sys/bus/pci/devices/${bdf}`).split('/').filter((c) => BDF.test(c));
}

/** The nearest bridge both devices sit below, or null when only the host bridge joins them. */
export function commonUpstreamBridge(a: string, b: string): string | null {
  const pb = new Set(pciPath(b).slice(0, -1));
  const pa = pciPath(a).slice(0, -1);
  for (let i = pa.length - 1; i >= 0; i--) if (pb.has(pa[i])) return pa[i];
  return null;
}

/** ACS control bits of a device from its raw sysfs config space (0 without an ACS capability). */
export function acsControl(bdf: string): number {
  const { read, size } = sysfsConfig(bdf);
  const acs = extCapabilities(read, size).find((c) => c.id === EXT_CAP.ACS);
  return acs ? read(acs.offset + PCI_ACS_CTRL, 2) : 0;
}
const ACS_REDIRECT = ACS_BITS.RR | ACS_BITS.CR | ACS_BITS.EC;

export interface PairTopology {
  exporterPath: string[];
  importerPath: string[];
  /** Nearest common upstream bridge, null when only the host bridge joins the two. */
  commonBridge: string | null;
  /** Devices on the walk pci_p2pdma's calc_map_type_and_dist() makes whose ACS redirects (RR, CR or EC set). */
  acsRedirect: { bdf: string; ctrl: string[] }[];
}

/**
 * The walk of calc_map_type_and_dist(): the exporter's side up to and
 * including the common bridge, the importer's side up to but excluding it.
 */
export function pairTopology(exporter: string, importer: string): PairTopology {
  const ep = pciPath(exporter).reverse();
  const ip = pciPath(importer).reverse();
  const common = commonUpstreamBridge(exporter, importer);
  const walk = [
    ...(common ? ep.slice(0, ep.indexOf(common) + 1) : ep),
    ...(common ? ip.slice(0, ip.indexOf(common)) : ip),
  ];
  const acsRedirect = walk.map((bdf) => ({ bdf, ctrl: acsControl(bdf) }))
    .filter((x) => x.ctrl & ACS_REDIRECT).map((x) => ({ bdf: x.bdf, ctrl: acsBitNames(x.ctrl) }));
  return { exporterPath: ep.reverse(), importerPath: ip.reverse(), commonBridge: common, acsRedirect };
}

/** The device's IOMMU default domain type (DMA, DMA-FQ, identity...), or null without an IOMMU group. */
export function iommuDomainType(bdf: string): string | null {
  const p = `/sys/bus/pci/devices/${bdf}/iommu_group/type`;
  return existsSync(p) ? readFileSync(p, 'utf8').trim() : null;
}

export function iommuGroupOf(bdf: string): number | null {
  try {
    return Number(readlinkSync(`/sys/bus/pci/devices/${bdf}/iommu_group`).split('/').pop());
  } catch {
    return null;
  }
}

/** True for the DMA-API-translating domain types (what use_dma_iommu() means). */
export const isTranslatingDomain = (type: string | null) => type === 'DMA' || type === 'DMA-FQ';

/**
 * How the data checks of a pair can reach the exporter. A bus-address mapping
 * hands edu the BAR's bus address untranslated; a real switch routes that TLP
 * straight to the peer, but QEMU sends all of edu's DMA through the vIOMMU,
 * where that address is not mapped. The contract's remedy is an identity
 * domain: for a bus-address pair whose importer translates, the importer's
 * (driverless) IOMMU group is switched to identity until restore().
 */
export interface DataPathSetup {
  /** Why data checks cannot run, or null when they can. */
  skip: string | null;
  restore: () => void;
}

export function prepareDataPath(t: Subtest, exporter: GuestDevice, importer: GuestDevice): DataPathSetup {
  const none = { skip: null, restore: () => {} };
  const topo = pairTopology(exporter.bdf, importer.bdf);
  const before = iommuDomainType(importer.bdf);
  if (topo.commonBridge === null || topo.acsRedirect.length > 0 || !isTranslatingDomain(before)) return none;
  const file = `/sys/bus/pci/devices/${importer.bdf}/iommu_group/type`;
  const name = `${importer.id}'s IOMMU group switched from ${before} to identity for the data checks (bus-address pair: QEMU would translate the bus address through the vIOMMU)`;
  try {
    writeFileSync(file, 'identity');
  } catch (e) {
    const reason = `cannot switch ${importer.id}'s IOMMU group to identity (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); QEMU translates every edu DMA through the vIOMMU (domain ${before}), where the BAR's bus address is not mapped`;
    t.skip(name, reason);
    return { skip: reason, restore: () => {} };
  }
  t.equal(iommuDomainType(importer.bdf), 'identity', name, { file });
  return {
    skip: null,
    restore: () => {
      let error: string | undefined;
      try {
        writeFileSync(file, before!);
      } catch (e) {
        error = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
      }
      t.equal(iommuDomainType(importer.bdf), before, `${importer.id}'s IOMMU group restored to ${before}`, { error });
    },
  };
}

export interface CpuInfo { vendor: string; family: number; model: string }
export function cpuInfo(): CpuInfo {
  const text = readFileSync('/proc/cpuinfo', 'utf8');
  const field = (k: string) => new RegExp(`^${k}\\s*:\\s*(.*)$`, 'm').exec(text)?.[1]?.trim() ?? '';
  return { vendor: field('vendor_id'), family: Number(field('cpu family')), model: field('model name') };
}

// ---- the DMA data path -----------------------------------------------------
// Importer.dmaRead/dmaWrite make edu's DMA engine copy through the DMA address
// of the import's current mapping; they fail ENODEV when it is not mapped.

/** Bytes the data check moves per transfer: well inside edu's 4 KiB buffer. */
export const DATA_BYTES = 512;

function firstDifference(a: Buffer, b: Buffer): Record<string, unknown> | undefined {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      return { at: i, expected: a.subarray(i, i + 16), actual: b.subarray(i, i + 16), lengths: [a.length, b.length] };
    }
  }
  return a.length === b.length ? undefined : { lengths: [a.length, b.length] };
}

/** Where a data check reads and writes: the exporter's BAR through VFIO, at these dma-buf offsets. */
export interface DataTarget { dev: VfioDevice; region: RegionInfo; offsets: number[] }

function regionWrite(d: DataTarget, off: number, data: Buffer): libc.SysResult<number> {
  return libc.trySyscall(() => libc.pwrite(d.dev.deviceFd, data, d.region.offset + off));
}
function regionRead(d: DataTarget, off: number, len: number): libc.SysResult<Buffer> {
  const b = Buffer.alloc(len);
  return libc.trySyscall(() => {
    const n = libc.pread(d.dev.deviceFd, b, d.region.offset + off);
    return n === len ? b : b.subarray(0, n);
  });
}

/**
 * For each offset: a pattern written into the BAR through VFIO must come back
 * through edu's DMA read of the mapping, and a pattern edu DMA-writes through
 * the mapping must be what VFIO then reads from the BAR. Whole BAR exported,
 * so dma-buf offsets are BAR offsets. One TAP point per direction and offset.
 */
export function checkDataPath(t: Subtest, label: string, dma: Importer, handle: number, d: DataTarget): boolean {
  let ok = true;
  for (const off of d.offsets) {
    ok = checkDmaRead(t, label, dma, handle, d, off) && ok;
    ok = checkDmaWrite(t, label, dma, handle, d, off) && ok;
  }
  return ok;
}

/**
 * edu DMA-reads `DATA_BYTES` at dma-buf offset `off` that were just written
 * into the BAR through VFIO. Each edu transfer costs 100 ms (QEMU's edu starts
 * a DMA on a 100 ms timer), so callers that only need to know a mapping is
 * live use this one transfer instead of checkDataPath's four.
 */
export function checkDmaRead(t: Subtest, label: string, dma: Importer, handle: number, d: DataTarget, off: number): boolean {
  const down = randomBytes(DATA_BYTES);
  const w = regionWrite(d, off, down);
  const r = w.ok ? dma.dmaRead(handle, off, DATA_BYTES) : undefined;
  return t.ok(w.ok && !!r?.ok && !firstDifference(down, r.value.data),
    `${label}: edu DMA read at dma-buf offset ${hex(off)} returns the ${DATA_BYTES} bytes written into the BAR through VFIO`,
    {
      regionWrite: w.ok ? 'OK' : w.name,
      dmaRead: r ? (r.ok ? 'OK' : r.name) : 'not attempted',
      dmaError: r?.value.errorName,
      mismatch: r?.ok ? firstDifference(down, r.value.data) : undefined,
    });
}

/** edu DMA-writes `DATA_BYTES` at dma-buf offset `off`; they must read back from the BAR through VFIO. */
function checkDmaWrite(t: Subtest, label: string, dma: Importer, handle: number, d: DataTarget, off: number): boolean {
  const up = randomBytes(DATA_BYTES);
  const dw = dma.dmaWrite(handle, off, up);
  const back = dw.ok ? regionRead(d, off, DATA_BYTES) : undefined;
  return t.ok(dw.ok && !!back?.ok && !firstDifference(up, back.value),
    `${label}: ${DATA_BYTES} bytes edu DMA-writes at dma-buf offset ${hex(off)} read back from the BAR through VFIO`,
    {
      dmaWrite: dw.ok ? 'OK' : dw.name,
      dmaError: dw.value.errorName,
      regionRead: back ? (back.ok ? 'OK' : back.name) : 'not attempted',
      mismatch: back?.ok ? firstDifference(up, back.value) : undefined,
    });
}

/** A stale mapping: edu's DMA read must be refused because the import is no longer mapped. */
export function checkNoDataPath(t: Subtest, label: string, dma: Importer, handle: number, offset: number): boolean {
  const r = dma.dmaRead(handle, offset, DATA_BYTES);
  return t.equal(result(r), 'ENODEV', `${label}: edu DMA read through the dropped mapping fails ENODEV`,
    { dmaError: r.value.errorName });
}

/** dma-buf offsets the data check covers: the first and the last page of the BAR. */
export function dataOffsets(size: number): number[] {
  const last = size - 4096;
  return last > 0 ? [0, last] : [0];
}
