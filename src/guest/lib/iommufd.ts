// iommufd uAPI (include/uapi/linux/iommufd.h, Linux 7.2): the IOAS calls the
// dma-buf importer side needs, as explicit little-endian byte layouts, plus a
// small /dev/iommu handle. Encoders are pure so unit tests can pin their bytes.
//
// What 7.2 does with IOMMU_IOAS_MAP_FILE of a VFIO dma-buf
// (drivers/iommu/iommufd/pages.c, iopt_map_dmabuf):
// - it attaches dynamically on behalf of iommufd's own global device, with
//   allow_peer2peer and an invalidate_mappings op (iopt_revoke_notify), so no
//   VFIO device has to be attached to the IOAS for the map to succeed;
// - it asks vfio for the BAR's physical range through a private call
//   (vfio_pci_dma_buf_iommufd_map), never map_dma_buf: a revoked buffer gives
//   ENODEV (at attach or there), a buffer with more than one range EOPNOTSUPP;
// - on revoke, iopt_revoke_notify unmaps the area from every IOMMU domain and
//   sets its length to 0 for good: un-revoke does not bring it back. The area
//   itself stays in the IOAS (it keeps its IOVA range, UNMAP still removes it),
//   so "gone" is only visible to a device doing DMA through the IOAS.
// 7.2 offers no ioctl that lists areas; IOMMU_IOAS_IOVA_RANGES reports the
// allowed IOVA ranges, not the mappings, so it is not used here.
import * as libc from './libc.ts';

// iommufd ioctls are _IO(';', 0x80 + n), like VFIO's: the struct's size field carries the size.
export const IOMMUFD_TYPE = 0x3b;
const io = (nr: number) => (IOMMUFD_TYPE << 8) | nr;
export const IOMMU_DESTROY = io(0x80); //         0x3b80
export const IOMMU_IOAS_ALLOC = io(0x81); //      0x3b81
export const IOMMU_IOAS_UNMAP = io(0x86); //      0x3b86
export const IOMMU_IOAS_MAP_FILE = io(0x8f); //   0x3b8f

export const IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0;
export const IOMMU_IOAS_MAP_WRITEABLE = 1 << 1;
export const IOMMU_IOAS_MAP_READABLE = 1 << 2;

export const IOMMU_DEV = '/dev/iommu';

/** Numbers above 2^53 must be passed as bigint. */
export type U64 = number | bigint;

function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 at ${off} too large: ${v}`);
  return Number(v);
}

// struct iommu_destroy { u32 size; u32 id; }  8 bytes
export const DESTROY_SIZE = 8;
export function encodeDestroy(id: number): Buffer {
  const b = Buffer.alloc(DESTROY_SIZE);
  b.writeUInt32LE(DESTROY_SIZE, 0);
  b.writeUInt32LE(id, 4);
  return b;
}

// struct iommu_ioas_alloc { u32 size; u32 flags; u32 out_ioas_id; }  12 bytes
export const IOAS_ALLOC_SIZE = 12;
export function encodeIoasAlloc(): Buffer {
  const b = Buffer.alloc(IOAS_ALLOC_SIZE);
  b.writeUInt32LE(IOAS_ALLOC_SIZE, 0);
  return b;
}
export function decodeIoasAlloc(b: Buffer): { size: number; flags: number; ioasId: number } {
  return { size: b.readUInt32LE(0), flags: b.readUInt32LE(4), ioasId: b.readUInt32LE(8) };
}

// struct iommu_ioas_map_file { u32 size, flags, ioas_id; s32 fd; u64 start, length, iova; }  40 bytes
export const IOAS_MAP_FILE_SIZE = 40;
export interface MapFileRequest {
  ioasId: number;
  fd: number;
  /** Byte offset into the file (the dma-buf). */
  start: U64;
  length: U64;
  /** Default READABLE|WRITEABLE. */
  flags?: number;
  /** With FIXED_IOVA in flags: where to place the area. */
  iova?: U64;
}
export function encodeIoasMapFile(r: MapFileRequest): Buffer {
  const b = Buffer.alloc(IOAS_MAP_FILE_SIZE);
  b.writeUInt32LE(IOAS_MAP_FILE_SIZE, 0);
  b.writeUInt32LE((r.flags ?? (IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)) >>> 0, 4);
  b.writeUInt32LE(r.ioasId >>> 0, 8);
  b.writeInt32LE(r.fd, 12);
  b.writeBigUInt64LE(BigInt(r.start), 16);
  b.writeBigUInt64LE(BigInt(r.length), 24);
  b.writeBigUInt64LE(BigInt(r.iova ?? 0), 32);
  return b;
}
/** The kernel writes back the IOVA it placed the area at. */
export function decodeIoasMapFileIova(b: Buffer): number {
  return u64(b, 32);
}

// struct iommu_ioas_unmap { u32 size; u32 ioas_id; u64 iova; u64 length; }  24 bytes
export const IOAS_UNMAP_SIZE = 24;
export function encodeIoasUnmap(ioasId: number, iova: U64, length: U64): Buffer {
  const b = Buffer.alloc(IOAS_UNMAP_SIZE);
  b.writeUInt32LE(IOAS_UNMAP_SIZE, 0);
  b.writeUInt32LE(ioasId >>> 0, 4);
  b.writeBigUInt64LE(BigInt(iova), 8);
  b.writeBigUInt64LE(BigInt(length), 16);
  return b;
}
/** On success length holds the number of bytes unmapped. */
export function decodeIoasUnmapLength(b: Buffer): number {
  return u64(b, 16);
}

/** An IOVA range placed by MAP_FILE. */
export interface Area { ioasId: number; iova: number; length: number }

/** An open /dev/iommu. Closing it destroys every object it holds (IOAS, areas, device bindings). */
export class Iommufd {
  private constructor(readonly fd: number) {}

  static open(): Iommufd {
    return new Iommufd(libc.open(IOMMU_DEV, libc.O_RDWR | libc.O_CLOEXEC));
  }

  /** IOMMU_IOAS_ALLOC: a new, empty I/O address space; returns its object id. */
  allocIoas(): number {
    const b = encodeIoasAlloc();
    libc.ioctl(this.fd, IOMMU_IOAS_ALLOC, b);
    return decodeIoasAlloc(b).ioasId;
  }

  /** IOMMU_IOAS_MAP_FILE: the area, or the errno. */
  mapFile(r: MapFileRequest): libc.SysResult<Area> {
    const b = encodeIoasMapFile(r);
    const res = libc.trySyscall(() => libc.ioctl(this.fd, IOMMU_IOAS_MAP_FILE, b));
    return res.ok ? { ok: true, value: { ioasId: r.ioasId, iova: decodeIoasMapFileIova(b), length: Number(r.length) } } : res;
  }

  /** IOMMU_IOAS_UNMAP: bytes unmapped, or the errno (ENOENT when nothing was mapped there). */
  unmap(ioasId: number, iova: U64, length: U64): libc.SysResult<number> {
    const b = encodeIoasUnmap(ioasId, iova, length);
    const res = libc.trySyscall(() => libc.ioctl(this.fd, IOMMU_IOAS_UNMAP, b));
    return res.ok ? { ok: true, value: decodeIoasUnmapLength(b) } : res;
  }

  /** IOMMU_DESTROY of any object id (IOAS, HWPT...). */
  destroy(id: number): libc.SysResult<number> {
    return libc.trySyscall(() => libc.ioctl(this.fd, IOMMU_DESTROY, encodeDestroy(id)));
  }

  close(): void {
    libc.trySyscall(() => libc.close(this.fd));
  }
}
