// VFIO uAPI (include/uapi/linux/vfio.h, Linux 7.2) as explicit little-endian
// byte layouts plus a small legacy group/container device handle. Struct
// encoders are pure so they can be checked against known byte images.
import { readlinkSync } from 'node:fs';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import type { DmabufAbi } from '../../protocol/protocol.ts';
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
export function encodeFeature(flags: number, payload: Buffer, argsz?: number): Buffer {
  const b = Buffer.alloc(FEATURE_HEADER_SIZE + payload.length);
  // argsz below the real size tests the kernel's length check; the buffer stays whole.
  b.writeUInt32LE(argsz ?? b.length, 0);
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
  opts: { featureFlags?: number; nrRanges?: number; argsz?: number } = {},
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
  return encodeFeature(opts.featureFlags ?? DMABUF_GET, p, opts.argsz);
}

/** v0 ABI: header + { u32 region_index, open_flags; u64 offset, length }. */
export function encodeDmabufV0(
  regionIndex: number, openFlags: number, offset: U64, length: U64,
  opts: { featureFlags?: number; argsz?: number } = {},
): Buffer {
  const p = Buffer.alloc(24);
  p.writeUInt32LE(regionIndex >>> 0, 0);
  p.writeUInt32LE(openFlags >>> 0, 4);
  p.writeBigUInt64LE(BigInt(offset), 8);
  p.writeBigUInt64LE(BigInt(length), 16);
  return encodeFeature(opts.featureFlags ?? DMABUF_GET, p, opts.argsz);
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
  /** vfio_device_feature.argsz instead of the encoded size. */
  argsz?: number;
}

