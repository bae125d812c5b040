// Proof that the driver running in the guest is the one just built: every
// loaded module that the build produced must report the same srcversion
// (CONFIG_MODULE_SRCVERSION_ALL) as the .ko in the build output.
import { execa } from 'execa';
import path from 'node:path';
import { readModuleIndex } from '../image/initramfs.ts';
import type { Kernel } from '../kernel/types.ts';

import { check, sh, type GuestShell } from './commands.ts';
import { InfraError } from '../util/errors.ts';

export async function verifyLoadedModules(guest: GuestShell, kernel: Kernel): Promise<Array<{ module: string; srcversion: string }>> {
  const idx = await readModuleIndex(kernel);
  // Shell builtins only: under TCG a basename and a cat per module cost about 0.2 s each module.
  const out = await sh(guest, 'for m in /sys/module/*; do [ -f "$m/srcversion" ] && read -r v < "$m/srcversion" && echo "${m##*/} $v"; done; true', [], { timeoutMs: 30_000 });
  const loaded = new Map(out.stdout.trim().split('\n').filter(Boolean).map((l) => l.split(' ') as [string, string]));
  const verified: Array<{ module: string; srcversion: string }> = [];
  const modDir = path.join(kernel.modulesRoot, 'lib/modules', kernel.release);
  for (const [name, guestVersion] of loaded) {
    const rel = idx.path.get(name);
    if (!rel) continue; // built in, or not ours
    const host = (await execa('modinfo', ['-F', 'srcversion', path.join(modDir, rel)])).stdout.trim();
    if (host !== guestVersion) {
      throw new InfraError(`module ${name} in the guest has srcversion ${guestVersion}, the build produced ${host}: the guest is not running the driver just built`);
    }
    verified.push({ module: name, srcversion: host });
  }
  return verified;
}
