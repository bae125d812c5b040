// Kernel log records since a mark, via /dev/kmsg: each read() returns exactly
// one record "prio,seq,usec,flags[,...];message\n[ KEY=value\n...]". Opening
// O_NONBLOCK makes read() fail EAGAIN at the end instead of blocking. Finding
// kernel reports in the records is src/report's job, shared with the host.
import * as libc from './libc.ts';

export interface KmsgRecord {
  level: number;
  /** 0 for the kernel; a write to /dev/kmsg from userspace is 1 (user) unless it says otherwise. */
  facility: number;
  seq: number;
  usec: number;
  /** Unescaped: a record of several lines has '\n' in it. */
  message: string;
}

/** /dev/kmsg escapes control characters and '\' as \xHH; a record's own lines come as \x0a. */
function unescape(s: string): string {
  return s.replace(/\\x([0-9a-f]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** Parses one /dev/kmsg record; returns null for something that is not one. */
export function parseRecord(raw: string): KmsgRecord | null {
  const semi = raw.indexOf(';');
  if (semi < 0) return null;
  const [prio, seq, usec] = raw.slice(0, semi).split(',').map(Number);
  if (![prio, seq, usec].every(Number.isFinite)) return null;
  const message = unescape(raw.slice(semi + 1).split('\n')[0]); // continuation lines are " KEY=value" metadata
  return { level: prio & 7, facility: prio >> 3, seq, usec, message };
}

export class Kmsg {
  private readonly buf = Buffer.alloc(16384);
  private constructor(private readonly fd: number) {}

  /** Opens /dev/kmsg positioned at the end, so read() returns only records logged after this call. */
  static mark(): Kmsg {
    const fd = libc.open('/dev/kmsg', libc.O_RDONLY | libc.O_NONBLOCK | libc.O_CLOEXEC);
    try {
      libc.lseek(fd, 0, libc.SEEK_END);
    } catch (e) {
      libc.trySyscall(() => libc.close(fd));
      throw e;
    }
    return new Kmsg(fd);
  }

  /** Records logged since the mark (or since the previous read). */
  read(): KmsgRecord[] {
    const out: KmsgRecord[] = [];
    for (;;) {
      const r = libc.trySyscall(() => libc.read(this.fd, this.buf));
      if (!r.ok) {
        if (r.name === 'EPIPE') continue; // ring buffer overran us; the next read resyncs
        if (r.name === 'EAGAIN') break;
        throw new libc.SyscallError('read /dev/kmsg', r.errno);
      }
      if (r.value === 0) break;
      const rec = parseRecord(this.buf.toString('utf8', 0, r.value));
      if (rec) out.push(rec);
    }
    return out;
  }

  close(): void {
    libc.trySyscall(() => libc.close(this.fd));
  }
}
