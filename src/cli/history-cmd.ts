// `hwlab history`: the results history on the command line. Lists runs,
// shows one probe's points (or one point) over time with each night's class,
// lists kernel report titles and nights, and imports run folders made
// elsewhere (CI artifacts, matrix folders: any folder holding run folders).
import { parseArgs } from 'node:util';
import { defaultHistoryPath } from '../history/db.ts';
import { openHistoryBuilt } from '../history/addon.ts';
import { recordRun } from '../history/record.ts';
import { listNights, listRuns, pointHistory, reportTitles } from '../history/query.ts';
import { findRunFolders, readRunFolder } from '../reports/folders.ts';
import { InputError } from '../util/errors.ts';
import { ownParserCommand } from './command.ts';

export const HISTORY_USAGE = `  history [--lab NAME] [--limit N] [--json] [--history FILE]
                        the recorded runs, newest first (default file ${defaultHistoryPath()})
  history --probe NAME [--point TEXT] [--json]
                        that probe's points (or the points whose name contains TEXT) over time
  history reports | nights [--json]
                        kernel report titles (first/last seen, count, kernels) | nightly nights
  history import <run-dir>...
                        record run folders made elsewhere (CI artifacts, matrix folders)
`;

export function positiveInt(flag: string, v: string | undefined, dflt: number, min = 1): number {
  if (v === undefined) return dflt;
  if (!/^\d+$/.test(v) || Number(v) < min) throw new InputError(`${flag}: must be a whole number >= ${min} (got "${v}")`);
  return Number(v);
}

const pad = (s: string, w: number) => (s.length >= w ? s : s + ' '.repeat(w - s.length));

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => pad(c, widths[i])).join('  ').trimEnd()).join('\n');
}

export async function historyCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args, allowPositionals: true,
    options: {
      history: { type: 'string' }, lab: { type: 'string' }, limit: { type: 'string' }, json: { type: 'boolean' },
      probe: { type: 'string' }, point: { type: 'string' },
    },
  });
  const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : `${s}\n`);
  const [sub, ...dirs] = positionals;
  if (values.point !== undefined && values.probe === undefined) throw new InputError('history: --point needs --probe NAME');
  if (sub !== undefined && !['import', 'reports', 'nights'].includes(sub)) throw new InputError(`history: unknown subcommand "${sub}" (import, reports, nights; or none to list runs)`);
  if (sub === 'import' && !dirs.length) throw new InputError('history import: name at least one folder holding run folders');
  const limit = positiveInt('--limit', values.limit, 50);
  const db = await openHistoryBuilt(values.history ?? defaultHistoryPath());
  try {
    if (sub === 'import') {
      const folders = await findRunFolders(dirs);
      if (!folders.length) throw new InputError(`history import: no run folder (with results.json) under ${dirs.join(', ')}`);
      let added = 0;
      for (const f of folders) {
        const cell = await readRunFolder(f);
        const r = recordRun(db, cell!, { purpose: 'import' });
        if (r.added) added++;
        out(`${r.added ? 'recorded' : 'already there'}  #${r.id}  ${cell!.id}  ${cell!.results.outcome.class}  ${f}`);
      }
      out(`${added} run(s) recorded, ${folders.length - added} already in ${db.name}`);
      return 0;
    }
    if (sub === 'reports') {
      const titles = reportTitles(db);
      if (values.json) out(JSON.stringify(titles, null, 2));
      else if (!titles.length) out('no kernel report recorded');
      else out(table([['TITLE', 'KIND', 'FIRST SEEN', 'LAST SEEN', 'COUNT', 'RUNS', 'KERNELS'], ...titles.map((t) => [t.title, t.kind, t.firstSeen.slice(0, 16), t.lastSeen.slice(0, 16), String(t.count), String(t.runs), t.kernels.join(', ')])]));
      return 0;
    }
    if (sub === 'nights') {
      const nights = listNights(db, values.lab, limit);
      if (values.json) out(JSON.stringify(nights, null, 2));
      else if (!nights.length) out('no night recorded');
      else out(table([['NIGHT', 'SERIES', 'STARTED', 'CLASS', 'VERDICT', 'KERNEL', 'FOLDER'], ...nights.map((n) => [String(n.id), n.series, n.startedAt.slice(0, 16), n.outcomeClass ?? '(unfinished)', n.verdict ?? '-', n.kernelIdentity ?? '-', n.folder])]));
      return 0;
    }
    if (values.probe !== undefined) {
      const h = pointHistory(db, values.probe, values.point);
      if (values.json) out(JSON.stringify(h, null, 2));
      else if (!h.length) out(`no point of probe "${values.probe}"${values.point ? ` matching "${values.point}"` : ''} in ${db.name}`);
      else out(table([['RUN', 'STARTED', 'CELL', 'PURPOSE', 'KERNEL', 'PROBE', 'POINT', 'STATUS', 'NIGHT'], ...h.map((e) => [`#${e.runId}`, e.startedAt.slice(0, 16), e.cell, e.purpose, e.kernelRelease ?? '-', e.probeKey, e.point, e.status, e.category ?? '-'])]));
      return 0;
    }
    const runs = listRuns(db, { cell: values.lab, limit });
    if (values.json) out(JSON.stringify(runs, null, 2));
    else if (!runs.length) out(`no run recorded in ${db.name}`);
    else out(table([['RUN', 'STARTED', 'CELL', 'PURPOSE', 'CLASS', 'KERNEL', 'POINTS', 'FAILING', 'FOLDER'], ...runs.map((r) => [`#${r.id}`, r.startedAt.slice(0, 16), r.cell, r.purpose, `${r.outcomeClass}${r.outcomeClass === 'pass' ? '' : ` (${r.outcomeCode})`}`, r.kernelRelease ?? '-', String(r.points), String(r.failing), r.runDir])]));
    return 0;
  } finally {
    db.close();
  }
}

/** The frame's entry (src/cli/main.ts): this command parses its own arguments. */
export const historyCommandSpec = ownParserCommand(
  'history',
  'the results history: runs, a probe\'s points over time, kernel report titles, nights, import',
  '[reports|nights|import <run-dir>...]',
  HISTORY_USAGE,
  (argv) => historyCommand(argv),
);
