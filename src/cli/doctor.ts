// Host checks: the tools each stage runs, a KVM that really works, disk
// space. Says exactly what to install; `--install` (and `hwlab run`, when
// root) installs missing Debian packages itself.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { statfs, readdir } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot } from '../util/cache.ts';

import { probeKvm } from '../machine/accel.ts';
import { InfraError } from '../util/errors.ts';

/** Command -> Debian package that provides it. */
export const HOST_TOOLS: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  debootstrap: 'debootstrap',
  'apt-get': 'apt',
  'dpkg-deb': 'dpkg',
  depmod: 'kmod',
  cpio: 'cpio',
  'mkfs.ext4': 'e2fsprogs',
  xz: 'xz-utils',
  zstd: 'zstd',
  chroot: 'coreutils',
  // Source builds (kernel, drivers, hwlab's own modules).
  make: 'make',
  gcc: 'gcc',
  flex: 'flex',
  bison: 'bison',
  bc: 'bc',
  patch: 'patch',
  ccache: 'ccache',
  readelf: 'binutils',
  git: 'git',
};
/** Header files a kernel build needs -> Debian package. */
const HOST_FILES: Record<string, string> = {
  '/usr/include/gelf.h': 'libelf-dev',
  '/usr/include/openssl/opensslv.h': 'libssl-dev',
};
const KEYRING = { file: '/usr/share/keyrings/debian-archive-keyring.gpg', pkg: 'debian-archive-keyring' };
const MIN_FREE_GIB = 4;

async function which(cmd: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  return dirs.some((d) => existsSync(path.join(d, cmd)));
}

export async function missingPackages(): Promise<string[]> {
  const missing = new Set<string>();
  for (const [cmd, pkg] of Object.entries(HOST_TOOLS)) if (!(await which(cmd))) missing.add(pkg);
  if (!existsSync(KEYRING.file)) missing.add(KEYRING.pkg);
  for (const [file, pkg] of Object.entries(HOST_FILES)) if (!existsSync(file)) missing.add(pkg);
  return [...missing];
}

export async function installPackages(pkgs: string[], log: (l: string) => void): Promise<void> {
  if (pkgs.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new InfraError(`missing host packages: ${pkgs.join(' ')}`, `run as root, or: sudo apt-get install ${pkgs.join(' ')}`);
  }
  log(`installing host packages: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const upd = await execa('apt-get', ['-q', 'update'], { reject: false, env, timeout: 600_000 });
  if (upd.exitCode !== 0) throw new InfraError(`apt-get update failed:\n${upd.stderr.trim()}`);
  const r = await execa('apt-get', ['-q', '-y', 'install', '--no-install-recommends', ...pkgs], { reject: false, env, timeout: 1_800_000 });
  if (r.exitCode !== 0) throw new InfraError(`apt-get install ${pkgs.join(' ')} failed:\n${r.stderr.trim().split('\n').slice(-10).join('\n')}`);
}

/** Used by `hwlab run`: install what is missing when we can, else say what to do. */
export async function ensureHostTools(log: (l: string) => void): Promise<void> {
  const missing = await missingPackages();
  if (missing.length) await installPackages(missing, log);
  if (process.getuid?.() !== 0) {
    throw new InfraError('hwlab needs root: debootstrap and chroot build the guest image', 'run it as root (CI runs as root)');
  }
}

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
  const root = process.getuid?.() === 0;
  out(`${root ? 'ok  ' : 'FAIL'} running as root${root ? '' : ' (debootstrap and chroot need it)'}`);
  if (!root) bad++;
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
