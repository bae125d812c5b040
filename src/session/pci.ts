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
 * One line per device given: bdf|group|driver|vendor:device|IOMMU unit|domain
 * type. The unit is the device's `iommu` link, the type its group's `type`
 * file (drivers/iommu/iommu.c), both read before hwlab binds anything. All
 * devices in one exec, with shell builtins only (`cd -P` resolves a link,
 * `read` reads a file): under TCG each exec of a dynamically linked tool costs
 * about 0.1 s, and the script that ran basename, readlink and cat per device
 * took 0.85 s a device.
 */
const DEVICE_INFO = `for b in "$@"; do
  d=/sys/bus/pci/devices/$b; g=; t=; drv=; u=; v=; dv=
  if [ -e $d/iommu_group ]; then g=$(cd -P $d/iommu_group && pwd); g=\${g##*/}; read -r t 2>/dev/null < $d/iommu_group/type || t=; fi
  if [ -e $d/driver ]; then drv=$(cd -P $d/driver && pwd); drv=\${drv##*/}; fi
  if [ -e $d/iommu ]; then u=$(cd -P $d/iommu && pwd); u=\${u##*/}; fi
  read -r v < $d/vendor; read -r dv < $d/device
  echo "$b|$g|$drv|$v:$dv|$u|$t"
done`;

/** Parses DEVICE_INFO's line (exported for the fake guest's tests). */
export function parseDeviceInfo(bdf: string, line: string): GuestPciDevice {
  const [g, drv, vd, unit, type] = line.trim().split('|');
  return { bdf, iommuGroup: g ? Number(g) : null, driver: drv || null, vendorDevice: vd, iommu: unit || null, domainType: type || null };
}

export async function findPciDevices(guest: GuestShell, paths: Record<string, string[]>): Promise<Record<string, GuestPciDevice>> {
  const dirs = (await check(guest, ['find', '/sys/devices/pci0000:00', '-maxdepth', '12', '-type', 'd', '-name', '0000:*'])).split('\n');
  const bdfs: Record<string, string> = {};
  for (const [id, devfn] of Object.entries(paths)) {
    const bdf = resolvePciPath(dirs, devfn);
    if (!bdf) throw new Error(`endpoint ${id}: no PCI device at devfn path ${devfn.join('/')} in the guest (is the topology enumerated?)`);
    bdfs[id] = bdf;
  }
  const info = await sh(guest, DEVICE_INFO, Object.values(bdfs), { timeoutMs: 30_000 });
  const lines = new Map(info.stdout.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('|')), l.slice(l.indexOf('|') + 1)]));
  const out: Record<string, GuestPciDevice> = {};
  for (const [id, bdf] of Object.entries(bdfs)) {
    const line = lines.get(bdf);
    if (line === undefined) throw new Error(`endpoint ${id} (${bdf}): the guest printed no sysfs record for it (exit ${info.code}: ${info.stderr.trim().slice(0, 500)})`);
    out[id] = parseDeviceInfo(bdf, line);
  }
  return out;
}
