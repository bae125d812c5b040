// What hwlab does in a booted guest before and after the probes, over any
// machine instance's exec: run fixed scripts with values as positional
// parameters, load modules, and move PCI devices between drivers. The guest
// is the lab's, so a failing command is the run's infrastructure failing,
// never a probe result.
import type { ExecOptions, ExecResult, MachineInstance } from '../machine/instance.ts';
import { InfraError } from '../util/errors.ts';

/** The part of a machine a guest session needs. */
export type GuestShell = Pick<MachineInstance, 'exec' | 'upload'>;

/** Runs a fixed hwlab script with `sh -c`; values go in as positional parameters ($1...), never spliced in. */
export function sh(guest: GuestShell, script: string, args: string[], opts: ExecOptions): Promise<ExecResult> {
  return guest.exec(['sh', '-c', script, 'sh', ...args], opts);
}

/** Runs argv and throws with its stderr when it exits non-zero. */
export async function check(guest: GuestShell, argv: string[], timeoutMs = 60_000): Promise<string> {
  const r = await guest.exec(argv, { timeoutMs });
  if (r.code !== 0) {
    throw new InfraError(`guest: ${argv.join(' ')} exited ${r.code}: ${(r.stderr || r.stdout).trim().slice(0, 2000)}`, undefined, 'guest-command');
  }
  return r.stdout;
}

export async function modprobe(guest: GuestShell, module: string): Promise<void> {
  await check(guest, ['modprobe', module], 120_000);
}

const BIND_VFIO = `set -e
d=/sys/bus/pci/devices/$1
[ -e "$d" ] || { echo "no PCI device $1" >&2; exit 3; }
old=""
if [ -e "$d/driver" ]; then old=$(basename "$(readlink "$d/driver")"); fi
if [ "$old" = vfio-pci ]; then echo vfio-pci; exit 0; fi
echo vfio-pci > "$d/driver_override"
[ -n "$old" ] && echo "$1" > "$d/driver/unbind"
echo "$1" > /sys/bus/pci/drivers_probe
[ "$(basename "$(readlink "$d/driver")")" = vfio-pci ] || { echo "$1 did not bind to vfio-pci" >&2; exit 4; }
echo "$old"`;

/**
 * Binds a PCI device to vfio-pci through driver_override (so no other
 * device with the same id moves) and returns the driver it had, if any.
 */
export async function bindVfio(guest: GuestShell, bdf: string): Promise<string | null> {
  const r = await sh(guest, BIND_VFIO, [bdf], { timeoutMs: 60_000 });
  if (r.code !== 0) throw new InfraError(`binding ${bdf} to vfio-pci failed: ${r.stderr.trim()}`, undefined, 'vfio-bind');
  return r.stdout.trim() || null;
}

const UNBIND_VFIO = `set -e
d=/sys/bus/pci/devices/$1
[ -e "$d/driver" ] && echo "$1" > "$d/driver/unbind"
echo > "$d/driver_override"
echo "$1" > /sys/bus/pci/drivers_probe || true`;

/** How long an unbind may take; past it the unbind is blocked in the kernel (vfio waiting for a device's users). */
export const UNBIND_TIMEOUT_SEC = 60;

/** Undoes bindVfio: clears driver_override and lets the kernel pick the driver again. */
export async function unbindVfio(guest: GuestShell, bdf: string): Promise<void> {
  const r = await sh(guest, UNBIND_VFIO, [bdf], { timeoutMs: UNBIND_TIMEOUT_SEC * 1000 });
  if (r.code !== 0) throw new InfraError(`unbinding ${bdf} from vfio-pci failed: ${r.stderr.trim()}`, undefined, 'vfio-unbind');
}
