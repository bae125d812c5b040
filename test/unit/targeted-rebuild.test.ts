// The targeted module rebuild's decision, on an object tree laid out as
// kbuild writes it (modules.order, <module>.mod member lists, .<target>.cmd
// files with absolute source dependencies): a change that only module
// objects depend on rebuilds the modules, anything a built-in object, a host
// tool or the build rules depend on needs the whole tree, and says which.
import test from 'ava';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { cmdTarget, planRebuild } from '../../src/kernel/targeted.ts';
import { rebuildMode } from '../../src/kernel/build.ts';
import { InputError } from '../../src/util/errors.ts';

let SRC: string;
let obj: string;

/**
 * A .cmd file as kbuild writes it for a compiled object (target
 * objtree-relative): with src/ and obj/ siblings, the source and its
 * dependencies relative to the object tree (../src/...), the -I and -include
 * paths absolute. `absolute` writes the dependencies absolute, as kbuild does
 * when the source tree is elsewhere.
 */
function cmdFile(target: string, deps: string[], absolute = false): string {
  const srcTree = absolute ? SRC : '../src';
  const src = `${srcTree}/${target.replace(/\.o$/, '.c')}`;
  return [
    `savedcmd_${target} := gcc -Wp,-MMD,${path.dirname(target)}/.${path.basename(target)}.d -nostdinc -I${SRC}/include -include ${SRC}/include/linux/kconfig.h -c -o ${target} ${src}`,
    '',
    `source_${target} := ${src}`,
    '',
    `deps_${target} := \\`,
    `  ${src} \\`,
    ...deps.map((d) => `  ${srcTree}/${d} \\`),
    `  $(wildcard include/config/VFIO_PCI_DMABUF) \\`,
    '',
    `${target}: $(deps_${target})`,
    '',
  ].join('\n');
}

async function put(rel: string, text: string): Promise<void> {
  await mkdir(path.join(obj, path.dirname(rel)), { recursive: true });
  await writeFile(path.join(obj, rel), text);
}
const cmdPath = (target: string) => path.join(path.dirname(target), `.${path.basename(target)}.cmd`);

test.before(async () => {
  const work = await mkdtemp(path.join(os.tmpdir(), 'hwlab-targeted-'));
  obj = path.join(work, 'obj');
  SRC = path.join(work, 'src');
  await put('modules.order', 'drivers/vfio/vfio.o\ndrivers/vfio/pci/vfio-pci-core.o\ndrivers/vfio/pci/vfio-pci.o\n');
  await put('drivers/vfio/vfio.mod', 'drivers/vfio/vfio_main.o drivers/vfio/group.o\n');
  await put('drivers/vfio/pci/vfio-pci-core.mod', 'drivers/vfio/pci/vfio_pci_core.o drivers/vfio/pci/vfio_pci_dmabuf.o\n');
  await put('drivers/vfio/pci/vfio-pci.mod', 'drivers/vfio/pci/vfio_pci.o\n');
  const privH = 'drivers/vfio/pci/vfio_pci_priv.h';
  await put(cmdPath('drivers/vfio/pci/vfio_pci_core.o'), cmdFile('drivers/vfio/pci/vfio_pci_core.o', [privH, 'include/linux/vfio_pci_core.h', 'include/linux/dma-buf.h']));
  await put(cmdPath('drivers/vfio/pci/vfio_pci_dmabuf.o'), cmdFile('drivers/vfio/pci/vfio_pci_dmabuf.o', [privH, 'include/linux/vfio_pci_core.h', 'include/linux/dma-buf.h']));
  await put(cmdPath('drivers/vfio/pci/vfio_pci.o'), cmdFile('drivers/vfio/pci/vfio_pci.o', ['include/linux/vfio_pci_core.h']));
  await put(cmdPath('drivers/vfio/vfio_main.o'), cmdFile('drivers/vfio/vfio_main.o', ['include/linux/vfio.h'], true));
  await put(cmdPath('drivers/vfio/group.o'), cmdFile('drivers/vfio/group.o', ['include/linux/vfio.h']));
  // Built in: dma-buf core, and a host tool.
  await put(cmdPath('drivers/dma-buf/dma-buf.o'), cmdFile('drivers/dma-buf/dma-buf.o', ['include/linux/dma-buf.h']));
  await put(cmdPath('scripts/mod/modpost.o'), cmdFile('scripts/mod/modpost.o', []));
  // The link of a composite module object and its .mod.o: no source dependencies of the driver.
  await put(cmdPath('drivers/vfio/pci/vfio-pci-core.o'), 'savedcmd_drivers/vfio/pci/vfio-pci-core.o := ld -m elf_x86_64 -r -o drivers/vfio/pci/vfio-pci-core.o @drivers/vfio/pci/vfio-pci-core.mod\n');
});
test.after.always(() => rm(path.dirname(obj), { recursive: true, force: true }));

const plan = (changed: string[]) => planRebuild({ objDir: obj, srcDir: SRC, changed });

