// The QEMU scratch folders of dead hwlab processes are swept at the next start
// (a SIGKILLed hwlab cannot remove its own); live owners' folders, and folders
// of the old name without a PID, are left alone.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { sweepDeadScratch } from '../../src/machine/qemu.ts';

test('scratch folders of dead hwlab processes are removed; those of live ones and of unknown owners stay', async (t) => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'hwlab-sweep-test-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  // A PID that existed and has exited: a child that ran and was reaped.
  const child = execa('true');
  const deadPid = child.pid!;
  await child;
  const dead = `hwlab-${deadPid}-Ab12Cd`;
  const live = `hwlab-${process.pid}-Xy34Zw`;
  const old = 'hwlab-Qw12Er';
  for (const d of [dead, live, old, 'hwlab-manual-abcdef']) {
    await mkdir(path.join(root, d));
    await writeFile(path.join(root, d, 'shm0'), 'x');
  }
  t.deepEqual(await sweepDeadScratch(root), [dead]);
  t.false(existsSync(path.join(root, dead)));
  t.deepEqual((await readdir(root)).sort(), [live, old, 'hwlab-manual-abcdef'].sort());
  t.deepEqual(await sweepDeadScratch(path.join(root, 'missing')), [], 'a missing root is nothing to sweep');
});
