// Cache keys and entries: equal inputs give equal keys whatever the order of
// object keys; a failed or interrupted build never leaves an entry a later
// run would trust; the config key ignores patches that cannot change Kconfig.
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readdir, readFile, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cacheKey, ensureEntry, entryDir, listEntries, onCorruptEntry, resetVerified, stableJson } from '../../src/util/cache.ts';
import { entriesBySize, IN_USE_MS, parseSize, pruneCache } from '../../src/cli/cache-cmd.ts';
import { configKey, extractBuildErrors, touchedFiles } from '../../src/kernel/build.ts';
import type { PatchFile } from '../../src/kernel/patches.ts';

test.before(async () => {
  process.env.HWLAB_CACHE = await mkdtemp(path.join(os.tmpdir(), 'hwlab-cache-test-'));
});
test.after.always(async () => {
  await rm(process.env.HWLAB_CACHE!, { recursive: true, force: true });
});

test('stableJson and cacheKey ignore object key order, not values or array order', (t) => {
  t.is(stableJson({ b: 1, a: { d: 2, c: 3 } }), stableJson({ a: { c: 3, d: 2 }, b: 1 }));
  t.is(cacheKey({ a: 1, b: [1, 2] }), cacheKey({ b: [1, 2], a: 1 }));
  t.not(cacheKey({ a: 1, b: [1, 2] }), cacheKey({ a: 1, b: [2, 1] }));
  t.not(cacheKey({ a: 1 }), cacheKey({ a: 2 }));
  t.regex(cacheKey({}), /^[0-9a-f]{20}$/);
});

test.serial('ensureEntry builds once, then hits without calling build', async (t) => {
  let calls = 0;
  const build = async (tmp: string) => { calls++; await writeFile(path.join(tmp, 'x'), 'data'); };
  const a = await ensureEntry('t', 'k1', 'test', build);
  const b = await ensureEntry('t', 'k1', 'test', build);
  t.deepEqual([a.hit, b.hit, calls], [false, true, 1]);
  t.true(existsSync(path.join(a.dir, 'x')));
  t.true((await listEntries()).some((e) => e.kind === 't' && e.key === 'k1'));
});

test.serial('a failing build leaves no entry and no temp directory', async (t) => {
  await t.throwsAsync(ensureEntry('t', 'k2', 'test', async (tmp) => {
    await writeFile(path.join(tmp, 'half'), 'written');
    throw new Error('compiler exploded');
  }), { message: 'compiler exploded' });
  t.false(existsSync(entryDir('t', 'k2')));
  t.deepEqual((await readdir(path.dirname(entryDir('t', 'k2')))).filter((n) => n.startsWith('.tmp-')), []);
});

test.serial('a leftover directory without a manifest (crash mid-rename) is not trusted and gets rebuilt', async (t) => {
  await mkdir(entryDir('t', 'k3'), { recursive: true });
  await writeFile(path.join(entryDir('t', 'k3'), 'stale'), 'from a crashed run');
  const r = await ensureEntry('t', 'k3', 'test', async (tmp) => { await writeFile(path.join(tmp, 'fresh'), 'ok'); });
  t.false(r.hit);
  t.true(existsSync(path.join(r.dir, 'fresh')));
  t.false(existsSync(path.join(r.dir, 'stale')));
});

const patch = (name: string, file: string): PatchFile => ({
  name, origin: name, sha256: cacheKey(name) + cacheKey(file), strip: 1,
  text: `--- a/${file}\n+++ b/${file}\n@@ -1 +1 @@\n-a\n+b\n`,
});

test('config key: driver patches reuse the config, Kconfig patches do not', (t) => {
  const base = { tree: { dir: '/x', id: 'debian:linux-source-7.2=7.2.13-1', version: '7.2.13', label: 'l' }, base: 'tinyconfig', fragments: [{ file: 'a.config', text: 'CONFIG_X=y\n' }] };
  const none = configKey({ ...base, patches: [] });
  t.is(configKey({ ...base, patches: [patch('fix.patch', 'drivers/vfio/pci/vfio_pci_core.c')] }), none);
  t.not(configKey({ ...base, patches: [patch('kc.patch', 'drivers/vfio/pci/Kconfig')] }), none);
  t.not(configKey({ ...base, patches: [], fragments: [{ file: 'a.config', text: 'CONFIG_X=m\n' }] }), none);
  t.not(configKey({ ...base, patches: [], base: 'defconfig' }), none);
  t.deepEqual(touchedFiles([patch('a', 'drivers/vfio/pci/Kconfig'), patch('b', 'mm/memory.c')]), ['drivers/vfio/pci/Kconfig', 'mm/memory.c']);
});

