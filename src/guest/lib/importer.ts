// hwlab_importer uAPI (guest/kmod/hwlab_importer/hwlab_importer.h) as explicit
// little-endian byte layouts, and an Importer handle on /dev/hwlab_importer.
// LAYOUT is the single source of every offset the encoders use; the unit test
// checks it against the C header compiled with gcc, and the encoders against
// byte images. README.md beside the module documents the semantics.
import koffi from 'koffi';
import * as libc from './libc.ts';

export const IMPORTER_DEVICE = '/dev/hwlab_importer';
export const IOC_MAGIC = 0xb9;
export const MAX_IMPORTS = 16;
export const MAX_REPORT = 4096;
export const BDF_LEN = 16;
/** Most bytes one DMA call moves (edu's buffer). */
export const DMA_MAX = 4096;

/** Byte offsets and sizes of the header's structs; field names are the C names. */
export const LAYOUT = {
  hwlab_importer_import: {
    size: 72,
    fields: {
      dmabuf_fd: 0, mode: 4, importer_bdf: 8, exporter_bdf: 24, exporter_bar: 40, dma_mask_bits: 44,
      flags: 48, handle: 52, error: 56, stage: 60, dmabuf_size: 64,
    },
  },
  hwlab_importer_map: {
    size: 40,
    fields: { handle: 0, flags: 4, nents: 8, error: 12, total_len: 16, invalidate_count: 24, mapped: 32, was_mapped: 36 },
  },
  hwlab_importer_sg_entry: { size: 16, fields: { dma_addr: 0, len: 8 } },
  hwlab_importer_report: {
    size: 128,
    fields: {
      handle: 0, max_entries: 4, entries: 8, nents: 16, mapped: 20, invalidate_count: 24, total_len: 32,
      map_type_guess: 40, mode: 44, p2p_distance: 48, facts: 52, bar_bus_start: 56, bar_phys_start: 64,
      bar_len: 72, dmabuf_size: 80, map_count: 88, last_map_error: 96, pad: 100, importer_dma_mask: 104,
      importer_bdf: 112,
    },
  },
  hwlab_importer_release: { size: 8, fields: { handle: 0, pad: 4 } },
  hwlab_importer_wait: { size: 24, fields: { handle: 0, timeout_ms: 4, after_count: 8, invalidate_count: 16 } },
  hwlab_importer_dma: { size: 40, fields: { handle: 0, direction: 4, offset: 8, len: 16, buf: 24, error: 32, pad: 36 } },
} as const;

const F = {
  imp: LAYOUT.hwlab_importer_import.fields,
  map: LAYOUT.hwlab_importer_map.fields,
  ent: LAYOUT.hwlab_importer_sg_entry.fields,
  rep: LAYOUT.hwlab_importer_report.fields,
  rel: LAYOUT.hwlab_importer_release.fields,
  wait: LAYOUT.hwlab_importer_wait.fields,
  dma: LAYOUT.hwlab_importer_dma.fields,
};

// asm-generic ioctl encoding: dir<<30 | size<<16 | type<<8 | nr.
const IOC_WRITE = 1, IOC_READ = 2;
const ioc = (dir: number, nr: number, size: number) => ((dir << 30) | (size << 16) | (IOC_MAGIC << 8) | nr) >>> 0;
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);
export const IOCTL_IMPORT = iowr(1, LAYOUT.hwlab_importer_import.size); //   0xc048b901
export const IOCTL_MAP = iowr(2, LAYOUT.hwlab_importer_map.size); //         0xc028b902
export const IOCTL_UNMAP = iowr(3, LAYOUT.hwlab_importer_map.size); //       0xc028b903
export const IOCTL_REMAP = iowr(4, LAYOUT.hwlab_importer_map.size); //       0xc028b904
export const IOCTL_REPORT = iowr(5, LAYOUT.hwlab_importer_report.size); //   0xc080b905
export const IOCTL_RELEASE = ioc(IOC_WRITE, 6, LAYOUT.hwlab_importer_release.size); // 0x4008b906
export const IOCTL_WAIT = iowr(7, LAYOUT.hwlab_importer_wait.size); //       0xc018b907
export const IOCTL_DMA = iowr(8, LAYOUT.hwlab_importer_dma.size); //         0xc028b908

