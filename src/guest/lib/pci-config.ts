// PCI configuration space: the capability walks and the register fields the
// revoke triggers need (PM, PCI Express, Advanced Features, ACS). Works over
// any reader, so the same code reads vfio's virtualized config region of an
// opened device and the raw sysfs `config` file of a device without a driver.
import { readFileSync } from 'node:fs';

/** Reads `size` bytes little-endian at `offset`. */
export type ConfigReader = (offset: number, size: 1 | 2 | 4) => number;

export const PCI_STATUS = 0x06;
export const PCI_STATUS_CAP_LIST = 0x10;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_CFG_SPACE_SIZE = 0x100;
export const PCI_EXT_CAP_START = 0x100;

/** Standard capability ids (include/uapi/linux/pci_regs.h). */
export const CAP = { PM: 0x01, MSI: 0x05, VNDR: 0x09, EXP: 0x10, MSIX: 0x11, AF: 0x13 } as const;
/** Extended capability ids. */
export const EXT_CAP = { ERR: 0x0001, ACS: 0x000d, ARI: 0x000e } as const;

const CAP_NAMES: Record<number, string> = {
  0x01: 'PM', 0x05: 'MSI', 0x09: 'VNDR', 0x0d: 'SSVID', 0x10: 'EXP', 0x11: 'MSIX', 0x13: 'AF',
};
const EXT_CAP_NAMES: Record<number, string> = {
  0x0001: 'ERR', 0x0002: 'VC', 0x0003: 'DSN', 0x000b: 'VNDR', 0x000d: 'ACS', 0x000e: 'ARI', 0x0010: 'SRIOV',
  0x0015: 'REBAR', 0x001e: 'L1SS',
};

// Power Management capability (PCI PM 1.2).
export const PCI_PM_PMC = 2;
export const PCI_PM_CAP_D1 = 1 << 9;
export const PCI_PM_CAP_D2 = 1 << 10;
export const PCI_PM_CTRL = 4;
export const PCI_PM_CTRL_STATE_MASK = 0x3;
export const PCI_PM_CTRL_NO_SOFT_RESET = 1 << 3;
export type PowerState = 'D0' | 'D1' | 'D2' | 'D3hot';
export const POWER_STATES: readonly PowerState[] = ['D0', 'D1', 'D2', 'D3hot'];

// PCI Express capability.
export const PCI_EXP_FLAGS = 2;
export const PCI_EXP_DEVCAP = 4;
export const PCI_EXP_DEVCAP_FLR = 1 << 28;
export const PCI_EXP_DEVCTL = 8;
export const PCI_EXP_DEVCTL_BCR_FLR = 1 << 15;

// Advanced Features capability (conventional PCI FLR).
export const PCI_AF_CAP = 3;
export const PCI_AF_CAP_TP = 1 << 0;
export const PCI_AF_CAP_FLR = 1 << 1;
export const PCI_AF_CTRL = 4;
export const PCI_AF_CTRL_FLR = 1 << 0;

// Access Control Services extended capability.
export const PCI_ACS_CAP = 4;
export const PCI_ACS_CTRL = 6;
export const ACS_BITS = { SV: 0x01, TB: 0x02, RR: 0x04, CR: 0x08, UF: 0x10, EC: 0x20, DT: 0x40 } as const;

export interface Capability { id: number; name: string; offset: number }

/** The standard capability list; stops on a loop or a pointer into the header. */
export function capabilities(read: ConfigReader): Capability[] {
  const out: Capability[] = [];
  if (!(read(PCI_STATUS, 2) & PCI_STATUS_CAP_LIST)) return out;
  const seen = new Set<number>();
  let pos = read(PCI_CAPABILITY_LIST, 1) & ~3;
  while (pos >= 0x40 && pos < PCI_CFG_SPACE_SIZE && !seen.has(pos)) {
    seen.add(pos);
    const id = read(pos, 1);
    out.push({ id, name: CAP_NAMES[id] ?? `cap-0x${id.toString(16)}`, offset: pos });
    pos = read(pos + 1, 1) & ~3;
  }
  return out;
}