test('build errors: compiler and linker lines with their caret context, not the make noise', (t) => {
  const log = [
    '  CC [M]  drivers/vfio/pci/vfio_pci_core.o',
    'drivers/vfio/pci/vfio_pci_dmabuf.c:212:17: error: \'lenn\' undeclared (first use in this function); did you mean \'len\'?',
    '  212 |         if (!lenn)',
    '      |              ^~~~',
    '  CC      fs/open.o',
    'make[5]: *** [scripts/Makefile.build:229: drivers/vfio/pci/vfio_pci_dmabuf.o] Error 1',
    'ld: vmlinux.o: in function `foo\': undefined reference to `bar\'',
  ].join('\n');
  t.deepEqual(extractBuildErrors(log), [
    'drivers/vfio/pci/vfio_pci_dmabuf.c:212:17: error: \'lenn\' undeclared (first use in this function); did you mean \'len\'?',
    '  212 |         if (!lenn)',
    '      |              ^~~~',
    'make[5]: *** [scripts/Makefile.build:229: drivers/vfio/pci/vfio_pci_dmabuf.o] Error 1',
    'ld: vmlinux.o: in function `foo\': undefined reference to `bar\'',
  ]);
});

// Live holders (flock and an older hwlab's PID file) are in lock.test.ts, with real processes.
test('withLock: a dead holder\'s lock is taken over; the lock is removed after', async (t) => {
  const { withLock } = await import('../../src/util/lock.ts');
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-lock-'));
  const file = path.join(dir, 'lock');
  await writeFile(file, '999999'); // no such process
  t.is(await withLock(file, 'x', 1000, async () => 'ran'), 'ran');
  t.false(existsSync(file));
  await t.throwsAsync(withLock(file, 'x', 1000, async () => { throw new Error('boom'); }), { message: 'boom' });
  t.false(existsSync(file), 'released on failure too');
  await rm(dir, { recursive: true, force: true });
});

test.serial('prune --max-size: least recently used entries go first, a hit counts as a use, recent entries stay', async (t) => {
  const mk = (key: string) => ensureEntry('lru', key, key, async (tmp) => { await writeFile(path.join(tmp, 'blob'), Buffer.alloc(256 * 1024, 1)); });
  const a = await mk('a');
  const b = await mk('b');
  const c = await mk('c');
  const now = Date.now();
  const at = (dir: string, ago: number) => utimes(path.join(dir, 'hwlab-entry.json'), new Date(now - ago), new Date(now - ago));
  await at(a.dir, 3 * IN_USE_MS);
  await at(b.dir, 2 * IN_USE_MS);
  await at(c.dir, 4 * IN_USE_MS);
  // A hit on c makes it the most recently used.
  t.true((await mk('c')).hit);
  const before = (await entriesBySize()).filter((e) => e.kind === 'lru');
  t.deepEqual(before.map((e) => e.key), ['a', 'b', 'c'], 'oldest use first');
  const others = (await entriesBySize()).filter((e) => e.kind !== 'lru').reduce((n, e) => n + e.bytes, 0);
  // Room for one of the three: a and b go (oldest use); c was used just now and stays even if over.
  const removed = await pruneCache({ all: false, maxBytes: others + before[2].bytes, now });
  t.deepEqual(removed.map((d) => path.basename(d)), ['a', 'b']);
  const removedAll = await pruneCache({ all: false, maxBytes: 0, now });
  t.false(removedAll.includes(c.dir), 'an entry used in the last minutes is never pruned by size');
  t.is(parseSize('20G'), 20 * 2 ** 30);
  t.is(parseSize('512MiB'), 512 * 2 ** 20);
  t.throws(() => parseSize('lots'), { message: /--max-size: "lots" is not a size/ });
});

