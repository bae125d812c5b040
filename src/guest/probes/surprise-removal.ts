// surprise-removal: the exporter is hot-removed by the host (QMP device_del)
// while one of its dma-bufs is imported and mapped by the hwlab_importer.
//
// The removal is "surprise" for the dma-buf's user, not for the slot: the
// guest's hotplug driver is asked to let the device go. With native PCIe
// hotplug QEMU presses the slot's attention button and pciehp removes the
// device after its 5 s grace period; with QEMU q35's default ACPI PCI hotplug
// (which also denies the OS native hotplug in _OSC, so pciehp binds nowhere)
// an ACPI eject request reaches acpiphp, on root ports and switch downstream
// ports alike.
// Either way vfio-pci's remove path (vfio_unregister_group_dev) signals the
// VFIO device request eventfd, then waits for userspace to close the device,
// re-signalling every 10 s; QEMU reacts to that request by unplugging an
// assigned device from its own guest. This probe plays QEMU's part:
//   before   export, import and map; the data path through the mapping works;
//            a request eventfd on VFIO_PCI_REQ_IRQ_INDEX;
//   removal  device_del from the host; the request fires (bounded wait), and
//            the device stays in sysfs until the device fd is closed;
//   close    closing the device fd revokes for good: invalidate_mappings ran,
//            the mapping is gone (edu DMA ENODEV), a remap and a new attach
//            fail, the dma-buf fd stays valid and sized; the device leaves
//            sysfs;
//   release  releasing the import and closing the dma-buf fd: no kernel
//            report, and the buffer is gone from bufinfo.
// It reads the kernel log itself, in steps: the records up to the removal are
// also its removal log (diagnostics), and the two "no kernel report" points
// cover different spans (export to removal, then the release).
// The device is gone afterwards, so the lab must list this probe last for its
// device and no other probe may target that device.
import { existsSync, fstatSync, readdirSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync } from 'node:zlib';
import { requestDeviceDel, waitPciGone } from '../lib/host.ts';
import { Importer } from '../lib/importer.ts';
import { Kmsg, parseRecord, type KmsgRecord } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import {
  irqInfo, setIrqEventfds, VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_REQ_IRQ_INDEX, VfioDevice, type RegionInfo,
} from '../lib/vfio.ts';
import { closeFd, fdinfo, hex, readBufinfo, type ProbeContext } from './common.ts';
import {
  checkDataPath, checkNoDataPath, dataOffsets, ensureMemoryOn, exportBar, importDiag, importerDevice, importFor, pciPath,
  result,
} from './importer-common.ts';
import { checkNoKernelReportsIn } from './observe.ts';

const PCIEHP_DRIVER = '/sys/bus/pci_express/drivers/pciehp';
const SLOTS = '/sys/bus/pci/slots';
/** How long the device may take to leave sysfs once its device fd is closed. */
const GONE_TIMEOUT_MS = 30_000;
/** Bounded wait for an invalidate that must already have happened (it runs inside close()). */
const INVALIDATE_TIMEOUT_MS = 5_000;
const NAME = 'host-forced hot removal of the exporter with an imported dma-buf';

/** The hotplug driver the guest removes the exporter with: native PCIe (pciehp) or ACPI (acpiphp). */
type HotplugDriver = 'pciehp' | 'acpiphp';
interface HotplugSlot { driver: HotplugDriver; port: string; slot: string | null }

/** CONFIG_HOTPLUG_PCI_PCIE and _ACPI from /proc/config.gz, or null when the kernel does not publish its config. */
function hotplugConfig(): { pcie: string; acpi: string } | null {
  try {
    const text = gunzipSync(readFileSync('/proc/config.gz')).toString('utf8');
    const value = (sym: string) => new RegExp(`^CONFIG_${sym}=(\\w+)$`, 'm').exec(text)?.[1] ?? 'not set';
    return { pcie: value('HOTPLUG_PCI_PCIE'), acpi: value('HOTPLUG_PCI_ACPI') };
  } catch {
    return null;
  }
}

/** Kernel log records since boot (what is still in the ring buffer). */
function bootLog(): string[] {
  const out: string[] = [];
  const fd = libc.trySyscall(() => libc.open('/dev/kmsg', libc.O_RDONLY | libc.O_NONBLOCK | libc.O_CLOEXEC));
  if (!fd.ok) return out;
  const buf = Buffer.alloc(16384);
  try {
    for (;;) {
      const r = libc.trySyscall(() => libc.read(fd.value, buf));
      if (!r.ok && r.name === 'EPIPE') continue; // overwritten records: the next read resyncs
      if (!r.ok || r.value === 0) break;
      const rec = parseRecord(buf.toString('utf8', 0, r.value));
      if (rec) out.push(rec.message);
    }
  } finally {
    closeFd(fd.value);
  }
  return out;
}

