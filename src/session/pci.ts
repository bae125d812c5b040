// Finding lab endpoints in the guest. QEMU places every device at a fixed
// devfn (see qemu/cmdline.ts), but bus numbers are the guest's choice, so
// endpoints are found by walking the devfn path through sysfs.
import { check, sh, type GuestShell } from './commands.ts';

/** Matches a devfn path (['10.0','00.0']) against sysfs device paths under /sys/devices/pci0000:00. */
export function resolvePciPath(sysfsDirs: string[], devfnPath: string[]): string | null {
  const want = devfnPath.map((d) => d.toLowerCase());
  for (const dir of sysfsDirs) {
    const parts = dir.split('/').filter((p) => /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/.test(p));
    if (parts.length !== want.length) continue;
    if (parts.every((p, i) => p.slice(8) === want[i])) return parts[parts.length - 1];
  }
  return null;
}

export interface GuestPciDevice {
  bdf: string;
  iommuGroup: number | null;
  driver: string | null;
  /** `vendor:device` as sysfs shows them, e.g. `0x1af4:0x1110`. */
  vendorDevice: string;
  /** The IOMMU unit translating for the device (its /sys/class/iommu name: dmar0, ivhd0, virtio0), null without one. */
  iommu: string | null;
  /** Its IOMMU group's default domain type (DMA, DMA-FQ, identity, ...), null without a group. */
  domainType: string | null;
}

/**
 * One line per device: group|driver|vendor:device|IOMMU unit|domain type. The
 * unit is the device's `iommu` link, the type its group's `type` file
 * (drivers/iommu/iommu.c), both read before hwlab binds anything.
 */
const DEVICE_INFO = 'd=/sys/bus/pci/devices/$1; g=""; t=""; [ -e $d/iommu_group ] && g=$(basename $(readlink $d/iommu_group)) && t=$(cat $d/iommu_group/type 2>/dev/null); ' +
  'drv=""; [ -e $d/driver ] && drv=$(basename $(readlink $d/driver)); u=""; [ -e $d/iommu ] && u=$(basename $(readlink $d/iommu)); ' +
  'echo "$g|$drv|$(cat $d/vendor):$(cat $d/device)|$u|$t"';

/** Parses DEVICE_INFO's line (exported for the fake guest's tests). */
export function parseDeviceInfo(bdf: string, line: string): GuestPciDevice {
  const [g, drv, vd, unit, type] = line.trim().split('|');
  return { bdf, iommuGroup: g ? Number(g) : null, driver: drv || null, vendorDevice: vd, iommu: unit || null, domainType: type || null };
}

export async function findPciDevices(guest: GuestShell, paths: Record<string, string[]>): Promise<Record<string, GuestPciDevice>> {
  const dirs = (await check(guest, ['find', '/sys/devices/pci0000:00', '-maxdepth', '12', '-type', 'd', '-name', '0000:*'])).split('\n');
  const out: Record<string, GuestPciDevice> = {};
  for (const [id, devfn] of Object.entries(paths)) {
    const bdf = resolvePciPath(dirs, devfn);
    if (!bdf) throw new Error(`endpoint ${id}: no PCI device at devfn path ${devfn.join('/')} in the guest (is the topology enumerated?)`);
    const info = await sh(guest, DEVICE_INFO, [bdf], { timeoutMs: 30_000 });
    out[id] = parseDeviceInfo(bdf, info.stdout);
  }
  return out;
}
