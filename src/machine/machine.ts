// A running QEMU: started with execa from an argument array, talked to over
// QMP, and ended on every path (clean poweroff, QMP quit, SIGTERM, SIGKILL).
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { onCleanup, withTimeout } from '../util/cleanup.ts';
import type { QemuCommand } from './cmdline.ts';
import { InfraError } from '../util/errors.ts';

export interface QmpReply {
  return?: unknown;
  error?: { class: string; desc: string };
}

/** Minimal QMP client: greeting, qmp_capabilities, then one command at a time. */
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
        if (Date.now() > deadline) throw new InfraError(`QMP socket ${path} did not answer: ${(err as Error).message}`);
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

export interface MachineOptions {
  /** Where QEMU's own stderr goes (warnings, errors). */
  stderrLog: string;
  qmpSocket: string;
}

export class QemuMachine {
  private exited = false;
  private exitInfo: { code: number | null; signal: string | null } | null = null;
  private readonly removeCleanup: () => void;
  private qmp: QmpClient | null = null;

  private constructor(
    private readonly child: ResultPromise,
    private readonly opts: MachineOptions,
    readonly exitPromise: Promise<void>,
  ) {
    this.removeCleanup = onCleanup(() => this.kill());
  }

  static async start(cmd: QemuCommand, opts: MachineOptions): Promise<QemuMachine> {
    const child = execa(cmd.binary, cmd.args, { reject: false, stdin: 'ignore', stdout: 'ignore', stderr: ['pipe', { file: opts.stderrLog }], cleanup: true });
    let m!: QemuMachine;
    const exitPromise = child.then((r) => {
      m.exited = true;
      m.exitInfo = { code: r.exitCode ?? null, signal: r.signal ?? null };
    });
    m = new QemuMachine(child, opts, exitPromise);
    return m;
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get hasExited(): boolean {
    return this.exited;
  }

  get exit(): { code: number | null; signal: string | null } | null {
    return this.exitInfo;
  }

  async qmpClient(timeoutMs = 10_000): Promise<QmpClient> {
    if (!this.qmp) {
      if (this.exited) throw new InfraError('QEMU has exited');
      this.qmp = await QmpClient.connect(this.opts.qmpSocket, timeoutMs);
    }
    return this.qmp;
  }

  /** Resolves true when QEMU exited within timeoutMs. */
  async waitExit(timeoutMs: number): Promise<boolean> {
    if (this.exited) return true;
    let t: NodeJS.Timeout;
    const r = await Promise.race([
      this.exitPromise.then(() => true),
      new Promise<boolean>((res) => { t = setTimeout(() => res(false), timeoutMs); }),
    ]);
    clearTimeout(t!);
    return r;
  }

  /** QMP quit, then SIGTERM, then SIGKILL; never returns with QEMU alive. */
  async kill(): Promise<void> {
    try {
      if (!this.exited && existsSync(this.opts.qmpSocket)) {
        const q = await this.qmpClient(1000).catch(() => null);
        await q?.execute('quit', undefined, 2000).catch(() => {});
        if (await this.waitExit(3000)) return;
      }
      if (!this.exited) {
        this.child.kill('SIGTERM');
        if (await this.waitExit(3000)) return;
      }
      if (!this.exited) {
        this.child.kill('SIGKILL');
        await this.waitExit(5000);
      }
    } finally {
      this.qmp?.close();
      this.qmp = null;
      this.removeCleanup();
    }
  }
}

export async function writeCommandLine(file: string, cmd: QemuCommand): Promise<void> {
  // Quoted for a shell so a developer can paste it to reproduce the boot by hand.
  const q = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  await writeFile(file, [cmd.binary, ...cmd.args].map(q).join(' \\\n  ') + '\n');
}
