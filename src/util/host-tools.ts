// The host tools each stage runs (QEMU, mmdebstrap, the kernel toolchain),
// which Debian package provides each, and installing what is missing. Used by
// `hwlab run` before it starts (ensureHostTools) and by `hwlab doctor`, which
// reports on them; kept out of src/cli so that the run stage need not import
// the command line.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { InfraError } from './errors.ts';
import { unprivilegedChecks } from './unprivileged.ts';

/** Command -> Debian package that provides it. */
export const HOST_TOOLS: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  // Image builds (src/image/build.ts): mmdebstrap, in a user namespace when not root
  // (newuidmap/newgidmap), and fakeroot to pack its tarball with the right owners.
  mmdebstrap: 'mmdebstrap',
  newuidmap: 'uidmap',
  newgidmap: 'uidmap',
  fakeroot: 'fakeroot',
  'apt-get': 'apt',
  'dpkg-deb': 'dpkg',
  depmod: 'kmod',
  cpio: 'cpio',
  'mkfs.ext4': 'e2fsprogs',
  xz: 'xz-utils',
  zstd: 'zstd',
  chroot: 'coreutils',
  // Binds QEMU and make to hwlab's life (see boundToHwlab).
  setpriv: 'util-linux',
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
  // The kernel's selftests: headers_install and kselftest's install copy with it.
  rsync: 'rsync',
};
/** Header files a kernel build needs -> Debian package. */
export const HOST_FILES: Record<string, string> = {
  '/usr/include/gelf.h': 'libelf-dev',
  '/usr/include/openssl/opensslv.h': 'libssl-dev',
  // The kernel's selftests link against them (vfio: libuuid; iommu: libcap), see src/selftests/build.ts.
  '/usr/include/uuid/uuid.h': 'uuid-dev',
  '/usr/include/sys/capability.h': 'libcap-dev',
};
/** The Debian archive keyring mmdebstrap and the private apt configuration verify with. */
export const KEYRING = { file: '/usr/share/keyrings/debian-archive-keyring.gpg', pkg: 'debian-archive-keyring' };
/**
 * The argv that runs `binary args` so that it is SIGKILLed when hwlab dies,
 * even by SIGKILL (when no cleanup handler runs): util-linux's setpriv sets
 * PR_SET_PDEATHSIG and execs the command, which keeps the setting. QEMU has
 * no exit-with-parent option before 9.x; make would go on writing into a
 * build tree whose lock its hwlab no longer holds. `TERM` for a command that
 * must end its own children (make: see src/kernel/build.ts).
 */
export function boundToHwlab(binary: string, args: string[], signal: 'KILL' | 'TERM' = 'KILL'): [string, string[]] {
  return ['setpriv', ['--pdeathsig', signal, '--', binary, ...args]];
}

/** Is `cmd` on PATH (or in /usr/sbin, /sbin, which a non-login root shell may lack)? */
export async function which(cmd: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  return dirs.some((d) => existsSync(path.join(d, cmd)));
}

/** Debian packages providing the tools and files that are missing. */
export async function missingPackages(): Promise<string[]> {
  const missing = new Set<string>();
  for (const [cmd, pkg] of Object.entries(HOST_TOOLS)) if (!(await which(cmd))) missing.add(pkg);
  if (!existsSync(KEYRING.file)) missing.add(KEYRING.pkg);
  for (const [file, pkg] of Object.entries(HOST_FILES)) if (!existsSync(file)) missing.add(pkg);
  return [...missing];
}

/** apt-get install, as root only; otherwise the error says what to run. */
export async function installPackages(pkgs: string[], log: (l: string) => void): Promise<void> {
  if (pkgs.length === 0) return;
  if (process.getuid?.() !== 0) {
    throw new InfraError(`missing host packages: ${pkgs.join(' ')} (installing them needs root)`, `as root: hwlab doctor --install, or: sudo apt-get install ${pkgs.join(' ')}`);
  }
  log(`installing host packages: ${pkgs.join(' ')}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const upd = await execa('apt-get', ['-q', 'update'], { reject: false, env, timeout: 600_000 });
  if (upd.exitCode !== 0) throw new InfraError(`apt-get update failed:\n${upd.stderr.trim()}`);
  const r = await execa('apt-get', ['-q', '-y', 'install', '--no-install-recommends', ...pkgs], { reject: false, env, timeout: 1_800_000 });
  if (r.exitCode !== 0) throw new InfraError(`apt-get install ${pkgs.join(' ')} failed:\n${r.stderr.trim().split('\n').slice(-10).join('\n')}`);
}

/**
 * Used by `hwlab run` before any work: install what is missing when we can,
 * else say what to do. Root is needed only to install packages and, once, to
 * give an ordinary user a subordinate id range (see src/util/unprivileged.ts),
 * which only an image build needs (`imageBuild` says whether one is due).
 */
export async function ensureHostTools(log: (l: string) => void, imageBuild: () => Promise<boolean>): Promise<void> {
  const missing = await missingPackages();
  if (missing.length) await installPackages(missing, log);
  // The subordinate ids serve only mmdebstrap: with the image in the cache an ordinary user needs none.
  if (process.getuid?.() === 0 || !(await imageBuild())) return;
  const failed = (await unprivilegedChecks()).filter((c) => !c.ok);
  if (failed.length) {
    throw new InfraError(`not ready for runs as an ordinary user:\n${failed.map((c) => `  ${c.what}`).join('\n')}`,
      [...new Set(failed.map((c) => c.fix).filter(Boolean))].join('; '), 'not-ready-unprivileged');
  }
}
