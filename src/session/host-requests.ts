// Requests a probe makes of the host while it runs, such as "remove this PCI
// device now" (QMP device_del: a hot removal the guest did not start). The
// probe prints a TAP comment line `# hwlab-request: <verb> <endpoint id>` and
// then watches for the effect itself; the host only acts on endpoint ids of
// the lab and verbs listed here, and logs every request and its outcome.

export const HOST_REQUEST_VERBS = ['device_del'] as const;
export type HostRequestVerb = (typeof HOST_REQUEST_VERBS)[number];
export interface HostRequest { verb: HostRequestVerb; id: string }

const LINE = /^\s*# hwlab-request: (\S+) (\S+)\s*$/;

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
      const m = line.match(LINE);
      if (!m) continue;
      const [, verb, id] = m;
      if (!(HOST_REQUEST_VERBS as readonly string[]).includes(verb)) out.push({ error: `unknown request "${verb}" (known: ${HOST_REQUEST_VERBS.join(', ')})` });
      else if (!this.endpoints.includes(id)) out.push({ error: `${verb} ${id}: not an endpoint of this lab (${this.endpoints.join(', ')})` });
      else out.push({ verb: verb as HostRequestVerb, id });
    }
    return out;
  }
}