/** A hotplug slot (one with a "power" attribute, unlike ACPI's informational pci_slot ones) holding the address. */
function hotplugSlotName(address: string): string | null {
  try {
    return readdirSync(SLOTS).find((s) => {
      try {
        return readFileSync(`${SLOTS}/${s}/address`, 'utf8').trim() === address && existsSync(`${SLOTS}/${s}/power`);
      } catch {
        return false;
      }
    }) ?? null;
  } catch {
    return null;
  }
}

/**
 * How the guest will see the host's device_del of the exporter: pciehp bound
 * to the exporter's parent port (port service "<port>:pcieXYZ"), or else an
 * acpiphp slot at the exporter's address. Without either, the removal never
 * reaches vfio-pci and there is nothing to observe.
 */
function hotplugSlot(bdf: string): { ok: true; slot: HotplugSlot } | { ok: false; reason: string } {
  const path = pciPath(bdf);
  const port = path.length >= 2 ? path[path.length - 2] : null;
  if (port === null) return { ok: false, reason: `${bdf} sits on the root bus: no hotplug slot above it` };
  // A slot's address is domain:bus:device of the devices it holds.
  const slot = hotplugSlotName(bdf.slice(0, bdf.lastIndexOf('.')));
  const services = existsSync(PCIEHP_DRIVER) ? readdirSync(PCIEHP_DRIVER).filter((n) => /:pcie[0-9a-f]{3}$/.test(n)) : null;
  if (services?.some((n) => n.replace(/:pcie[0-9a-f]{3}$/, '') === port)) return { ok: true, slot: { driver: 'pciehp', port, slot } };
  const acpiphp = existsSync('/sys/module/acpiphp');
  if (acpiphp && slot !== null) return { ok: true, slot: { driver: 'acpiphp', port, slot } };

  const config = hotplugConfig();
  const osc = bootLog().find((m) => /_OSC: .*PCIeHotplug/.test(m));
  const pciehpWhy = services === null
    ? `no pciehp in /sys/bus/pci_express/drivers: kernel without CONFIG_HOTPLUG_PCI_PCIE (${config ? `config: ${config.pcie}` : 'no /proc/config.gz'})`
    : `pciehp does not manage port ${port} (it manages ${services.join(', ') || 'no port'})${osc ? `; firmware kept native hotplug: "${osc.trim()}" (QEMU q35 uses ACPI PCI hotplug unless ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off)` : ''}`;
  const acpiWhy = !acpiphp
    ? `no acpiphp: kernel without CONFIG_HOTPLUG_PCI_ACPI (${config ? `config: ${config.acpi}` : 'no /proc/config.gz'})`
    : `no ACPI hotplug slot at ${bdf.slice(0, bdf.lastIndexOf('.'))} in ${SLOTS} (firmware describes no ejectable slot there)`;
  return { ok: false, reason: `no hotplug driver would see the removal of ${bdf}: ${pciehpWhy}; ${acpiWhy}` };
}

/** Polls a non-blocking eventfd until it has been signalled; its counter, or 0 on timeout. */
async function waitEventfd(fd: number, timeoutMs: number, pollMs = 50): Promise<number> {
  const counter = Buffer.alloc(8);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = libc.trySyscall(() => libc.read(fd, counter));
    if (r.ok && r.value === 8) return Number(counter.readBigUInt64LE(0));
    if (!r.ok && r.name !== 'EAGAIN') throw new libc.SyscallError('read eventfd', r.errno);
    if (Date.now() >= deadline) return 0;
    await sleep(pollMs);
  }
}

/** The slot's adapter attribute: "1" occupied, "0" empty, or why it cannot be read. */
function readSlotAdapter(slot: string): string {
  try {
    return readFileSync(`${SLOTS}/${slot}/adapter`, 'utf8').trim();
  } catch (e) {
    return `unreadable: ${(e as Error).message}`;
  }
}

/** Polls the slot's adapter attribute until it reads 0; its last value (or the read error). */
async function waitSlotEmpty(slot: string, timeoutMs: number, pollMs = 100): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = readSlotAdapter(slot);
    if (value === '0' || Date.now() >= deadline) return value;
    await sleep(pollMs);
  }
}

/** Kernel log lines about the removal: the hotplug driver's, the port's and the device's own. */
function removalLog(records: KmsgRecord[], slot: HotplugSlot, bdf: string): string[] {
  return records.map((r) => r.message).filter((m) => m.includes(bdf) || m.includes(slot.port) || /pciehp|acpiphp/.test(m));
}

