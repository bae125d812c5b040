// hwlab's own modules: what goes into the build cache key, and input checks.
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildHwlabModule, KMOD_ROOT } from '../../src/kernel/extmod.ts';
import { existsSync } from 'node:fs';

const step = { update: () => {} } as never;

test('the importer module sources are where the builder looks for them', (t) => {
  t.true(existsSync(path.join(KMOD_ROOT, 'hwlab_importer', 'Kbuild')));
  t.true(existsSync(path.join(KMOD_ROOT, 'hwlab_importer', 'hwlab_importer.c')));
});

test('a module name that is not a kernel module name is refused before any build', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-extmod-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const err = await t.throwsAsync(buildHwlabModule('../etc', { kind: 'built' } as never, path.join(dir, 'log'), step));
  t.regex(err!.message, /not a module name/);
});

test('a module directory without Kbuild or Makefile is refused', async (t) => {
  const err = await t.throwsAsync(buildHwlabModule('no_such_module_dir', { kind: 'built' } as never, '/dev/null', step));
  t.regex(err!.message, /no_such_module_dir/);
});
