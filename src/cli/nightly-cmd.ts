// `hwlab nightly <lab-or-matrix>`: one night (src/nightly/nightly.ts) and its
// digest. A file with a top-level `matrix:` is a matrix: every runnable cell
// (or the --cell ones) is a series of its own; anything else is a lab. Bad
// input (a lab, a matrix, a probe selector, a number) is refused before
// anything is built.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parse } from 'yaml';
import { defaultHistoryPath } from '../history/db.ts';
import { openHistoryBuilt } from '../history/addon.ts';
import { loadLab } from '../lab/load.ts';
import { selectProbes } from '../lab/select.ts';
import { loadMatrix, selectCells } from '../matrix/load.ts';
import { formatDigestMarkdown, formatDigestText, writeDigest } from '../nightly/digest.ts';
import { DEFAULT_BACKOFF_SEC, DEFAULT_INFRA_RETRIES, DEFAULT_RERUNS, runNightly, type NightUnit } from '../nightly/nightly.ts';
import { InputError } from '../util/errors.ts';
import { Progress } from '../util/progress.ts';
import { positiveInt } from './history-cmd.ts';
import { ownParserCommand } from './command.ts';

export const NIGHTLY_USAGE = `  nightly <lab-or-matrix.yaml> [--cell ID]... [--only PROBE]... [--patch FILE]... [--fragment FILE]...
          [--reruns N] [--infra-retries N] [--backoff SEC] [--series NAME] [--history FILE]
          [--runs-dir DIR] [--json | --markdown]
                        one night: newest kernel, run, compare every point with the last night
                        that was not infra, rerun new failures (default ${DEFAULT_RERUNS}) with only their probes,
                        retry infra runs (default ${DEFAULT_INFRA_RETRIES}, after ${DEFAULT_BACKOFF_SEC} s, doubling); prints the digest;
                        exit 0 nothing new, 1 new failures or kernel reports, 3 infra only
`;

async function isMatrixFile(file: string): Promise<boolean> {
  let doc: unknown;
  try {
    doc = parse(await readFile(file, 'utf8'));
  } catch (err) {
    // The lab loader reports it with the place.
    void err;
    return false;
  }
  return typeof doc === 'object' && doc !== null && 'matrix' in doc;
}

export async function nightlyCommand(args: string[], progress: Progress): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      cell: { type: 'string', multiple: true }, only: { type: 'string', multiple: true },
      patch: { type: 'string', multiple: true }, fragment: { type: 'string', multiple: true },
      reruns: { type: 'string' }, 'infra-retries': { type: 'string' }, backoff: { type: 'string' },
      series: { type: 'string' }, history: { type: 'string' }, 'runs-dir': { type: 'string' },
      json: { type: 'boolean' }, markdown: { type: 'boolean' },
    },
  });
  if (positionals.length !== 1) throw new InputError('hwlab nightly takes exactly one lab or matrix file');
  if (values.json && values.markdown) throw new InputError('nightly: --json and --markdown exclude each other');
  const reruns = positiveInt('--reruns', values.reruns, DEFAULT_RERUNS, 0);
  const infraRetries = positiveInt('--infra-retries', values['infra-retries'], DEFAULT_INFRA_RETRIES, 0);
  const backoffSec = positiveInt('--backoff', values.backoff, DEFAULT_BACKOFF_SEC, 0);
  const file = path.resolve(positionals[0]);
  let units: NightUnit[];
  let name: string;
  if (await isMatrixFile(file)) {
    if (values.series) throw new InputError('nightly: --series is for a lab; a matrix names each cell\'s series <matrix>/<cell>');
    const m = await loadMatrix(file);
    const sel = selectCells(m, values.cell ?? []);
    if (sel.unknown.length) throw new InputError(`--cell ${sel.unknown.join(', ')}: no such cell in ${positionals[0]}`);
    if (sel.refused.length) {
      throw new InputError(`${positionals[0]}: ${sel.refused.length} cell(s) cannot run: ${sel.refused.map((r) => `${r.id} (${r.reasons.join('; ')})`).join(', ')}`, 'pick runnable cells with --cell ID');
    }
    units = sel.cells.map((c) => ({ series: `${m.name}/${c.id}`, lab: c.lab }));
    name = m.name;
  } else {
    if (values.cell) throw new InputError('nightly: --cell is for a matrix file');
    const lab = await loadLab(file);
    units = [{ series: values.series ?? lab.name, lab }];
    name = values.series ?? lab.name;
  }
  // Selectors are checked against every unit now, not after a build.
  if (values.only) for (const u of units) selectProbes(u.lab, values.only);
  const historyFile = values.history ?? defaultHistoryPath();
  const db = await openHistoryBuilt(historyFile, progress.info.bind(progress));
  try {
    const digest = await runNightly(db, units, {
      progress, source: positionals[0], name, runsDir: values['runs-dir'],
      extraPatches: values.patch, extraFragments: values.fragment, onlyProbes: values.only,
      reruns, infraRetries, backoffSec,
    });
    const files = await writeDigest(digest);
    process.stdout.write(values.json ? `${JSON.stringify(digest, null, 2)}\n` : values.markdown ? formatDigestMarkdown(digest) : `\n${formatDigestText(digest)}`);
    const human = values.json || values.markdown ? process.stderr : process.stdout;
    human.write(`\ndigest: ${files.text} (also digest.md, digest.json); history: ${historyFile}\n`);
    return digest.exitCode;
  } finally {
    db.close();
  }
}

/** The frame's entry (src/cli/main.ts): this command parses its own arguments. */
export const nightlyCommandSpec = ownParserCommand(
  'nightly',
  'one night: the newest kernel, run, compare with the last night, rerun new failures, digest',
  '<lab-or-matrix.yaml>',
  NIGHTLY_USAGE,
  (argv) => nightlyCommand(argv, new Progress()),
);