/** enum hwlab_importer_mode */
export const MODE = { dynamic: 0, pinned: 1, noP2p: 2 } as const;
export type ImportMode = keyof typeof MODE;

/** enum hwlab_importer_dma_direction */
export const DMA_DIRECTION = { fromBuf: 0, toBuf: 1 } as const;
export type DmaDirection = keyof typeof DMA_DIRECTION;

/** enum hwlab_importer_stage, indexed by value. */
export const STAGES = ['none', 'args', 'importer-dev', 'exporter-dev', 'dma-mask', 'dma-buf-get', 'attach', 'pin'] as const;
export type Stage = (typeof STAGES)[number];

/** enum hwlab_importer_map_type, indexed by value (numbering of the contract's table). */
export const MAP_TYPES = ['unknown', 'bus-address', 'host-bridge-iova', 'host-bridge-direct'] as const;
export type MapType = (typeof MAP_TYPES)[number];

/** HWLAB_IMPORTER_FACT_* bits. */
export const FACT = {
  hasExporter: 1 << 0, inBarBus: 1 << 1, inBarPhys: 1 << 2, commonBridge: 1 << 3,
  acsRedirect: 1 << 4, iommuDma: 1 << 5, hasDriver: 1 << 6, pinned: 1 << 7,
} as const;
export type Facts = Record<keyof typeof FACT, boolean>;

