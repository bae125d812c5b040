// Proof that the driver running in the guest is the one just built: every
// loaded module that the build produced must report the same srcversion
// (CONFIG_MODULE_SRCVERSION_ALL) as the .ko in the build output.
import { execa } from 'execa';
import path from 'node:path';
import { readModuleIndex } from '../image/initramfs.ts';
import type { Kernel } from '../kernel/types.ts';

import { failedStepError, sh, type GuestShell } from './commands.ts';
import { InfraError } from '../util/errors.ts';

/** modprobe of each argument (the first failure ends it, named last on stderr), then `module srcversion` per loaded module. */
const MODPROBE_THEN_SRCVERSIONS = `for m in "$@"; do modprobe "$m" || { echo "modprobe $m exited $?" >&2; exit 3; }; done
for m in /sys/module/*; do [ -f "$m/srcversion" ] && read -r v < "$m/srcversion" && echo "\${m##*/} $v"; done; true`;

/**
 * Loads `load` with modprobe, then checks every loaded module the build
 * produced against its .ko, in one guest command: under TCG each costs about
 * 0.25 s. A modprobe that fails stops it and is the error.
 */
export async function verifyLoadedModules(guest: GuestShell, kernel: Kernel, load: string[] = []): Promise<Array<{ module: string; srcversion: string }>> {
  const idx = await readModuleIndex(kernel);
  // Shell builtins only: under TCG a basename and a cat per module cost about 0.2 s each module.
  const out = await sh(guest, MODPROBE_THEN_SRCVERSIONS, load, { timeoutMs: 30_000 + 120_000 * load.length });
  if (out.code !== 0) throw failedStepError(out, `the module load and srcversion read exited ${out.code}`);
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
