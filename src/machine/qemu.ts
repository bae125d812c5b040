// The QEMU backend of the machine interface: one qemu-system-x86_64 process
// per run, started with execa from an argument array, its serial console in
// the run folder, SSH through a 127.0.0.1-only port forward, QMP on a unix
// socket in a per-run scratch folder (which also holds the throwaway root
// overlay and the ivshmem backing files, in /dev/shm so they stay in RAM).
// QEMU and the scratch folder are ended on every path: clean poweroff, QMP
// quit, SIGTERM, SIGKILL, and Ctrl-C through hwlab's cleanup registry.
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { copyFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { bootFailure, READY_LINE, type HostRequest } from '../protocol/protocol.ts';
import { onCleanup } from '../util/cleanup.ts';
import { InfraError } from '../util/errors.ts';
import { processAlive } from '../util/lock.ts';
import { boundToHwlab } from '../util/host-tools.ts';
import { decideAccel } from './accel.ts';
import { buildQemuCommand, type QemuCommand } from './cmdline.ts';
import {
  BootError, diagnoseThroughExec,
  type Diagnosis, type ExecOptions, type ExecResult, type ExitInfo, type HostRequestOutcome,
  type AccelDecision, type GuestAccess, type MachineBackend, type MachineConfig, type MachineInstance, type PowerOffOutcome, type UploadFile,
} from './instance.ts';
import { loadGuest, type GuestSnapshotFiles } from './migration.ts';
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

/**
 * qemu-cmdline.sh: the run's QEMU command as a script that boots the same
 * machine again by hand. It refers only to the cache and the run folder: the
 * per-run scratch files (root overlay, QMP socket, BAR backing files) are
 * made afresh in a scratch folder of its own, and the console is the terminal.
 */
const SCRATCH_NAME = /^hwlab-(\d+)-[A-Za-z0-9]{6}$/;

/**
 * Removes the scratch folders (root overlay, BAR backing files in RAM) of
 * hwlab processes that no longer exist: a SIGKILLed hwlab leaves its folder,
 * while its QEMU died with it (pdeathsig). A folder whose PID is alive, even
 * a reused one, is left alone; older folders without a PID are not touched.
 */
export async function sweepDeadScratch(root: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(root).catch(() => [] as string[])) {
    const m = SCRATCH_NAME.exec(name);
    if (!m || processAlive(Number(m[1]))) continue;
    await rm(path.join(root, name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

export function reproduceScript(cmd: QemuCommand, scratch: string, rootImage: string): string {
  const q = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
  // Scratch paths become "$scratch/..." (double quotes, the rest escaped for them).
  const arg = (a: string) => (a.includes(scratch) ? `"${a.split(scratch).map((p) => p.replace(/["$`\\]/g, '\\$&')).join('$scratch')}"` : q(a));
  const args = [...cmd.args];
  const serial = args.indexOf('-serial');
  if (serial >= 0) args[serial + 1] = 'mon:stdio';
  return [
    '#!/bin/sh',
    '# This run\'s QEMU command, to boot the same machine by hand: the console is',
    '# this terminal (Ctrl-A X quits QEMU). Kernel, initramfs, modules and root',
    '# image come from the cache; the root overlay, QMP socket and BAR backing',
    '# files go to a fresh scratch folder, removed on exit.',
    'set -eu',
    'scratch=$(mktemp -d /dev/shm/hwlab-manual-XXXXXX)',
    'trap \'rm -rf "$scratch"\' EXIT INT TERM',
    `qemu-img create -q -f qcow2 -b ${q(rootImage)} -F raw "$scratch/root.qcow2"`,
    // One option and its value per line.
    [cmd.binary, ...args.map(arg)].reduce((lines: string[], a, i, all) => {
      if (i > 0 && !a.startsWith('-') && all[i - 1].startsWith('-')) lines[lines.length - 1] += ` ${a}`;
      else lines.push(a);
      return lines;
    }, []).join(' \\\n  '),
    '',
  ].join('\n');
}

/** The last line of a console text, without its printk timestamp, for progress. */
export function lastConsoleLine(text: string): string {
  const lines = text.trimEnd().split('\n');
  return (lines[lines.length - 1] ?? '').replace(/^\[\s*[\d.]+\]\s*/, '').slice(0, 70);
}

export const qemuBackend: MachineBackend = {
  name: 'qemu',
  start: (config) => QemuInstance.start(config, { kind: 'boot' }),
};

/**
 * How a QEMU machine comes up (snapshot.ts uses the last two):
 *   boot     from the kernel, as always
 *   save     boot with migratable devices; once the guest is ready (SSH
 *            connected), save() gets the QMP connection, the disks and the guest
 *            (to start the probe runner waiting), closes SSH, saves and resumes
 *            the guest; SSH connects again after it. A failure there must not
 *            stop the run.
 *   restore  load a saved guest instead of booting (its disks, its console so far)
 */
export type QemuLaunch =
  | { kind: 'boot' }
  | { kind: 'save'; save: (m: SaveAccess) => Promise<void> }
  | { kind: 'restore'; from: GuestSnapshotFiles };

/** What a save gets: QMP, the disks and console as QEMU writes them, the guest over SSH, and a way to close SSH before the save. */
export interface SaveAccess {
  qmp: QmpClient;
  rootOverlay: string;
  modulesDisk: string;
  consoleLog: string;
  guest: Pick<MachineInstance, 'exec' | 'upload'>;
  disconnect: () => void;
}

export function startQemu(config: MachineConfig, launch: QemuLaunch): Promise<MachineInstance> {
  return QemuInstance.start(config, launch);
}

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
    private readonly gdbPort: number | undefined,
    readonly pciPaths: Record<string, string[]>,
    private readonly child: ResultPromise,
    private readonly exitPromise: Promise<void>,
    private readonly removeCleanup: () => void,
    private readonly launch: QemuLaunch,
    private readonly overlay: string,
  ) {
    this.consoleLog = path.join(config.runDir, 'console.log');
    this.qmpSocket = path.join(scratch, 'qmp.sock');
  }

  static async start(config: MachineConfig, launch: QemuLaunch): Promise<QemuInstance> {
    const scratchRoot = existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir();
    await sweepDeadScratch(scratchRoot);
    // Named by our PID: a hwlab killed with SIGKILL cannot remove it, and the next start does.
    const scratch = await mkdtemp(path.join(scratchRoot, `hwlab-${process.pid}-`));
    // Registered before anything else exists, so a failure below still removes the scratch folder.
    let instance: QemuInstance | undefined;
    const removeCleanup = onCleanup(async () => {
      await instance?.kill();
      await rm(scratch, { recursive: true, force: true });
    });
    try {
      const accel = await decideAccel(config.lab.machine.accel, config.kernelImage);
      const overlay = path.join(scratch, 'root.qcow2');
      // A restored guest's root disk is the saved overlay (copy-on-write per run); a booted one's the cached image.
      const [backing, backingFormat] = launch.kind === 'restore' ? [launch.from.rootOverlay, 'qcow2'] : [config.rootImage, 'raw'];
      const img = await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', backingFormat, overlay], { reject: false, timeout: 60_000 });
      if (img.exitCode !== 0) throw new InfraError(`qemu-img create of the root overlay failed: ${img.stderr.trim()}`, undefined, 'qemu-img');
      const sshPort = await freePort();
      // The restored console continues the saved one (QEMU appends to it).
      if (launch.kind === 'restore') await copyFile(launch.from.console, path.join(config.runDir, 'console.log'));
      const gdbPort = config.gdb ? await freePort() : undefined;
      const cmd = buildQemuCommand({
        lab: config.lab,
        accel: accel.accel,
        kernelImage: config.kernelImage,
        initrd: config.initrd,
        rootDisk: overlay,
        modulesDisk: launch.kind === 'restore' ? launch.from.modulesDisk : config.modulesDisk,
        consoleLog: path.join(config.runDir, 'console.log'),
        traceLog: path.join(config.runDir, 'qemu-trace.log'),
        qmpSocket: path.join(scratch, 'qmp.sock'),
        sshPort,
        memoryBackendDir: scratch,
        append: config.append,
        gdbPort,
        ...(launch.kind === 'boot' ? {} : { migration: launch.kind }),
      });
      // A script that boots the same machine again from the cache (a restored guest's script boots it instead).
      await writeFile(path.join(config.runDir, 'qemu-cmdline.sh'), reproduceScript(cmd, scratch, config.rootImage), { mode: 0o755 });
      // qemu-cmdline.sh has QEMU's own command; it runs behind setpriv so that it dies with hwlab, even a SIGKILLed one.
      const child = execa(...boundToHwlab(cmd.binary, cmd.args), {
        reject: false, stdin: 'ignore', stdout: 'ignore', stderr: ['pipe', { file: path.join(config.runDir, 'qemu-stderr.log') }], cleanup: true,
      });
      const exitPromise = child.then((r) => {
        if (instance) instance.exitInfo = { code: r.exitCode ?? null, signal: r.signal ?? null };
      });
      instance = new QemuInstance(config, accel, scratch, sshPort, gdbPort, cmd.pciPaths, child, exitPromise, removeCleanup, launch, overlay);
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

  get access(): GuestAccess {
    return { pid: this.child.pid!, sshPort: this.sshPort, ...(this.gdbPort !== undefined ? { gdbPort: this.gdbPort } : {}), scratch: this.scratch };
  }

  whenExited(timeoutMs: number): Promise<boolean> {
    return this.waitExit(timeoutMs);
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
    if (this.launch.kind === 'restore') {
      opts.onProgress?.('restoring the saved guest');
      await loadGuest(await this.qmpClient(), this.launch.from.state, Math.max(5000, deadline - Date.now()));
    }
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
    await this.connectSsh(deadline);
    if (this.launch.kind === 'save') {
      opts.onProgress?.('saving the booted guest');
      await this.launch.save({
        qmp: await this.qmpClient(), rootOverlay: this.overlay, modulesDisk: this.config.modulesDisk, consoleLog: this.consoleLog,
        guest: this,
        // Before the stream is written: a forwarded connection's host side dies with this QEMU, so none may be open in the saved guest.
        disconnect: () => { this.ssh?.close(); this.ssh = null; },
      });
      if (!this.ssh) {
        opts.onProgress?.('guest saved, connecting again');
        await this.connectSsh(deadline);
      }
    }
  }

  private async connectSsh(deadline: number): Promise<void> {
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
