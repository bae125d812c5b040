// The PCI slot plan: where hwlab puts devices on q35's pcie.0, and from that,
// how many ports and functions a topology can have. The limits are declared
// here and checked here (slotIssues): the lab stage reports them with
// locations when it loads a file, and src/machine/cmdline.ts, which lays the
// machine out from PCIE0_SLOTS, refuses a LabSpec built in code that breaks them.
import { endpointKind } from './endpoints.ts';
import type { TopologySpec } from './types.ts';

/** Fixed slots on pcie.0. 0x1f is q35's own LPC/SATA/SMBus function block. */
export const PCIE0_SLOTS = {
  /** virtio-iommu-pci; amd-iommu's PCI function lands here too, being the first PCI device created. */
  iommu: 0x1,
  rootDisk: 0x2,
  modulesDisk: 0x3,
  net: 0x4,
  /** Root port i is at firstRootPort + i. */
  firstRootPort: 0x10,
  lastRootPort: 0x1e,
} as const;

/** Root ports sit at pcie.0 slots 0x10..0x1e. */
export const MAX_ROOT_PORTS = PCIE0_SLOTS.lastRootPort - PCIE0_SLOTS.firstRootPort + 1;
/** Downstream ports are devices 0..31 on the switch's internal bus. */
export const MAX_DOWNSTREAM_PORTS = 32;
/** Every root and downstream port gets its own chassis number, a uint8 (0 unused). */
export const MAX_PORTS = 255;
/** Functions of one device (a port's slot): 0..7. */
export const MAX_FUNCTIONS = 8;

/** A broken limit: where in the lab file as written (snake_case path) and what. */
export interface SlotIssue {
  path: (string | number)[];
  message: string;
}

export function slotIssues(topo: TopologySpec): SlotIssue[] {
  const T = ['topology'];
  const issues: SlotIssue[] = [];
  if (topo.rootPorts.length > MAX_ROOT_PORTS) {
    issues.push({
      path: [...T, 'root_ports', MAX_ROOT_PORTS],
      message: `at most ${MAX_ROOT_PORTS} root ports fit on pcie.0 (slots 0x${PCIE0_SLOTS.firstRootPort.toString(16)}-0x${PCIE0_SLOTS.lastRootPort.toString(16)})`,
    });
  }
  topo.switches.forEach((sw, i) => {
    if (sw.downstream.length > MAX_DOWNSTREAM_PORTS) {
      issues.push({ path: [...T, 'switches', i, 'downstream', MAX_DOWNSTREAM_PORTS], message: `a switch has at most ${MAX_DOWNSTREAM_PORTS} downstream ports` });
    }
  });
  const ports = topo.rootPorts.length + topo.switches.reduce((n, s) => n + s.downstream.length, 0);
  if (ports > MAX_PORTS) issues.push({ path: T, message: `at most ${MAX_PORTS} root and downstream ports in all (got ${ports})` });
  topo.endpoints.forEach((ep, i) => {
    const fn = ep.function ?? 0;
    const n = endpointKind(ep.type).slot.functions;
    if (fn + n > MAX_FUNCTIONS) {
      issues.push({
        path: [...T, 'endpoints', i, 'function'],
        message: `${ep.type} takes ${n} functions from its function number on, and a device has functions 0-${MAX_FUNCTIONS - 1} (got ${fn})`,
      });
    }
  });
  return issues;
}

/** For code that builds a LabSpec without the lab stage: the same limits, as one Error. */
export function assertSlots(topo: TopologySpec): void {
  const issues = slotIssues(topo);
  if (issues.length) throw new Error(`topology does not fit the slot plan: ${issues.map((i) => i.message).join('; ')}`);
}
