// Requests to the host while a probe runs (the protocol's request line, see
// src/protocol/protocol.ts): a TAP comment line the host watches for. The host acts asynchronously and
// does not answer; the probe observes the effect (e.g. the device leaving sysfs).
import { existsSync } from 'node:fs';
import { formatHostRequest } from '../../protocol/protocol.ts';

/** Asks the host to hot-remove the endpoint with this lab id (QMP device_del). */
export function requestDeviceDel(endpointId: string): void {
  process.stdout.write(`${formatHostRequest({ verb: 'device_del', id: endpointId })}\n`);
}

/** Polls until the PCI device is gone from sysfs; false on timeout. */
export async function waitPciGone(bdf: string, timeoutMs: number, pollMs = 100): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (existsSync(`/sys/bus/pci/devices/${bdf}`)) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, pollMs));
  }
  return true;
}
