// Shared plumbing for probes: the context they receive and small helpers
// around the VFIO device, dma-buf fds and the dma-buf debugfs listing.
import { readFileSync } from 'node:fs';
import type { DmabufAbi, GuestDevice } from '../../protocol/protocol.ts';
import * as libc from '../lib/libc.ts';
import type { Subtest } from '../lib/tap.ts';
import { VfioDevice, type ExportRequest } from '../lib/vfio.ts';

export interface ProbeContext {
  device: GuestDevice;
  /** Every endpoint of the lab by id (see GuestRunConfig.devices). */
  devices: Record<string, GuestDevice>;
  abi: DmabufAbi;
  /** Validated against the catalog, defaults filled in. */
  params: Record<string, unknown>;
  t: Subtest;
}
export type Probe = (ctx: ProbeContext) => void | Promise<void>;

/** The endpoint a probe param names (e.g. importer: edu0), or a clear error. */
export function deviceById(ctx: ProbeContext, id: string, type?: GuestDevice['type']): GuestDevice {
  const d = ctx.devices[id];
  if (!d) throw new Error(`no endpoint "${id}" in this lab (endpoints: ${Object.keys(ctx.devices).join(', ') || 'none'})`);
  if (type && d.type !== type) throw new Error(`endpoint "${id}" is ${d.type}, not ${type}`);
  return d;
}

/** Opens the device, runs fn, and closes the device whatever happens. */
export async function withDevice<T>(ctx: ProbeContext, fn: (dev: VfioDevice) => T | Promise<T>): Promise<T> {
  const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  try {
    return await fn(dev);
  } finally {
    dev.close();
  }
}

/** 'OK' or the errno name: the vocabulary of expectations. */
export const outcome = (r: libc.SysResult<unknown>): string => (r.ok ? 'OK' : r.name);

export const hex = (n: number | bigint) => `0x${n.toString(16)}`;

/** Diagnostics describing an export request and what came back. */
export function exportDiag(abi: DmabufAbi, req: ExportRequest, r: libc.SysResult<number>): Record<string, unknown> {
  return {
    abi,
    request: { ...req, ranges: req.ranges.map((x) => ({ offset: hex(x.offset), length: hex(x.length) })),
      featureFlags: req.featureFlags === undefined ? undefined : hex(req.featureFlags) },
    ...(r.ok ? { fd: r.value } : { errno: r.name, errnoNumber: r.errno }),
  };
}

export function closeFd(fd: number): libc.SysResult<void> {
  return libc.trySyscall(() => libc.close(fd));
}

export function fdinfo(fd: number): string {
  return readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
}

export const BUFINFO = '/sys/kernel/debug/dma_buf/bufinfo';
export interface BufinfoEntry { size: number; expName: string; ino: number; name: string }

/**
 * Parses debugfs bufinfo object lines, printed by dma_buf_debug_show() as
 * "%08zu\t%08x\t%08x\t%08ld\t%s\t%08lu\t%s": size flags mode count exp_name ino name.
 * Attachment and fence lines start with a tab and are skipped.
 */
export function parseBufinfo(text: string): BufinfoEntry[] {
  const out: BufinfoEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.split('\t');
    if (f.length >= 6 && /^\d+$/.test(f[0]) && /^\d+$/.test(f[5])) {
      out.push({ size: Number(f[0]), expName: f[4], ino: Number(f[5]), name: f[6] ?? '' });
    }
  }
  return out;
}

/** bufinfo entries, or the reason they cannot be read (no debugfs, no CONFIG_DEBUG_FS...). */
export function readBufinfo(): { ok: true; entries: BufinfoEntry[] } | { ok: false; reason: string } {
  try {
    return { ok: true, entries: parseBufinfo(readFileSync(BUFINFO, 'utf8')) };
  } catch (e) {
    return { ok: false, reason: `${BUFINFO} not readable: ${(e as Error).message}` };
  }
}
