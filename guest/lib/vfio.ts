// VFIO uAPI (include/uapi/linux/vfio.h, Linux 7.2) as explicit little-endian
// byte layouts plus a small legacy group/container device handle. Struct
// encoders are pure so they can be checked against known byte images.
import { readlinkSync } from 'node:fs';
import { basename } from 'node:path';
import type { DmabufAbi } from '../protocol.ts';
import * as libc from './libc.ts';

// All VFIO ioctls are _IO(';', 100 + n): no size/direction bits, argsz carries the size.
export const VFIO_TYPE = 0x3b;
export const VFIO_BASE = 100;
const io = (nr: number) => (VFIO_TYPE << 8) | (VFIO_BASE + nr);
export const VFIO_GET_API_VERSION = io(0); //       0x3b64
export const VFIO_CHECK_EXTENSION = io(1); //       0x3b65
export const VFIO_SET_IOMMU = io(2); //             0x3b66
export const VFIO_GROUP_GET_STATUS = io(3); //      0x3b67
export const VFIO_GROUP_SET_CONTAINER = io(4); //   0x3b68
export const VFIO_GROUP_UNSET_CONTAINER = io(5); // 0x3b69
export const VFIO_GROUP_GET_DEVICE_FD = io(6); //   0x3b6a
export const VFIO_DEVICE_GET_INFO = io(7); //       0x3b6b
export const VFIO_DEVICE_GET_REGION_INFO = io(8); // 0x3b6c
export const VFIO_DEVICE_RESET = io(11); //         0x3b6f
export const VFIO_DEVICE_FEATURE = io(17); //       0x3b75

export const VFIO_API_VERSION = 0;
export const VFIO_TYPE1_IOMMU = 1;
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_NOIOMMU_IOMMU = 8;

export const VFIO_GROUP_FLAGS_VIABLE = 1 << 0;
export const VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1;
export const VFIO_DEVICE_FLAGS_RESET = 1 << 0;
export const VFIO_DEVICE_FLAGS_PCI = 1 << 1;
export const VFIO_REGION_INFO_FLAG_READ = 1 << 0;
export const VFIO_REGION_INFO_FLAG_WRITE = 1 << 1;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;
export const VFIO_REGION_INFO_FLAG_CAPS = 1 << 3;

export const VFIO_PCI_ROM_REGION_INDEX = 6;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;

export const VFIO_DEVICE_FEATURE_MASK = 0xffff;
export const VFIO_DEVICE_FEATURE_GET = 1 << 16;
export const VFIO_DEVICE_FEATURE_SET = 1 << 17;
export const VFIO_DEVICE_FEATURE_PROBE = 1 << 18;
export const VFIO_DEVICE_FEATURE_DMA_BUF = 11;

export const PCI_COMMAND = 0x04;
export const PCI_COMMAND_MEMORY = 1 << 1;

/** Numbers above 2^53 (e.g. overflow probes) must be passed as bigint. */
export type U64 = number | bigint;

/** Reads a u64 as a number, refusing values a number cannot hold exactly. */
function u64(b: Buffer, off: number): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`u64 at ${off} too large: ${v}`);
  return Number(v);
}

// struct vfio_group_status { u32 argsz; u32 flags; }  8 bytes
export const GROUP_STATUS_SIZE = 8;
export function encodeGroupStatus(): Buffer {
  const b = Buffer.alloc(GROUP_STATUS_SIZE);
  b.writeUInt32LE(GROUP_STATUS_SIZE, 0);
  return b;
}
export function decodeGroupStatus(b: Buffer): { argsz: number; flags: number } {
  return { argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4) };
}

// struct vfio_device_info { u32 argsz, flags, num_regions, num_irqs, cap_offset, pad; }  24 bytes
export const DEVICE_INFO_SIZE = 24;
export function encodeDeviceInfo(): Buffer {
  const b = Buffer.alloc(DEVICE_INFO_SIZE);
  b.writeUInt32LE(DEVICE_INFO_SIZE, 0);
  return b;
}
export interface DeviceInfo { argsz: number; flags: number; numRegions: number; numIrqs: number }
export function decodeDeviceInfo(b: Buffer): DeviceInfo {
  return { argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4), numRegions: b.readUInt32LE(8), numIrqs: b.readUInt32LE(12) };
}

// struct vfio_region_info { u32 argsz, flags, index, cap_offset; u64 size, offset; }  32 bytes
export const REGION_INFO_SIZE = 32;
export function encodeRegionInfo(index: number): Buffer {
  const b = Buffer.alloc(REGION_INFO_SIZE);
  b.writeUInt32LE(REGION_INFO_SIZE, 0);
  b.writeUInt32LE(index, 8);
  return b;
}
export interface RegionInfo { argsz: number; flags: number; index: number; capOffset: number; size: number; offset: number }
export function decodeRegionInfo(b: Buffer): RegionInfo {
  return {
    argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4), index: b.readUInt32LE(8),
    capOffset: b.readUInt32LE(12), size: u64(b, 16), offset: u64(b, 24),
  };
}

