// The initramfs for a (kernel, image) pair: busybox from the image, the
// modules needed to reach the root disk (with their dependencies, resolved
// from modules.dep and decompressed because busybox insmod cannot read .ko.xz).
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, writeFile, symlink } from 'node:fs/promises';
import path from 'node:path';
import type { Kernel } from '../kernel/types.ts';
import { cacheKey, ensureEntry } from '../util/cache.ts';

import type { GuestImage } from './build.ts';
import { INITRAMFS_INIT } from './guest-files.ts';
import { InfraError } from '../util/errors.ts';

/** What the initramfs must load to mount an ext4 root on virtio-blk. */
export const BOOT_MODULES = ['virtio_blk', 'ext4'];

const norm = (name: string) => name.replace(/-/g, '_');
const modName = (rel: string) => norm(path.basename(rel).replace(/\.ko(\.(xz|zst|gz))?$/, ''));

export interface ModuleIndex {
  /** module name -> path relative to lib/modules/<release> */
  path: Map<string, string>;
  /** module name -> names it depends on */
  deps: Map<string, string[]>;
  /** module name -> softdep pre: names */
  pre: Map<string, string[]>;
  builtin: Set<string>;
}

export function parseModuleIndex(depText: string, softdepText = '', builtinText = ''): ModuleIndex {
  const idx: ModuleIndex = { path: new Map(), deps: new Map(), pre: new Map(), builtin: new Set() };
  for (const line of depText.split('\n')) {
    const m = line.match(/^([^:]+):\s*(.*)$/);
    if (!m) continue;
    const name = modName(m[1]);
    idx.path.set(name, m[1]);
    idx.deps.set(name, m[2].split(/\s+/).filter(Boolean).map(modName));
  }
  for (const line of softdepText.split('\n')) {
    const m = line.match(/^softdep\s+(\S+)\s+(.*)$/);
    if (!m) continue;
    const pre = m[2].match(/pre:\s*([^:]*?)(?:\s+post:|$)/)?.[1] ?? '';
    idx.pre.set(norm(m[1]), pre.split(/\s+/).filter(Boolean).map(norm));
  }
  for (const line of builtinText.split('\n')) if (line.trim()) idx.builtin.add(modName(line.trim()));
  return idx;
}

/** Load order for `wanted`: every module after its dependencies; built-ins are skipped, unknown names are errors. */
export function moduleLoadOrder(idx: ModuleIndex, wanted: string[]): string[] {
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (name: string, soft: boolean) => {
    const n = norm(name);
    if (seen.has(n) || idx.builtin.has(n)) return;
    if (!idx.path.has(n)) {
      if (soft) return; // a soft dependency may be built in or absent
      throw new InfraError(`module ${name} is neither built in nor in modules.dep`);
    }
    seen.add(n);
    for (const p of idx.pre.get(n) ?? []) visit(p, true);
    for (const d of idx.deps.get(n) ?? []) visit(d, false);
    order.push(n);
  };
  for (const w of wanted) visit(w, false);
  return order;
}

export async function readModuleIndex(kernel: Kernel): Promise<ModuleIndex> {
  const dir = path.join(kernel.modulesRoot, 'lib/modules', kernel.release);
  const read = async (f: string) => (existsSync(path.join(dir, f)) ? readFile(path.join(dir, f), 'utf8') : '');
  return parseModuleIndex(await read('modules.dep'), await read('modules.softdep'), await read('modules.builtin'));
}

export async function buildInitramfs(kernel: Kernel, image: GuestImage): Promise<string> {
  const key = cacheKey({ v: 1, kernel: kernel.cacheKey, image: image.cacheKey, init: INITRAMFS_INIT, mods: BOOT_MODULES });
  const { dir } = await ensureEntry('initramfs', key, `initramfs ${kernel.release} + ${image.recipe}`, async (tmp) => {
    const idx = await readModuleIndex(kernel);
    const order = moduleLoadOrder(idx, BOOT_MODULES);
    const root = path.join(tmp, 'root');
    await mkdir(path.join(root, 'bin'), { recursive: true });
    await mkdir(path.join(root, 'mods'));
    await copyFile(image.busybox, path.join(root, 'bin/busybox'));
    await chmod(path.join(root, 'bin/busybox'), 0o755);
    await symlink('busybox', path.join(root, 'bin/sh'));
    const modDir = path.join(kernel.modulesRoot, 'lib/modules', kernel.release);
    for (const name of order) {
      const src = path.join(modDir, idx.path.get(name)!);
      const dest = path.join(root, 'mods', `${name}.ko`);
      if (src.endsWith('.xz')) await execa('sh', ['-c', 'xz -dc "$1" > "$2"', 'sh', src, dest]);
      else if (src.endsWith('.zst')) await execa('zstd', ['-q', '-d', '-f', src, '-o', dest]);
      else if (src.endsWith('.gz')) await execa('sh', ['-c', 'gzip -dc "$1" > "$2"', 'sh', src, dest]);
      else await copyFile(src, dest);
    }
    await writeFile(path.join(root, 'modules.list'), order.map((n) => `${n}.ko`).join('\n') + '\n');
    await writeFile(path.join(root, 'init'), INITRAMFS_INIT, { mode: 0o755 });
    const files = (await execa('find', ['.', '-mindepth', '1'], { cwd: root })).stdout;
    await execa('cpio', ['--quiet', '-o', '-H', 'newc', '-O', path.join(tmp, 'initramfs.cpio')], { cwd: root, input: files + '\n' });
    await execa('rm', ['-rf', root]);
    await writeFile(path.join(tmp, 'modules.json'), JSON.stringify(order));
  });
  return path.join(dir, 'initramfs.cpio');
}