export default async function surpriseRemoval(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const exporter = ctx.device;
  const region = ctx.params.region as number;
  const requestTimeoutMs = (ctx.params.requestTimeout as number) * 1000;

  const hp = hotplugSlot(exporter.bdf);
  if (!hp.ok) return void t.skip(NAME, hp.reason);
  const { slot } = hp;
  t.comment(`exporter ${exporter.id} ${exporter.bdf} below port ${slot.port}: ${slot.driver === 'pciehp' ? 'native PCIe hotplug (pciehp)' : 'ACPI hotplug (acpiphp)'}, slot ${slot.slot ?? 'unnamed'}`);

  const km = libc.trySyscall(() => Kmsg.mark());
  /** Every kernel log record since the mark, in order. */
  const seen: KmsgRecord[] = [];
  const readKmsg = (): KmsgRecord[] => {
    const records = km.ok ? km.value.read() : [];
    seen.push(...records);
    return records;
  };
  const edu = importerDevice(ctx);
  const imp = Importer.open();
  const dev = VfioDevice.open(exporter.bdf, exporter.iommuGroup);
  // Closed one by one: the device fd first, as the request asks, the group and container after the removal.
  let deviceOpen = true;
  let reqFd = -1;
  let fd = -1;
  let handle = 0;
  try {
    ensureMemoryOn(dev);
    const info: RegionInfo = dev.regionInfo(region);
    t.comment(`BAR ${region}: ${hex(info.size)} bytes; importer ${edu.id} ${edu.bdf}`);
    const exported = exportBar(t, ctx, dev, info, `export BAR ${region} of ${exporter.id} as a dma-buf`);
    if (exported === null) return;
    fd = exported;
    const ino = fstatSync(fd).ino;

    const im = importFor(imp, fd, edu, exporter, region);
    if (!t.ok(im.ok, `import the dma-buf for ${edu.id} (dynamic, peer2peer)`, importDiag(im)) || !im.ok) return;
    handle = im.value.handle;
    const mp = imp.map(handle);
    if (!t.ok(mp.ok && mp.value.mapped, 'map the import', { errno: result(mp), nents: mp.value.nents, totalLen: hex(mp.value.totalLen) })) return;

    const rep = imp.report(handle, 0);
    const mapType = rep.ok ? rep.value.mapType : 'unknown';
    const translating = rep.ok && rep.value.facts.iommuDma;
    if (mapType === 'bus-address' && translating) {
      // Real switches route the bus-address TLP to the peer; QEMU sends all of edu's DMA through the vIOMMU.
      t.skip('data path through the mapping before the removal',
        `bus-address mapping with a translating importer domain: QEMU sends every edu DMA through the vIOMMU, where the BAR's bus address is not mapped; needs no vIOMMU, an identity domain, or a host-bridge mapping`);
    } else {
      checkDataPath(t, `before removal (${mapType} mapping)`, imp, handle, { dev, region: info, offsets: dataOffsets(info.size) });
    }
    const count0 = rep.ok ? rep.value.invalidateCount : 0;

    const irq = irqInfo(dev, VFIO_PCI_REQ_IRQ_INDEX);
    if (!t.ok(irq.ok && irq.value.count >= 1 && (irq.value.flags & VFIO_IRQ_INFO_EVENTFD) !== 0,
      'VFIO_DEVICE_GET_IRQ_INFO: the device request index has an eventfd vector',
      irq.ok ? { flags: hex(irq.value.flags), count: irq.value.count } : { errno: irq.name })) return;
    reqFd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
    const set = setIrqEventfds(dev, VFIO_PCI_REQ_IRQ_INDEX, 0, [reqFd]);
    if (!t.ok(set.ok, 'VFIO_DEVICE_SET_IRQS: request eventfd registered (DATA_EVENTFD | ACTION_TRIGGER)', set.ok ? undefined : { errno: set.name })) return;

    // ---- the removal ----
    const adapterBefore = slot.slot === null ? null : readSlotAdapter(slot.slot);
    const asked = Date.now();
    requestDeviceDel(exporter.id);
    const signalled = await waitEventfd(reqFd, requestTimeoutMs);
    const requestMs = Date.now() - asked;
    const log = removalLog(readKmsg(), slot, exporter.bdf);
    if (!t.ok(signalled > 0, `vfio-pci signals the device request within ${requestTimeoutMs / 1000} s of device_del`,
      { requestMs, counter: signalled, kernelLog: log })) {
      return;
    }
    t.comment(`device request after ${requestMs} ms (counter ${signalled}); kernel log:\n${log.join('\n')}`);
    t.ok(existsSync(`/sys/bus/pci/devices/${exporter.bdf}`),
      'the device stays in sysfs while vfio-pci waits for the device fd to close');
    const waiting = imp.report(handle, 0);
    t.comment(`while vfio-pci waits: import ${waiting.ok ? (waiting.value.mapped ? 'still mapped' : 'unmapped') : result(waiting)}, `
      + `invalidate count ${waiting.ok ? waiting.value.invalidateCount : '?'} (was ${count0})`);

    // ---- the close the request asks for ----
    const closed = closeFd(dev.deviceFd);
    deviceOpen = false;
    t.ok(closed.ok, 'close the device fd as the request asks', closed.ok ? undefined : { errno: closed.name });

    const inv = imp.waitInvalidate(handle, count0, INVALIDATE_TIMEOUT_MS);
    t.ok(inv.ok, 'the importer was invalidated (invalidate_mappings ran)',
      { errno: result(inv), invalidateCount: inv.value.invalidateCount, before: count0 });
    const after = imp.report(handle, 0);
    t.ok(after.ok && !after.value.mapped, 'the import is no longer mapped',
      after.ok ? { mapped: after.value.mapped, invalidateCount: after.value.invalidateCount } : { errno: result(after) });
    checkNoDataPath(t, 'after removal', imp, handle, 0);

    const gone = await waitPciGone(exporter.bdf, GONE_TIMEOUT_MS);
    const goneMs = Date.now() - asked;
    t.ok(gone, `the device leaves sysfs once its device fd is closed (within ${GONE_TIMEOUT_MS / 1000} s)`, { sinceDeviceDelMs: goneMs });
    if (gone) t.comment(`device gone from sysfs ${goneMs} ms after device_del`);
    if (slot.slot === null) {
      t.skip('the slot went from adapter 1 to 0: QEMU completed the unplug', `no hotplug slot in ${SLOTS} names the exporter's address`);
    } else {
      // acpiphp reads the slot's vendor ID, pciehp its presence detect: both see what QEMU still has.
      const adapter = await waitSlotEmpty(slot.slot, GONE_TIMEOUT_MS);
      t.ok(adapterBefore === '1' && adapter === '0', `slot ${slot.slot} went from adapter 1 to 0: QEMU completed the unplug`,
        { adapterBefore, adapter });
    }

    // The dma-buf outlives its exporter: revoked for good, still an fd with a size.
    const remap = imp.remap(handle);
    t.equal(result(remap), 'ENODEV', 'a remap of the orphaned import fails ENODEV',
      { error: remap.value.errorName, mapped: remap.value.mapped, nents: remap.value.nents });
    // No exporter named: REPORT's placement would look the removed device up and fail ENXIO before the attach.
    const again = imp.import({ fd, importerBdf: edu.bdf, dmaMaskBits: 64 });
    if (again.ok) imp.release(again.value.handle);
    t.ok(!again.ok && again.name === 'ENODEV' && again.value.stage === 'attach',
      'a new import of the orphaned dma-buf is refused ENODEV at attach', importDiag(again));
    t.equal(libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END)), { ok: true, value: info.size },
      'the dma-buf fd is still valid: lseek(SEEK_END) gives its size');
    const expName = /^exp_name:\s*(\S+)/m.exec(fdinfo(fd))?.[1];
    t.equal(expName, 'vfio_pci_core', 'the dma-buf fd still reads as a vfio_pci_core dma-buf in fdinfo');
    readKmsg();
    checkNoKernelReportsIn(t, km.ok ? { ok: true, value: seen } : km, 'from export to removal');

    // ---- release ----
    const rel = imp.release(handle);
    handle = 0;
    t.ok(rel.ok, 'release the import of the orphaned dma-buf', rel.ok ? undefined : { errno: rel.name });
    const c = closeFd(fd);
    fd = -1;
    t.ok(c.ok, 'close the orphaned dma-buf fd', c.ok ? undefined : { errno: c.name });
    checkNoKernelReportsIn(t, km.ok ? { ok: true, value: readKmsg() } : km, 'releasing the import and closing the dma-buf fd');
    const b = readBufinfo();
    if (b.ok) t.ok(!b.entries.some((e) => e.ino === ino), `dma-buf (ino ${ino}) gone from bufinfo`);
    else t.skip('dma-buf gone from bufinfo', b.reason);
  } finally {
    // Whatever stopped the probe: nothing of ours may keep a removal (requested or not) waiting.
    if (handle) imp.release(handle);
    if (fd >= 0) closeFd(fd);
    if (deviceOpen) closeFd(dev.deviceFd);
    closeFd(dev.groupFd);
    closeFd(dev.containerFd);
    if (reqFd >= 0) closeFd(reqFd);
    imp.close();
    if (km.ok) km.value.close();
  }
}
