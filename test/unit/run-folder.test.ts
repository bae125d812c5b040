// Run folders are never shared: two runs of one lab started in the same
// millisecond (issue 16's two runs at once) each get their own.
import test from 'ava';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { newFolder } from '../../src/run/run-lab.ts';
import { tempDir } from './helpers/temp.ts';

test('the same stamped name made many times at once gives as many distinct folders', async (t) => {
  const runs = path.join(tempDir('hwlab-run-folder-'), 'runs');
  const base = path.join(runs, 'smoke-2026-12-06T11-16-15-225');
  const made = await Promise.all(Array.from({ length: 5 }, () => newFolder(base)));
  t.is(new Set(made).size, 5);
  t.deepEqual((await readdir(runs)).sort(), ['', '-2', '-3', '-4', '-5'].map((s) => `smoke-2026-12-06T11-16-15-225${s}`));
});
