// `hwlab doctor`: host checks. The tools each stage runs (src/util/host-tools.ts),
// a KVM that really works, disk space. Says exactly what to install; `--install`
// (and `hwlab run`, when root) installs missing Debian packages itself.
import { existsSync } from 'node:fs';
import { statfs, readdir } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot } from '../util/cache.ts';
import { HOST_FILES, HOST_TOOLS, installPackages, KEYRING, missingPackages, which } from '../util/host-tools.ts';
import { probeKvm } from '../machine/accel.ts';
import { currentIdentity, kvmAccessible, unprivilegedChecks } from '../util/unprivileged.ts';
import { flag, type CommandSpec } from './command.ts';

const MIN_FREE_GIB = 4;

export async function runDoctor(opts: { install: boolean }): Promise<number> {
  const out = (l: string) => process.stdout.write(`${l}\n`);
  let bad = 0;
  let missing = await missingPackages();
  if (missing.length && opts.install) {
    await installPackages(missing, out);
    missing = await missingPackages();
  }
  for (const [cmd, pkg] of Object.entries(HOST_TOOLS)) {
    const ok = await which(cmd);
    out(`${ok ? 'ok  ' : 'MISS'} ${cmd}${ok ? '' : ` (apt-get install ${pkg})`}`);
  }
  for (const [file, pkg] of Object.entries({ [KEYRING.file]: KEYRING.pkg, ...HOST_FILES })) {
    out(`${existsSync(file) ? 'ok  ' : 'MISS'} ${file}${existsSync(file) ? '' : ` (apt-get install ${pkg})`}`);
  }
  if (missing.length) {
    bad++;
    out(`\nto install everything missing: apt-get install ${missing.join(' ')}   (or: hwlab doctor --install)`);
  }
  const id = currentIdentity();
  if (id.uid === 0) {
    out('ok   running as root (image builds: mmdebstrap --mode=root)');
  } else {
    // Root is needed once, to install packages and give the user a subordinate id range; runs need none.
    out(`ok   running as ${id.user} (uid ${id.uid}): runs need no root; image builds use mmdebstrap --mode=unshare`);
    for (const c of await unprivilegedChecks(id)) {
      out(`${c.ok ? 'ok  ' : 'FAIL'} ${c.what}${c.fix ? `\n       fix: ${c.fix}` : ''}`);
      if (!c.ok) bad++;
    }
    if (existsSync('/dev/kvm') && !(await kvmAccessible())) {
      out(`info /dev/kvm is not read-write for ${id.user}: TCG will be used (for KVM, as root: usermod -aG kvm ${id.user}, then log in again)`);
    }
  }
  const node = Number(process.versions.node.split('.')[0]);
  out(`${node >= 20 ? 'ok  ' : 'FAIL'} node ${process.versions.node} (need >= 20)`);
  if (node < 20) bad++;

  const cache = cacheRoot();
  let probeDir = cache;
  while (!existsSync(probeDir)) probeDir = path.dirname(probeDir);
  const fs = await statfs(probeDir);
  const freeGiB = (fs.bavail * fs.bsize) / 2 ** 30;
  out(`${freeGiB >= MIN_FREE_GIB ? 'ok  ' : 'FAIL'} ${freeGiB.toFixed(1)} GiB free for the cache at ${cache} (need ${MIN_FREE_GIB})`);
  if (freeGiB < MIN_FREE_GIB) bad++;

  // KVM is tested by booting a kernel under it; any cached kernel will do.
  const kdir = path.join(cache, 'kernel');
  const kernels = existsSync(kdir) ? (await readdir(kdir)).filter((k) => existsSync(path.join(kdir, k, 'vmlinuz'))) : [];
  if (!(await which('qemu-system-x86_64'))) {
    out('skip KVM test: no qemu-system-x86_64');
  } else if (kernels.length === 0) {
    out(`info KVM: ${existsSync('/dev/kvm') ? '/dev/kvm exists; a real guest test runs once a kernel is fetched' : 'no /dev/kvm: TCG will be used'}`);
  } else {
    const r = await probeKvm(path.join(kdir, kernels[0], 'vmlinuz'));
    out(`${r.works ? 'ok  ' : 'info'} KVM: ${r.works ? 'works' : `not usable, labs with accel auto use TCG (${r.why})`}`);
  }
  return bad ? 2 : 0;
}

export const doctorCommand: CommandSpec = {
  name: 'doctor',
  summary: 'check the host tools, whether KVM really works, and free disk space',
  args: '',
  positionals: { min: 0, max: 0 },
  options: { install: { type: 'boolean', help: 'apt-install the missing Debian packages (as root)' } },
  handler: (a) => runDoctor({ install: flag(a, 'install') }),
};
