// Finding lab endpoints in the guest. QEMU places every device at a fixed
// devfn (see qemu/cmdline.ts), but bus numbers are the guest's choice, so
// endpoints are found by walking the devfn path through sysfs.
import { sh, type GuestShell } from './commands.ts';

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
 * Finds the endpoints and reads their sysfs records in one guest command.
 * Arguments are devfn paths (`10.0/00.0`); for each PCI device directory
 * under the root complex whose BDF components end in one of them (the first
 * such directory), one line:
 * devfn path|bdf|group|driver|vendor:device|IOMMU unit|domain type. The unit
 * is the device's `iommu` link, the type its group's `type` file
 * (drivers/iommu/iommu.c), both read before hwlab binds anything. Shell
 * builtins only (`cd -P` resolves a link, `read` reads a file), besides the
 * one `find`: under TCG each exec of a dynamically linked tool costs about
 * 0.1 s and each guest command about 0.25 s; the script that ran basename,
 * readlink and cat per device took 0.85 s a device.
 */
const FIND_ENDPOINTS = `want=" $* "; seen=" "
for d in $(find /sys/devices/pci0000:00 -maxdepth 12 -type d -name '0000:*'); do
  s=; IFS=/
  for c in \${d#/sys/devices/pci0000:00/}; do
    case $c in [0-9a-f][0-9a-f][0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f].[0-7]) s=\${s:+$s/}\${c##*:}; b=$c ;; esac
  done
  unset IFS
  case $want in *" $s "*) ;; *) continue ;; esac
  case $seen in *" $s "*) continue ;; esac
  seen="$seen$s "
  g=; t=; drv=; u=; v=; dv=
  if [ -e $d/iommu_group ]; then g=$(cd -P $d/iommu_group && pwd); g=\${g##*/}; read -r t 2>/dev/null < $d/iommu_group/type || t=; fi
  if [ -e $d/driver ]; then drv=$(cd -P $d/driver && pwd); drv=\${drv##*/}; fi
  if [ -e $d/iommu ]; then u=$(cd -P $d/iommu && pwd); u=\${u##*/}; fi
  read -r v < $d/vendor; read -r dv < $d/device
  echo "$s|$b|$g|$drv|$v:$dv|$u|$t"
done`;

/** Parses a FIND_ENDPOINTS line's fields after the devfn path and the BDF (exported for the fake guest's tests). */
export function parseDeviceInfo(bdf: string, line: string): GuestPciDevice {
  const [g, drv, vd, unit, type] = line.trim().split('|');
  return { bdf, iommuGroup: g ? Number(g) : null, driver: drv || null, vendorDevice: vd, iommu: unit || null, domainType: type || null };
}

export async function findPciDevices(guest: GuestShell, paths: Record<string, string[]>): Promise<Record<string, GuestPciDevice>> {
  const want = Object.values(paths).map((p) => p.map((d) => d.toLowerCase()).join('/'));
  const r = await sh(guest, FIND_ENDPOINTS, want, { timeoutMs: 30_000 });
  const lines = new Map(r.stdout.split('\n').filter(Boolean).map((l) => {
    const [devfns, bdf, ...rest] = l.split('|');
    return [devfns, { bdf, rest: rest.join('|') }];
  }));
  const out: Record<string, GuestPciDevice> = {};
  for (const [id, devfn] of Object.entries(paths)) {
    const line = lines.get(devfn.map((d) => d.toLowerCase()).join('/'));
    if (!line) {
      throw new Error(`endpoint ${id}: no PCI device at devfn path ${devfn.join('/')} in the guest (is the topology enumerated?)` +
        `${r.code !== 0 ? ` (exit ${r.code}: ${r.stderr.trim().slice(0, 500)})` : ''}`);
    }
    out[id] = parseDeviceInfo(line.bdf, line.rest);
  }
  return out;
}
