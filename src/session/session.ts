// GuestSession: SSH into a booted guest (ssh2), run commands with streamed
// output and exit codes, upload files over SFTP, load modules and move PCI
// devices between drivers. Commands are argument arrays; each argument is
// quoted for the guest's shell, so no lab value is ever parsed as shell code.
import { Client, type ConnectConfig } from 'ssh2';
import { withTimeout } from '../util/cleanup.ts';
import { InfraError } from '../util/errors.ts';

export function shq(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export interface ExecResult {
  code: number | null;
  signal?: string;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** The caller's AbortSignal ended the command; output is what arrived before. */
  aborted?: boolean;
}

export interface ExecOptions {
  timeoutMs: number;
  onStdout?: (chunk: string) => void;
  onStderr?: (chunk: string) => void;
  /** Ends the command early (closes its channel) and resolves with the output so far. */
  signal?: AbortSignal;
}

export interface ConnectOptions {
  port: number;
  privateKey: string;
  /** OpenSSH line of the guest's host key; any other key is refused. */
  hostKey: string;
  timeoutMs: number;
  /** Called between attempts; throw from it to give up early (e.g. QEMU died). */
  onRetry?: (attempt: number, lastError: string) => void;
}

export class GuestSession {
  private constructor(private readonly client: Client) {}

  static async connect(opts: ConnectOptions): Promise<GuestSession> {
    const expected = Buffer.from(opts.hostKey.split(/\s+/)[1] ?? '', 'base64');
    const deadline = Date.now() + opts.timeoutMs;
    let attempt = 0;
    let lastError = '';
    while (Date.now() < deadline) {
      attempt++;
      const client = new Client();
      // ssh2 can emit several errors for one failed attempt; the first settles it, the rest must not crash us.
      client.on('error', () => {});
      const cfg: ConnectConfig = {
        host: '127.0.0.1',
        port: opts.port,
        username: 'root',
        privateKey: opts.privateKey,
        readyTimeout: Math.max(1000, Math.min(15_000, deadline - Date.now())),
        hostVerifier: (key: Buffer) => key.equals(expected),
        keepaliveInterval: 5000,
        keepaliveCountMax: 6,
      };
      try {
        await new Promise<void>((resolve, reject) => {
          client.once('ready', () => resolve());
          client.once('error', reject);
          client.connect(cfg);
        });
        return new GuestSession(client);
      } catch (err) {
        client.end();
        lastError = (err as Error).message;
        if (/verification failed/i.test(lastError)) {
          throw new InfraError(`guest SSH host key does not match the image's recorded key (port ${opts.port})`);
        }
        opts.onRetry?.(attempt, lastError);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw new InfraError(`SSH to the guest on 127.0.0.1:${opts.port} did not come up in ${(opts.timeoutMs / 1000).toFixed(0)} s (last error: ${lastError})`);
  }

  /** Runs argv in the guest. Output is streamed to the callbacks and collected. */
  exec(argv: string[], opts: ExecOptions): Promise<ExecResult> {
    return this.execRaw(argv.map(shq).join(' '), opts);
  }

  /** Runs a fixed hwlab script with `sh -c`; values go in as positional parameters ($1...), never spliced in. */
  sh(script: string, args: string[], opts: ExecOptions): Promise<ExecResult> {
    return this.exec(['sh', '-c', script, 'sh', ...args], opts);
  }

  private execRaw(command: string, opts: ExecOptions): Promise<ExecResult> {
    const start = Date.now();
    let channel: { close(): void } | undefined;
    const p = new Promise<ExecResult>((resolve, reject) => {
      this.client.exec(command, (err, stream) => {
        if (err) return reject(err);
        channel = stream;
        let stdout = '';
        let stderr = '';
        stream.on('data', (d: Buffer) => {
          const s = d.toString();
          stdout += s;
          opts.onStdout?.(s);
        });
        stream.stderr.on('data', (d: Buffer) => {
          const s = d.toString();
          stderr += s;
          opts.onStderr?.(s);
        });
        const onAbort = () => {
          resolve({ code: null, stdout, stderr, durationMs: Date.now() - start, aborted: true });
          stream.close();
        };
        if (opts.signal?.aborted) return onAbort();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        stream.on('close', (code: number | null, signal?: string) => {
          opts.signal?.removeEventListener('abort', onAbort);
          resolve({ code, signal, stdout, stderr, durationMs: Date.now() - start });
        });
      });
    });
    // On timeout the channel is closed too: no more output arrives for a command we gave up on.
    return withTimeout(p, opts.timeoutMs, `guest command "${command.slice(0, 80)}"`).catch((err: unknown) => {
      channel?.close();
      throw err;
    });
  }

  /** Runs argv and throws with its stderr when it exits non-zero. */
  async check(argv: string[], timeoutMs = 60_000): Promise<string> {
    const r = await this.exec(argv, { timeoutMs });
    if (r.code !== 0) {
      throw new InfraError(`guest: ${argv.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 2000)}`);
    }
    return r.stdout;
  }

  async upload(files: Array<{ local: string; remote: string; mode?: number }>, timeoutMs = 120_000): Promise<void> {
    const dirs = [...new Set(files.map((f) => f.remote.replace(/\/[^/]*$/, '')))];
    await this.check(['mkdir', '-p', ...dirs]);
    const work = new Promise<void>((resolve, reject) => {
      this.client.sftp(async (err, sftp) => {
        if (err) return reject(err);
        try {
          for (const f of files) {
            await new Promise<void>((res, rej) => sftp.fastPut(f.local, f.remote, { mode: f.mode ?? 0o644 }, (e) => (e ? rej(e) : res())));
          }
          sftp.end();
          resolve();
        } catch (e) {
          sftp.end();
          reject(new InfraError(`SFTP upload failed: ${(e as Error).message}`));
        }
      });
    });
    await withTimeout(work, timeoutMs, 'SFTP upload');
  }

  async modprobe(module: string): Promise<void> {
    await this.check(['modprobe', module], 120_000);
  }

  /**
   * Binds a PCI device to vfio-pci through driver_override (so no other
   * device with the same id moves) and returns the driver it had, if any.
   */
  async bindVfio(bdf: string): Promise<string | null> {
    const script = `set -e
d=/sys/bus/pci/devices/$1
[ -e "$d" ] || { echo "no PCI device $1" >&2; exit 3; }
old=""
if [ -e "$d/driver" ]; then old=$(basename "$(readlink "$d/driver")"); fi
if [ "$old" = vfio-pci ]; then echo vfio-pci; exit 0; fi
echo vfio-pci > "$d/driver_override"
[ -n "$old" ] && echo "$1" > "$d/driver/unbind"
echo "$1" > /sys/bus/pci/drivers_probe
[ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || { echo "$1 did not bind to vfio-pci" >&2; exit 4; }
echo "$old"`;
    const r = await this.sh(script, [bdf], { timeoutMs: 60_000 });
    if (r.code !== 0) throw new InfraError(`binding ${bdf} to vfio-pci failed: ${r.stderr.trim()}`);
    return r.stdout.trim() || null;
  }

  /** Undoes bindVfio: clears driver_override and lets the kernel pick the driver again. */
  async unbindVfio(bdf: string): Promise<void> {
    const script = `set -e
d=/sys/bus/pci/devices/$1
[ -e "$d/driver" ] && echo "$1" > "$d/driver/unbind"
echo > "$d/driver_override"
echo "$1" > /sys/bus/pci/drivers_probe || true`;
    const r = await this.sh(script, [bdf], { timeoutMs: 60_000 });
    if (r.code !== 0) throw new InfraError(`unbinding ${bdf} from vfio-pci failed: ${r.stderr.trim()}`);
  }

  close(): void {
    this.client.end();
  }
}
