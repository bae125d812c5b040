// What the iommufd, lifetime, rough-edges and stress probes observe besides
// ioctl results: PCI_COMMAND.MEM as read back, the dma-bufs vfio still owns
// (debugfs bufinfo), the vfio_pci_core module's reference count (every live
// vfio dma-buf holds one: dma_buf_export takes exp_info.owner), the process's
// open fds, and kernel reports since a mark.
import { readdirSync, readFileSync } from 'node:fs';
import { dedupByTitle, reportDiagnostics } from '../../report/kernel-report.ts';
import { findKmsgReports } from '../../report/scan.ts';
import type { Kmsg, KmsgRecord } from '../lib/kmsg.ts';
import type * as libc from '../lib/libc.ts';
import type { Subtest } from '../lib/tap.ts';
import { PCI_COMMAND, PCI_COMMAND_MEMORY as MEM } from '../lib/vfio.ts';
import { hex, readBufinfo } from './common.ts';

export interface ConfigAccess {
  configRead(offset: number, size: 1 | 2 | 4): number;
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void;
}

/** Writes PCI_COMMAND with MEM set or cleared (a revoke or un-revoke trigger) and reads it back. */
export function setMemoryDecoding(dev: ConfigAccess, on: boolean): { before: number; after: number; ok: boolean } {
  const before = dev.configRead(PCI_COMMAND, 2);
  dev.configWrite(PCI_COMMAND, 2, on ? before | MEM : before & ~MEM);
  const after = dev.configRead(PCI_COMMAND, 2);
  return { before, after, ok: Boolean(after & MEM) === on };
}

export const commandDiag = (r: { before: number; after: number }) => ({ before: hex(r.before), after: hex(r.after) });

export const VFIO_PCI_CORE = 'vfio_pci_core';

/** /sys/module/<mod>/refcnt, or null without CONFIG_MODULE_UNLOAD (or the module not loaded). */
export function moduleRefcnt(mod = VFIO_PCI_CORE): number | null {
  try {
    return Number(readFileSync(`/sys/module/${mod}/refcnt`, 'utf8').trim());
  } catch {
    return null;
  }
}

/** Inodes of the dma-bufs vfio_pci_core exported that are still alive, or why they cannot be read. */
export function vfioDmabufInos(): { ok: true; inos: number[] } | { ok: false; reason: string } {
  const b = readBufinfo();
  return b.ok ? { ok: true, inos: b.entries.filter((e) => e.expName === VFIO_PCI_CORE).map((e) => e.ino).sort((x, y) => x - y) } : b;
}

/** This process's open fd numbers, sorted. */
export function openFds(): number[] {
  return readdirSync('/proc/self/fd').map(Number).sort((a, b) => a - b);
}

/** What the vfio dma-buf leak checks compare: live buffers and module references. */
export interface Baseline { inos: number[] | null; bufinfoReason?: string; refcnt: number | null }

export function baseline(): Baseline {
  const b = vfioDmabufInos();
  return b.ok ? { inos: b.inos, refcnt: moduleRefcnt() } : { inos: null, bufinfoReason: b.reason, refcnt: moduleRefcnt() };
}

/** Points: bufinfo and the vfio_pci_core refcount are back where `base` was. */
export function checkBackToBaseline(t: Subtest, base: Baseline, when: string): void {
  const now = baseline();
  if (base.inos && now.inos) {
    t.equal(now.inos, base.inos, `${when}: the vfio dma-bufs in bufinfo are back to the baseline`, { leaked: now.inos.filter((i) => !base.inos!.includes(i)) });
  } else {
    t.skip(`${when}: bufinfo back to the baseline`, base.bufinfoReason ?? now.bufinfoReason ?? 'bufinfo unreadable');
  }
  if (base.refcnt !== null && now.refcnt !== null) {
    t.equal(now.refcnt, base.refcnt, `${when}: /sys/module/${VFIO_PCI_CORE}/refcnt is back to the baseline`);
  } else {
    t.skip(`${when}: ${VFIO_PCI_CORE} refcnt back to the baseline`, `/sys/module/${VFIO_PCI_CORE}/refcnt not readable (module not loaded or no CONFIG_MODULE_UNLOAD)`);
  }
}

/** Records the kernel overwrote before we read them: gaps in the sequence numbers (a flood of reports overruns the ring). */
function recordsLost(records: readonly KmsgRecord[]): number {
  let lost = 0;
  for (let i = 1; i < records.length; i++) lost += Math.max(0, records[i].seq - records[i - 1].seq - 1);
  return lost;
}

/**
 * The one "no kernel report" point every probe writes: `records` are what the
 * kernel logged over the checked span. On failure the diagnostics carry each
 * title once (kind, count, fatal) with the first lines of its first excerpt.
 * Counts are a floor when the ring buffer overran; the host's console has them all.
 */
export function checkNoKernelReportsIn(t: Subtest, records: libc.SysResult<readonly KmsgRecord[]>, what: string): void {
  const name = `no kernel report ${what}`;
  if (!records.ok) return void t.skip(name, `/dev/kmsg unavailable: ${records.name}`);
  const reports = dedupByTitle(findKmsgReports(records.value));
  const lost = recordsLost(records.value);
  if (lost > 0 && reports.length === 0) t.comment(`${lost} kernel log records were overwritten before they could be read`);
  t.ok(reports.length === 0, name, { kernelReports: reportDiagnostics(reports), ...(lost > 0 ? { kmsgRecordsLost: lost } : {}) });
}

/** The usual form: everything logged since the mark `km` was taken; closes it. */
export function checkNoKernelReports(t: Subtest, km: libc.SysResult<Kmsg>, what: string): void {
  const records = km.ok ? { ok: true as const, value: km.value.read() } : km;
  if (km.ok) km.value.close();
  checkNoKernelReportsIn(t, records, what);
}

/** A page of u32 words tag<<20 | index: distinct per tag, never all-equal bytes. */
export function pattern(tag: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i + 4 <= length; i += 4) b.writeUInt32LE(((tag << 20) | (i >> 2)) >>> 0, i);
  return b;
}

/** Which of the named candidates `bytes` equals, else 'other' (with its first bytes for the diagnostics). */
export function whichBytes(bytes: Buffer, candidates: Record<string, Buffer>): string {
  for (const [name, c] of Object.entries(candidates)) if (bytes.equals(c)) return name;
  return `other (starts ${bytes.subarray(0, 16).toString('hex')})`;
}

/** Sleeps without returning to the event loop (for polling a device register). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}