/** Builds the ioctl argument for either ABI; throws if the request cannot be expressed in v0. */
export function encodeExport(abi: DmabufAbi, r: ExportRequest): Buffer {
  const openFlags = r.openFlags ?? (libc.O_RDWR | libc.O_CLOEXEC);
  if (abi === 'ranges') {
    return encodeDmabufRanges(r.region, openFlags, r.flags ?? 0, r.ranges,
      { featureFlags: r.featureFlags, nrRanges: r.nrRangesOverride, argsz: r.argsz });
  }
  if (r.ranges.length !== 1 || (r.flags ?? 0) !== 0 || r.nrRangesOverride !== undefined) {
    throw new Error('v0 ABI takes exactly one range and has no flags/nr_ranges fields');
  }
  return encodeDmabufV0(r.region, openFlags, r.ranges[0].offset, r.ranges[0].length, { featureFlags: r.featureFlags, argsz: r.argsz });
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
 * What any open VFIO device fd offers, however it was opened (group or cdev):
 * region info and PCI config space through vfio's virtualized config region.
 */
abstract class VfioDeviceFd {
  private cfg?: RegionInfo;
  abstract readonly deviceFd: number;

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
}

/**
 * A VFIO device opened through the legacy container/group interface.
 * group === null means noiommu: the group node is /dev/vfio/noiommu-N, N taken from sysfs.
 */
export class VfioDevice extends VfioDeviceFd {
  private constructor(
    readonly bdf: string, readonly containerFd: number, readonly groupFd: number,
    readonly deviceFd: number, readonly iommuType: number, readonly groupPath: string,
    /** False for a device opened from another's group (sibling()): close() leaves group and container open. */
    private readonly ownsGroup = true,
  ) {
    super();
  }

  /** Another device of the same IOMMU group (e.g. a second function), through the group fd already open. */
  static sibling(of: VfioDevice, bdf: string): VfioDevice {
    const dev = libc.ioctl(of.groupFd, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${bdf}\0`));
    return new VfioDevice(bdf, of.containerFd, of.groupFd, dev, of.iommuType, of.groupPath, false);
  }

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
    for (const fd of this.ownsGroup ? [this.deviceFd, this.groupFd, this.containerFd] : [this.deviceFd]) libc.trySyscall(() => libc.close(fd));
  }
}

// ---- Hot reset and low-power features (revoke triggers) --------------------

export const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = io(12); // 0x3b70
export const VFIO_DEVICE_PCI_HOT_RESET = io(13); //          0x3b71
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID = 1 << 0;
export const VFIO_PCI_HOT_RESET_FLAG_DEV_ID_OWNED = 1 << 1;

export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = 3;
export const VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = 4;
export const VFIO_DEVICE_FEATURE_LOW_POWER_EXIT = 5;

// struct vfio_pci_hot_reset_info { u32 argsz, flags, count; struct vfio_pci_dependent_device devices[]; }
// struct vfio_pci_dependent_device { u32 group_id (or devid); u16 segment; u8 bus; u8 devfn; }  8 bytes
export const HOT_RESET_INFO_HEADER_SIZE = 12;
export const DEPENDENT_DEVICE_SIZE = 8;
/** Room for maxDevices entries; the kernel answers ENOSPC with count filled in when that is too few. */
export function encodeHotResetInfo(maxDevices: number): Buffer {
  const b = Buffer.alloc(HOT_RESET_INFO_HEADER_SIZE + DEPENDENT_DEVICE_SIZE * maxDevices);
  b.writeUInt32LE(b.length, 0);
  return b;
}
export interface DependentDevice { groupId: number; segment: number; bus: number; devfn: number; bdf: string }
export interface HotResetInfo { argsz: number; flags: number; count: number; devices: DependentDevice[] }
export function decodeHotResetInfo(b: Buffer): HotResetInfo {
  const count = b.readUInt32LE(8);
  const room = Math.floor((b.length - HOT_RESET_INFO_HEADER_SIZE) / DEPENDENT_DEVICE_SIZE);
  const devices = Array.from({ length: Math.min(count, room) }, (_, i) => {
    const o = HOT_RESET_INFO_HEADER_SIZE + DEPENDENT_DEVICE_SIZE * i;
    const segment = b.readUInt16LE(o + 4), bus = b.readUInt8(o + 6), devfn = b.readUInt8(o + 7);
    const h = (n: number, w: number) => n.toString(16).padStart(w, '0');
    return {
      groupId: b.readUInt32LE(o), segment, bus, devfn,
      bdf: `${h(segment, 4)}:${h(bus, 2)}:${h(devfn >> 3, 2)}.${devfn & 7}`,
    };
  });
  return { argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4), count, devices };
}

// struct vfio_pci_hot_reset { u32 argsz, flags, count; s32 group_fds[]; }
export const HOT_RESET_HEADER_SIZE = 12;
export function encodeHotReset(groupFds: number[]): Buffer {
  const b = Buffer.alloc(HOT_RESET_HEADER_SIZE + 4 * groupFds.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(groupFds.length, 8);
  groupFds.forEach((fd, i) => b.writeInt32LE(fd, HOT_RESET_HEADER_SIZE + 4 * i));
  return b;
}

/** LOW_POWER_ENTRY / LOW_POWER_EXIT: a bare SET feature header, no payload. */
export function encodeLowPower(feature: number, flags = VFIO_DEVICE_FEATURE_SET): Buffer {
  return encodeFeature(flags | feature, Buffer.alloc(0));
}

// struct vfio_device_low_power_entry_with_wakeup { s32 wakeup_eventfd; u32 reserved; }  after the header
export function encodeLowPowerEntryWithWakeup(eventfd: number, flags = VFIO_DEVICE_FEATURE_SET): Buffer {
  const p = Buffer.alloc(8);
  p.writeInt32LE(eventfd, 0);
  return encodeFeature(flags | VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP, p);
}

/** VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: which devices (and groups) a hot reset of dev would reset. */
export function hotResetInfo(dev: VfioDevice): libc.SysResult<HotResetInfo> {
  let b = encodeHotResetInfo(8);
  let r = libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, b));
  if (!r.ok && r.name === 'ENOSPC') {
    b = encodeHotResetInfo(decodeHotResetInfo(b).count);
    r = libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, b));
  }
  return r.ok ? { ok: true, value: decodeHotResetInfo(b) } : r;
}

/** VFIO_DEVICE_PCI_HOT_RESET with group fds as proof of ownership (legacy group interface). */
export function hotReset(dev: VfioDevice, groupFds: number[]): libc.SysResult<number> {
  return libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_PCI_HOT_RESET, encodeHotReset(groupFds)));
}

/** Any VFIO_DEVICE_FEATURE call with a prebuilt argument. */
export function deviceFeature(dev: VfioDevice, arg: Buffer): libc.SysResult<number> {
  return libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_FEATURE, arg));
}

// ---- Device cdev and iommufd binding (VFIO_DEVICE_CDEV) ---------------------

export const VFIO_DEVICE_BIND_IOMMUFD = io(18); //      0x3b76
export const VFIO_DEVICE_ATTACH_IOMMUFD_PT = io(19); // 0x3b77
export const VFIO_DEVICE_DETACH_IOMMUFD_PT = io(20); // 0x3b78

// struct vfio_device_bind_iommufd { u32 argsz, flags; s32 iommufd; u32 out_devid; u64 token_uuid_ptr; }  24 bytes
export const BIND_IOMMUFD_SIZE = 24;
export function encodeBindIommufd(iommufd: number): Buffer {
  const b = Buffer.alloc(BIND_IOMMUFD_SIZE);
  b.writeUInt32LE(BIND_IOMMUFD_SIZE, 0);
  b.writeInt32LE(iommufd, 8);
  return b;
}
export function decodeBindIommufdDevid(b: Buffer): number {
  return b.readUInt32LE(12);
}

// struct vfio_device_attach_iommufd_pt { u32 argsz, flags, pt_id, pasid; }  16 bytes
export const ATTACH_IOMMUFD_PT_SIZE = 16;
export function encodeAttachIommufdPt(ptId: number): Buffer {
  const b = Buffer.alloc(ATTACH_IOMMUFD_PT_SIZE);
  b.writeUInt32LE(ATTACH_IOMMUFD_PT_SIZE, 0);
  b.writeUInt32LE(ptId >>> 0, 8);
  return b;
}
/** Attaching to an IOAS makes the kernel pick (or create) a HWPT and write its id back. */
export function decodeAttachIommufdPtId(b: Buffer): number {
  return b.readUInt32LE(8);
}

// struct vfio_device_detach_iommufd_pt { u32 argsz, flags, pasid; }  12 bytes
export const DETACH_IOMMUFD_PT_SIZE = 12;
export function encodeDetachIommufdPt(): Buffer {
  const b = Buffer.alloc(DETACH_IOMMUFD_PT_SIZE);
  b.writeUInt32LE(DETACH_IOMMUFD_PT_SIZE, 0);
  return b;
}

/** /dev/vfio/devices/vfioN of a device bound to vfio-pci, or null when it has none (no cdev support, or not bound). */
export function vfioCdevPath(bdf: string): string | null {
  try {
    const name = readdirSync(`/sys/bus/pci/devices/${bdf}/vfio-dev`).find((n) => /^vfio\d+$/.test(n));
    return name ? `/dev/vfio/devices/${name}` : null;
  } catch {
    return null;
  }
}

/**
 * A VFIO device opened through its cdev. Unlike the group path it has no
 * container: until bindIommufd() only BIND is allowed, and DMA goes through
 * whatever iommufd page table attachPt() names. A cdev can be open only once.
 */
export class VfioCdevDevice extends VfioDeviceFd {
  private constructor(readonly bdf: string, readonly path: string, readonly deviceFd: number) {
    super();
  }

  static open(bdf: string): VfioCdevDevice {
    const path = vfioCdevPath(bdf);
    if (!path) throw new Error(`${bdf}: no vfio-dev/vfioN in sysfs (not bound to vfio-pci, or kernel without VFIO_DEVICE_CDEV)`);
    return new VfioCdevDevice(bdf, path, libc.open(path, libc.O_RDWR | libc.O_CLOEXEC));
  }

  /** VFIO_DEVICE_BIND_IOMMUFD: returns the device's iommufd object id. */
  bindIommufd(iommufd: number): number {
    const b = encodeBindIommufd(iommufd);
    libc.ioctl(this.deviceFd, VFIO_DEVICE_BIND_IOMMUFD, b);
    return decodeBindIommufdDevid(b);
  }

  /** VFIO_DEVICE_ATTACH_IOMMUFD_PT to an IOAS or HWPT id; returns the HWPT id in use. */
  attachPt(ptId: number): number {
    const b = encodeAttachIommufdPt(ptId);
    libc.ioctl(this.deviceFd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, b);
    return decodeAttachIommufdPtId(b);
  }

  detachPt(): libc.SysResult<number> {
    return libc.trySyscall(() => libc.ioctl(this.deviceFd, VFIO_DEVICE_DETACH_IOMMUFD_PT, encodeDetachIommufdPt()));
  }

  close(): void {
    libc.trySyscall(() => libc.close(this.deviceFd));
  }
}

/** Reads buf.length bytes at `offset` of the region whose file offset (RegionInfo.offset) is `regionOffset`; BARs go through vfio_pci_bar_rw. */
export function regionRead(deviceFd: number, regionOffset: number, offset: number, buf: Buffer): void {
  const n = libc.pread(deviceFd, buf, regionOffset + offset);
  if (n !== buf.length) throw new Error(`short region read at 0x${offset.toString(16)}: ${n}/${buf.length}`);
}

export function regionWrite(deviceFd: number, regionOffset: number, offset: number, buf: Buffer): void {
  const n = libc.pwrite(deviceFd, buf, regionOffset + offset);
  if (n !== buf.length) throw new Error(`short region write at 0x${offset.toString(16)}: ${n}/${buf.length}`);
}

/**
 * Binds a device that no probe targets (so the host left it alone) to
 * vfio-pci from inside the guest, the way the host does it: driver_override,
 * unbind, drivers_probe. release() puts it back: unbound from vfio-pci with the
 * override cleared, and the kernel's own choice of driver (none for edu).
 * A device already on vfio-pci is left as it is.
 */
export function claimForVfioPci(bdf: string): { previousDriver: string | null; release(): void } {
  const dir = `/sys/bus/pci/devices/${bdf}`;
  if (!existsSync(dir)) throw new Error(`no PCI device ${bdf}`);
  const driverOf = () => {
    try {
      return basename(readlinkSync(`${dir}/driver`));
    } catch {
      return null;
    }
  };
  const previousDriver = driverOf();
  if (previousDriver === 'vfio-pci') return { previousDriver, release: () => {} };
  writeFileSync(`${dir}/driver_override`, 'vfio-pci');
  if (previousDriver) writeFileSync(`${dir}/driver/unbind`, bdf);
  writeFileSync('/sys/bus/pci/drivers_probe', bdf);
  if (driverOf() !== 'vfio-pci') throw new Error(`${bdf} did not bind to vfio-pci (driver now ${driverOf() ?? 'none'})`);
  return {
    previousDriver,
    release: () => {
      if (driverOf() === 'vfio-pci') writeFileSync(`${dir}/driver/unbind`, bdf);
      writeFileSync(`${dir}/driver_override`, '\n');
      try {
        writeFileSync('/sys/bus/pci/drivers_probe', bdf);
      } catch {
        // No driver wants it (edu has none): drivers_probe says so with an error; nothing to undo.
      }
    },
  };
}

// ---- Interrupts: the device request channel (VFIO_PCI_REQ_IRQ_INDEX) -------
// vfio-pci's remove path signals the REQ eventfd and then waits for userspace
// to close the device, repeating the request every 10 s; that is how QEMU
// learns that an assigned device is being unplugged.

export const VFIO_DEVICE_GET_IRQ_INFO = io(9); // 0x3b6d
export const VFIO_DEVICE_SET_IRQS = io(10); //    0x3b6e

export const VFIO_PCI_INTX_IRQ_INDEX = 0;
export const VFIO_PCI_MSI_IRQ_INDEX = 1;
export const VFIO_PCI_MSIX_IRQ_INDEX = 2;
export const VFIO_PCI_ERR_IRQ_INDEX = 3;
export const VFIO_PCI_REQ_IRQ_INDEX = 4;

export const VFIO_IRQ_INFO_EVENTFD = 1 << 0;
export const VFIO_IRQ_INFO_MASKABLE = 1 << 1;
export const VFIO_IRQ_INFO_AUTOMASKED = 1 << 2;
export const VFIO_IRQ_INFO_NORESIZE = 1 << 3;

export const VFIO_IRQ_SET_DATA_NONE = 1 << 0;
export const VFIO_IRQ_SET_DATA_BOOL = 1 << 1;
export const VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2;
export const VFIO_IRQ_SET_ACTION_MASK = 1 << 3;
export const VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4;
export const VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5;

// struct vfio_irq_info { u32 argsz, flags, index, count; }  16 bytes
export const IRQ_INFO_SIZE = 16;
export function encodeIrqInfo(index: number): Buffer {
  const b = Buffer.alloc(IRQ_INFO_SIZE);
  b.writeUInt32LE(IRQ_INFO_SIZE, 0);
  b.writeUInt32LE(index >>> 0, 8);
  return b;
}
export interface IrqInfo { argsz: number; flags: number; index: number; count: number }
export function decodeIrqInfo(b: Buffer): IrqInfo {
  return { argsz: b.readUInt32LE(0), flags: b.readUInt32LE(4), index: b.readUInt32LE(8), count: b.readUInt32LE(12) };
}

// struct vfio_irq_set { u32 argsz, flags, index, start, count; u8 data[]; }  20-byte header
export const IRQ_SET_HEADER_SIZE = 20;
/**
 * ACTION_TRIGGER with DATA_EVENTFD: one s32 per vector from `start`; an fd of
 * -1 tears that vector's trigger down.
 */
export function encodeIrqSetEventfds(index: number, start: number, fds: number[]): Buffer {
  const b = Buffer.alloc(IRQ_SET_HEADER_SIZE + 4 * fds.length);
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER, 4);
  b.writeUInt32LE(index >>> 0, 8);
  b.writeUInt32LE(start >>> 0, 12);
  b.writeUInt32LE(fds.length, 16);
  fds.forEach((fd, i) => b.writeInt32LE(fd, IRQ_SET_HEADER_SIZE + 4 * i));
  return b;
}

/** VFIO_DEVICE_GET_IRQ_INFO for one IRQ index (count 0: the device has no such interrupt). */
export function irqInfo(dev: VfioDevice, index: number): libc.SysResult<IrqInfo> {
  const b = encodeIrqInfo(index);
  const r = libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_GET_IRQ_INFO, b));
  return r.ok ? { ok: true, value: decodeIrqInfo(b) } : r;
}

/** VFIO_DEVICE_SET_IRQS: eventfd triggers for vectors start.. of an IRQ index. */
export function setIrqEventfds(dev: VfioDevice, index: number, start: number, fds: number[]): libc.SysResult<number> {
  return libc.trySyscall(() => libc.ioctl(dev.deviceFd, VFIO_DEVICE_SET_IRQS, encodeIrqSetEventfds(index, start, fds)));
}
