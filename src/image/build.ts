// Guest images: mmdebstrap a rootfs from the recipe, add hwlab's init, sshd
// settings and key, then pack it as an ext4 image. Cached by (recipe, key,
// builder version); every run boots a copy-on-write overlay on top.
//
// No step needs root. As an ordinary user mmdebstrap runs in unshare mode (a
// user namespace over the user's /etc/subuid range, through newuidmap), the
// configuration that needs the guest's own binaries (ssh-keygen, sshd -t,
// node) runs as its customize hook inside that namespace, and the result
// leaves it as a tarball with the right owners. fakeroot unpacks that tarball
// and feeds mkfs.ext4 -d the recorded owners, so nothing under the cache is
// ever owned by a subordinate uid the user could not remove. As root the same
// steps run with mmdebstrap's root mode.
import { execa } from 'execa';
import { chmod, copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheKey, ensureEntry, entryDir, isComplete } from '../util/cache.ts';

import { makeExt4 } from '../util/ext4.ts';
import type { Step } from '../util/progress.ts';
import { ensureHwlabKey } from '../session/keys.ts';
import type { ImageRecipe } from './recipe.ts';
import { GUEST_INIT, IMAGE_CUSTOMIZE_SCRIPT, ROOT_PROFILE, SSHD_CONFIG } from './guest-files.ts';
import { InfraError } from '../util/errors.ts';
import { bytesUnder, watchDownload } from '../util/download-progress.ts';
import { ensureOfficialNode } from './node-dist.ts';

/** Bump when what the builder puts into an image changes. */
const BUILDER_VERSION = 6;

export interface GuestImage {
  recipe: string;
  rootDisk: string;
  busybox: string;
  /** sshd's ed25519 host key (OpenSSH line), checked on every connection. */
  hostKey: string;
  nodeVersion: string;
  /** Where the guest's node comes from: the recipe's official build, or Debian's nodejs package. */
  nodeSource: 'official' | 'debian';
  cacheDir: string;
  cacheKey: string;
}

/** mmdebstrap's mode: root when we are root, else a user namespace (needs a subuid range and newuidmap). */
export function mmdebstrapMode(uid = process.getuid?.() ?? 0): 'root' | 'unshare' {
  return uid === 0 ? 'root' : 'unshare';
}

/**
 * One argument of an mmdebstrap special hook: mmdebstrap splits those with
 * Perl's shellwords, so a path is single-quoted. The paths are hwlab's own
 * (under the cache); a quote or newline in one is refused, not escaped.
 */
