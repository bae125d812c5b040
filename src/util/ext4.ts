// Filesystem images without mounting anything (mkfs.ext4 -d), so image
// builds need no loop devices.
import { execa } from 'execa';
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { InfraError } from './errors.ts';


/**
 * An ext4 image holding `srcDir` (mkfs.ext4 -d: no mounting, no loop devices).
 * With `fakerootState` (a `fakeroot -s` record of unpacking srcDir), mkfs runs
 * under that fakeroot, so the image gets the recorded owners and device nodes
 * rather than the unprivileged user's.
 */
export async function makeExt4(srcDir: string, image: string, label: string, spareMiB = 64, fakerootState?: string): Promise<void> {
  const bytes = await dirBytes(srcDir);
  const mib = Math.ceil((bytes * 1.25) / 2 ** 20) + spareMiB;
  const mkfs = ['mkfs.ext4', '-q', '-F', '-L', label, '-O', '^has_journal', '-E', 'root_owner=0:0', '-d', srcDir, image, `${mib}M`];
  const [cmd, args] = fakerootState ? ['fakeroot', ['-i', fakerootState, '--', ...mkfs]] : [mkfs[0], mkfs.slice(1)];
  const r = await execa(cmd, args, {
    reject: false,
    timeout: 600_000,
  });
  if (r.exitCode !== 0) throw new InfraError(`mkfs.ext4 for ${label} failed:\n${r.stderr.trim()}`);
}

export async function dirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await dirBytes(p);
    else if (e.isFile()) total += (await stat(p)).size;
  }
  return total;
}