test('a .c file of a module: only the modules are rebuilt, all of them as targets, the owner as affected', async (t) => {
  const p = await plan(['drivers/vfio/pci/vfio_pci_dmabuf.c']);
  t.deepEqual(p, {
    kind: 'modules',
    targets: ['drivers/vfio/vfio.ko', 'drivers/vfio/pci/vfio-pci-core.ko', 'drivers/vfio/pci/vfio-pci.ko'],
    affected: ['drivers/vfio/pci/vfio-pci-core.ko'],
    changed: ['drivers/vfio/pci/vfio_pci_dmabuf.c'],
  });
});

test('a header only modules include: modules, every including module affected', async (t) => {
  const p = await plan(['include/linux/vfio_pci_core.h', 'drivers/vfio/pci/vfio_pci_priv.h']);
  t.is(p.kind, 'modules');
  if (p.kind === 'modules') t.deepEqual(p.affected, ['drivers/vfio/pci/vfio-pci-core.ko', 'drivers/vfio/pci/vfio-pci.ko']);
});

test('dependencies written absolute count too', async (t) => {
  const p = await plan(['include/linux/vfio.h']);
  t.is(p.kind, 'modules');
  if (p.kind === 'modules') t.deepEqual(p.affected, ['drivers/vfio/vfio.ko']);
});

test('objects read from a copy resolve their dependencies against the tree they were built in', async (t) => {
  const p = await planRebuild({ objDir: obj, objtree: '/elsewhere/obj', srcDir: '/elsewhere/src', changed: ['include/linux/dma-buf.h'] });
  t.is(p.kind, 'whole-tree');
});

test('a header a built-in object includes needs the whole tree, naming the object', async (t) => {
  const p = await plan(['drivers/vfio/pci/vfio_pci_core.c', 'include/linux/dma-buf.h']);
  t.deepEqual(p, { kind: 'whole-tree', reason: 'include/linux/dma-buf.h goes into drivers/dma-buf/dma-buf.o, which is not part of a module' });
});

test('a host tool source needs the whole tree', async (t) => {
  const p = await plan(['scripts/mod/modpost.c']);
  t.is(p.kind, 'whole-tree');
  t.regex(p.kind === 'whole-tree' ? p.reason : '', /scripts\/mod\/modpost\.o, which is not part of a module/);
});

test('a Makefile or Kconfig change needs the whole tree, whatever else changed', async (t) => {
  const p = await plan(['drivers/vfio/pci/vfio_pci_core.c', 'drivers/vfio/pci/Makefile', 'drivers/vfio/pci/Kconfig']);
  t.deepEqual(p, { kind: 'whole-tree', reason: 'drivers/vfio/pci/Kconfig, drivers/vfio/pci/Makefile: not a .c, .h or .S file (a Makefile, Kconfig or script can change what is built)' });
});

test('a file no object depends on (not built with this config) does not force the whole tree; nothing changed does', async (t) => {
  const p = await plan(['drivers/vfio/pci/mlx5/main.c']);
  t.is(p.kind, 'modules');
  if (p.kind === 'modules') t.deepEqual(p.affected, []);
  t.is((await plan([])).kind, 'whole-tree');
});

test('a path that is only a prefix of a dependency does not match it', async (t) => {
  // vfio_pci_core.o depends on include/linux/vfio_pci_core.h, not on include/linux/vfio_pci_core.
  const p = await plan(['include/linux/vfio_pci.h']);
  t.is(p.kind, 'modules');
  if (p.kind === 'modules') t.deepEqual(p.affected, []);
});

test('a base build without modules.order needs the whole tree', async (t) => {
  const empty = await mkdtemp(path.join(os.tmpdir(), 'hwlab-targeted-empty-'));
  t.teardown(() => rm(empty, { recursive: true, force: true }));
  t.deepEqual(await planRebuild({ objDir: empty, srcDir: SRC, changed: ['drivers/vfio/pci/vfio_pci_core.c'] }),
    { kind: 'whole-tree', reason: 'the base build has no modules.order or .mod files' });
});

test('cmdTarget maps a .cmd file to the target it records', (t) => {
  t.is(cmdTarget('drivers/vfio/pci/.vfio_pci_core.o.cmd'), 'drivers/vfio/pci/vfio_pci_core.o');
  t.is(cmdTarget('.vmlinux.o.cmd'), 'vmlinux.o');
});

test('rebuildMode: the request wins, then HWLAB_KERNEL_REBUILD, checked against the allowed values', (t) => {
  t.is(rebuildMode({}, {}), 'auto');
  t.is(rebuildMode({}, { HWLAB_KERNEL_REBUILD: 'whole-tree' }), 'whole-tree');
  t.is(rebuildMode({ rebuild: 'auto' }, { HWLAB_KERNEL_REBUILD: 'whole-tree' }), 'auto');
  const err = t.throws(() => rebuildMode({}, { HWLAB_KERNEL_REBUILD: 'fast' }), { instanceOf: InputError });
  t.is(err?.message, 'environment variable HWLAB_KERNEL_REBUILD: must be one of auto, whole-tree (got "fast")');
});
