// Requests a probe makes of the host while it runs, such as "remove this PCI
// device now" (QMP device_del: a hot removal the guest did not start). The
// line format is the protocol's (src/protocol/protocol.ts); the host only acts
// on endpoint ids of the lab and verbs listed there, and logs every request
// and its outcome.
import { parseHostRequest, type HostRequest } from '../protocol/protocol.ts';

export type { HostRequest };

/**
 * Splits a stdout stream into complete lines and yields the requests among
 * them; a request split across chunks is seen once it is complete.
 */
export class HostRequestScanner {
  private partial = '';
  constructor(private readonly endpoints: readonly string[]) {}

  /** Requests completed by this chunk; malformed ones (unknown verb or id) come back as errors. */
  push(chunk: string): Array<HostRequest | { error: string }> {
    const text = this.partial + chunk;
    const lines = text.split('\n');
    this.partial = lines.pop() ?? '';
    const out: Array<HostRequest | { error: string }> = [];
    for (const line of lines) {
      const r = parseHostRequest(line, this.endpoints);
      if (r) out.push(r);
    }
    return out;
  }
}
