// Every process or resource hwlab starts registers a cleanup here, so that
// success, failure, timeout and Ctrl-C all end it. Cleanups run once, newest first.
import { InfraError } from './errors.ts';

type Cleanup = () => Promise<void> | void;
const cleanups = new Set<Cleanup>();
let installed = false;

export function onCleanup(fn: Cleanup): () => void {
  install();
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

export async function runCleanups(): Promise<void> {
  const fns = [...cleanups].reverse();
  cleanups.clear();
  for (const fn of fns) {
    try { await fn(); } catch { /* keep going: the others must still run */ }
  }
}

/**
 * Makes SIGINT/SIGTERM/SIGHUP run the cleanups and exit 130/143. Installed
 * by the first onCleanup, and by a run from its start: without it, Ctrl-C
 * during a kernel build killed hwlab by the signal, so Node's exit hooks
 * (the unfinished cache entry's removal) never ran.
 */
export function installSignalHandlers(): void {
  install();
}

function install(): void {
  if (installed) return;
  installed = true;
  let stopping = false;
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    // A persistent listener (not once): execa's signal-exit re-raises the
    // signal when it sees no other listener, which would kill us before the
    // cleanups below have ended QEMU.
    process.on(sig, () => {
      const code = sig === 'SIGINT' ? 130 : 143;
      if (stopping) process.exit(code); // second Ctrl-C: give up waiting
      stopping = true;
      process.stderr.write(`\nhwlab: ${sig}, stopping\n`);
      void runCleanups().finally(() => process.exit(code));
    });
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: NodeJS.Timeout;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new InfraError(`${what}: timed out after ${(ms / 1000).toFixed(0)} s`, undefined, 'timeout')), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}
