// iommufd-map-file: iommufd as the dma-buf's importer (IOMMU_IOAS_MAP_FILE,
// contract section 5). MAP_FILE of the whole buffer and of a slice succeeds;
// COMMAND.MEM off revokes: a new MAP_FILE fails ENODEV and the areas' IOMMU
// mappings are removed; MEM on: a new MAP_FILE succeeds while the old areas stay
// dead; closing the device fd revokes for good, reopening does not revive it.
//
// iommufd keeps a revoked area in the IOAS (it still holds its IOVA range and
// UNMAP still removes it), so that it is dead can only be seen by a device
// doing DMA through the IOAS. With a QEMU edu device in the lab (param
// dmaEngine), the probe binds it to vfio-pci, attaches it to the same IOAS
// through its cdev and copies pages through the areas; without one those data
// checks are skipped and only the ioctl-visible behaviour is checked.
import { existsSync } from 'node:fs';
import * as libc from '../lib/libc.ts';
import { Iommufd, IOMMU_DEV, IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_WRITEABLE, type Area } from '../lib/iommufd.ts';
import { Kmsg } from '../lib/kmsg.ts';
import type { Subtest } from '../lib/tap.ts';
import {
  claimForVfioPci, PCI_COMMAND, PCI_COMMAND_MEMORY, regionRead, regionWrite, VfioCdevDevice, VfioDevice, type ExportRequest,
} from '../lib/vfio.ts';
import { closeFd, exportDiag, hex, outcome, type ProbeContext } from './common.ts';
import { checkNoKernelReports, commandDiag, pattern, setMemoryDecoding, sleepSync, whichBytes } from './observe.ts';

const PCI_COMMAND_MASTER = 1 << 2;
const RW = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE;

// QEMU edu (hw/misc/edu.c): DMA registers in BAR0, a 4 KiB buffer at the
// device-internal address 0x40000 (not reachable through the BAR).
const EDU_ID = 0x00, EDU_DMA_SRC = 0x80, EDU_DMA_DST = 0x88, EDU_DMA_COUNT = 0x90, EDU_DMA_CMD = 0x98;
const EDU_DMA_RUN = 1n, EDU_DMA_TO_PCI = 2n;
const EDU_BUFFER = 0x40000n;
/**
 * Bytes per transfer: half the 4 KiB buffer. QEMU 7.2's edu_check_range treats
 * the buffer's end as outside it, so a transfer that ends exactly there is a
 * hw_error that kills the whole VM.
 */
const EDU_CHUNK = 2048;
/** edu's ID register: 0xRRrr00ed, major.minor 1.0 in every QEMU so far. */
const EDU_ID_MASK = 0xff, EDU_ID_LOW = 0xed;
/** edu runs a DMA from a 100 ms virtual-time timer; TCG stretches that. */
const EDU_DMA_TIMEOUT_MS = 5000;

/**
 * An edu device attached to an IOAS: copies between IOVAs through its buffer.
 * A scratch memfd (two pages) mapped into the same IOAS is the known side of
 * every copy: page 0 is the source, page 1 the destination.
 */
class IoasDmaEngine {
  private constructor(
    readonly id: string, private readonly dev: VfioCdevDevice, private readonly bar0: number,
    private readonly scratchFd: number, readonly scratch: Area, readonly chunk: number,
    private readonly release: () => void,
  ) {}

