// Issue 12's targeted module rebuild, for real: a change inside
// drivers/vfio/pci (a .c file and a header only those modules include) is
// built once with the targeted rebuild and once with the whole-tree make from
// the same base, and every .ko must come out byte-identical (srcversion
// included). That a guest runs what a targeted rebuild made (srcversion
// checked, the patched errno seen) is test/e2e/snapshot.test.ts's second test.
import test from 'ava';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildKernel, removeKernelBuild, type KernelBuildRequest } from '../../src/kernel/build.ts';
import type { KernelTree } from '../../src/kernel/source.ts';
import type { SourceKernel } from '../../src/kernel/types.ts';
import { entryDir } from '../../src/util/cache.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { smokeBuilds } from './smoke-builds.ts';
import { treeDiff } from './helpers.ts';

const progress = silentProgress();
let scratch: string;
let tree: KernelTree;
const made: SourceKernel[] = [];

let request: (extra: string[], rebuild: KernelBuildRequest['rebuild'], log: string) => Promise<KernelBuildRequest>;

test.before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'hwlab-targeted-e2e-'));
  // What `hwlab run` asks for (src/run/prepare.ts), with the extra patches after the lab's.
  const builds = await smokeBuilds(progress);
  tree = builds.tree;
  request = (extra, rebuild, log) => builds.request(extra, path.join(scratch, log), rebuild);
});
test.after.always(async () => {
  // The entries of this file's throw-away patches, under the tree's lock.
  for (const k of made) await removeKernelBuild(tree, k, progress.step('cleanup'));
  await rm(scratch, { recursive: true, force: true });
});

/** New code (not a comment: srcversion ignores comments) unique to this run, so neither the build cache nor ccache skips it. */
const token = () => `hwlab_targeted_${Date.now().toString(36)}_${process.pid}`;

async function sha(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** Every .ko of a build entry: the installed (stripped) ones and the unstripped ones in obj/, with srcversion. */
async function modulesOf(k: SourceKernel): Promise<Record<string, { installed: string; obj: string; srcversion: string }>> {
  const root = path.join(k.modulesRoot, 'lib/modules', k.release);
  const out: Record<string, { installed: string; obj: string; srcversion: string }> = {};
  for (const e of await readdir(root, { recursive: true })) {
    if (!e.endsWith('.ko')) continue;
    const rel = e.replace(/^kernel\//, '');
    const sv = await execa('modinfo', ['-F', 'srcversion', path.join(root, e)]);
    out[rel] = { installed: await sha(path.join(root, e)), obj: await sha(path.join(k.objDir, rel)), srcversion: sv.stdout.trim() };
  }
  return out;
}

test.serial('a drivers/vfio/pci change: the targeted rebuild gives the same .ko files, byte for byte, as the whole-tree make', async (t) => {
  // The lab's own build: the base both rebuilds start from (a cache hit when warm).
  const base = await buildKernel(await request([], 'auto', 'base.log'));

  const tok = token();
  const patch = path.join(scratch, 'change.patch');
  await writeFile(patch, [
    await treeDiff(tree.dir, 'drivers/vfio/pci/vfio_pci_core.c', (s) => `${s}\nstatic const char ${tok}[] __used = "${tok}";\n`, scratch),
    await treeDiff(tree.dir, 'drivers/vfio/pci/vfio_pci_priv.h', (s) => s.replace(/\n#endif[^\n]*\n?$/, `\n#define ${tok.toUpperCase()} 1\n$&`), scratch),
  ].join(''));

  const targeted = await buildKernel(await request([patch], 'auto', 'targeted.log'));
  made.push(targeted);
  t.true(targeted.built);
  t.is(targeted.rebuild?.kind, 'modules', JSON.stringify(targeted.rebuild));
  if (targeted.rebuild?.kind === 'modules') {
    // Also the files the base build's own series touched, when the newest base was a patched build.
    for (const f of ['drivers/vfio/pci/vfio_pci_core.c', 'drivers/vfio/pci/vfio_pci_priv.h']) t.true(targeted.rebuild.changed.includes(f), f);
    t.true(targeted.rebuild.affected.includes('drivers/vfio/pci/vfio-pci-core.ko'), targeted.rebuild.affected.join(' '));
    t.true(targeted.rebuild.affected.includes('drivers/vfio/pci/vfio-pci.ko'), 'vfio_pci.c includes vfio_pci_priv.h');
  }
  const log = await readFile(path.join(scratch, 'targeted.log'), 'utf8');
  t.regex(log, /^hwlab: targeted module rebuild: /m);
  t.notRegex(log, /^\s+LD\s+vmlinux/m, 'the kernel image was not relinked');
  const fromTargeted = await modulesOf(targeted);
  const targetedImage = await sha(targeted.vmlinuz);
  // The same patch, whole-tree, from the same base: the targeted entry is removed first (same cache key).
  await removeKernelBuild(tree, targeted, progress.step('cleanup'));
  made.pop();
  const whole = await buildKernel(await request([patch], 'whole-tree', 'whole.log'));
  made.push(whole);
  t.true(whole.built);
  t.is(whole.rebuild?.kind, 'whole-tree');
  t.is(whole.incrementalFrom, targeted.incrementalFrom, 'both started from the same base build');
  const fromWhole = await modulesOf(whole);
  t.log(Object.entries(fromWhole).map(([m, v]) => `${m} srcversion ${v.srcversion} sha256 ${v.installed.slice(0, 16)}`).join('\n'));
  t.deepEqual(Object.keys(fromTargeted).sort(), Object.keys(fromWhole).sort(), 'the same modules');
  t.deepEqual(fromTargeted, fromWhole, 'every .ko byte-identical, installed and unstripped, with the same srcversion');
  const baseModules = await modulesOf(base);
  t.not(fromWhole['drivers/vfio/pci/vfio-pci-core.ko'].srcversion, baseModules['drivers/vfio/pci/vfio-pci-core.ko'].srcversion, 'the change reached vfio-pci-core');
  // The base a rebuild starts from is the newest finished build of this tree and config, which
  // may be another patched build rather than the lab's own: the image is that entry's.
  const from = targeted.incrementalFrom ?? '';
  if (!/^[0-9a-f]{20}$/.test(from)) throw new Error(`the targeted rebuild did not start from a build entry: ${from}`);
  const fromImage = await sha(path.join(entryDir('kernel-build', from), 'vmlinuz'));
  t.log(`bzImage: targeted ${targetedImage === fromImage ? '=' : '!='} its base ${from}; lab build ${(await sha(base.vmlinuz)) === targetedImage ? '=' : '!='} targeted; whole-tree ${(await sha(whole.vmlinuz)) === targetedImage ? '=' : '!='} targeted`);
  t.is(targetedImage, fromImage, 'the targeted rebuild keeps the kernel image of the build it started from');
  t.log(`build seconds: targeted ${targeted.buildSeconds?.toFixed(1)}, whole-tree ${whole.buildSeconds?.toFixed(1)}; load ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
});
