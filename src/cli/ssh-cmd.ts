// `hwlab ssh [<run>] [-- CMD...]`: a shell (or one command) in a kept guest,
// with hwlab's key and the guest's pinned host key (src/machine/kept.ts).
import { execa } from 'execa';
import { shq } from '../machine/instance.ts';
import { findKept, isQemuOf, sshArgs } from '../machine/kept.ts';
import { InfraError } from '../util/errors.ts';
import type { CommandSpec } from './command.ts';

/**
 * ssh joins its command words with spaces for the guest's shell; each
 * argument is quoted first, so the guest runs exactly this argument vector.
 * Shell syntax is asked for explicitly with sh -c (see --help): one rule,
 * never a guess about which argument was meant for the shell.
 */
export function remoteCommand(argv: readonly string[]): string {
  return argv.map(shq).join(' ');
}

export const sshCommand: CommandSpec = {
  name: 'ssh',
  summary: 'a shell, or one command after --, in a kept guest (hwlab run --keep)',
  args: '[<run>]',
  positionals: { min: 0, max: 1 },
  options: {},
  takesRest: true,
  details: `<run> is the run folder or its name; it may be left out when one guest is kept.
After --, CMD is an argument vector, run as is: each argument reaches the guest's
command unchanged, so shell syntax in it is not interpreted (unlike plain ssh).
  hwlab ssh <run> -- lspci -nn -d 1af4:              one command with its arguments
  hwlab ssh <run> -- cat '/sys/bus/pci/devices/0000:01:00.0/driver_override'
  hwlab ssh <run> -- sh -c 'lspci | wc -l; dmesg | tail'   pipes, ;, $VAR, globs: through sh -c`,
  async handler(a) {
    const g = await findKept(a.positionals[0]);
    if (!(await isQemuOf(g.qemuPid, g.runDir))) throw new InfraError(`the QEMU of ${g.name} (pid ${g.qemuPid}) is not running; hwlab stop ${g.name} forgets it`);
    const tty = a.rest.length === 0 && Boolean(process.stdin.isTTY);
    // A person's session: no timeout of ours, ssh's keepalive ends it if the guest goes.
    const r = await execa('ssh', [...sshArgs(g, { tty }), ...(a.rest.length ? [remoteCommand(a.rest)] : [])], { stdio: 'inherit', reject: false });
    return r.exitCode ?? 255;
  },
};
