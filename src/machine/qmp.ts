// QEMU's machine protocol (QMP) over its unix socket: the greeting,
// qmp_capabilities, then one command at a time. hwlab uses it to hot-remove
// endpoints a probe asks for and to quit a QEMU that does not power off.
import net from 'node:net';
import { withTimeout } from '../util/cleanup.ts';
import { InfraError } from '../util/errors.ts';

export interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
}

export class QmpClient {
  private buf = '';
  private waiters: Array<(msg: QmpReply) => void> = [];
  readonly events: Array<{ event: string; data?: unknown }> = [];
  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.event) this.events.push(msg);
        else if (msg.QMP) continue;
        else this.waiters.shift()?.(msg);
      }
    });
    sock.on('error', () => {});
  }

  static async connect(path: string, timeoutMs: number): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const sock = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(path, () => resolve(s));
          s.once('error', reject);
        });
        const c = new QmpClient(sock);
        await c.execute('qmp_capabilities');
        return c;
      } catch (err) {
        if (Date.now() > deadline) throw new InfraError(`QMP socket ${path} did not answer: ${(err as Error).message}`, undefined, 'qmp');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  execute(command: string, args?: Record<string, unknown>, timeoutMs = 10_000): Promise<QmpReply> {
    const p = new Promise<QmpReply>((resolve) => this.waiters.push(resolve));
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    return withTimeout(p, timeoutMs, `QMP ${command}`);
  }

  close(): void {
    this.sock.destroy();
  }
}