test.serial('a corrupt entry (truncated, one flipped byte, a deleted file) is found on use, removed and built again; obj/ is not checked', async (t) => {
  const messages: string[] = [];
  onCorruptEntry((m) => messages.push(m));
  let builds = 0;
  const build = async (tmp: string) => {
    builds++;
    await mkdir(path.join(tmp, 'modroot', 'lib'), { recursive: true });
    await mkdir(path.join(tmp, 'obj'));
    await writeFile(path.join(tmp, 'vmlinuz'), Buffer.alloc(4096, 7));
    await writeFile(path.join(tmp, 'modroot', 'lib', 'vfio-pci.ko'), Buffer.alloc(1000, 1));
    await writeFile(path.join(tmp, 'obj', 'x.o'), 'object');
  };
  const { dir } = await ensureEntry('t', 'corrupt', 'test', build);
  const info = JSON.parse(await readFile(path.join(dir, 'hwlab-entry.json'), 'utf8'));
  t.deepEqual(Object.keys(info.files), ['modroot/lib/vfio-pci.ko', 'vmlinuz']);
  await writeFile(path.join(dir, 'obj', 'x.o'), 'changed');
  t.true((await ensureEntry('t', 'corrupt', 'test', build)).hit, 'obj/ is not checked');
  const damage: Array<[string, () => Promise<void>, RegExp]> = [
    ['truncated vmlinuz', () => truncate(path.join(dir, 'vmlinuz'), 100), /vmlinuz is 100 bytes, 4096 when built/],
    ['a flipped byte', async () => {
      const f = await open(path.join(dir, 'modroot', 'lib', 'vfio-pci.ko'), 'r+');
      await f.write(Buffer.from([2]), 0, 1, 500);
      await f.close();
    }, /vfio-pci\.ko does not have the sha256 it had when built/],
    ['a deleted file', () => rm(path.join(dir, 'vmlinuz')), /vmlinuz is missing/],
  ];
  for (const [what, harm, message] of damage) {
    resetVerified();
    const before = builds;
    await harm();
    const again = await ensureEntry('t', 'corrupt', 'test', build);
    t.false(again.hit, what);
    t.is(builds, before + 1, `${what}: built again`);
    t.regex(messages.at(-1) ?? '', message, what);
    t.is((await readFile(path.join(dir, 'vmlinuz'))).length, 4096);
  }
  t.deepEqual((await readdir(path.dirname(dir))).filter((n) => n.startsWith('.')), [], 'nothing set aside is left');
});

test('a build that runs out of space ends infra disk-full, saying where, with nothing half-written left', async (t) => {
  const { InfraError } = await import('../../src/util/errors.ts');
  const cases: Array<[string, () => never]> = [
    // Node's own error, as a copy into a full tmpfs gives it.
    ['fs', () => { throw Object.assign(new Error("ENOSPC: no space left on device, copyfile 'a' -> 'b'"), { code: 'ENOSPC' }); }],
    // A tool's failure whose output says so (execa's error keeps stderr).
    ['tool', () => { throw Object.assign(new Error('Command failed with exit code 1: cpio -o'), { stderr: 'cpio: write error: No space left on device' }); }],
  ];
  for (const [what, fail] of cases) {
    const err = await t.throwsAsync(ensureEntry('full', cacheKey({ what }), `a ${what} build`, async (tmp) => {
      await writeFile(path.join(tmp, 'half'), 'x');
      fail();
    }));
    t.true(err instanceof InfraError, what);
    t.is((err as InstanceType<typeof InfraError>).code, 'disk-full', what);
    t.regex(err!.message, new RegExp(`^building the full cache entry \\(a ${what} build\\) in .*/full: the disk is full \\(`), what);
  }
  t.deepEqual(await readdir(path.join(process.env.HWLAB_CACHE!, 'full')), [], 'no temp directory or entry left');
  // Any other failure is passed on as it was.
  const other = await t.throwsAsync(ensureEntry('full', cacheKey({ what: 'other' }), 'x', async () => { throw new Error('boom'); }));
  t.is(other?.message, 'boom');
});
