// Snapshot restore, the parts that need no guest: the command line of a
// saved or restored machine (ivshmem-plain as master, the console appended
// to, -incoming defer), the initramfs content hash that ignores mtimes, which
// labs cannot be saved (QEMU 7.2's migration blockers), and the checked
// --snapshot / HWLAB_SNAPSHOT setting and the backend it picks per lab. The save and restore themselves run in
// test/e2e/snapshot.test.ts on real guests.
import test from 'ava';
import { execa } from 'execa';
import { mkdtemp, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { qemuBackend } from '../../src/machine/qemu.ts';
import { cpioContentHash, qemuBackendFor, snapshotQemuBackend, snapshotSetting, sysfsGlob, whyNotMigratable } from '../../src/machine/snapshot.ts';
import { loadLab } from '../../src/lab/load.ts';
import { InputError } from '../../src/util/errors.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const base = {
  accel: 'tcg' as const, kernelImage: '/k', initrd: '/i', rootDisk: '/r.qcow2', modulesDisk: '/m.ext4',
  consoleLog: '/run/a,b/console.log', qmpSocket: '/q.sock', sshPort: 2222, memoryBackendDir: '/shm', append: ['console=ttyS0'],
};

test('save and restore command lines: ivshmem-plain as master, console appended, restore waits for the stream; a plain boot unchanged', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const plain = buildQemuCommand({ ...base, lab }).args;
  const save = buildQemuCommand({ ...base, lab, migration: 'save' }).args;
  const restore = buildQemuCommand({ ...base, lab, migration: 'restore' }).args;
  t.true(plain.includes('file:/run/a,b/console.log'));
  t.false(plain.some((a) => a.includes('master=on') || a === '-incoming'));
  const ivshmem = save.find((a) => a.startsWith('ivshmem-plain,'));
  t.regex(ivshmem ?? '', /,master=on$/);
  t.true(save.includes('file,id=hwlab-serial,path=/run/a,,b/console.log,append=on'), 'the comma in the path is escaped');
  t.deepEqual(save.slice(save.indexOf('-serial'), save.indexOf('-serial') + 2), ['-serial', 'chardev:hwlab-serial']);
  t.false(save.includes('-incoming'));
  t.deepEqual(restore.slice(-2), ['-incoming', 'defer']);
  t.deepEqual(restore.slice(0, -2), save, 'save and restore start the same machine');
});

test('cpioContentHash: the same files with other mtimes hash the same; other content does not', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-cpio-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const pack = async (content: string, mtime: number) => {
    await writeFile(path.join(dir, 'init'), content, { mode: 0o755 });
    await writeFile(path.join(dir, 'modules.list'), 'virtio_blk.ko\n');
    for (const f of ['init', 'modules.list']) await utimes(path.join(dir, f), mtime, mtime);
    const out = path.join(os.tmpdir(), `hwlab-cpio-${process.pid}.cpio`);
    await execa('cpio', ['--quiet', '-o', '-H', 'newc', '-O', out], { cwd: dir, input: 'init\nmodules.list\n' });
    const buf = await readFile(out);
    await rm(out);
    return buf;
  };
  const a = await pack('#!/bin/sh\necho a\n', 1_000_000);
  const b = await pack('#!/bin/sh\necho a\n', 2_000_000);
  const c = await pack('#!/bin/sh\necho c\n', 1_000_000);
  t.notDeepEqual(a, b, 'the archives differ (mtimes)');
  t.is(cpioContentHash(a), cpioContentHash(b));
  t.not(cpioContentHash(a), cpioContentHash(c));
  t.throws(() => cpioContentHash(Buffer.from('not a cpio archive at all, long enough to hold a header '.repeat(3))), { message: /not a newc cpio archive at byte 0/ });
});

test('whyNotMigratable: the labs with amd-iommu or nvme cannot be saved; smoke and vga can', async (t) => {
  const smoke = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  t.is(whyNotMigratable(smoke), null);
  t.is(whyNotMigratable(await loadLab(path.join(repo, 'labs/vga.yaml'))), null);
  t.is(whyNotMigratable({ ...smoke, iommu: { ...smoke.iommu, kind: 'amd' } }), 'the amd vIOMMU is not migratable in QEMU 7.2');
  const dflt = await loadLab(path.join(repo, 'labs/default.yaml'));
  t.regex(whyNotMigratable(dflt) ?? '', /^endpoint \S+ \(nvme\) is not migratable in QEMU 7\.2$/);
});

test('--snapshot and HWLAB_SNAPSHOT: the option wins over the variable, unset is off, anything else is refused naming the allowed values and the source', (t) => {
  t.is(snapshotSetting(undefined, {}), 'off');
  t.is(snapshotSetting(undefined, { HWLAB_SNAPSHOT: '' }), 'off');
  t.is(snapshotSetting(undefined, { HWLAB_SNAPSHOT: 'on' }), 'on');
  t.is(snapshotSetting(undefined, { HWLAB_SNAPSHOT: 'auto' }), 'auto');
  t.is(snapshotSetting('off', { HWLAB_SNAPSHOT: 'on' }), 'off');
  t.is(snapshotSetting('auto', {}), 'auto');
  const env = t.throws(() => snapshotSetting(undefined, { HWLAB_SNAPSHOT: '1' }), { instanceOf: InputError });
  t.is(env?.message, 'environment variable HWLAB_SNAPSHOT: must be one of on, off, auto (got "1")');
  const opt = t.throws(() => snapshotSetting('yes', { HWLAB_SNAPSHOT: 'on' }), { instanceOf: InputError });
  t.is(opt?.message, '--snapshot: must be one of on, off, auto (got "yes")');
});

test('the backend per setting: on restores every lab, auto only labs QEMU can save and not under --gdb, off never', async (t) => {
  const smoke = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const dflt = await loadLab(path.join(repo, 'labs/default.yaml'));
  t.is(qemuBackendFor('off', smoke), qemuBackend);
  t.is(qemuBackendFor('on', smoke), snapshotQemuBackend);
  t.is(qemuBackendFor('on', dflt), snapshotQemuBackend, 'on: the snapshot backend boots it and says why in snapshot.json');
  t.is(qemuBackendFor('auto', smoke), snapshotQemuBackend);
  t.is(qemuBackendFor('auto', dflt), qemuBackend, 'nvme blocks migration');
  t.is(qemuBackendFor('auto', smoke, { gdb: true }), qemuBackend);
});

test('sysfsGlob: the sysfs directory from its devfn path, any bus numbers below the root complex; bad devfns refused', async (t) => {
  const smoke = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const paths = buildQemuCommand({ ...base, lab: smoke }).pciPaths;
  t.is(sysfsGlob(paths.edu0), '/sys/devices/pci0000:00/0000:00:10.0/*:00.0/*:01.0/*:00.0');
  t.throws(() => sysfsGlob(['10.0', '00.0; rm -rf /']), { message: /bad devfn/ });
});
