// `hwlab bisect <lab> --good REF --bad REF [--tree PATH]` (src/bisect) and
// its step, `hwlab bisect --step STATE`, which `git bisect run` calls once
// per commit (exit 0 good, 1 bad, 125 skip).
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { bisectStep, formatBisect, removeClone, runBisect, STEP_ABORT, type BisectState } from '../bisect/bisect.ts';
import { defaultHistoryPath } from '../history/db.ts';
import { openHistoryBuilt } from '../history/addon.ts';
import { loadLab } from '../lab/load.ts';
import { selectProbes } from '../lab/select.ts';
import { InputError } from '../util/errors.ts';
import { Progress } from '../util/progress.ts';
import { ownParserCommand } from './command.ts';

export const BISECT_USAGE = `  bisect <lab.yaml> --good REF --bad REF [--tree PATH] [--only PROBE]... [--patch FILE]...
         [--history FILE] [--runs-dir DIR] [--keep-clone] [--json]
                        the first commit between REF..REF of a kernel git tree (default: the lab's
                        kernel.path) that fails the lab, through git bisect run in a private clone,
                        each step only the probes that failed on the bad ref, incremental builds
`;

export async function bisectCommand(args: string[], progress: Progress): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      good: { type: 'string' }, bad: { type: 'string' }, tree: { type: 'string' }, only: { type: 'string', multiple: true },
      patch: { type: 'string', multiple: true }, fragment: { type: 'string', multiple: true },
      history: { type: 'string' }, 'runs-dir': { type: 'string' }, step: { type: 'string' }, 'keep-clone': { type: 'boolean' }, json: { type: 'boolean' },
    },
  });
  if (values.step !== undefined) {
    // hwlab's own exit codes 2 and 3 would read as "bad" to git bisect run; 128 and up abort the bisection instead.
    try {
      const state = JSON.parse(await readFile(values.step, 'utf8')) as BisectState;
      const db = await openHistoryBuilt(state.historyFile, progress.info.bind(progress));
      try {
        return await bisectStep(db, await loadLab(state.labFile), state, progress);
      } finally {
        db.close();
      }
    } catch (err) {
      progress.info(`hwlab bisect --step ${values.step}: ${(err as Error).message}; aborting the bisection`);
      return STEP_ABORT;
    }
  }
  if (positionals.length !== 1) throw new InputError('hwlab bisect takes exactly one lab file');
  if (!values.good || !values.bad) throw new InputError('hwlab bisect needs --good REF and --bad REF');
  const lab = await loadLab(path.resolve(positionals[0]));
  if (values.only) selectProbes(lab, values.only);
  const source = lab.kernel.kind === 'source' ? lab.kernel.source : undefined;
  const tree = values.tree ?? (source?.kind === 'git' ? source.path : undefined);
  if (!tree) throw new InputError(`${positionals[0]}: the lab's kernel is not a git tree; name one with --tree PATH`);
  const historyFile = path.resolve(values.history ?? defaultHistoryPath());
  const db = await openHistoryBuilt(historyFile, progress.info.bind(progress));
  try {
    const r = await runBisect(db, lab, {
      progress, tree, goodRef: values.good, badRef: values.bad, historyFile, runsDir: values['runs-dir'],
      onlyProbes: values.only, extraPatches: values.patch, extraFragments: values.fragment,
    });
    if (!values['keep-clone']) await removeClone(r);
    process.stdout.write(values.json ? `${JSON.stringify(r, null, 2)}\n` : `\n${formatBisect(r)}\n\nsummary: ${path.join(r.folder, 'bisect.json')}\n`);
    return r.firstBad ? 0 : 1;
  } finally {
    db.close();
  }
}

/** The frame's entry (src/cli/main.ts): this command parses its own arguments. */
export const bisectCommandSpec = ownParserCommand(
  'bisect',
  'the first commit of a kernel git tree between two refs that fails the lab (git bisect run)',
  '<lab.yaml>',
  BISECT_USAGE,
  (argv) => bisectCommand(argv, new Progress()),
);
