// gdb on a real guest (`npm run test:gdb`; skipped in `npm test`, because
// its kernel is a separate build with debug info, about 20 minutes cold on
// 2 cores): `hwlab run --gdb --keep` prints a gdb line; gdb in batch mode
// attaches to QEMU's gdbstub with the build's vmlinux and scripts/gdb, reads
// a kernel symbol, the kernel log through lx-dmesg, and the vfio modules'
// symbols through lx-symbols; then hwlab stop leaves no QEMU.
import test from 'ava';
import { execa } from 'execa';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { hwlab, qemuProcessesMentioning, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

const enabled = process.env.HWLAB_GDB_E2E === '1';

(enabled ? test.serial : test.serial.skip)('--gdb: gdb attaches, reads linux_banner, lx-dmesg and lx-symbols of the vfio modules', async (t) => {
  const dir = runsDir();
  const child = hwlab(['run', path.join(repoRoot, 'labs/smoke.yaml'), '--gdb', '--keep', '--only', 'dmabuf-export', '--runs-dir', dir], { timeoutMs: 90 * 60_000 });
  let out = '';
  child.all?.on('data', (d: Buffer) => { out += d.toString(); });
  t.teardown(() => { child.kill('SIGINT'); });
  const deadline = Date.now() + 80 * 60_000;
  let m: RegExpMatchArray | null = null;
  while (!(m = out.match(/^ {2}gdb -q (\S+\/vmlinux) -iex 'add-auto-load-safe-path (\S+)' -ex 'target remote 127\.0\.0\.1:(\d+)'$/m)) && Date.now() < deadline && child.exitCode === null) await sleep(500);
  t.truthy(m, out);
  if (!m) return;
  const [, vmlinux, obj, port] = m;
  const run = out.match(/^guest kept up: (\S+)/m)![1];
  const gdb = await execa('gdb', ['-q', '-batch', vmlinux, '-iex', `add-auto-load-safe-path ${obj}`, '-ex', `target remote 127.0.0.1:${port}`,
    '-ex', 'print linux_banner', '-ex', 'lx-dmesg', '-ex', `lx-symbols ${path.join(obj, 'drivers/vfio')}`, '-ex', 'info address vfio_pci_core_ioctl', '-ex', 'detach'],
  { reject: false, timeout: 15 * 60_000, all: true });
  t.log(gdb.all?.split('\n').filter((l) => /Linux version|loading|vfio_pci_core_ioctl|sshd started/.test(l)).slice(0, 12).join('\n'));
  // linux_banner is a char array: gdb prints its address and symbol before the string (stdout
  // only: gdb's stderr about the frame's source file can land in the middle of the line).
  t.regex(gdb.stdout ?? '', /\$1 = (0x[0-9a-f]+ <linux_banner> )?"Linux version 7\.2\.\d+/);
  t.regex(gdb.all ?? '', /hwlab-init: sshd started/, 'lx-dmesg printed the kernel log');
  t.regex(gdb.all ?? '', /loading @0x[0-9a-f]+: \S*vfio[-_]pci[-_]core\.ko/, 'lx-symbols loaded the vfio modules');
  t.regex(gdb.all ?? '', /Symbol "vfio_pci_core_ioctl" is a function at address 0x[0-9a-f]+/);
  const stop = await hwlab(['stop', run], { timeoutMs: 120_000 });
  t.is(stop.exitCode, 0, stop.all);
  t.is((await child).exitCode, 0);
  t.deepEqual(await qemuProcessesMentioning(path.join(dir, run)), []);
});
