// The vIOMMU a lab names must be the one the guest uses, or a run tests
// something other than what its results say: a kernel whose config lacks the
// driver boots with no translation at all, a command-line word or the driver
// itself picks another domain type than the lab's mode, another QEMU puts a
// different device at an endpoint's slot. So after boot, before anything is
// bound, hwlab compares what the guest enumerated (src/session/pci.ts) with
// the lab: the IOMMU unit in front of each endpoint (its sysfs `iommu` link), its group and default
// domain type, and its PCI ID against the endpoint kind table.
//
// A mismatch is bad input (outcome `error`, exit 2), not `infra`: it is as
// deterministic as the lab, kernel config and emulator that made it, so
// running again cannot help, and the run never tested what the lab describes.
import { endpointKind } from '../lab/endpoints.ts';
import { PCIE0_SLOTS } from '../lab/slots.ts';
import type { IommuSpec, LabSpec } from '../lab/types.ts';
import { InputError } from '../util/errors.ts';
import type { GuestPciDevice } from './pci.ts';

/** What the guest must show for a lab's vIOMMU. */
export interface ViommuExpectation {
  /** The /sys/class/iommu names of the driver's units; null: no IOMMU in front of any endpoint. */
  unit: RegExp | null;
  /** The driver and its unit names, for messages. */
  driver: string;
  /** The default domain type of each endpoint's group (drivers/iommu/iommu.c's names); null: no group. */
  domainType: 'DMA' | 'DMA-FQ' | 'identity' | null;
  /** Why that domain type, for messages and results. */
  domainWhy: string;
}

export function expectedViommu(iommu: IommuSpec): ViommuExpectation {
  const mode = iommu.passthrough ? 'passthrough' : iommu.strict ? 'strict' : 'lazy';
  const domain = (): Pick<ViommuExpectation, 'domainType' | 'domainWhy'> => {
    if (iommu.passthrough) return { domainType: 'identity', domainWhy: 'iommu.passthrough=1 gives identity default domains' };
    if (iommu.strict) return { domainType: 'DMA', domainWhy: 'iommu.strict=1 gives DMA domains with strict invalidation' };
    // QEMU's amd-iommu advertises NpCache (it may cache non-present entries), and the AMD driver then
    // forces strict invalidation whatever the command line says (drivers/iommu/amd/init.c: "Using strict
    // mode due to virtualization"), so lazy is DMA there, not DMA-FQ.
    if (iommu.kind === 'amd') return { domainType: 'DMA', domainWhy: 'the AMD driver forces strict mode under QEMU\'s amd-iommu (NpCache: "Using strict mode due to virtualization")' };
    // Likewise the Intel driver under caching mode with second-level tables (QEMU's default):
    // drivers/iommu/intel/iommu.c "IOMMU batching disallowed due to virtualization".
    if (iommu.kind === 'intel' && iommu.cachingMode) return { domainType: 'DMA', domainWhy: 'the Intel driver forces strict mode under caching mode ("IOMMU batching disallowed due to virtualization"); caching_mode: false gives lazy (DMA-FQ)' };
    return { domainType: 'DMA-FQ', domainWhy: `lazy mode (iommu.strict=0) gives DMA domains with a flush queue (${mode})` };
  };
  switch (iommu.kind) {
    case 'intel':
      return { unit: /^dmar\d+$/, driver: 'intel-iommu (units dmarN)', ...domain() };
    case 'amd':
      return { unit: /^ivhd\d+$/, driver: 'amd-iommu (units ivhdN)', ...domain() };
    case 'virtio': {
      // virtio-iommu registers its unit under the name of the PCI function it sits on
      // (drivers/iommu/virtio-iommu.c: dev_name of the virtio device's parent): hwlab's slot for it.
      const bdf = `0000:00:${PCIE0_SLOTS.iommu.toString(16).padStart(2, '0')}.0`;
      return { unit: new RegExp(`^${bdf.replace(/\./g, '\\.')}$`), driver: `virtio-iommu (unit ${bdf}, the virtio-iommu-pci function)`, ...domain() };
    }
    case 'none':
      return { unit: null, driver: 'none', domainType: null, domainWhy: 'no vIOMMU: no group until vfio-pci binds in no-IOMMU mode' };
  }
}

/** The root port an endpoint hangs off, directly or through a switch. */
function rootPortOf(lab: LabSpec, port: string): string {
  const sw = lab.topology.switches.find((s) => s.downstream.includes(port));
  return sw ? rootPortOf(lab, sw.port) : port;
}

