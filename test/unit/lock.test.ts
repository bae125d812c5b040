// The tree lock (src/util/lock.ts) against real processes: flock(2) is
// released by the kernel when its holder is SIGKILLed, a holder that has not
// written its PID yet still holds, two waiters never both get it, and an
// older hwlab's PID-file lock is respected while that process lives. Also
// `cache prune` against a build that is running (issue 16, item 2).
import test from 'ava';
import { execa, type ResultPromise } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { liveOwner, pruneCache } from '../../src/cli/cache-cmd.ts';
import { lockHolder, withLock } from '../../src/util/lock.ts';

const here = path.dirname(fileURLToPath(import.meta.url));

async function holder(file: string, ms?: number): Promise<{ child: ResultPromise }> {
  const child = execa('node', ['--import', 'tsx', path.join(here, 'helpers', 'hold-lock.ts'), file, ...(ms ? [String(ms)] : [])], { reject: false, stdout: 'pipe' });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('holder did not take the lock in 30 s')), 30_000);
    child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('held')) { clearTimeout(t); resolve(); } });
    child.catch(reject);
  });
  return { child }; // wrapped: an async function would wait for a returned ResultPromise
}

let dir: string;
test.before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-lock-test-'));
  process.env.HWLAB_CACHE = path.join(dir, 'cache');
});
test.after.always(async () => { await rm(dir, { recursive: true, force: true }); });

test.serial('a SIGKILLed holder releases the lock at once; its PID is in the file while it holds', async (t) => {
  const file = path.join(dir, 'a.lock');
  const { child } = await holder(file);
  t.is(Number((await readFile(file, 'utf8')).trim()), child.pid!);
  t.is(await lockHolder(file), child.pid!);
  const waited: number[] = [];
  const got = withLock(file, 'a', 20_000, async () => Date.now(), (pid) => waited.push(pid));
  await new Promise((r) => setTimeout(r, 700));
  const killedAt = Date.now();
  child.kill('SIGKILL');
  await child;
  const takenAt = await got;
  t.true(waited.includes(child.pid!), 'the waiter named the holder');
  t.true(takenAt - killedAt < 10_000, `taken ${takenAt - killedAt} ms after the kill (the waiter polls every 0.5 s)`);
  t.false(existsSync(file), 'released locks are removed');
});

test.serial('a holder that has not written its PID yet still holds (flock, not the file content)', async (t) => {
  const file = path.join(dir, 'b.lock');
  const { child } = await holder(file);
  await writeFile(file, ''); // as if the PID were not written yet
  const r = await withLock(file, 'b', 1500, async () => 'taken').catch((e: Error) => e.message);
  t.regex(String(r), /b is in use; gave up after 2 s/);
  child.kill('SIGKILL');
  await child;
});

test.serial('waiters in one process and in others never hold it together', async (t) => {
  const file = path.join(dir, 'c.lock');
  let inside = 0;
  let most = 0;
  const one = () => withLock(file, 'c', 20_000, async () => {
    inside++;
    most = Math.max(most, inside);
    await new Promise((r) => setTimeout(r, 50));
    inside--;
  });
  const other = execa('node', ['--import', 'tsx', path.join(here, 'helpers', 'hold-lock.ts'), file, '300'], { reject: false });
  await Promise.all([one(), one(), one(), one(), other]);
  t.is(most, 1);
  t.is((await other).exitCode, 0);
});

test.serial("an older hwlab's PID-file lock is respected while it lives, taken over when it is gone", async (t) => {
  const file = path.join(dir, 'd.lock');
  const old = execa('node', ['-e', 'setTimeout(() => {}, 60000)'], { reject: false });
  await new Promise((r) => setTimeout(r, 300));
  await writeFile(file, String(old.pid)); // how hwlab before flock locked
  t.is(await lockHolder(file), old.pid!);
  t.regex(await withLock(file, 'd', 1200, async () => 'taken').catch((e: Error) => e.message), /in use by hwlab process \d+/);
  old.kill('SIGKILL');
  await old;
  t.is(await withLock(file, 'd', 5000, async () => 'taken'), 'taken');
});

test.serial('cache prune keeps a build work dir whose lock is held and a .tmp- dir of a live process, and removes the dead ones', async (t) => {
  const cache = process.env.HWLAB_CACHE!;
  const work = path.join(cache, 'kbuild-work', 'k1');
  const deadWork = path.join(cache, 'kbuild-work', 'k2');
  const liveTmp = path.join(cache, 'kernel-build', `.tmp-x-${process.pid}-0123abcd`);
  const deadTmp = path.join(cache, 'kernel-build', '.tmp-y-999999999-0123abcd');
  for (const d of [work, deadWork, liveTmp, deadTmp]) await mkdir(d, { recursive: true });
  await writeFile(path.join(deadWork, 'lock'), '999999999');
  const { child } = await holder(path.join(work, 'lock'));
  t.is(await liveOwner(work), child.pid!);
  const kept: string[] = [];
  for (const all of [false, true]) {
    const removed = await pruneCache({ all, onKept: (d) => kept.push(d) });
    t.false(removed.includes(work) || removed.includes(liveTmp));
  }
  t.true(existsSync(work) && existsSync(liveTmp));
  t.false(existsSync(deadWork) || existsSync(deadTmp));
  t.deepEqual([...new Set(kept)].sort(), [liveTmp, work].sort());
  child.kill('SIGKILL');
  await child;
  await pruneCache({ all: false });
  t.false(existsSync(work), 'removed once its owner is gone');
});