  static open(t: Subtest, id: string, bdf: string, iommufd: Iommufd, ioasId: number, page: number): IoasDmaEngine | null {
    const claim = claimForVfioPci(bdf);
    let dev: VfioCdevDevice | undefined;
    let scratchFd = -1;
    const undo = () => {
      if (scratchFd >= 0) closeFd(scratchFd);
      dev?.close();
      claim.release();
    };
    try {
      dev = VfioCdevDevice.open(bdf);
      const devid = dev.bindIommufd(iommufd.fd);
      const hwpt = dev.attachPt(ioasId);
      t.comment(`DMA engine ${id} (${bdf}, was ${claim.previousDriver ?? 'unbound'}): ${dev.path}, iommufd device ${devid}, attached to IOAS ${ioasId} through HWPT ${hwpt}`);
      const bar0 = dev.regionInfo(0);
      const cmd = dev.configRead(PCI_COMMAND, 2);
      dev.configWrite(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
      const idReg = readU32(dev.deviceFd, bar0.offset, EDU_ID);
      if (!t.ok((idReg & EDU_ID_MASK) === EDU_ID_LOW, `DMA engine ${id} answers with edu's ID register`, { id: hex(idReg) })) {
        undo();
        return null;
      }
      const chunk = Math.min(page, EDU_CHUNK);
      scratchFd = libc.memfdCreate('hwlab-iommufd-scratch');
      libc.ftruncate(scratchFd, 2 * page);
      const m = iommufd.mapFile({ ioasId, fd: scratchFd, start: 0, length: 2 * page, flags: RW });
      t.ok(m.ok, `MAP_FILE of a memfd scratch buffer for ${id}'s DMA`, m.ok ? undefined : { errno: m.name });
      if (!m.ok) {
        undo();
        return null;
      }
      const cdev = dev;
      return new IoasDmaEngine(id, cdev, bar0.offset, scratchFd, m.value, chunk, () => {
        iommufd.unmap(ioasId, m.value.iova, m.value.length);
        cdev.detachPt();
        undo();
      });
    } catch (err) {
      undo();
      throw err;
    }
  }

  private setReg(reg: number, v: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(v);
    regionWrite(this.dev.deviceFd, this.bar0, reg, b);
  }

  private getReg(reg: number): bigint {
    const b = Buffer.alloc(8);
    regionRead(this.dev.deviceFd, this.bar0, reg, b);
    return b.readBigUInt64LE();
  }

  /** One edu DMA of one chunk, from src into its buffer or from its buffer to dst. False if it never completed. */
  private transfer(src: bigint, dst: bigint, toPci: boolean): boolean {
    this.setReg(EDU_DMA_SRC, src);
    this.setReg(EDU_DMA_DST, dst);
    this.setReg(EDU_DMA_COUNT, BigInt(this.chunk));
    this.setReg(EDU_DMA_CMD, EDU_DMA_RUN | (toPci ? EDU_DMA_TO_PCI : 0n));
    const deadline = Date.now() + EDU_DMA_TIMEOUT_MS;
    while (this.getReg(EDU_DMA_CMD) & EDU_DMA_RUN) {
      if (Date.now() > deadline) return false;
      sleepSync(5);
    }
    return true;
  }

  /**
   * The bytes a DMA read at iova returns. The engine's buffer is first loaded
   * with `marker`, so a read the IOMMU refuses leaves the marker in place.
   */
  readAt(iova: number, marker: Buffer): { bytes: Buffer; completed: boolean } {
    libc.pwrite(this.scratchFd, marker, 0);
    libc.pwrite(this.scratchFd, Buffer.alloc(this.chunk), this.chunk);
    const s = BigInt(this.scratch.iova);
    const completed = this.transfer(s, EDU_BUFFER, false)
      && this.transfer(BigInt(iova), EDU_BUFFER, false)
      && this.transfer(EDU_BUFFER, s + BigInt(this.chunk), true);
    const bytes = Buffer.alloc(this.chunk);
    libc.pread(this.scratchFd, bytes, this.chunk);
    return { bytes, completed };
  }

  /** DMA-writes `data` (one chunk) to iova. */
  writeAt(iova: number, data: Buffer): boolean {
    libc.pwrite(this.scratchFd, data, 0);
    return this.transfer(BigInt(this.scratch.iova), EDU_BUFFER, false) && this.transfer(EDU_BUFFER, BigInt(iova), true);
  }

  close(): void {
    this.release();
  }
}

function readU32(fd: number, regionOffset: number, off: number): number {
  const b = Buffer.alloc(4);
  regionRead(fd, regionOffset, off, b);
  return b.readUInt32LE();
}

/** The engine named by the dmaEngine param, or why there is none. */
function openEngine(ctx: ProbeContext, iommufd: Iommufd, ioasId: number, page: number): IoasDmaEngine | string {
  const id = ctx.params.dmaEngine as string;
  if (!id) return 'dmaEngine param is empty: no device to DMA through the IOAS';
  const d = ctx.devices[id];
  if (!d) return `no endpoint "${id}" in this lab to DMA through the IOAS (endpoints: ${Object.keys(ctx.devices).join(', ')})`;
  if (d.type !== 'edu') return `endpoint "${id}" is ${d.type}, the DMA engine must be an edu`;
  if (d.iommuGroup !== null && d.iommuGroup === ctx.device.iommuGroup) {
    return `${id} shares IOMMU group ${d.iommuGroup} with the exporter, whose group is open: its cdev cannot be bound`;
  }
  return IoasDmaEngine.open(ctx.t, id, d.bdf, iommufd, ioasId, page) ?? `${id} did not come up as a DMA engine (see above)`;
}

export default async function iommufdMapFile(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const page = libc.pageSize();
  const km = libc.trySyscall(() => Kmsg.mark());
  if (!existsSync(IOMMU_DEV)) {
    t.skip('IOMMU_IOAS_MAP_FILE of a dma-buf', `no ${IOMMU_DEV}: kernel without CONFIG_IOMMUFD`);
    checkNoKernelReports(t, km, 'during iommufd-map-file');
    return;
  }
  let dev: VfioDevice | undefined = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  let iommufd: Iommufd | undefined;
  let engine: IoasDmaEngine | undefined;
  let fd = -1;
  try {
    const info = dev.regionInfo(region);
    if (!t.ok(info.size >= 3 * page, `region ${region} has at least three pages`, { size: info.size, page })) return;
    const on = setMemoryDecoding(dev, true);
    if (!t.ok(on.ok, 'PCI_COMMAND.MEM is on before exporting', commandDiag(on))) return;

    iommufd = Iommufd.open();
    const ioasId = iommufd.allocIoas();
    t.comment(`IOAS ${ioasId} on ${IOMMU_DEV}`);
    const e = openEngine(ctx, iommufd, ioasId, page);
    let noEngine = '';
    if (typeof e === 'string') noEngine = e;
    else engine = e;

    const req: ExportRequest = { region, ranges: [{ offset: 0, length: info.size }] };
    const r = dev.exportDmabuf(abi, req);
    if (!t.ok(r.ok && r.value > 0, `export region ${region} as a dma-buf`, exportDiag(abi, req, r)) || !r.ok) return;
    fd = r.value;
    const ioas = iommufd;
    const mapFile = (start: number, length: number, fixedIova?: number) => ioas.mapFile({
      ioasId, fd, start, length, ...(fixedIova === undefined ? { flags: RW } : { flags: RW | IOMMU_IOAS_MAP_FIXED_IOVA, iova: fixedIova }),
    });
    const mapDiag = (m: libc.SysResult<Area>, extra: Record<string, unknown> = {}) =>
      (m.ok ? { iova: hex(m.value.iova), ...extra } : { errno: m.name, ...extra });

    const whole = mapFile(0, info.size);
    if (!t.ok(whole.ok, 'MAP_FILE of the whole dma-buf into an IOAS succeeds', mapDiag(whole, { length: hex(info.size) })) || !whole.ok) return;
    const slice = mapFile(page, page);
    t.ok(slice.ok, 'MAP_FILE of a one-page slice at offset one page succeeds', mapDiag(slice));
    const pastEnd = mapFile(info.size - page, 2 * page);
    if (pastEnd.ok) ioas.unmap(ioasId, pastEnd.value.iova, pastEnd.value.length);
    t.equal(outcome(pastEnd), 'EINVAL', 'MAP_FILE reaching past the dma-buf\'s end fails EINVAL', { start: hex(info.size - page), length: hex(2 * page) });

    // The bytes the BAR holds at offsets 0 and one page. A DMA read the IOMMU
    // refuses comes back as zeros in QEMU (the access hits its unassigned
    // region); the engine's buffer is loaded with a marker first, so a read
    // that never happened shows as the marker.
    const chunk = engine?.chunk ?? page;
    const atZero = pattern(1, chunk), atPage = pattern(2, chunk), written = pattern(3, chunk), marker = pattern(0xabc, chunk);
    const zeros = Buffer.alloc(chunk);
    const candidates = { 'the BAR bytes at offset 0': atZero, 'the BAR bytes at offset one page': atPage, 'zeros (refused)': zeros, 'the marker (no read)': marker };
    const expectRead = (area: libc.SysResult<Area>, want: Buffer | 'refused', name: string) => {
      if (!engine) return t.skip(name, noEngine);
      if (!area.ok) return t.skip(name, 'the area was not mapped');
      const got = engine.readAt(area.value.iova, marker);
      const pass = got.completed && (want === 'refused' ? got.bytes.equals(zeros) || got.bytes.equals(marker) : got.bytes.equals(want));
      return t.ok(pass, name, {
        expected: want === 'refused' ? 'zeros or the marker' : whichBytes(want, candidates),
        got: whichBytes(got.bytes, candidates), dmaCompleted: got.completed, iova: hex(area.value.iova),
      });
    };

    if (engine) {
      regionWrite(dev.deviceFd, info.offset, 0, atZero);
      regionWrite(dev.deviceFd, info.offset, page, atPage);
    }
    expectRead(whole, atZero, 'DMA read through the whole-buffer area returns the BAR\'s bytes');
    expectRead(slice, atPage, 'DMA read through the slice area returns the bytes at the slice\'s offset');
    if (engine) {
      const ok = engine.writeAt(whole.value.iova + 2 * page, written);
      const back = Buffer.alloc(chunk);
      regionRead(dev.deviceFd, info.offset, 2 * page, back);
      t.ok(ok && back.equals(written), 'DMA write through the whole-buffer area lands in the BAR', {
        dmaCompleted: ok, barAtTwoPages: whichBytes(back, { 'the bytes written': written, zeros: Buffer.alloc(chunk) }),
      });
    } else t.skip('DMA write through the whole-buffer area lands in the BAR', noEngine);

    // Revoke: COMMAND.MEM off.
    const off = setMemoryDecoding(dev, false);
    t.ok(off.ok, 'PCI_COMMAND.MEM reads back 0 after clearing it (revoke)', commandDiag(off));
    const whileRevoked = mapFile(0, info.size);
    if (whileRevoked.ok) ioas.unmap(ioasId, whileRevoked.value.iova, whileRevoked.value.length);
    t.equal(outcome(whileRevoked), 'ENODEV', 'MAP_FILE while revoked (MEM off) fails ENODEV', mapDiag(whileRevoked));
    // With MEM off the BAR does not decode either, so this alone cannot tell an
    // unmapped area from a dark BAR; the dead-area checks after MEM on can.
    expectRead(whole, 'refused', 'DMA read through the whole-buffer area while revoked does not return the BAR\'s bytes');

    // Un-revoke: COMMAND.MEM on.
    const on2 = setMemoryDecoding(dev, true);
    t.ok(on2.ok, 'PCI_COMMAND.MEM reads back 1 after setting it (un-revoke)', commandDiag(on2));
    const fresh = mapFile(0, info.size);
    t.ok(fresh.ok, 'after MEM on, a new MAP_FILE of the same dma-buf succeeds', mapDiag(fresh));
    const over = mapFile(0, page, whole.value.iova);
    if (over.ok) ioas.unmap(ioasId, over.value.iova, over.value.length);
    t.equal(outcome(over), 'EEXIST', 'the revoked area still holds its IOVA range (a FIXED_IOVA MAP_FILE over it fails EEXIST)', mapDiag(over, { at: hex(whole.value.iova) }));
    expectRead(fresh, atZero, 'DMA read through the new area returns the BAR\'s bytes');
    expectRead(whole, 'refused', 'the old whole-buffer area stays dead after un-revoke (DMA refused)');
    expectRead(slice, 'refused', 'the old slice area stays dead after un-revoke (DMA refused)');

    // Closing the device fd revokes for good.
    dev.close();
    dev = undefined;
    const afterClose = mapFile(0, info.size);
    if (afterClose.ok) ioas.unmap(ioasId, afterClose.value.iova, afterClose.value.length);
    t.equal(outcome(afterClose), 'ENODEV', 'after the device fd is closed, MAP_FILE fails ENODEV (revoked for good)', mapDiag(afterClose));
    expectRead(fresh, 'refused', 'the area mapped after un-revoke dies with the device fd (DMA refused)');
    const again = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
    try {
      const on3 = setMemoryDecoding(again, true);
      const revived = mapFile(0, info.size);
      if (revived.ok) ioas.unmap(ioasId, revived.value.iova, revived.value.length);
      t.equal(outcome(revived), 'ENODEV', 'reopening the device (MEM on) does not revive the dma-buf: MAP_FILE still fails ENODEV', mapDiag(revived, commandDiag(on3)));
    } finally {
      again.close();
    }

    for (const [name, area] of [['whole-buffer', whole], ['slice', slice], ['post-un-revoke', fresh]] as const) {
      if (!area.ok) continue;
      const u = ioas.unmap(ioasId, area.value.iova, area.value.length);
      t.equal(u.ok ? u.value : u.name, area.value.length, `UNMAP of the dead ${name} area removes its full length`, { iova: hex(area.value.iova) });
    }
    engine?.close();
    engine = undefined;
    const d = ioas.destroy(ioasId);
    t.ok(d.ok, 'IOMMU_DESTROY of the emptied IOAS succeeds', d.ok ? undefined : { errno: d.name });
  } finally {
    engine?.close();
    dev?.close();
    iommufd?.close();
    if (fd > 0) closeFd(fd);
    checkNoKernelReports(t, km, 'during iommufd MAP_FILE, revoke and close');
  }
}
