// The kept-guest registry on real processes (a node process stands in for
// QEMU: its command line starts with qemu-system and names the run folder,
// which is what stop checks before it ends a pid): ps sees a dead owner,
// stop ends the "QEMU" by pid and forgets it, and the printed ssh command
// pins the host key.
import test from 'ava';
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { sshCommandLine } from '../../src/cli/keep.ts';
import { findKept, isQemuOf, knownHostsLine, listKept, processAlive, registerKept, stopKept, type KeptGuest } from '../../src/machine/kept.ts';
import { tempDir } from './helpers/temp.ts';

test.serial('registry: register, find by name or folder, dead owner seen, stop ends QEMU by pid and forgets it', async (t) => {
  process.env.HWLAB_CACHE = tempDir('hwlab-kept-');
  const runDir = tempDir('hwlab-run-');
  const fakeQemu = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600000)', `file:${runDir}/console.log`], { argv0: 'qemu-system-x86_64', stdio: 'ignore' });
  t.teardown(() => { fakeQemu.kill('SIGKILL'); });
  const ownerChild = execa('true');
  const ownerPid = ownerChild.pid!;
  await ownerChild;
  const guest: KeptGuest = {
    name: path.basename(runDir), runDir, lab: 'smoke', qemuPid: fakeQemu.pid!, ownerPid, sshPort: 40000,
    keyFile: '/cache/ssh/id_ed25519', knownHosts: path.join(runDir, 'known_hosts'), scratch: tempDir('hwlab-scratch-'),
    startedAt: new Date().toISOString(), until: new Date(Date.now() + 60_000).toISOString(),
  };
  await new Promise((r) => setTimeout(r, 300));
  t.true(await isQemuOf(fakeQemu.pid!, runDir));
  t.false(await isQemuOf(fakeQemu.pid!, '/some/other/run'), 'a pid that is not this run\'s QEMU is never ended');
  await registerKept(guest);
  t.deepEqual(await listKept(), [guest]);
  t.is((await findKept(runDir)).name, guest.name);
  t.is((await findKept(guest.name)).name, guest.name);
  t.is((await findKept(undefined)).name, guest.name, 'the only kept guest needs no name');
  await t.throwsAsync(findKept('nope'), { message: /no kept guest "nope"/ });
  t.false(processAlive(guest.ownerPid), 'owner is dead');
  const r = await stopKept(guest);
  t.deepEqual(r, { ended: true, ownerGone: true });
  t.false(processAlive(fakeQemu.pid!) && (await isQemuOf(fakeQemu.pid!, runDir)), 'QEMU ended');
  t.deepEqual(await listKept(), []);
  await t.throwsAsync(findKept(undefined), { message: /no guest is kept/ });
});

test('the printed ssh command: loopback, the port, hwlab\'s key only, the host key pinned', (t) => {
  const line = sshCommandLine({ sshPort: 40123, keyFile: '/c/ssh/id_ed25519', knownHosts: '/runs/r/known_hosts' });
  t.is(line, 'ssh -i /c/ssh/id_ed25519 -p 40123 -o IdentitiesOnly=yes -o UserKnownHostsFile=/runs/r/known_hosts -o StrictHostKeyChecking=yes root@127.0.0.1');
  t.is(knownHostsLine(40123, 'ssh-ed25519 AAAAC3Nz root@hwlab'), '[127.0.0.1]:40123 ssh-ed25519 AAAAC3Nz\n');
});

test.serial('cache prune, even --all, keeps the kept-guest state files (they are not cache entries)', async (t) => {
  const { pruneCache } = await import('../../src/cli/cache-cmd.ts');
  process.env.HWLAB_CACHE = tempDir('hwlab-kept-prune-');
  const runDir = tempDir('hwlab-run-');
  await registerKept({
    name: path.basename(runDir), runDir, lab: 'smoke', qemuPid: 1, ownerPid: 1, sshPort: 1, keyFile: '/k', knownHosts: '/h', scratch: '/s',
    startedAt: new Date().toISOString(), until: new Date().toISOString(),
  });
  await pruneCache({ all: false });
  await pruneCache({ all: true });
  t.is((await listKept()).length, 1);
});