/** What the guest showed and what the lab asked, as results.json records it. */
export interface ViommuRecord {
  type: IommuSpec['kind'];
  mode: 'strict' | 'lazy' | 'passthrough' | 'none';
  /** The lab's own kernel command-line words (where, e.g., vfio_iommu_type1.allow_unsafe_interrupts=1 shows). */
  cmdline: string[];
  expected: { driver: string; domainType: string | null; why: string };
  endpoints: Record<string, { bdf: string; pciId: string; iommu: string | null; group: number | null; domainType: string | null }>;
}

export function viommuRecord(lab: LabSpec, devices: Record<string, GuestPciDevice>): ViommuRecord {
  const e = expectedViommu(lab.iommu);
  const i = lab.iommu;
  return {
    type: i.kind,
    mode: i.kind === 'none' ? 'none' : i.passthrough ? 'passthrough' : i.strict ? 'strict' : 'lazy',
    cmdline: lab.machine.cmdline,
    expected: { driver: e.driver, domainType: e.domainType, why: e.domainWhy },
    endpoints: Object.fromEntries(Object.entries(devices).map(([id, d]) => [id, {
      bdf: d.bdf, pciId: d.vendorDevice.replace(/0x/g, ''), iommu: d.iommu, group: d.iommuGroup, domainType: d.domainType,
    }])),
  };
}

/** Every way the guest differs from the lab, one line each (empty: it matches). */
export function viommuMismatches(lab: LabSpec, devices: Record<string, GuestPciDevice>): string[] {
  const e = expectedViommu(lab.iommu);
  const out: string[] = [];
  for (const ep of lab.topology.endpoints) {
    const d = devices[ep.id];
    if (!d) {
      out.push(`${ep.id}: not found in the guest`);
      continue;
    }
    const at = `${ep.id} (${d.bdf})`;
    const want = endpointKind(ep.type).pciId;
    const got = d.vendorDevice.replace(/0x/g, '').toLowerCase();
    if (got !== want) out.push(`${at}: PCI ID ${got}, but a ${ep.type} is ${want} (src/lab/endpoints.ts): another device sits at its slot`);
    if (e.unit === null) {
      if (d.iommu !== null) out.push(`${at}: behind IOMMU unit ${d.iommu}, but the lab has no vIOMMU`);
      continue;
    }
    if (d.iommu === null) {
      out.push(`${at}: no IOMMU in front of it, but the lab's vIOMMU is ${lab.iommu.kind}: the guest kernel did not bind ${e.driver} (is it in the kernel config, and not disabled on the command line?)`);
    } else if (!e.unit.test(d.iommu)) {
      out.push(`${at}: behind IOMMU unit ${d.iommu}, but the lab's vIOMMU is ${e.driver}`);
    }
    if (d.iommuGroup === null) out.push(`${at}: in no IOMMU group, but the lab's vIOMMU is ${lab.iommu.kind}`);
    else if (d.domainType !== e.domainType) {
      out.push(`${at}: IOMMU group ${d.iommuGroup} has a ${d.domainType ?? '(unreadable)'} domain, but the lab asks for ${e.domainType} (${e.domainWhy})`);
    }
  }
  // Root ports carry ACS, so endpoints on different root ports are isolated from each other: one
  // group for two of them means the guest sees a topology other than the lab's.
  const seen = new Map<number, { id: string; root: string }>();
  for (const ep of lab.topology.endpoints) {
    const g = devices[ep.id]?.iommuGroup;
    if (g === null || g === undefined) continue;
    const root = rootPortOf(lab, ep.port);
    const other = seen.get(g);
    if (other && other.root !== root) out.push(`${ep.id} and ${other.id} share IOMMU group ${g}, but sit under different root ports (${root}, ${other.root})`);
    if (!other) seen.set(g, { id: ep.id, root });
  }
  return out;
}

/** Throws when the guest's vIOMMU or endpoints are not the lab's. */
export function assertViommu(lab: LabSpec, devices: Record<string, GuestPciDevice>): void {
  const problems = viommuMismatches(lab, devices);
  if (!problems.length) return;
  throw new InputError(
    `the guest does not run the lab's machine (vIOMMU ${lab.iommu.kind}):\n${problems.map((p) => `  ${p}`).join('\n')}`,
    'devices.json in the run folder has what the guest showed; check the lab\'s iommu: section, the kernel config\'s IOMMU drivers and the lab\'s cmdline words',
    'viommu-mismatch',
  );
}
