// Syscalls on a worker thread. The stress probe needs several threads blocked
// in the kernel at once, and a probe that must prove a call does not hang (a
// close that could deadlock) needs to wait for it with a deadline instead of
// hanging the whole runner. The thread is a small generic executor (plain JS,
// evaluated, loading koffi itself); every decision stays with the caller.
// Threads share the process's fd table, so an fd opened on any thread works on
// every other one.
import { createRequire } from 'node:module';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import * as libc from './libc.ts';

const THREAD_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const koffi = require(workerData.koffiPath);
const lib = koffi.load('libc.so.6');
const fn = {
  open: lib.func('int open(const char *path, int flags, ...)'),
  close: lib.func('int close(int fd)'),
  ioctl: lib.func('int ioctl(int fd, unsigned long req, ...)'),
  pread: lib.func('int64_t pread(int fd, void *buf, size_t n, int64_t off)'),
  pwrite: lib.func('int64_t pwrite(int fd, const void *buf, size_t n, int64_t off)'),
};
function run(m) {
  switch (m.op) {
    case 'open': return fn.open(m.path, m.flags, 'uint32_t', 0);
    case 'close': return fn.close(m.fd);
    case 'ioctl':
      if (m.arg === undefined) return fn.ioctl(m.fd, m.req);
      if (typeof m.arg === 'number') return fn.ioctl(m.fd, m.req, 'unsigned long', m.arg);
      return fn.ioctl(m.fd, m.req, 'void *', m.arg);
    case 'pread': return Number(fn.pread(m.fd, m.arg, m.arg.length, m.off));
    case 'pwrite': return Number(fn.pwrite(m.fd, m.arg, m.arg.length, m.off));
    default: throw new Error('unknown op ' + m.op);
  }
}
parentPort.on('message', (m) => {
  const t0 = performance.now();
  const ret = run(m);
  const errno = ret === -1 ? koffi.errno() : 0;
  parentPort.postMessage({ id: m.id, ret, errno, ms: performance.now() - t0, arg: m.arg instanceof Uint8Array ? m.arg : undefined });
});
parentPort.postMessage({ ready: true });
`;

/** Where koffi lives: next to the bundled runner in the guest, node_modules on the host. */
function koffiPath(): string {
  const from = process.argv[1] ? path.resolve(process.argv[1]) : path.join(process.cwd(), 'index.js');
  return createRequire(from).resolve('koffi');
}

/** A syscall's result plus how long it took; name 'HUNG' when it did not return within the deadline. */
export type TimedResult<T> = libc.SysResult<T> & { ms: number };

interface Reply { id: number; ret: number; errno: number; ms: number; arg?: Uint8Array }
type Op =
  | { op: 'open'; path: string; flags: number }
  | { op: 'close'; fd: number }
  | { op: 'ioctl'; fd: number; req: number; arg?: Uint8Array | number }
  | { op: 'pread' | 'pwrite'; fd: number; arg: Uint8Array; off: number };

/** The thread SyscallThread.prestart started and no take() has had yet. */
let spare: Promise<SyscallThread> | undefined;

export class SyscallThread {
  private seq = 0;
  private readonly pending = new Map<number, (r: Reply) => void>();
  private failure: Error | undefined;
  /** Calls still inside the kernel after their deadline: the thread is stuck there. */
  hung = 0;

  private constructor(private readonly worker: Worker, public defaultTimeoutMs: number) {
    worker.on('message', (r: Reply) => {
      this.pending.get(r.id)?.(r);
      this.pending.delete(r.id);
    });
    worker.on('error', (e) => { this.failure = e; });
  }

  /** Starts the thread and waits until koffi is loaded there. */
  static start(defaultTimeoutMs = 30_000): Promise<SyscallThread> {
    const worker = new Worker(THREAD_SOURCE, { eval: true, workerData: { koffiPath: koffiPath() } });
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(new Error(`syscall thread failed to start: ${e.message}`));
      worker.once('error', onError);
      worker.once('message', (m: { ready?: boolean }) => {
        worker.off('error', onError);
        if (m.ready) resolve(new SyscallThread(worker, defaultTimeoutMs));
        else reject(new Error('syscall thread sent something before ready'));
      });
    });
  }

  /**
   * Starts a thread for the next take(): the probe runner does this as it
   * starts (a waiting runner before the save), so the first probe that needs
   * one does not wait the 0.8 to 1.2 s a worker_threads isolate takes to
   * start under TCG. Unreferenced until taken: an unused one never holds the
   * runner's exit.
   */
  static prestart(): Promise<void> {
    if (!spare) {
      spare = SyscallThread.start();
      spare.then((th) => th.worker.unref(), () => {});
    }
    return spare.then(() => {}, () => {});
  }

  /** The prestarted thread (its default deadline set to defaultTimeoutMs), else a new one. */
  static async take(defaultTimeoutMs = 30_000): Promise<SyscallThread> {
    const s = spare;
    spare = undefined;
    const th = s ? await s.catch(() => undefined) : undefined;
    if (!th) return SyscallThread.start(defaultTimeoutMs);
    th.worker.ref();
    th.defaultTimeoutMs = defaultTimeoutMs;
    return th;
  }

  private call(op: Op, timeoutMs: number): Promise<{ reply?: Reply; ms: number }> {
    if (this.failure) return Promise.reject(this.failure);
    const id = ++this.seq;
    const t0 = performance.now();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        // The reply, if the call ever returns, is dropped; the thread stays busy until then.
        this.pending.delete(id);
        this.hung++;
        resolve({ ms: performance.now() - t0 });
      }, timeoutMs);
      this.pending.set(id, (reply) => {
        clearTimeout(timer);
        resolve({ reply, ms: reply.ms });
      });
      this.worker.postMessage({ id, ...op });
    });
  }

  private async result(op: Op, timeoutMs: number, copyBack?: Buffer): Promise<TimedResult<number>> {
    const { reply, ms } = await this.call(op, timeoutMs);
    if (!reply) return { ok: false, errno: 0, name: 'HUNG', ms };
    if (copyBack && reply.arg) Buffer.from(reply.arg.buffer, reply.arg.byteOffset, reply.arg.byteLength).copy(copyBack);
    if (reply.ret === -1) return { ok: false, errno: reply.errno, name: libc.errnoName(reply.errno), ms };
    return { ok: true, value: reply.ret, ms };
  }

  /** ioctl with no argument, an integer, or a Buffer the kernel may write into (copied back on return). */
  ioctl(fd: number, req: number, arg?: Buffer | number, timeoutMs = this.defaultTimeoutMs): Promise<TimedResult<number>> {
    const a = Buffer.isBuffer(arg) ? new Uint8Array(arg) : arg;
    return this.result({ op: 'ioctl', fd, req, arg: a }, timeoutMs, Buffer.isBuffer(arg) ? arg : undefined);
  }

  open(path: string, flags: number, timeoutMs = this.defaultTimeoutMs): Promise<TimedResult<number>> {
    return this.result({ op: 'open', path, flags }, timeoutMs);
  }

  close(fd: number, timeoutMs = this.defaultTimeoutMs): Promise<TimedResult<number>> {
    return this.result({ op: 'close', fd }, timeoutMs);
  }

  pread(fd: number, buf: Buffer, off: number, timeoutMs = this.defaultTimeoutMs): Promise<TimedResult<number>> {
    return this.result({ op: 'pread', fd, arg: new Uint8Array(buf.length), off }, timeoutMs, buf);
  }

  pwrite(fd: number, buf: Buffer, off: number, timeoutMs = this.defaultTimeoutMs): Promise<TimedResult<number>> {
    return this.result({ op: 'pwrite', fd, arg: new Uint8Array(buf), off }, timeoutMs);
  }

  /**
   * Ends the thread. A thread stuck in the kernel cannot be ended; it is
   * unref'ed instead so it does not keep the runner alive on its own account.
   */
  async stop(): Promise<void> {
    if (this.hung > 0) {
      this.worker.unref();
      return;
    }
    await this.worker.terminate();
  }
}
