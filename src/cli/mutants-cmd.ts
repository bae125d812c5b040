// `hwlab mutants <lab.yaml>`: the lab once per known-bad patch of the
// catalogue (src/run/mutants.ts); exit 0 only when the baseline passed and
// every patch was caught. With --json, stdout is the summary alone.
import path from 'node:path';
import { loadLab } from '../lab/load.ts';
import { formatMutantsTable, runMutants } from '../run/mutants.ts';
import { Progress } from '../util/progress.ts';
import { flag, str, strs, type CommandSpec } from './command.ts';

export const mutantsCommand: CommandSpec = {
  name: 'mutants',
  summary: 'run the lab once per known-bad patch (labs/mutants); every one must be caught',
  args: '<lab.yaml>',
  positionals: { min: 1, max: 1 },
  options: {
    dir: { type: 'string', value: 'DIR', help: 'the catalogue (default labs/mutants)' },
    only: { type: 'string', multiple: true, value: 'NN', help: 'only this patch (number or name), repeatable' },
    'runs-dir': { type: 'string', value: 'DIR', help: 'parent of the mutants folder (default runs/)' },
    'no-baseline': { type: 'boolean', help: 'skip the baseline run (every failure counts)' },
    focus: { type: 'boolean', help: "run each patch against only the probes its Expected-catch names" },
    json: { type: 'boolean', help: 'stdout: the summary as JSON only; everything else goes to stderr' },
  },
  async handler(a) {
    const lab = await loadLab(path.resolve(a.positionals[0]));
    const summary = await runMutants(lab, {
      progress: new Progress(), dir: str(a, 'dir'), only: strs(a, 'only'), runsDir: str(a, 'runs-dir'), noBaseline: flag(a, 'no-baseline'), focus: flag(a, 'focus'),
    });
    const human = flag(a, 'json') ? process.stderr : process.stdout;
    if (flag(a, 'json')) process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    human.write(`\n${formatMutantsTable(summary)}\n\nsummary: ${path.join(summary.dir, 'summary.json')}\n`);
    return summary.ok ? 0 : 1;
  },
};
