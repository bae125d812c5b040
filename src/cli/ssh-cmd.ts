// `hwlab ssh [<run>] [-- CMD...]`: a shell (or one command) in a kept guest,
// with hwlab's key and the guest's pinned host key (src/machine/kept.ts).
import { execa } from 'execa';
import { shq } from '../machine/instance.ts';
import { findKept, isQemuOf, sshArgs } from '../machine/kept.ts';
import { InfraError } from '../util/errors.ts';
import type { CommandSpec } from './command.ts';

export const sshCommand: CommandSpec = {
  name: 'ssh',
  summary: 'a shell, or one command after --, in a kept guest (hwlab run --keep)',
  args: '[<run>]',
  positionals: { min: 0, max: 1 },
  options: {},
  takesRest: true,
  details: `<run> is the run folder or its name; it may be left out when one guest is kept.
After --, CMD is an argument vector, kept as is (each argument quoted for the guest's shell);
for pipes and other shell syntax: hwlab ssh <run> -- sh -c 'lspci | wc -l'.`,
  async handler(a) {
    const g = await findKept(a.positionals[0]);
    if (!(await isQemuOf(g.qemuPid, g.runDir))) throw new InfraError(`the QEMU of ${g.name} (pid ${g.qemuPid}) is not running; hwlab stop ${g.name} forgets it`);
    const tty = a.rest.length === 0 && Boolean(process.stdin.isTTY);
    // A person's session: no timeout of ours, ssh's keepalive ends it if the guest goes.
    // The command is an argument vector, each argument quoted for the guest's shell (sh -c '...' for shell syntax).
    const r = await execa('ssh', [...sshArgs(g, { tty }), ...(a.rest.length ? [a.rest.map(shq).join(' ')] : [])], { stdio: 'inherit', reject: false });
    return r.exitCode ?? 255;
  },
};