/** Reads a u64 as a number, refusing values a number cannot hold exactly. */
function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 at ${off} too large: ${v}`);
  return Number(v);
}

function writeName(b: Buffer, off: number, name: string, what: string): void {
  const bytes = Buffer.from(name, 'latin1');
  if (bytes.length >= BDF_LEN) throw new RangeError(`${what} "${name}" longer than ${BDF_LEN - 1} bytes`);
  bytes.copy(b, off);
}
function readName(b: Buffer, off: number): string {
  const s = b.subarray(off, off + BDF_LEN);
  const nul = s.indexOf(0);
  return s.subarray(0, nul < 0 ? BDF_LEN : nul).toString('latin1');
}
const errName = (e: number) => (e === 0 ? 'OK' : libc.errnoName(e));

export interface ImportRequest {
  fd: number;
  mode?: ImportMode | number;
  /** PCI device to attach on behalf of; '' or absent = first QEMU edu device (1234:11e8). */
  importerBdf?: string;
  /** Exporter PCI device and BAR, only for REPORT's map type guess. */
  exporterBdf?: string;
  exporterBar?: number;
  /** 1..64: set the importer's DMA mask first (device must have no driver). */
  dmaMaskBits?: number;
  /** Must be 0; settable to probe the EINVAL. */
  flags?: number;
}

export function encodeImport(r: ImportRequest): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_import.size);
  b.writeInt32LE(r.fd, F.imp.dmabuf_fd);
  b.writeUInt32LE(typeof r.mode === 'string' ? MODE[r.mode] : (r.mode ?? MODE.dynamic) >>> 0, F.imp.mode);
  writeName(b, F.imp.importer_bdf, r.importerBdf ?? '', 'importerBdf');
  writeName(b, F.imp.exporter_bdf, r.exporterBdf ?? '', 'exporterBdf');
  b.writeUInt32LE((r.exporterBar ?? 0) >>> 0, F.imp.exporter_bar);
  b.writeUInt32LE((r.dmaMaskBits ?? 0) >>> 0, F.imp.dma_mask_bits);
  b.writeUInt32LE((r.flags ?? 0) >>> 0, F.imp.flags);
  return b;
}

export interface ImportOut {
  handle: number;
  /** errno of the step that failed (0 on success) and its name. */
  error: number;
  errorName: string;
  stage: Stage | `stage-${number}`;
  dmabufSize: number;
}
export function decodeImport(b: Buffer): ImportOut {
  const error = b.readUInt32LE(F.imp.error);
  const stage = b.readUInt32LE(F.imp.stage);
  return {
    handle: b.readUInt32LE(F.imp.handle), error, errorName: errName(error),
    stage: STAGES[stage] ?? `stage-${stage}`, dmabufSize: u64(b, F.imp.dmabuf_size),
  };
}

export function encodeMap(handle: number, flags = 0): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_map.size);
  b.writeUInt32LE(handle >>> 0, F.map.handle);
  b.writeUInt32LE(flags >>> 0, F.map.flags);
  return b;
}
export interface MapOut {
  nents: number;
  /** errno of dma_buf_map_attachment or the fence wait (MAP, REMAP); 0 otherwise. */
  error: number;
  errorName: string;
  totalLen: number;
  invalidateCount: number;
  mapped: boolean;
  wasMapped: boolean;
}
export function decodeMap(b: Buffer): MapOut {
  const error = b.readUInt32LE(F.map.error);
  return {
    nents: b.readUInt32LE(F.map.nents), error, errorName: errName(error), totalLen: u64(b, F.map.total_len),
    invalidateCount: u64(b, F.map.invalidate_count), mapped: b.readUInt32LE(F.map.mapped) !== 0,
    wasMapped: b.readUInt32LE(F.map.was_mapped) !== 0,
  };
}

/** entries: address of max_entries * 16 bytes of memory the kernel may write (0n with maxEntries 0). */
export function encodeReport(handle: number, maxEntries: number, entries: bigint): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_report.size);
  b.writeUInt32LE(handle >>> 0, F.rep.handle);
  b.writeUInt32LE(maxEntries >>> 0, F.rep.max_entries);
  b.writeBigUInt64LE(entries, F.rep.entries);
  return b;
}
export interface SgEntry { dmaAddr: bigint; len: number }
export function decodeEntries(b: Buffer, n: number): SgEntry[] {
  const size = LAYOUT.hwlab_importer_sg_entry.size;
  return Array.from({ length: n }, (_, i) => ({
    dmaAddr: b.readBigUInt64LE(i * size + F.ent.dma_addr), len: u64(b, i * size + F.ent.len),
  }));
}
export function decodeFacts(bits: number): Facts {
  return Object.fromEntries(Object.entries(FACT).map(([k, v]) => [k, (bits & v) !== 0])) as Facts;
}
export interface ReportOut {
  /** Entries in the mapping; entries.length may be smaller (max_entries, MAX_REPORT). */
  nents: number;
  mapped: boolean;
  invalidateCount: number;
  totalLen: number;
  mapType: MapType | `map-type-${number}`;
  mode: number;
  /** pci_p2pdma_distance() from the exporter to the importer; -1 = not supported or no exporter given. */
  p2pDistance: number;
  factBits: number;
  facts: Facts;
  barBusStart: bigint;
  barPhysStart: bigint;
  barLen: number;
  dmabufSize: number;
  mapCount: number;
  lastMapError: number;
  lastMapErrorName: string;
  importerDmaMask: bigint;
  importerBdf: string;
  entries: SgEntry[];
}
export function decodeReport(b: Buffer, entries: SgEntry[] = []): ReportOut {
  const guess = b.readUInt32LE(F.rep.map_type_guess);
  const factBits = b.readUInt32LE(F.rep.facts);
  const lastMapError = b.readUInt32LE(F.rep.last_map_error);
  return {
    nents: b.readUInt32LE(F.rep.nents), mapped: b.readUInt32LE(F.rep.mapped) !== 0,
    invalidateCount: u64(b, F.rep.invalidate_count), totalLen: u64(b, F.rep.total_len),
    mapType: MAP_TYPES[guess] ?? `map-type-${guess}`, mode: b.readUInt32LE(F.rep.mode),
    p2pDistance: b.readInt32LE(F.rep.p2p_distance), factBits, facts: decodeFacts(factBits),
    barBusStart: b.readBigUInt64LE(F.rep.bar_bus_start), barPhysStart: b.readBigUInt64LE(F.rep.bar_phys_start),
    barLen: u64(b, F.rep.bar_len), dmabufSize: u64(b, F.rep.dmabuf_size), mapCount: u64(b, F.rep.map_count),
    lastMapError, lastMapErrorName: errName(lastMapError),
    importerDmaMask: b.readBigUInt64LE(F.rep.importer_dma_mask), importerBdf: readName(b, F.rep.importer_bdf),
    entries,
  };
}

export function encodeRelease(handle: number): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_release.size);
  b.writeUInt32LE(handle >>> 0, F.rel.handle);
  return b;
}

export function encodeWait(handle: number, afterCount: number, timeoutMs: number): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_wait.size);
  b.writeUInt32LE(handle >>> 0, F.wait.handle);
  b.writeUInt32LE(timeoutMs >>> 0, F.wait.timeout_ms);
  b.writeBigUInt64LE(BigInt(afterCount), F.wait.after_count);
  return b;
}
export function decodeWait(b: Buffer): { invalidateCount: number } {
  return { invalidateCount: u64(b, F.wait.invalidate_count) };
}

export interface DmaRequest {
  handle: number;
  direction: DmaDirection | number;
  /** Byte offset into the dma-buf (its sg segments concatenated in order). */
  offset: number | bigint;
  /** 1..DMA_MAX. */
  len: number;
  /** Address of len bytes of native memory (the kernel reads or writes it). */
  buf: bigint;
  /** Must be 0; settable to probe the EINVAL. */
  pad?: number;
}
export function encodeDma(r: DmaRequest): Buffer {
  const b = Buffer.alloc(LAYOUT.hwlab_importer_dma.size);
  b.writeUInt32LE(r.handle >>> 0, F.dma.handle);
  b.writeUInt32LE(typeof r.direction === 'string' ? DMA_DIRECTION[r.direction] : r.direction >>> 0, F.dma.direction);
  b.writeBigUInt64LE(BigInt(r.offset), F.dma.offset);
  b.writeBigUInt64LE(BigInt(r.len), F.dma.len);
  b.writeBigUInt64LE(r.buf, F.dma.buf);
  b.writeUInt32LE((r.pad ?? 0) >>> 0, F.dma.pad);
  return b;
}
export interface DmaOut {
  /** errno of the failed step (ENODEV: not mapped, e.g. invalidated by a revoke), 0 on success. */
  error: number;
  errorName: string;
}
export function decodeDma(b: Buffer): DmaOut {
  const error = b.readUInt32LE(F.dma.error);
  return { error, errorName: errName(error) };
}

/**
 * Like libc.SysResult, but value is present on failure too: IMPORT, MAP, REMAP
 * and UNMAP write their struct back when the dma-buf call fails, so a failed
 * IMPORT still says which step failed (value.stage). On failures before the
 * kernel wrote anything, value decodes what was sent.
 */
export type IoctlResult<T> = { ok: true; value: T } | { ok: false; errno: number; name: string; value: T };

/**
 * len bytes of native memory for the kernel to read or write: a Buffer's
 * backing store may live on the V8 heap and move. At least one byte, so a
 * zero length still reaches the kernel (which answers EINVAL).
 */
function nativeBytes(len: number): unknown {
  if (!Number.isSafeInteger(len) || len < 0) throw new RangeError(`${len} is not a byte count`);
  return koffi.alloc('uint8_t', Math.max(1, len));
}

function run<T>(fd: number, req: number, arg: Buffer, decode: (b: Buffer) => T): IoctlResult<T> {
  const r = libc.trySyscall(() => libc.ioctl(fd, req, arg));
  return r.ok ? { ok: true, value: decode(arg) } : { ok: false, errno: r.errno, name: r.name, value: decode(arg) };
}

/** One session on /dev/hwlab_importer; closing it releases every import it holds. */
export class Importer {
  private constructor(readonly fd: number) {}

  static open(path = IMPORTER_DEVICE): Importer {
    return new Importer(libc.open(path, libc.O_RDWR | libc.O_CLOEXEC));
  }

  import(req: ImportRequest): IoctlResult<ImportOut> {
    return run(this.fd, IOCTL_IMPORT, encodeImport(req), decodeImport);
  }

  /** Maps; EBUSY if already mapped (use remap). */
  map(handle: number): IoctlResult<MapOut> {
    return run(this.fd, IOCTL_MAP, encodeMap(handle), decodeMap);
  }

  /** Unmaps if mapped; succeeds on an unmapped import (value.wasMapped says which). */
  unmap(handle: number): IoctlResult<MapOut> {
    return run(this.fd, IOCTL_UNMAP, encodeMap(handle), decodeMap);
  }

  /** Unmap if mapped, then map, in one reservation-lock section. */
  remap(handle: number): IoctlResult<MapOut> {
    return run(this.fd, IOCTL_REMAP, encodeMap(handle), decodeMap);
  }

  /** State of an import and up to maxEntries segments of its mapping. */
  report(handle: number, maxEntries = 64): IoctlResult<ReportOut> {
    const n = Math.min(Math.max(0, maxEntries), MAX_REPORT);
    const bytes = n * LAYOUT.hwlab_importer_sg_entry.size;
    // Native memory: a Buffer's backing store may live on the V8 heap and move.
    const mem = n ? koffi.alloc('uint8_t', bytes) : null;
    try {
      const arg = encodeReport(handle, n, mem ? koffi.address(mem) : 0n);
      return run(this.fd, IOCTL_REPORT, arg, (b) => {
        const count = Math.min(n, b.readUInt32LE(F.rep.nents));
        const ents = mem && count ? decodeEntries(Buffer.from(koffi.view(mem, bytes)), count) : [];
        return decodeReport(b, ents);
      });
    } finally {
      if (mem) koffi.free(mem);
    }
  }

  /** Waits until invalidateCount > afterCount: ok, or ETIMEDOUT / EINTR / ENOENT. */
  waitInvalidate(handle: number, afterCount: number, timeoutMs: number): IoctlResult<{ invalidateCount: number }> {
    return run(this.fd, IOCTL_WAIT, encodeWait(handle, afterCount, timeoutMs), decodeWait);
  }

  /**
   * Reads len bytes at offset of the import's current mapping with the
   * importer device's DMA engine; value.data is empty unless ok.
   */
  dmaRead(handle: number, offset: number | bigint, len: number): IoctlResult<DmaOut & { data: Buffer }> {
    const mem = nativeBytes(len);
    try {
      const arg = encodeDma({ handle, direction: 'fromBuf', offset, len, buf: koffi.address(mem) });
      const r = run(this.fd, IOCTL_DMA, arg, decodeDma);
      // A copy: the native memory is freed below.
      const data = r.ok ? Buffer.from(new Uint8Array(koffi.view(mem, len))) : Buffer.alloc(0);
      return { ...r, value: { ...r.value, data } };
    } finally {
      koffi.free(mem);
    }
  }

  /** Writes data at offset of the import's current mapping with the importer device's DMA engine. */
  dmaWrite(handle: number, offset: number | bigint, data: Buffer): IoctlResult<DmaOut> {
    const mem = nativeBytes(data.length);
    try {
      if (data.length) Buffer.from(koffi.view(mem, data.length)).set(data);
      const arg = encodeDma({ handle, direction: 'toBuf', offset, len: data.length, buf: koffi.address(mem) });
      return run(this.fd, IOCTL_DMA, arg, decodeDma);
    } finally {
      koffi.free(mem);
    }
  }

  release(handle: number): libc.SysResult<number> {
    return libc.trySyscall(() => libc.ioctl(this.fd, IOCTL_RELEASE, encodeRelease(handle)));
  }

  close(): void {
    libc.close(this.fd);
  }
}
