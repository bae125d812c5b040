// The scanner's input, one shape for both sources: a serial console log (the
// host) and /dev/kmsg records (the guest). Each becomes lines of message text
// with the printk prefix removed, a timestamp when there is one, and whether
// the kernel printed it, so both sides find the same reports in the same text.

export interface ReportLine {
  /** The message, without printk level, timestamp or caller id. */
  text: string;
  /** The line as an excerpt shows it. */
  raw: string;
  /** printk time, seconds since boot. */
  ts?: number;
  /**
   * Printed by the kernel. On a timestamped console an unstamped line is
   * userspace writing to the console; in /dev/kmsg a record of another
   * facility is userspace writing to /dev/kmsg. Only kernel lines start reports.
   */
  kernel: boolean;
}

// `<4>[   12.345678][ T1234] msg`: level, timestamp and caller id are all optional.
const PRINTK_PREFIX = /^(<\d+>)?(?:\[\s*(\d+\.\d+)\])?(?:\[\s*[TC]\d+\])?/;

/** Console text as lines; CRLF and stray CRs are dropped. */
export function consoleLines(text: string): ReportLine[] {
  const parsed = text.split('\n').map((line) => {
    const raw = line.replace(/\r/g, '');
    const m = PRINTK_PREFIX.exec(raw)!;
    const stamped = m[0].length > 0 && (m[1] !== undefined || m[2] !== undefined);
    if (!stamped) return { raw, text: raw, stamped: false };
    // One space separates the prefix from the message; stack frames keep their own indent.
    const rest = raw.slice(m[0].length);
    return { raw, text: rest.startsWith(' ') ? rest.slice(1) : rest, ts: m[2] === undefined ? undefined : Number(m[2]), stamped: true };
  });
  // Without any stamp, only a blank line is known not to be the kernel's.
  const timestamped = parsed.some((l) => l.stamped);
  return parsed.map(({ raw, text: msg, ts, stamped }) => {
    const l: ReportLine = { text: msg, raw, kernel: timestamped ? stamped : raw.trim() !== '' };
    if (ts !== undefined) l.ts = ts;
    return l;
  });
}

/** The fields of a /dev/kmsg record the scanner needs (see src/guest/lib/kmsg.ts). */
export interface KmsgLike {
  /** syslog facility: 0 is the kernel, 1 (user) is a write to /dev/kmsg. */
  facility: number;
  /** printk time, microseconds since boot. */
  usec: number;
  /** Message text, unescaped; a multi-line record has '\n' in it. */
  message: string;
}

/** The console's "[   12.345678] " prefix, so guest excerpts read like the host's. */
export function formatTimestamp(sec: number): string {
  return `[${sec.toFixed(6).padStart(12)}]`;
}

/** Records as lines: a multi-line record is several lines with one timestamp, as the console prints it. */
export function kmsgLines(records: readonly KmsgLike[]): ReportLine[] {
  const out: ReportLine[] = [];
  for (const r of records) {
    const ts = r.usec / 1e6;
    for (const text of r.message.split('\n')) {
      out.push({ text, raw: `${formatTimestamp(ts)} ${text}`, ts, kernel: r.facility === 0 });
    }
  }
  return out;
}
