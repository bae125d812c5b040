// `hwlab rerun <run-dir>`: run a run folder's lab again (lab/lab.yaml, which
// holds the lab as that run resolved it, its --patch and --fragment, and
// copies of its files: src/run/reproduce.ts). The new run folder goes beside
// the old one unless --runs-dir says otherwise.
import { existsSync } from 'node:fs';
import path from 'node:path';
import { RUN_LAB_FILE } from '../run/reproduce.ts';
import { InputError } from '../util/errors.ts';
import type { CommandSpec } from './command.ts';
import { KEEP_OPTIONS, PROBE_OPTIONS, RUN_OPTIONS, runFromArgs } from './run-cmd.ts';

export const rerunCommand: CommandSpec = {
  name: 'rerun',
  summary: "run a run folder's lab again: same lab, patches, fragments and probes",
  args: '<run-dir>',
  positionals: { min: 1, max: 1 },
  options: { ...PROBE_OPTIONS, ...KEEP_OPTIONS, ...RUN_OPTIONS },
  details: 'The new run folder goes beside <run-dir> unless --runs-dir says otherwise.',
  async handler(a) {
    const runDir = path.resolve(a.positionals[0]);
    const lab = path.join(runDir, RUN_LAB_FILE);
    if (!existsSync(lab)) {
      throw new InputError(`${a.positionals[0]}: no ${RUN_LAB_FILE} in it (a run folder written by hwlab run: runs/<lab>-<stamp>)`);
    }
    return runFromArgs(lab, a, { runsDir: path.dirname(runDir) });
  },
};