/** The extended capability list (PCIe config space beyond 256 bytes); empty when there is none. */
export function extCapabilities(read: ConfigReader, spaceSize: number): Capability[] {
  const out: Capability[] = [];
  if (spaceSize <= PCI_EXT_CAP_START) return out;
  const seen = new Set<number>();
  let pos = PCI_EXT_CAP_START;
  while (pos >= PCI_EXT_CAP_START && pos + 4 <= spaceSize && !seen.has(pos)) {
    seen.add(pos);
    const header = read(pos, 4);
    if (header === 0 || header === 0xffffffff) break;
    const id = header & 0xffff;
    out.push({ id, name: EXT_CAP_NAMES[id] ?? `ext-0x${id.toString(16)}`, offset: pos });
    pos = (header >>> 20) & ~3;
  }
  return out;
}

export function findCapability(read: ConfigReader, id: number): number | null {
  return capabilities(read).find((c) => c.id === id)?.offset ?? null;
}

export function powerStateOf(pmcsr: number): PowerState {
  return POWER_STATES[pmcsr & PCI_PM_CTRL_STATE_MASK];
}

/** What a device's config space says about the revoke triggers it can take. */
export interface DeviceCapabilities {
  caps: string[];
  extCaps: string[];
  pm: { offset: number; d1: boolean; d2: boolean; state: PowerState; noSoftReset: boolean } | null;
  exp: { offset: number; type: number; flr: boolean } | null;
  af: { offset: number; flr: boolean; tp: boolean } | null;
  acs: { offset: number; cap: number; ctrl: number } | null;
}

export function describeDevice(read: ConfigReader, spaceSize: number): DeviceCapabilities {
  const caps = capabilities(read);
  const ext = extCapabilities(read, spaceSize);
  const at = (id: number) => caps.find((c) => c.id === id)?.offset;
  const pmAt = at(CAP.PM);
  const expAt = at(CAP.EXP);
  const afAt = at(CAP.AF);
  const acsAt = ext.find((c) => c.id === EXT_CAP.ACS)?.offset;
  let pm: DeviceCapabilities['pm'] = null;
  if (pmAt !== undefined) {
    const pmc = read(pmAt + PCI_PM_PMC, 2);
    const pmcsr = read(pmAt + PCI_PM_CTRL, 2);
    pm = {
      offset: pmAt, d1: !!(pmc & PCI_PM_CAP_D1), d2: !!(pmc & PCI_PM_CAP_D2),
      state: powerStateOf(pmcsr), noSoftReset: !!(pmcsr & PCI_PM_CTRL_NO_SOFT_RESET),
    };
  }
  const exp = expAt === undefined ? null : {
    offset: expAt, type: (read(expAt + PCI_EXP_FLAGS, 2) >> 4) & 0xf,
    flr: !!(read(expAt + PCI_EXP_DEVCAP, 4) & PCI_EXP_DEVCAP_FLR),
  };
  let af: DeviceCapabilities['af'] = null;
  if (afAt !== undefined) {
    const c = read(afAt + PCI_AF_CAP, 1);
    af = { offset: afAt, flr: !!(c & PCI_AF_CAP_FLR), tp: !!(c & PCI_AF_CAP_TP) };
  }
  const acs = acsAt === undefined ? null
    : { offset: acsAt, cap: read(acsAt + PCI_ACS_CAP, 2), ctrl: read(acsAt + PCI_ACS_CTRL, 2) };
  return { caps: caps.map((c) => `${c.name}@0x${c.offset.toString(16)}`), extCaps: ext.map((c) => `${c.name}@0x${c.offset.toString(16)}`), pm, exp, af, acs };
}

/** Names of the set ACS control bits, e.g. ['SV', 'RR', 'CR', 'UF']. */
export function acsBitNames(ctrl: number): string[] {
  return Object.entries(ACS_BITS).filter(([, v]) => ctrl & v).map(([k]) => k);
}

/** A reader over a config space image (sysfs `config` of a device, or a test fixture). */
export function bufferReader(b: Buffer): ConfigReader {
  return (offset, size) => (offset + size <= b.length ? b.readUIntLE(offset, size) : 0xffffffff >>> (32 - 8 * size));
}

/**
 * The raw config space of a device from sysfs (root reads all of it: 4096
 * bytes for PCIe, 256 for conventional PCI). Not virtualized: for a device
 * vfio owns, this is the hardware's view, not the user's.
 */
export function sysfsConfig(bdf: string): { read: ConfigReader; size: number } {
  const b = readFileSync(`/sys/bus/pci/devices/${bdf}/config`);
  return { read: bufferReader(b), size: b.length };
}
