// rough-edges: the contract's known rough edges of low-power entry (section 3),
// observed through iommufd's MAP_FILE (ENODEV while revoked).
// 1. After LOW_POWER_ENTRY without an eventfd, a PCI_COMMAND write with MEM=1
//    un-revokes although runtime PM is still engaged (a second entry is still
//    refused, EINVAL). The refused entry revokes anyway: vfio_pci_runtime_pm_entry
//    revokes before it checks pm_runtime_engaged (core.c:378-384).
// 2. With LOW_POWER_ENTRY_WITH_WAKEUP, a wakeup (an access that runtime-resumes
//    the device) signals the eventfd and ends low power in
//    vfio_pci_core_runtime_resume, which does not un-revoke; LOW_POWER_EXIT does.
// Each check passes when the kernel behaves as the contract describes it; a
// kernel that has smoothed an edge fails the check and the diagnostics say what
// it does now. Needs an exporter with a PCI PM capability (nvme, not ivshmem);
// the wakeup half needs runtime PM (CONFIG_PM), without which nothing ever
// suspends or wakes.
import { existsSync, readFileSync } from 'node:fs';
import { Iommufd, IOMMU_DEV } from '../lib/iommufd.ts';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import { CAP, capabilities } from '../lib/pci-config.ts';
import type { Subtest } from '../lib/tap.ts';
import {
  deviceFeature, encodeLowPower, encodeLowPowerEntryWithWakeup, PCI_COMMAND, VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY,
  VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, VfioDevice,
} from '../lib/vfio.ts';
import { closeFd, exportDiag, outcome, type ProbeContext } from './common.ts';
import { checkNoKernelReports, commandDiag, setMemoryDecoding, sleepSync } from './observe.ts';

const SUSPEND_WAIT_MS = 5000;

export default async function roughEdges(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const km = libc.trySyscall(() => Kmsg.mark());
  const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  let iommufd: Iommufd | undefined;
  let fd = -1;
  try {
    const caps = capabilities((o, s) => dev.configRead(o, s));
    if (!caps.some((c) => c.id === CAP.PM)) {
      const why = `${ctx.device.id} (${ctx.device.type}) has no PCI PM capability (capabilities: ${caps.map((c) => c.name).join(', ') || 'none'}); the low-power edges need an exporter that can go to D3hot, such as nvme`;
      t.skip('LOW_POWER_ENTRY without eventfd: COMMAND MEM=1 un-revokes while runtime PM is engaged', why);
      t.skip('LOW_POWER_ENTRY_WITH_WAKEUP: a wakeup does not un-revoke', why);
      return;
    }
    if (!existsSync(IOMMU_DEV)) {
      t.skip('low-power rough edges', `no ${IOMMU_DEV} (kernel without CONFIG_IOMMUFD): MAP_FILE is how this probe sees a revoke`);
      return;
    }
    const on = setMemoryDecoding(dev, true);
    if (!t.ok(on.ok, 'PCI_COMMAND.MEM is on before exporting', commandDiag(on))) return;
    const size = dev.regionInfo(region).size;
    const req = { region, ranges: [{ offset: 0, length: size }] };
    const r = dev.exportDmabuf(abi, req);
    if (!t.ok(r.ok && r.value > 0, `export region ${region} as a dma-buf`, exportDiag(abi, req, r)) || !r.ok) return;
    fd = r.value;
    iommufd = Iommufd.open();
    const ioasId = iommufd.allocIoas();
    const ioas = iommufd;
    const importOutcome = () => {
      const m = ioas.mapFile({ ioasId, fd, start: 0, length: size });
      if (m.ok) ioas.unmap(ioasId, m.value.iova, m.value.length);
      return outcome(m);
    };
    const feature = (arg: Buffer) => outcome(deviceFeature(dev, arg));
    const status = () => runtimeStatus(ctx.device.bdf);

    t.equal(importOutcome(), 'OK', 'MAP_FILE succeeds before low power');

    // 1. Entry without eventfd, then a COMMAND write with MEM=1.
    t.equal(feature(encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)), 'OK', 'LOW_POWER_ENTRY (no eventfd) succeeds');
    t.equal(importOutcome(), 'ENODEV', 'LOW_POWER_ENTRY revokes: MAP_FILE fails ENODEV', { runtimeStatus: status() });
    const mem = setMemoryDecoding(dev, true);
    t.equal(importOutcome(), 'OK', 'a COMMAND write with MEM=1 un-revokes although runtime PM is still engaged (contract rough edge)', {
      command: commandDiag(mem), runtimeStatus: status(),
    });
    t.equal(feature(encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)), 'EINVAL', 'runtime PM is indeed still engaged: a second LOW_POWER_ENTRY is refused EINVAL');
    t.equal(importOutcome(), 'ENODEV', 'the refused second LOW_POWER_ENTRY revokes anyway (it revokes before it checks; not in the contract)');
    t.equal(feature(encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_EXIT)), 'OK', 'LOW_POWER_EXIT succeeds');
    t.equal(importOutcome(), 'OK', 'after LOW_POWER_EXIT (MEM on) MAP_FILE succeeds again');

    // 2. Entry with a wakeup eventfd, then a wakeup.
    wakeupEdge(t, ctx.device.bdf, dev, feature, importOutcome);
  } finally {
    // Leave the device out of low power whatever happened (EXIT without a prior entry is a no-op).
    deviceFeature(dev, encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_EXIT));
    iommufd?.close();
    if (fd > 0) closeFd(fd);
    dev.close();
    checkNoKernelReports(t, km, 'during low-power entry, wakeup and exit');
  }
}

