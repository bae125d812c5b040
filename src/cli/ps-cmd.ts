// `hwlab ps`: the kept guests (src/machine/kept.ts), whether their QEMU and
// the hwlab process that owns them are alive, and how to reach them.
import { isQemuOf, listKept, processAlive } from '../machine/kept.ts';
import { flag, type CommandSpec } from './command.ts';

export const psCommand: CommandSpec = {
  name: 'ps',
  summary: 'list kept guests: QEMU and owner alive or not, ssh and gdb ports',
  args: '',
  positionals: { min: 0, max: 0 },
  options: { json: { type: 'boolean', help: 'stdout: the guests as JSON only' } },
  async handler(a) {
    const rows = await Promise.all((await listKept()).map(async (g) => ({
      ...g, qemuAlive: await isQemuOf(g.qemuPid, g.runDir), ownerAlive: processAlive(g.ownerPid),
    })));
    if (flag(a, 'json')) {
      process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
      return 0;
    }
    if (!rows.length) {
      process.stdout.write('no kept guests\n');
      return 0;
    }
    for (const g of rows) {
      // QEMU runs behind setpriv --pdeathsig (src/util/host-tools.ts): it dies with its hwlab process, so a dead owner means a gone guest.
      const state = !g.qemuAlive
        ? (g.ownerAlive ? 'QEMU gone' : `QEMU gone with its hwlab process (pid ${g.ownerPid}, OWNER DEAD): hwlab stop ${g.name} clears the entry`)
        : g.ownerAlive ? 'up' : `up, OWNER DEAD (hwlab pid ${g.ownerPid}): hwlab stop ${g.name} ends it`;
      process.stdout.write(`${g.name}  lab ${g.lab}  qemu ${g.qemuPid}  ssh 127.0.0.1:${g.sshPort}${g.gdbPort ? `  gdb 127.0.0.1:${g.gdbPort}` : ''}  since ${g.startedAt.slice(11, 19)}  until ${g.until.slice(11, 16)}  ${state}\n`);
    }
    return 0;
  },
};
