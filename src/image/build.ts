// Guest images: debootstrap a rootfs from the recipe, add hwlab's init, sshd
// settings and key, then pack it as an ext4 image. Cached by (recipe, key,
// builder version); every run boots a copy-on-write overlay on top.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheKey, ensureEntry } from '../util/cache.ts';

import { makeExt4 } from '../util/ext4.ts';
import type { Step } from '../util/progress.ts';
import { ensureHwlabKey } from '../session/keys.ts';
import type { ImageRecipe } from './recipe.ts';
import { GUEST_INIT, SSHD_CONFIG } from './guest-files.ts';
import { InfraError } from '../util/errors.ts';

/** Bump when what the builder puts into an image changes. */
const BUILDER_VERSION = 4;

export interface GuestImage {
  recipe: string;
  rootDisk: string;
  busybox: string;
  /** sshd's ed25519 host key (OpenSSH line), checked on every connection. */
  hostKey: string;
  nodeVersion: string;
  cacheDir: string;
  cacheKey: string;
}

async function umountUnder(dir: string): Promise<void> {
  // debootstrap mounts /proc and /sys in the target; an interrupted build must not leave them.
  const mounts = (await readFile('/proc/mounts', 'utf8')).split('\n').map((l) => l.split(' ')[1]).filter(Boolean);
  for (const m of mounts.filter((m) => m.startsWith(dir + '/')).sort().reverse()) {
    await execa('umount', ['-l', m], { reject: false });
  }
}

export async function buildImage(recipe: ImageRecipe, step: Step): Promise<GuestImage> {
  const key = await ensureHwlabKey();
  const recipeData = { suite: recipe.suite, mirror: recipe.mirror, variant: recipe.variant, packages: [...recipe.packages].sort() };
  const ck = cacheKey({ v: BUILDER_VERSION, recipe: recipeData, init: GUEST_INIT, sshd: SSHD_CONFIG, key: key.publicKey });
  const { dir } = await ensureEntry('image', ck, `image ${recipe.name} (${recipe.suite})`, async (tmp) => {
    const root = path.join(tmp, 'rootfs');
    try {
      step.update(`debootstrap ${recipe.suite}`);
      const args = [`--variant=${recipe.variant}`, `--include=${recipe.packages.join(',')}`, recipe.suite, root, recipe.mirror];
      const child = execa('debootstrap', args, { reject: false, timeout: 1_800_000, all: true });
      child.all?.on('data', (chunk: Buffer) => {
        const last = chunk.toString().trim().split('\n').pop();
        if (last) step.update(`debootstrap: ${last.replace(/^I: /, '')}`);
      });
      const r = await child;
      if (r.exitCode !== 0) {
        const log = existsSync(path.join(root, 'debootstrap/debootstrap.log'))
          ? (await readFile(path.join(root, 'debootstrap/debootstrap.log'), 'utf8')).split('\n').slice(-15).join('\n')
          : '';
        throw new InfraError(`debootstrap ${recipe.suite} failed (exit ${r.exitCode}):\n${String(r.all).split('\n').slice(-15).join('\n')}\n${log}`);
      }
      step.update('configuring guest');
      await writeFile(path.join(root, 'etc/hostname'), 'hwlab\n');
      await writeFile(path.join(root, 'etc/hosts'), '127.0.0.1 localhost\n127.0.1.1 hwlab\n');
      await writeFile(path.join(root, 'etc/fstab'), '# hwlab: mounts are made by /sbin/hwlab-init\n');
      await mkdir(path.join(root, 'etc/ssh/sshd_config.d'), { recursive: true });
      await writeFile(path.join(root, 'etc/ssh/sshd_config.d/hwlab.conf'), SSHD_CONFIG);
      // Debian's sshd_config names the external sftp-server (not installed); ours uses internal-sftp.
      const mainCfg = path.join(root, 'etc/ssh/sshd_config');
      await writeFile(mainCfg, (await readFile(mainCfg, 'utf8')).replace(/^Subsystem\s+sftp\s.*$/m, '# $& (hwlab: internal-sftp, see sshd_config.d)'));
      await mkdir(path.join(root, 'root/.ssh'), { recursive: true, mode: 0o700 });
      await writeFile(path.join(root, 'root/.ssh/authorized_keys'), `${key.publicKey}\n`, { mode: 0o600 });
      await writeFile(path.join(root, 'sbin/hwlab-init'), GUEST_INIT, { mode: 0o755 });
      await mkdir(path.join(root, 'lib/modules'), { recursive: true });
      await rm(path.join(root, 'etc/ssh/ssh_host_rsa_key'), { force: true });
      await execa('chroot', [root, 'ssh-keygen', '-q', '-A'], { timeout: 120_000 });
      await mkdir(path.join(root, 'run/sshd'), { recursive: true });
      const check = await execa('chroot', [root, '/usr/sbin/sshd', '-t'], { reject: false, timeout: 60_000 });
      if (check.exitCode !== 0) throw new InfraError(`sshd -t in the new image failed: ${check.stderr.trim()}`);
      const nodeVersion = (await execa('chroot', [root, 'node', '--version'], { timeout: 60_000 })).stdout.trim();
      const hostKey = (await readFile(path.join(root, 'etc/ssh/ssh_host_ed25519_key.pub'), 'utf8')).trim();
      await umountUnder(tmp);
      // Package caches are dead weight in every overlay.
      await execa('sh', ['-c', 'rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*', 'sh', root]);
      await copyFile(path.join(root, 'bin/busybox'), path.join(tmp, 'busybox'));
      await chmod(path.join(tmp, 'busybox'), 0o755);
      step.update('packing ext4');
      await makeExt4(root, path.join(tmp, 'rootfs.ext4'), 'hwlab-root', 512);
      await writeFile(path.join(tmp, 'image.json'), JSON.stringify({ recipe: recipe.name, hostKey, nodeVersion, recipeData }, null, 2));
      await rm(root, { recursive: true, force: true });
    } catch (err) {
      await umountUnder(tmp);
      throw err;
    }
  });
  const meta = JSON.parse(await readFile(path.join(dir, 'image.json'), 'utf8'));
  return {
    recipe: recipe.name,
    rootDisk: path.join(dir, 'rootfs.ext4'),
    busybox: path.join(dir, 'busybox'),
    hostKey: meta.hostKey,
    nodeVersion: meta.nodeVersion,
    cacheDir: dir,
    cacheKey: ck,
  };
}
