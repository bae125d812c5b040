// The QEMU backend of the machine interface: one qemu-system-x86_64 process
// per run, started with execa from an argument array, its serial console in
// the run folder, SSH through a 127.0.0.1-only port forward, QMP on a unix
// socket in a per-run scratch folder (which also holds the throwaway root
// overlay and the ivshmem backing files, in /dev/shm so they stay in RAM).
// QEMU and the scratch folder are ended on every path: clean poweroff, QMP
// quit, SIGTERM, SIGKILL, and Ctrl-C through hwlab's cleanup registry.
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { bootFailure, READY_LINE, type HostRequest } from '../protocol/protocol.ts';
import { onCleanup } from '../util/cleanup.ts';
import { InfraError } from '../util/errors.ts';
import { decideAccel } from './accel.ts';
import { buildQemuCommand, type QemuCommand } from './cmdline.ts';
import {
  BootError, diagnoseThroughExec,
  type Diagnosis, type ExecOptions, type ExecResult, type ExitInfo, type HostRequestOutcome,
  type AccelDecision, type MachineBackend, type MachineConfig, type MachineInstance, type PowerOffOutcome, type UploadFile,
} from './instance.ts';
import { QmpClient } from './qmp.ts';
import { SshConnection } from './ssh.ts';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The QEMU command, quoted for a shell so a developer can paste it to reproduce the boot by hand. */
export async function writeCommandLine(file: string, cmd: QemuCommand): Promise<void> {
  const q = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  await writeFile(file, [cmd.binary, ...cmd.args].map(q).join(' \\\n  ') + '\n');
}

/** The last line of a console text, without its printk timestamp, for progress. */
export function lastConsoleLine(text: string): string {
  const lines = text.trimEnd().split('\n');
  return (lines[lines.length - 1] ?? '').replace(/^\[\s*[\d.]+\]\s*/, '').slice(0, 70);
}

export const qemuBackend: MachineBackend = {
  name: 'qemu',
  start: (config) => QemuInstance.start(config),
};

class QemuInstance implements MachineInstance {
  private exitInfo: ExitInfo | null = null;
  private qmp: QmpClient | null = null;
  private ssh: SshConnection | null = null;
  private readonly consoleLog: string;
  private readonly qmpSocket: string;

  private constructor(
    private readonly config: MachineConfig,
    readonly accel: AccelDecision,
    private readonly scratch: string,
    private readonly sshPort: number,
    readonly pciPaths: Record<string, string[]>,
    private readonly child: ResultPromise,
    private readonly exitPromise: Promise<void>,
    private readonly removeCleanup: () => void,
  ) {
    this.consoleLog = path.join(config.runDir, 'console.log');
    this.qmpSocket = path.join(scratch, 'qmp.sock');
  }

