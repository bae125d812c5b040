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
  vendorDevice: string;
}

export async function findPciDevices(guest: GuestShell, paths: Record<string, string[]>): Promise<Record<string, GuestPciDevice>> {
  const dirs = (await check(guest, ['find', '/sys/devices/pci0000:00', '-maxdepth', '12', '-type', 'd', '-name', '0000:*'])).split('\n');
  const out: Record<string, GuestPciDevice> = {};
  for (const [id, devfn] of Object.entries(paths)) {
    const bdf = resolvePciPath(dirs, devfn);
    if (!bdf) throw new Error(`endpoint ${id}: no PCI device at devfn path ${devfn.join('/')} in the guest (is the topology enumerated?)`);
    const info = await sh(guest, 
      'd=/sys/bus/pci/devices/$1; g=""; [ -e $d/iommu_group ] && g=$(basename $(readlink $d/iommu_group)); ' +
        'drv=""; [ -e $d/driver ] && drv=$(basename $(readlink $d/driver)); echo "$g|$drv|$(cat $d/vendor):$(cat $d/device)"',
      [bdf],
      { timeoutMs: 30_000 },
    );
    const [g, drv, vd] = info.stdout.trim().split('|');
    out[id] = { bdf, iommuGroup: g ? Number(g) : null, driver: drv || null, vendorDevice: vd };
  }
  return out;
}
