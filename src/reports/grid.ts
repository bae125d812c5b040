// The grid of cells x probes for a terminal: one row per cell with its
// outcome class and time, one narrow column per probe with a one-letter
// class, the probes named in a numbered legend below (probe names are too
// long for column headers), then what went wrong in each cell that did not
// pass and the command that runs it alone.
import type { ReportSummary, ProbeClass } from './summary.ts';

export const CLASS_MARK: Record<ProbeClass, string> = {
  pass: '.', fail: 'F', kernel: 'K', infra: 'I', todo: 'T', skip: 'S', 'not-run': 'N',
};
export const CLASS_WORDS: Record<ProbeClass, string> = {
  pass: 'pass', fail: 'a point failed', kernel: 'kernel report', infra: 'infra (did not finish)',
  todo: 'expected failure (TODO)', skip: 'skipped', 'not-run': 'not run',
};

const pad = (s: string, w: number) => (s.length >= w ? s : s + ' '.repeat(w - s.length));

export function secondsText(s: number | undefined): string {
  if (s === undefined || !Number.isFinite(s)) return '-';
  return s >= 100 ? `${s.toFixed(0)} s` : `${s.toFixed(1)} s`;
}

export function formatGrid(s: ReportSummary): string {
  const idW = Math.max(4, ...s.cells.map((c) => c.id.length));
  const colW = Math.max(2, String(s.columns.length).length + 1);
  const header = `${pad('cell', idW)}  ${pad('class', 6)}  ${pad('time', 7)} ${s.columns.map((_, i) => String(i + 1).padStart(colW)).join('')}`;
  const lines = [header.trimEnd()];
  for (const c of s.cells) {
    const marks = s.columns.map((k) => {
      const row = c.probes.find((p) => p.key === k);
      return (row ? CLASS_MARK[row.class] : '').padStart(colW);
    }).join('');
    lines.push(`${pad(c.id, idW)}  ${pad(c.results.outcome.class, 6)}  ${pad(secondsText(c.results.timings.total), 7)} ${marks}`.trimEnd());
  }
  lines.push('', 'probes:');
  s.columns.forEach((k, i) => lines.push(`${String(i + 1).padStart(4)}  ${k}`));
  lines.push('', `key: ${(Object.keys(CLASS_MARK) as ProbeClass[]).map((k) => `${CLASS_MARK[k]} ${CLASS_WORDS[k]}`).join(', ')}; blank: not in the cell`);
  const bad = s.cells.filter((c) => c.results.outcome.class !== 'pass');
  if (bad.length) {
    lines.push('');
    for (const c of bad) {
      const o = c.results.outcome;
      lines.push(`${c.id}: ${o.class.toUpperCase()} (${o.code}): ${o.title}`);
      for (const r of o.detail.split('\n').filter(Boolean).slice(0, 8)) lines.push(`    - ${r}`);
      if (c.meta?.reproduce) lines.push(`    again: ${c.meta.reproduce}`);
      if (c.dir) lines.push(`    folder: ${c.dir}`);
    }
  }
  return lines.join('\n');
}