  static async start(config: MachineConfig): Promise<QemuInstance> {
    const scratch = await mkdtemp(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'hwlab-'));
    // Registered before anything else exists, so a failure below still removes the scratch folder.
    let instance: QemuInstance | undefined;
    const removeCleanup = onCleanup(async () => {
      await instance?.kill();
      await rm(scratch, { recursive: true, force: true });
    });
    try {
      const accel = await decideAccel(config.lab.machine.accel, config.kernelImage);
      const overlay = path.join(scratch, 'root.qcow2');
      const img = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', config.rootImage, '-F', 'raw', overlay], { reject: false, timeout: 60_000 });
      if (img.exitCode !== 0) throw new InfraError(`qemu-img create of the root overlay failed: ${img.stderr.trim()}`, undefined, 'qemu-img');
      const sshPort = await freePort();
      const cmd = buildQemuCommand({
        lab: config.lab,
        accel: accel.accel,
        kernelImage: config.kernelImage,
        initrd: config.initrd,
        rootDisk: overlay,
        modulesDisk: config.modulesDisk,
        consoleLog: path.join(config.runDir, 'console.log'),
        traceLog: path.join(config.runDir, 'qemu-trace.log'),
        qmpSocket: path.join(scratch, 'qmp.sock'),
        sshPort,
        memoryBackendDir: scratch,
        append: config.append,
      });
      await writeCommandLine(path.join(config.runDir, 'qemu-cmdline.sh'), cmd);
      const child = execa(cmd.binary, cmd.args, {
        reject: false, stdin: 'ignore', stdout: 'ignore', stderr: ['pipe', { file: path.join(config.runDir, 'qemu-stderr.log') }], cleanup: true,
      });
      const exitPromise = child.then((r) => {
        if (instance) instance.exitInfo = { code: r.exitCode ?? null, signal: r.signal ?? null };
      });
      instance = new QemuInstance(config, accel, scratch, sshPort, cmd.pciPaths, child, exitPromise, removeCleanup);
      return instance;
    } catch (err) {
      removeCleanup();
      await rm(scratch, { recursive: true, force: true });
      throw err;
    }
  }

  get exited(): ExitInfo | null {
    return this.exitInfo;
  }

  async console(): Promise<string> {
    return existsSync(this.consoleLog) ? readFile(this.consoleLog, 'utf8') : '';
  }

  private exitedError(): BootError {
    return new BootError({ kind: 'exited', exit: this.exitInfo! },
      `QEMU exited during boot (${this.exitInfo!.signal ?? `exit code ${this.exitInfo!.code}`}); see console.log and qemu-stderr.log in ${this.config.runDir}`);
  }

  async waitReady(opts: { timeoutMs: number; onProgress?: (line: string) => void }): Promise<void> {
    const deadline = Date.now() + opts.timeoutMs;
    // Connecting before sshd listens stalls in slirp's SYN retries; the guest init says when it is up.
    for (;;) {
      const text = await this.console();
      if (text.includes(READY_LINE)) break;
      const failed = text.split('\n').map(bootFailure).find((l) => l !== null);
      if (failed) throw new BootError({ kind: 'guest', line: failed }, `boot failed: "${failed}" (see ${this.consoleLog})`);
      if (this.exitInfo) throw this.exitedError();
      if (Date.now() > deadline) {
        const lastLine = lastConsoleLine(text);
        throw new BootError({ kind: 'timeout', seconds: opts.timeoutMs / 1000, lastLine },
          `the guest did not start sshd in ${(opts.timeoutMs / 1000).toFixed(0)} s; last console line: ${lastLine}`);
      }
      opts.onProgress?.(lastConsoleLine(text));
      await new Promise((r) => setTimeout(r, 100));
    }
    opts.onProgress?.('sshd up, connecting');
    try {
      this.ssh = await SshConnection.connect({
        port: this.sshPort,
        privateKey: this.config.privateKey,
        hostKey: this.config.hostKey,
        timeoutMs: Math.max(5000, deadline - Date.now()),
        onRetry: () => {
          if (this.exitInfo) throw this.exitedError();
        },
      });
    } catch (err) {
      if (err instanceof BootError) throw err;
      throw new BootError({ kind: 'ssh', error: (err as Error).message }, (err as Error).message);
    }
  }

  private connection(): SshConnection {
    if (!this.ssh) throw new InfraError('the guest is not ready (waitReady was not called or failed)', undefined, 'not-ready');
    return this.ssh;
  }

  exec(argv: string[], opts: ExecOptions): Promise<ExecResult> {
    return this.connection().exec(argv, opts);
  }

  upload(files: UploadFile[], timeoutMs?: number): Promise<void> {
    return this.connection().upload(files, timeoutMs);
  }

  private async qmpClient(timeoutMs = 10_000): Promise<QmpClient> {
    if (!this.qmp) {
      if (this.exitInfo) throw new InfraError('QEMU has exited', undefined, 'qemu-exited');
      this.qmp = await QmpClient.connect(this.qmpSocket, timeoutMs);
    }
    return this.qmp;
  }

  async hostRequest(req: HostRequest): Promise<HostRequestOutcome> {
    try {
      const reply = await (await this.qmpClient()).execute(req.verb, { id: req.id });
      return reply.error ? { ok: false, error: `QMP error ${JSON.stringify(reply.error)}` } : { ok: true };
    } catch (err) {
      return { ok: false, error: (err as Error).message };
    }
  }

  diagnose(): Promise<Diagnosis> {
    return diagnoseThroughExec(this);
  }

  private async waitExit(timeoutMs: number): Promise<boolean> {
    if (this.exitInfo) return true;
    let t: NodeJS.Timeout;
    const r = await Promise.race([
      this.exitPromise.then(() => true),
      new Promise<boolean>((res) => { t = setTimeout(() => res(false), timeoutMs); }),
    ]);
    clearTimeout(t!);
    return r;
  }

  async powerOff(timeoutMs: number): Promise<PowerOffOutcome> {
    if (this.ssh && !this.exitInfo) {
      // A clean poweroff flushes the console; QMP quit and signals follow if it hangs.
      await this.ssh.exec(['busybox', 'poweroff', '-f'], { timeoutMs: 5000 }).catch(() => {});
    }
    const clean = await this.waitExit(timeoutMs);
    await this.kill();
    return { clean };
  }

  /** QMP quit, then SIGTERM, then SIGKILL; never returns with QEMU alive. Removes the scratch folder. */
  async kill(): Promise<void> {
    try {
      this.ssh?.close();
      this.ssh = null;
      if (!this.exitInfo && existsSync(this.qmpSocket)) {
        const q = await this.qmpClient(1000).catch(() => null);
        await q?.execute('quit', undefined, 2000).catch(() => {});
        await this.waitExit(3000);
      }
      if (!this.exitInfo) {
        this.child.kill('SIGTERM');
        await this.waitExit(3000);
      }
      if (!this.exitInfo) {
        this.child.kill('SIGKILL');
        await this.waitExit(5000);
      }
    } finally {
      this.qmp?.close();
      this.qmp = null;
      this.removeCleanup();
      await rm(this.scratch, { recursive: true, force: true });
    }
  }
}
