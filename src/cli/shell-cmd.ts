// `hwlab shell <lab.yaml>`: prepare, boot and set the guest up exactly as
// `hwlab run` does (driver loaded and proven, devices bound to vfio-pci, the
// probe bundle uploaded), then an interactive SSH shell with a real PTY.
// Exiting the shell powers the guest off.
import type { CommandSpec } from './command.ts';
import { BUILD_OPTIONS, runFromArgs } from './run-cmd.ts';

export const shellCommand: CommandSpec = {
  name: 'shell',
  summary: 'boot the lab and set it up as run does, then an interactive shell in the guest; exit powers it off',
  args: '<lab.yaml>',
  positionals: { min: 1, max: 1 },
  options: {
    ...BUILD_OPTIONS,
    gdb: { type: 'boolean', help: "QEMU's gdbstub and a printed gdb line (builds with labs/configs/gdb.config)" },
    'keep-minutes': { type: 'string', value: 'N', help: 'power the guest off after N minutes at the latest (default 120)' },
    'runs-dir': { type: 'string', value: 'DIR', help: 'parent of the run folder (default runs/)' },
  },
  details: 'The probes are in the guest, not run: the line printed before the prompt runs them by hand.',
  handler: (a) => runFromArgs(a.positionals[0], a, { mode: 'shell' }),
};