// struct vfio_device_feature { u32 argsz; u32 flags; u8 data[]; }
export const FEATURE_HEADER_SIZE = 8;
export function encodeFeature(flags: number, payload: Buffer): Buffer {
  const b = Buffer.alloc(FEATURE_HEADER_SIZE + payload.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(flags >>> 0, 4);
  payload.copy(b, FEATURE_HEADER_SIZE);
  return b;
}

export interface DmaRange { offset: U64; length: U64 }
const DMABUF_GET = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_DMA_BUF;

/**
 * 7.2 ABI: header + { u32 region_index, open_flags, flags, nr_ranges; {u64 offset, length} dma_ranges[] }.
 * nrRanges overrides the count; if it exceeds ranges.length, zeroed ranges pad the buffer so the
 * kernel (which trusts nr_ranges, not argsz) never reads past memory we own.
 */
export function encodeDmabufRanges(
  regionIndex: number, openFlags: number, flags: number, ranges: DmaRange[],
  opts: { featureFlags?: number; nrRanges?: number } = {},
): Buffer {
  const nr = opts.nrRanges ?? ranges.length;
  const p = Buffer.alloc(16 + 16 * Math.max(nr, ranges.length));
  p.writeUInt32LE(regionIndex >>> 0, 0);
  p.writeUInt32LE(openFlags >>> 0, 4);
  p.writeUInt32LE(flags >>> 0, 8);
  p.writeUInt32LE(nr >>> 0, 12);
  ranges.forEach((r, i) => {
    p.writeBigUInt64LE(BigInt(r.offset), 16 + 16 * i);
    p.writeBigUInt64LE(BigInt(r.length), 24 + 16 * i);
  });
  return encodeFeature(opts.featureFlags ?? DMABUF_GET, p);
}

/** v0 ABI: header + { u32 region_index, open_flags; u64 offset, length }. */
export function encodeDmabufV0(
  regionIndex: number, openFlags: number, offset: U64, length: U64,
  opts: { featureFlags?: number } = {},
): Buffer {
  const p = Buffer.alloc(24);
  p.writeUInt32LE(regionIndex >>> 0, 0);
  p.writeUInt32LE(openFlags >>> 0, 4);
  p.writeBigUInt64LE(BigInt(offset), 8);
  p.writeBigUInt64LE(BigInt(length), 16);
  return encodeFeature(opts.featureFlags ?? DMABUF_GET, p);
}

export interface ExportRequest {
  region: number;
  ranges: DmaRange[];
  /** open(2) flags for the new fd; default O_RDWR|O_CLOEXEC. */
  openFlags?: number;
  /** The ranges ABI's flags word (must be 0 today). Not representable in v0. */
  flags?: number;
  /** Ranges ABI only: value for nr_ranges instead of ranges.length. */
  nrRangesOverride?: number;
  /** Full vfio_device_feature.flags; default GET|DMA_BUF. */
  featureFlags?: number;
}

/** Builds the ioctl argument for either ABI; throws if the request cannot be expressed in v0. */
export function encodeExport(abi: DmabufAbi, r: ExportRequest): Buffer {
  const openFlags = r.openFlags ?? (libc.O_RDWR | libc.O_CLOEXEC);
  if (abi === 'ranges') {
    return encodeDmabufRanges(r.region, openFlags, r.flags ?? 0, r.ranges,
      { featureFlags: r.featureFlags, nrRanges: r.nrRangesOverride });
  }
  if (r.ranges.length !== 1 || (r.flags ?? 0) !== 0 || r.nrRangesOverride !== undefined) {
    throw new Error('v0 ABI takes exactly one range and has no flags/nr_ranges fields');
  }
  return encodeDmabufV0(r.region, openFlags, r.ranges[0].offset, r.ranges[0].length, { featureFlags: r.featureFlags });
}

/** IOMMU group number of a PCI device from sysfs, or null if it has none. */
export function sysfsIommuGroup(bdf: string): number | null {
  try {
    return Number(basename(readlinkSync(`/sys/bus/pci/devices/${bdf}/iommu_group`)));
  } catch {
    return null;
  }
}

/**
 * A VFIO device opened through the legacy container/group interface.
 * group === null means noiommu: the group node is /dev/vfio/noiommu-N, N taken from sysfs.
 */
export class VfioDevice {
  private cfg?: RegionInfo;
  private constructor(
    readonly bdf: string, readonly containerFd: number, readonly groupFd: number,
    readonly deviceFd: number, readonly iommuType: number, readonly groupPath: string,
  ) {}

  static open(bdf: string, group: number | null): VfioDevice {
    const fds: number[] = [];
    try {
      const container = libc.open('/dev/vfio/vfio', libc.O_RDWR | libc.O_CLOEXEC);
      fds.push(container);
      const api = libc.ioctl(container, VFIO_GET_API_VERSION);
      if (api !== VFIO_API_VERSION) throw new Error(`VFIO API version ${api}, expected ${VFIO_API_VERSION}`);

      let groupPath: string;
      let type: number;
      if (group === null) {
        const n = sysfsIommuGroup(bdf);
        if (n === null) throw new Error(`${bdf}: no iommu_group link in sysfs (device not bound to vfio-pci with noiommu?)`);
        groupPath = `/dev/vfio/noiommu-${n}`;
        type = VFIO_NOIOMMU_IOMMU;
      } else {
        groupPath = `/dev/vfio/${group}`;
        type = VFIO_TYPE1v2_IOMMU;
      }
      const groupFd = libc.open(groupPath, libc.O_RDWR | libc.O_CLOEXEC);
      fds.push(groupFd);

      const st = encodeGroupStatus();
      libc.ioctl(groupFd, VFIO_GROUP_GET_STATUS, st);
      if (!(decodeGroupStatus(st).flags & VFIO_GROUP_FLAGS_VIABLE)) {
        throw new Error(`${groupPath} is not viable (another device of the group is bound to a host driver)`);
      }
      const cfd = Buffer.alloc(4); // SET_CONTAINER takes a pointer to the container fd (s32)
      cfd.writeInt32LE(container, 0);
      libc.ioctl(groupFd, VFIO_GROUP_SET_CONTAINER, cfd);

      // Prefer type1v2; fall back to type1 only if the kernel lacks v2.
      if (type === VFIO_TYPE1v2_IOMMU && libc.ioctl(container, VFIO_CHECK_EXTENSION, type) <= 0) type = VFIO_TYPE1_IOMMU;
      if (libc.ioctl(container, VFIO_CHECK_EXTENSION, type) <= 0) throw new Error(`IOMMU type ${type} not supported`);
      libc.ioctl(container, VFIO_SET_IOMMU, type);

      const dev = libc.ioctl(groupFd, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${bdf}\0`));
      return new VfioDevice(bdf, container, groupFd, dev, type, groupPath);
    } catch (e) {
      for (const fd of fds.reverse()) libc.trySyscall(() => libc.close(fd));
      throw e;
    }
  }

  info(): DeviceInfo {
    const b = encodeDeviceInfo();
    libc.ioctl(this.deviceFd, VFIO_DEVICE_GET_INFO, b);
    return decodeDeviceInfo(b);
  }

  regionInfo(index: number): RegionInfo {
    const b = encodeRegionInfo(index);
    libc.ioctl(this.deviceFd, VFIO_DEVICE_GET_REGION_INFO, b);
    return decodeRegionInfo(b);
  }

  private configOffset(offset: number, size: number): number {
    if (![1, 2, 4].includes(size)) throw new RangeError(`config access size ${size}`);
    this.cfg ??= this.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX);
    return this.cfg.offset + offset;
  }

  /** Reads PCI config space through vfio's (virtualized) config region. */
  configRead(offset: number, size: 1 | 2 | 4): number {
    const b = Buffer.alloc(size);
    const n = libc.pread(this.deviceFd, b, this.configOffset(offset, size));
    if (n !== size) throw new Error(`short config read at 0x${offset.toString(16)}: ${n}/${size}`);
    return b.readUIntLE(0, size);
  }

  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    const b = Buffer.alloc(size);
    b.writeUIntLE(value, 0, size);
    const n = libc.pwrite(this.deviceFd, b, this.configOffset(offset, size));
    if (n !== size) throw new Error(`short config write at 0x${offset.toString(16)}: ${n}/${size}`);
  }

  reset(): void {
    libc.ioctl(this.deviceFd, VFIO_DEVICE_RESET);
  }

  /** VFIO_DEVICE_FEATURE_DMA_BUF: a new dma-buf fd (or 0 for PROBE), or the errno. */
  exportDmabuf(abi: DmabufAbi, req: ExportRequest): libc.SysResult<number> {
    const arg = encodeExport(abi, req);
    return libc.trySyscall(() => libc.ioctl(this.deviceFd, VFIO_DEVICE_FEATURE, arg));
  }

  /** Closes device, group, container in that order; closing the group fd detaches it from the container. */
  close(): void {
    for (const fd of [this.deviceFd, this.groupFd, this.containerFd]) libc.trySyscall(() => libc.close(fd));
  }
}
