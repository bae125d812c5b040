// `hwlab stop [<run>]`: power a kept guest off. QEMU is ended by its pid
// (after checking it is still that run's QEMU), whether or not the hwlab
// process that kept it is alive; that process then finishes its run.
import { findKept, listKept, stopKept } from '../machine/kept.ts';
import { flag, type CommandSpec } from './command.ts';

export const stopCommand: CommandSpec = {
  name: 'stop',
  summary: 'power a kept guest off (QEMU ended by pid, even when its hwlab process died)',
  args: '[<run>]',
  positionals: { min: 0, max: 1 },
  options: { all: { type: 'boolean', help: 'every kept guest' } },
  async handler(a) {
    const guests = flag(a, 'all') ? await listKept() : [await findKept(a.positionals[0])];
    for (const g of guests) {
      const r = await stopKept(g);
      process.stdout.write(`${g.name}: ${r.ended ? `QEMU pid ${g.qemuPid} ended` : 'QEMU was not running'}${r.ownerGone ? ` (its hwlab process ${g.ownerPid} was gone)` : ''}\n`);
    }
    return 0;
  },
};
