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

/**
 * The error of a guest command that runs several steps and, when one fails,
 * names it on the last line of its stderr (after the step's own output).
 */
export function failedStepError(r: ExecResult, fallback: string): InfraError {
  const lines = r.stderr.trim().split('\n');
  const what = lines.pop() || fallback;
  return new InfraError(`guest: ${what}: ${lines.join('\n').slice(0, 2000)}`, undefined, 'guest-command');
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

/**
 * Binds each device given to vfio-pci and prints `bdf|previous driver` for
 * each; stops at the first that fails, saying which. Shell builtins only
 * (`cd -P` resolves the driver link): see DEVICE_INFO in pci.ts for why.
 */
const BIND_VFIO = `set -e
driver_of() { r=; if [ -e "$1/driver" ]; then r=$(cd -P "$1/driver" && pwd); r=\${r##*/}; fi; }
for b in "$@"; do
  d=/sys/bus/pci/devices/$b
  [ -e "$d" ] || { echo "no PCI device $b" >&2; exit 3; }
  driver_of "$d"; old=$r
  if [ "$old" != vfio-pci ]; then
    echo vfio-pci > "$d/driver_override"
    [ -z "$old" ] || echo "$b" > "$d/driver/unbind"
    echo "$b" > /sys/bus/pci/drivers_probe
    driver_of "$d"
    [ "$r" = vfio-pci ] || { echo "$b did not bind to vfio-pci (driver now: \${r:-none})" >&2; exit 4; }
  fi
  echo "$b|$old"
done`;

/**
 * Binds PCI devices to vfio-pci through driver_override (so no other device
 * with the same id moves), in one guest command, and returns the driver each
 * had, if any, by BDF.
 */
export async function bindVfio(guest: GuestShell, bdfs: string[]): Promise<Map<string, string | null>> {
  const r = await sh(guest, BIND_VFIO, bdfs, { timeoutMs: 60_000 + 10_000 * bdfs.length });
  if (r.code !== 0) throw new InfraError(`binding ${bdfs.join(' ')} to vfio-pci failed: ${r.stderr.trim()}`, undefined, 'vfio-bind');
  const out = new Map<string, string | null>();
  for (const line of r.stdout.split('\n').filter(Boolean)) {
    const [bdf, old] = line.split('|');
    out.set(bdf, old || null);
  }
  const missing = bdfs.filter((b) => !out.has(b));
  if (missing.length) throw new InfraError(`binding to vfio-pci: the guest reported nothing for ${missing.join(' ')}`, undefined, 'vfio-bind');
  return out;
}

/** Undoes BIND_VFIO for each device given; prints each BDF before its unbind, so a hang names its device. */
const UNBIND_VFIO = `set -e
for b in "$@"; do
  echo "$b"
  d=/sys/bus/pci/devices/$b
  [ -e "$d/driver" ] && echo "$b" > "$d/driver/unbind"
  echo > "$d/driver_override"
  echo "$b" > /sys/bus/pci/drivers_probe || true
done`;

/** How long the unbinds may take; past it one is blocked in the kernel (vfio waiting for a device's users). */
export const UNBIND_TIMEOUT_SEC = 60;

/**
 * Undoes bindVfio for each device, in one guest command (each costs about
 * 0.25 s under TCG): clears driver_override and lets the kernel pick the
 * driver again. When the unbinds do not return in UNBIND_TIMEOUT_SEC,
 * `blocked` is the device whose unbind hangs and `notTried` those after it.
 */
export async function unbindVfio(guest: GuestShell, bdfs: string[]): Promise<{ blocked?: string; notTried: string[] }> {
  if (!bdfs.length) return { notTried: [] };
  let printed = '';
  const onStdout = (s: string) => { printed += s; };
  try {
    const r = await sh(guest, UNBIND_VFIO, bdfs, { timeoutMs: UNBIND_TIMEOUT_SEC * 1000, onStdout });
    if (r.code !== 0) throw new InfraError(`unbinding ${bdfs.join(' ')} from vfio-pci failed: ${r.stderr.trim()}`, undefined, 'vfio-unbind');
    return { notTried: [] };
  } catch (err) {
    if (!(err instanceof InfraError) || err.code !== 'timeout') throw err;
    const blocked = printed.split('\n').filter(Boolean).at(-1) ?? bdfs[0];
    return { blocked, notTried: bdfs.slice(bdfs.indexOf(blocked) + 1) };
  }
}