/** runtime_status from sysfs ('active', 'suspended'...), or null without runtime PM (CONFIG_PM off). */
function runtimeStatus(bdf: string): string | null {
  try {
    return readFileSync(`/sys/bus/pci/devices/${bdf}/power/runtime_status`, 'utf8').trim();
  } catch {
    return null;
  }
}

function wakeupEdge(t: Subtest, bdf: string, dev: VfioDevice, feature: (arg: Buffer) => string, importOutcome: () => string): void {
  const name = 'LOW_POWER_ENTRY_WITH_WAKEUP: a wakeup does not un-revoke (contract rough edge)';
  if (runtimeStatus(bdf) === null) {
    t.skip(name, `no /sys/bus/pci/devices/${bdf}/power/runtime_status: kernel without runtime PM (CONFIG_PM), so the device never suspends and no wakeup can happen`);
    return;
  }
  const efd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    if (!t.equal(feature(encodeLowPowerEntryWithWakeup(efd)), 'OK', 'LOW_POWER_ENTRY_WITH_WAKEUP succeeds')) return;
    t.equal(importOutcome(), 'ENODEV', 'LOW_POWER_ENTRY_WITH_WAKEUP revokes: MAP_FILE fails ENODEV');
    // Only a device that really suspended gets a runtime resume, which is the wakeup.
    const deadline = Date.now() + SUSPEND_WAIT_MS;
    while (runtimeStatus(bdf) !== 'suspended' && Date.now() < deadline) sleepSync(20);
    if (!t.equal(runtimeStatus(bdf), 'suspended', `the device runtime-suspends within ${SUSPEND_WAIT_MS / 1000} s`)) return;
    dev.configRead(PCI_COMMAND, 2); // any region access resumes the device: the wakeup
    const count = Buffer.alloc(8);
    const got = libc.trySyscall(() => libc.read(efd, count));
    t.ok(got.ok && count.readBigUInt64LE() >= 1n, 'the wakeup signals the eventfd', got.ok ? { count: count.readBigUInt64LE() } : { errno: got.name });
    t.equal(importOutcome(), 'ENODEV', name, { runtimeStatus: runtimeStatus(bdf) });
    t.equal(feature(encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_EXIT)), 'OK', 'LOW_POWER_EXIT after the wakeup succeeds');
    t.equal(importOutcome(), 'OK', 'LOW_POWER_EXIT after the wakeup un-revokes: MAP_FILE succeeds');
  } finally {
    closeFd(efd);
  }
}
