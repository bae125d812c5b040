// A Markdown summary for GitHub's job summary ($GITHUB_STEP_SUMMARY) and
// merge-request comments: the outcome, the grid of cells x probes (probes
// numbered, named below, because their names are too long for columns), and
// for each cell that did not pass what went wrong, its kernel reports and
// the command that runs it again. GitHub caps a step summary at 1 MiB, so
// the details are cut, with a note, before that.
import { secondsText } from './grid.ts';
import type { ProbeClass, ReportSummary } from './summary.ts';
import type { OutcomeClass } from '../results/outcome.ts';

export const MAX_MARKDOWN_BYTES = 900 * 1024;

const PROBE_SIGN: Record<ProbeClass, string> = {
  pass: '✅', fail: '❌', kernel: '💥', infra: '⚠️', todo: '🚧', skip: '⏭️', 'not-run': '⏸️',
};
const CELL_SIGN: Record<OutcomeClass, string> = { pass: '✅', fail: '❌', kernel: '💥', infra: '⚠️', error: '⛔' };

/** Text inside a table cell or a line: no pipes, no newlines, no HTML. */
const inline = (s: string) => s.replace(/[|\\`*_<>[\]]/g, (c) => `\\${c}`).replace(/\r?\n/g, ' ');
const fence = (s: string) => `\`\`\`\n${s.replace(/```/g, "'''")}\n\`\`\``;

export function markdownSummary(s: ReportSummary): string {
  const o = s.outcome;
  const out: string[] = [
    `## hwlab ${s.kind} ${inline(s.name)}: ${CELL_SIGN[o.class]} ${o.class.toUpperCase()}`,
    '',
    inline(o.title),
    '',
    `${s.cells.length} cell${s.cells.length === 1 ? '' : 's'}: ${(Object.keys(s.counts) as OutcomeClass[]).filter((k) => s.counts[k]).map((k) => `${s.counts[k]} ${k}`).join(', ')}`,
    '',
    `| cell | class | time | ${s.columns.map((_, i) => i + 1).join(' | ')} |`,
    `| --- | --- | --- | ${s.columns.map(() => ':-:').join(' | ')} |`,
  ];
  for (const c of s.cells) {
    const marks = s.columns.map((k) => {
      const row = c.probes.find((p) => p.key === k);
      return row ? PROBE_SIGN[row.class] : '';
    });
    out.push(`| ${inline(c.id)} | ${CELL_SIGN[c.results.outcome.class]} ${c.results.outcome.class} | ${secondsText(c.results.timings.total)} | ${marks.join(' | ')} |`);
  }
  out.push('', `Probes: ${s.columns.map((k, i) => `${i + 1} \`${k}\``).join(', ')}.`, '');
  out.push(`Key: ${(Object.keys(PROBE_SIGN) as ProbeClass[]).map((k) => `${PROBE_SIGN[k]} ${k}`).join(', ')}; empty: not in the cell.`);
  const details: string[] = [];
  for (const c of s.cells.filter((x) => x.results.outcome.class !== 'pass')) {
    const r = c.results;
    const body: string[] = [];
    body.push(`**${r.outcome.class}** (\`${r.outcome.code}\`): ${inline(r.outcome.title)}`, '');
    if (r.outcome.detail) body.push(...r.outcome.detail.split('\n').filter(Boolean).map((l) => `- ${inline(l)}`), '');
    for (const k of r.kernelReports) body.push(`Kernel report **${inline(k.title)}**${k.count > 1 ? ` (x${k.count})` : ''}:`, '', fence(k.excerpt.split('\n').slice(0, 30).join('\n')), '');
    if (c.meta?.reproduce) body.push('Run it again:', '', fence(c.meta.reproduce), '');
    details.push(`<details><summary>${CELL_SIGN[r.outcome.class]} ${inline(c.id)}: ${r.outcome.class}</summary>`, '', ...body, '</details>', '');
  }
  const expectations = s.cells.flatMap((c) => (c.meta?.expectations ?? []).map((e) => `- \`${inline(c.id)}\` ${inline(e.probe)}${e.device ? ` on ${inline(e.device)}` : ''}: ${inline(e.what)} (${inline(e.reason)})`));
  if (expectations.length) details.push('<details><summary>Expectations that differ from the labs</summary>', '', ...expectations, '', '</details>', '');
  let text = `${out.join('\n')}\n\n${details.join('\n')}`;
  if (Buffer.byteLength(text) > MAX_MARKDOWN_BYTES) {
    text = `${Buffer.from(text).subarray(0, MAX_MARKDOWN_BYTES).toString('utf8').replace(/\uFFFD$/, '')}\n\n(cut at ${MAX_MARKDOWN_BYTES} bytes: GitHub's job summary limit; the HTML report has everything)\n`;
  }
  return text;
}
