// A lock file for directories that several hwlab processes could use at once
// (a kernel tree's shared build work dir). Stale locks from dead processes
// are taken over; waiting is bounded.
import { open, readFile, rm } from 'node:fs/promises';
import { InfraError } from './errors.ts';


function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export async function withLock<T>(file: string, what: string, timeoutMs: number, fn: () => Promise<T>, onWait?: (pid: number) => void): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const h = await open(file, 'wx');
      await h.writeFile(String(process.pid));
      await h.close();
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (!pid || !alive(pid) || pid === process.pid) {
        await rm(file, { force: true }); // left by a process that died (or a half-written lock)
        continue;
      }
      if (Date.now() > deadline) {
        throw new InfraError(`${what} is in use by hwlab process ${pid}; gave up after ${(timeoutMs / 1000).toFixed(0)} s`, `wait for it, or end process ${pid}`);
      }
      onWait?.(pid);
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(file, { force: true });
  }
}
