// The guest connection of the QEMU backend: SSH (ssh2) to the guest's sshd
// through QEMU's 127.0.0.1 port forward, with hwlab's own key and the host
// key recorded when the image was built. Commands are argument arrays, each
// argument quoted for the guest's shell, so no lab value is ever parsed as
// shell code. A channel that closes without an exit status means the
// connection (or the guest) went away: that is an error of its own, carrying
// the output that arrived before.
import path from 'node:path';
import { Client, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import { withTimeout } from '../util/cleanup.ts';
import { InfraError } from '../util/errors.ts';
import { ChannelLostError, shq, type ExecOptions, type ExecResult, type UploadFile } from './instance.ts';

export interface ConnectOptions {
  port: number;
  privateKey: string;
  /** OpenSSH line of the guest's host key; any other key is refused. */
  hostKey: string;
  timeoutMs: number;
  /** Called between attempts; throw from it to give up early (e.g. QEMU died). */
  onRetry?: (attempt: number, lastError: string) => void;
}

export class SshConnection {
  private lost: string | null = null;
  private constructor(private readonly client: Client) {
    client.on('close', () => { this.lost ??= 'SSH connection to the guest closed'; });
    client.on('error', (err: Error) => { this.lost ??= `SSH connection to the guest failed: ${err.message}`; });
  }

  static async connect(opts: ConnectOptions): Promise<SshConnection> {
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
        return new SshConnection(client);
      } catch (err) {
        client.end();
        lastError = (err as Error).message;
        if (/verification failed/i.test(lastError)) {
          throw new InfraError(`guest SSH host key does not match the image's recorded key (port ${opts.port})`, 'rebuild the image (hwlab cache prune --all)', 'ssh-host-key');
        }
        // sshd answered and refused hwlab's key: trying again until the boot timeout would only hide it.
        if ((err as { level?: string }).level === 'client-authentication') {
          throw new InfraError(`the guest's sshd refused hwlab's key (port ${opts.port}): ${lastError}`, 'the image may have been built with another hwlab key; rebuild it (hwlab cache prune --all)', 'ssh-auth-refused');
        }
        opts.onRetry?.(attempt, lastError);
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    throw new InfraError(`SSH to the guest on 127.0.0.1:${opts.port} did not come up in ${(opts.timeoutMs / 1000).toFixed(0)} s (last error: ${lastError})`, undefined, 'ssh-never-answered');
  }

  /** Runs argv in the guest. Output is streamed to the callbacks and collected. */
  exec(argv: string[], opts: ExecOptions): Promise<ExecResult> {
    return this.execRaw(argv.map(shq).join(' '), opts);
  }

  private execRaw(command: string, opts: ExecOptions): Promise<ExecResult> {
    const start = Date.now();
    let channel: { close(): void } | undefined;
    const what = `guest command "${command.slice(0, 80)}"`;
    const p = new Promise<ExecResult>((resolve, reject) => {
      if (this.lost) return reject(new ChannelLostError(`${what}: ${this.lost}`, '', ''));
      this.client.exec(command, (err, stream) => {
        if (err) return reject(this.lost ? new ChannelLostError(`${what}: ${this.lost}`, '', '') : new InfraError(`${what}: ${err.message}`, undefined, 'ssh-exec'));
        channel = stream;
        let stdout = '';
        let stderr = '';
        let exit: { code: number | null; signal?: string } | undefined;
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
        stream.on('exit', (code: number | null, signal?: string) => { exit = { code, signal }; });
        const onAbort = () => {
          resolve({ code: null, stdout, stderr, durationMs: Date.now() - start, aborted: true });
          stream.close();
        };
        if (opts.signal?.aborted) return onAbort();
        opts.signal?.addEventListener('abort', onAbort, { once: true });
        stream.on('close', () => {
          opts.signal?.removeEventListener('abort', onAbort);
          // No exit status: the command did not end, the connection did.
          if (!exit) return reject(new ChannelLostError(`${what}: ${this.lost ?? 'the SSH channel closed without an exit status'}`, stdout, stderr));
          resolve({ code: exit.code, ...(exit.signal ? { signal: exit.signal } : {}), stdout, stderr, durationMs: Date.now() - start });
        });
      });
    });
    // On timeout the channel is closed too: no more output arrives for a command we gave up on.
    return withTimeout(p, opts.timeoutMs, what).catch((err: unknown) => {
      channel?.close();
      throw err;
    });
  }

  /**
   * Copies files in over one SFTP session. Their directories are made over
   * SFTP too (internal-sftp runs in sshd's session process): a `mkdir -p`
   * exec cost 0.2 to 0.3 s under TCG, a third of a restored run's uploads.
   */
  async upload(files: UploadFile[], timeoutMs = 120_000): Promise<void> {
    const dirs = [...new Set(files.map((f) => path.posix.dirname(f.remote)))];
    const work = new Promise<void>((resolve, reject) => {
      this.client.sftp(async (err, sftp) => {
        if (err) return reject(err);
        try {
          const made = new Set<string>();
          for (const d of dirs) await sftpMkdirP(sftp, d, made);
          for (const f of files) {
            await new Promise<void>((res, rej) => sftp.fastPut(f.local, f.remote, { mode: f.mode ?? 0o644 }, (e) => (e ? rej(e) : res())));
          }
          sftp.end();
          resolve();
        } catch (e) {
          sftp.end();
          reject(new InfraError(`SFTP upload failed: ${(e as Error).message}`, undefined, 'upload'));
        }
      });
    });
    await withTimeout(work, timeoutMs, 'SFTP upload');
  }

  close(): void {
    this.client.end();
  }
}

/** `mkdir -p` over SFTP: each missing directory from the top down; `made` remembers what exists. */
async function sftpMkdirP(sftp: SFTPWrapper, dir: string, made: Set<string>): Promise<void> {
  if (made.has(dir) || dir === '/' || dir === '.') return;
  const isDir = await new Promise<boolean | null>((res) => sftp.stat(dir, (e, st) => res(e ? null : st.isDirectory())));
  if (isDir === false) throw new InfraError(`guest: ${dir} exists and is not a directory`, undefined, 'upload');
  if (isDir === null) {
    await sftpMkdirP(sftp, path.posix.dirname(dir), made);
    await new Promise<void>((res, rej) => sftp.mkdir(dir, (e) => {
      if (!e) return res();
      // Made meanwhile by someone else is as good as made here.
      sftp.stat(dir, (e2, st) => (!e2 && st.isDirectory() ? res() : rej(new InfraError(`guest: mkdir ${dir} over SFTP failed: ${e.message}`, undefined, 'upload'))));
    }));
  }
  made.add(dir);
}
