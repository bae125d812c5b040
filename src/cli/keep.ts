// What a person sees and does with a guest that stays up: `run --keep`
// prints how to reach it and waits until `hwlab stop`, Ctrl-C or the keep
// time ends it; `hwlab shell` opens an interactive SSH session in it. Both
// record the guest in the kept-guest registry (src/machine/kept.ts) so that
// `hwlab ssh/stop/ps` work from other terminals, and print the gdb line when
// QEMU's gdbstub is on.
import { execa } from 'execa';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { knownHostsLine, registerKept, removeKept, sshArgs, type KeptGuest } from '../machine/kept.ts';
import { shq } from '../machine/instance.ts';
import type { HeldGuest } from '../run/run-lab.ts';
import { hwlabKeyFile } from '../session/keys.ts';
import { onCleanup } from '../util/cleanup.ts';

/** How long a kept guest stays up by default (a bound on every wait, and on a forgotten guest). */
export const DEFAULT_KEEP_MINUTES = 120;

/** Records the guest and writes its known_hosts; the returned function forgets it. */
async function register(held: HeldGuest, minutes: number): Promise<{ guest: KeptGuest; forget: () => Promise<void> }> {
  const access = held.machine.access;
  if (!access) throw new Error('this machine backend has no emulator process to keep');
  const runDir = held.outcome.runDir;
  const knownHosts = path.join(runDir, 'known_hosts');
  await writeFile(knownHosts, knownHostsLine(access.sshPort, held.hostKey));
  const guest: KeptGuest = {
    name: path.basename(runDir), runDir, lab: held.lab.name, qemuPid: access.pid, ownerPid: process.pid,
    sshPort: access.sshPort, ...(access.gdbPort !== undefined ? { gdbPort: access.gdbPort } : {}),
    keyFile: hwlabKeyFile(), knownHosts, scratch: access.scratch,
    startedAt: new Date().toISOString(), until: new Date(Date.now() + minutes * 60_000).toISOString(),
  };
  await registerKept(guest);
  const off = onCleanup(() => removeKept(guest.name));
  return { guest, forget: async () => { off(); await removeKept(guest.name); } };
}

/** The ssh command a person can paste: hwlab's key, the forwarded port, the image's host key pinned. */
export function sshCommandLine(g: Pick<KeptGuest, 'sshPort' | 'keyFile' | 'knownHosts'>): string {
  const args = sshArgs(g, { tty: false }).filter((a, i, all) => a !== '-T' && !/^(ServerAlive|LogLevel)/.test(a) && !/^(ServerAlive|LogLevel)/.test(all[i + 1] ?? ''));
  return ['ssh', ...args].map(shq).join(' ');
}

/** gdb attached to the gdbstub, with the build's vmlinux (debug info) and the kernel's scripts/gdb helpers. */
export function gdbLines(held: Pick<HeldGuest, 'kernel'>, gdbPort: number): string[] {
  if (held.kernel.kind !== 'source') return [`gdb: 127.0.0.1:${gdbPort} (no vmlinux with debug info for a ${held.kernel.kind} kernel)`];
  const obj = held.kernel.objDir;
  const cmd = ['gdb', '-q', path.join(obj, 'vmlinux'), '-iex', `add-auto-load-safe-path ${obj}`, '-ex', `target remote 127.0.0.1:${gdbPort}`].map(shq).join(' ');
  return [
    `  ${cmd}`,
    `      then: lx-dmesg, lx-lsmod, lx-symbols ${path.join(obj, 'drivers/vfio')} (the vfio modules' symbols); continue to let the guest run`,
  ];
}

function accessLines(held: HeldGuest, g: KeptGuest): string[] {
  const lines = [
    `  ${sshCommandLine(g)}`,
    `  hwlab ssh ${g.name}               a shell in the guest (hwlab ssh ${g.name} -- CMD runs one command)`,
    `  hwlab stop ${g.name}              power it off (so does Ctrl-C here)`,
    `  in the guest, the probes by hand: ${held.runner.map(shq).join(' ')}`,
  ];
  if (g.gdbPort !== undefined) lines.push(...gdbLines(held, g.gdbPort));
  return lines;
}

/** `run --keep`: prints how to reach the guest, waits until it is stopped or the keep time is over. */
export async function keepGuest(held: HeldGuest, opts: { minutes: number; out: NodeJS.WritableStream }): Promise<void> {
  const { guest, forget } = await register(held, opts.minutes);
  try {
    opts.out.write(`\nguest kept up: ${guest.name} (QEMU pid ${guest.qemuPid}, ssh port ${guest.sshPort}; powers off at ${guest.until.slice(11, 16)} UTC at the latest)\n`);
    opts.out.write(`${accessLines(held, guest).join('\n')}\n`);
    const stopped = await held.machine.whenExited(opts.minutes * 60_000);
    opts.out.write(stopped ? `guest ${guest.name} stopped\n` : `guest ${guest.name}: ${opts.minutes} min are over, powering off\n`);
  } finally {
    await forget();
  }
}

/** `hwlab shell`: an interactive SSH session with a real PTY; returns ssh's exit code when the shell ends. */
export async function shellInGuest(held: HeldGuest, opts: { minutes: number; out: NodeJS.WritableStream }): Promise<number> {
  const { guest, forget } = await register(held, opts.minutes);
  try {
    opts.out.write(`\nshell in the guest of ${guest.name} (kernel ${held.kernel.release}); exit the shell to power the guest off\n`);
    opts.out.write(`${accessLines(held, guest).filter((l) => !l.includes('hwlab stop')).join('\n')}\n\n`);
    // The terminal goes to ssh (raw mode: Ctrl-C and the window size reach the guest); bounded by the keep time.
    const r = await execa('ssh', sshArgs(guest, { tty: true }), { stdio: 'inherit', reject: false, timeout: opts.minutes * 60_000 });
    return r.exitCode ?? 255;
  } finally {
    await forget();
  }
}
