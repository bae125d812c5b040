// A lock file for directories that several hwlab processes could use at once
// (a kernel tree's shared build work dir). The lock is flock(2) on an open
// file descriptor, so the kernel releases it the moment its holder dies, even
// by SIGKILL: there is no stale lock to take over and no race between two
// waiters that both found a dead owner. The holder's PID is written into the
// file for messages, and for hwlab versions before this one, which used the
// file's existence plus the PID as the lock: while such a process is alive
// and its PID is in the file, the lock is not taken. Waiting is bounded.
import { readFileSync } from 'node:fs';
import { open, readFile, rm, stat, type FileHandle } from 'node:fs/promises';
import koffi from 'koffi';
import { onCleanup } from './cleanup.ts';
import { InfraError } from './errors.ts';

const LOCK_EX = 2;
const LOCK_NB = 4;
const LOCK_UN = 8;

let flockCall: ((fd: number, op: number) => number) | undefined;
function flock(fd: number, op: number): boolean {
  flockCall ??= koffi.load('libc.so.6').func('int flock(int fd, int op)') as (fd: number, op: number) => number;
  return flockCall(fd, op) === 0;
}

/** Whether a process with this PID exists (EPERM: it does, owned by someone else). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A live process that could be an older hwlab holding the lock by PID file (node running hwlab, or its tests). */
function liveHwlab(pid: number): boolean {
  if (!pid || pid === process.pid || !processAlive(pid)) return false;
  try {
    return /node|hwlab|tsx/.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
  } catch {
    return true; // no /proc: trust the PID
  }
}

const pidIn = async (file: string) => Number((await readFile(file, 'utf8').catch(() => '')).trim()) || 0;

/** Takes the lock once if it is free; the open handle holds it. */
async function tryTake(file: string): Promise<{ handle?: FileHandle; holder: number }> {
  const handle = await open(file, 'a+'); // created if missing, never truncated by opening; close-on-exec
  let keep = false;
  try {
    if (!flock(handle.fd, LOCK_EX | LOCK_NB)) return { holder: await pidIn(file) };
    // A holder releasing the lock unlinks the file before closing it: a lock on
    // an unlinked inode is no lock. Try again on the file the path names now.
    const [mine, named] = [await handle.stat(), await stat(file).catch(() => null)];
    if (!named || named.ino !== mine.ino || named.dev !== mine.dev) return { holder: 0 };
    const old = await pidIn(file);
    if (liveHwlab(old)) return { holder: old }; // an older hwlab's PID-file lock
    await handle.truncate(0);
    // The bare PID, as older versions write and read it.
    await handle.write(`${process.pid}\n`, 0);
    keep = true;
    return { handle, holder: process.pid };
  } finally {
    if (!keep) await handle.close(); // closing drops a flock taken above
  }
}

export async function withLock<T>(file: string, what: string, timeoutMs: number, fn: () => Promise<T>, onWait?: (pid: number) => void): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let handle: FileHandle | undefined;
  for (;;) {
    const r = await tryTake(file);
    if (r.handle) {
      handle = r.handle;
      break;
    }
    if (Date.now() > deadline) {
      throw new InfraError(`${what} is in use${r.holder ? ` by hwlab process ${r.holder}` : ''}; gave up after ${(timeoutMs / 1000).toFixed(0)} s`,
        r.holder ? `wait for it, or end process ${r.holder}` : undefined, 'lock-timeout');
    }
    if (r.holder) onWait?.(r.holder);
    await new Promise((res) => setTimeout(res, r.holder ? 500 : 20));
  }
  // Ctrl-C exits from the signal handler, past the finally below: the file goes then too (the flock goes with the process).
  const forget = onCleanup(() => rm(file, { force: true }));
  try {
    return await fn();
  } finally {
    forget();
    // Unlink while still holding it, so that a waiter never takes a lock on a file about to go.
    await rm(file, { force: true });
    flock(handle.fd, LOCK_UN);
    await handle.close();
  }
}

/**
 * Whether a lock file is held now, by flock or by a live older hwlab's PID,
 * without taking it (for `cache prune`). The PID of the holder, or 0.
 */
export async function lockHolder(file: string): Promise<number> {
  let handle: FileHandle;
  try {
    handle = await open(file, 'r');
  } catch {
    return 0;
  }
  try {
    const pid = await pidIn(file);
    if (!flock(handle.fd, LOCK_EX | LOCK_NB)) return pid || -1;
    flock(handle.fd, LOCK_UN);
    return liveHwlab(pid) ? pid : 0;
  } finally {
    await handle.close();
  }
}