function hookWord(p: string): string {
  if (/['\n]/.test(p)) throw new InfraError(`cannot pass ${JSON.stringify(p)} to mmdebstrap: the path has a quote or a newline`, 'set XDG_CACHE_HOME to a plainer path');
  return `'${p}'`;
}

/**
 * The files hwlab adds to every image, as a tree that mmdebstrap's sync-in
 * copies into the rootfs. Only etc/ and root/: tar would replace a merged-usr
 * symlink such as /sbin or /lib with a directory, so the init goes in by the
 * customize script (IMAGE_CUSTOMIZE_SCRIPT).
 */
async function writeStage(stage: string, publicKey: string): Promise<void> {
  const put = async (rel: string, text: string, mode = 0o644) => {
    await mkdir(path.dirname(path.join(stage, rel)), { recursive: true });
    await writeFile(path.join(stage, rel), text, { mode });
    await chmod(path.join(stage, rel), mode);
  };
  await put('etc/hostname', 'hwlab\n');
  await put('etc/hosts', '127.0.0.1 localhost\n127.0.1.1 hwlab\n');
  await put('etc/fstab', '# hwlab: mounts are made by /sbin/hwlab-init\n');
  await put('etc/ssh/sshd_config.d/hwlab.conf', SSHD_CONFIG);
  await put('root/.ssh/authorized_keys', `${publicKey}\n`, 0o600);
  await put('root/.profile', ROOT_PROFILE);
  await chmod(path.join(stage, 'root/.ssh'), 0o700);
}

function recipeDataOf(recipe: ImageRecipe) {
  return { suite: recipe.suite, mirror: recipe.mirror, variant: recipe.variant, packages: [...recipe.packages].sort(), node: recipe.node };
}

async function imageKey(recipe: ImageRecipe): Promise<{ ck: string; key: Awaited<ReturnType<typeof ensureHwlabKey>> }> {
  const key = await ensureHwlabKey();
  return { ck: cacheKey({ v: BUILDER_VERSION, recipe: recipeDataOf(recipe), init: GUEST_INIT, sshd: SSHD_CONFIG, customize: IMAGE_CUSTOMIZE_SCRIPT, profile: ROOT_PROFILE, key: key.publicKey }), key };
}

/** Whether buildImage would have to run mmdebstrap (no finished entry): only then are an ordinary user's subordinate ids needed. */
export async function imageNeedsBuild(recipe: ImageRecipe): Promise<boolean> {
  return !isComplete(entryDir('image', (await imageKey(recipe)).ck));
}

export async function buildImage(recipe: ImageRecipe, step: Step): Promise<GuestImage> {
  const { ck, key } = await imageKey(recipe);
  const { dir } = await ensureEntry('image', ck, `image ${recipe.name} (${recipe.suite})`, async (tmp) => {
    const stage = path.join(tmp, 'stage');
    const script = path.join(tmp, 'customize.sh');
    const init = path.join(tmp, 'hwlab-init');
    const tarball = path.join(tmp, 'rootfs.tar');
    const nodeVersionFile = path.join(tmp, 'node-version');
    await writeStage(stage, key.publicKey);
    await writeFile(script, IMAGE_CUSTOMIZE_SCRIPT, { mode: 0o755 });
    await writeFile(init, GUEST_INIT, { mode: 0o755 });
    const officialNode = recipe.node ? await ensureOfficialNode(recipe.node, step) : undefined;
    const mode = mmdebstrapMode();
    step.update(`mmdebstrap ${recipe.suite} (${mode} mode)`);
    const args = [
      `--mode=${mode}`, `--variant=${recipe.variant}`, `--include=${recipe.packages.join(',')}`, '--format=tar',
      `--customize-hook=sync-in ${hookWord(stage)} /`,
      // Uploaded, not run from the cache: in unshare mode the hook runs as a subordinate
      // uid, which may not be able to reach the user's home.
      `--customize-hook=upload ${hookWord(script)} /tmp/hwlab-customize.sh`,
      `--customize-hook=upload ${hookWord(init)} /tmp/hwlab-init`,
      ...(officialNode ? [`--customize-hook=upload ${hookWord(officialNode)} /tmp/hwlab-node`] : []),
      '--customize-hook=sh "$1/tmp/hwlab-customize.sh" "$1"',
      `--customize-hook=download /tmp/hwlab-node-version ${hookWord(nodeVersionFile)}`,
      '--customize-hook=rm -f "$1/tmp/hwlab-node-version" "$1/tmp/hwlab-customize.sh"',
      recipe.suite, tarball, recipe.mirror,
    ];
    // mmdebstrap's scratch rootfs stays in $TMPDIR (/tmp), not under the cache: in unshare mode
    // its files belong to subordinate uids, which the user could not remove if a build were killed.
    const child = execa('mmdebstrap', args, { reject: false, timeout: 1_800_000, all: true });
    let tail = '';
    let scratch: string | undefined;
    let stopWatch: (() => void) | undefined;
    child.all?.on('data', (chunk: Buffer) => {
      const text = chunk.toString();
      tail = (tail + text).slice(-8000);
      scratch ??= /^I: using (\S+) as tempdir/m.exec(text)?.[1];
      const last = text.trim().split('\n').pop();
      if (!last) return;
      stopWatch?.();
      stopWatch = undefined;
      // The .debs land in the scratch rootfs's apt archive (the essential set first, then the
      // rest from inside the chroot): the bytes that arrived in this phase, and the rate.
      const phase = /^I: (downloading packages|installing remaining packages)/.exec(last)?.[1];
      if (scratch && phase) {
        const archives = path.join(scratch, 'var/cache/apt/archives');
        const base = bytesUnder(archives);
        stopWatch = watchDownload(step, `mmdebstrap: ${phase}`, undefined, async () => Math.max(0, (await bytesUnder(archives)) - (await base)));
      } else step.update(`mmdebstrap: ${last.replace(/^I: /, '')}`);
    });
    const r = await child.finally(() => stopWatch?.());
    if (r.exitCode !== 0) {
      throw new InfraError(`mmdebstrap ${recipe.suite} (${mode} mode) failed (exit ${r.exitCode}):\n${tail.trim().split('\n').slice(-20).join('\n')}`,
        mode === 'unshare' && /subuid|subgid|newuidmap|newgidmap|unshare/i.test(tail) ? 'as an ordinary user it needs a /etc/subuid and /etc/subgid range and newuidmap (package uidmap): see hwlab doctor' : undefined);
    }
    // Unpacked under fakeroot: the owners in the tarball (root, _apt, sshd's) go into the
    // ext4 from fakeroot's record, the files on disk stay the user's own.
    step.update('unpacking the rootfs');
    const root = path.join(tmp, 'rootfs');
    const fakerootState = path.join(tmp, 'fakeroot.state');
    await mkdir(root);
    const x = await execa('fakeroot', ['-s', fakerootState, '--', 'tar', '-C', root, '-xpf', tarball, '--numeric-owner'], { reject: false, timeout: 600_000 });
    if (x.exitCode !== 0) throw new InfraError(`unpacking the image tarball failed:\n${x.stderr.trim().split('\n').slice(-10).join('\n')}`);
    await rm(tarball);
    // No file of the image may belong to the user who built it (a staged file whose owner leaked
    // in). The top directory is left out: it is ours, and mkfs makes the image's root root's.
    const uid = process.getuid?.() ?? 0;
    if (uid !== 0) {
      const leaked = await execa('fakeroot', ['-i', fakerootState, '--', 'find', root, '-mindepth', '1', '(', '-uid', String(uid), '-o', '-gid', String(process.getgid?.() ?? uid), ')', '-printf', '/%P\\n'], { reject: false, timeout: 300_000 });
      if (leaked.exitCode !== 0 || leaked.stdout.trim()) {
        throw new InfraError(`the image has files owned by the building user (uid ${uid}), not by the guest's users: ${leaked.stdout.trim().split('\n').slice(0, 10).join(' ') || leaked.stderr.trim()}`);
      }
    }
    const nodeVersion = (await readFile(nodeVersionFile, 'utf8')).trim();
    const hostKey = (await readFile(path.join(root, 'etc/ssh/ssh_host_ed25519_key.pub'), 'utf8')).trim();
    await copyFile(path.join(root, 'bin/busybox'), path.join(tmp, 'busybox'));
    await chmod(path.join(tmp, 'busybox'), 0o755);
    step.update('packing ext4');
    await makeExt4(root, path.join(tmp, 'rootfs.ext4'), 'hwlab-root', 512, fakerootState);
    await writeFile(path.join(tmp, 'image.json'), JSON.stringify({ recipe: recipe.name, hostKey, nodeVersion, recipeData: recipeDataOf(recipe), builtBy: mode }, null, 2));
    for (const p of [root, stage, script, init, fakerootState, nodeVersionFile]) await rm(p, { recursive: true, force: true });
  });
  const meta = JSON.parse(await readFile(path.join(dir, 'image.json'), 'utf8'));
  return {
    recipe: recipe.name,
    rootDisk: path.join(dir, 'rootfs.ext4'),
    busybox: path.join(dir, 'busybox'),
    hostKey: meta.hostKey,
    nodeVersion: meta.nodeVersion,
    nodeSource: meta.recipeData?.node ? 'official' : 'debian',
    cacheDir: dir,
    cacheKey: ck,
  };
}
