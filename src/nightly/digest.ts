// The night's digest: what changed first (new failures, new kernel report
// titles, known failures that now pass, fixes, flakes), then what did not,
// then where the HTML report is. Text for a terminal or a mail, Markdown for
// a CI summary or a chat post, JSON (the NightDigest itself) for machines.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { CATEGORY_TITLE, type PointCategory, type PointChange } from '../history/classify.ts';
import type { NightDigest, UnitNight } from './nightly.ts';

const VERDICT_LINE: Record<NightDigest['verdict'], string> = {
  news: 'NEWS: new failures or new kernel reports',
  'nothing-new': 'nothing new',
  infra: 'INFRASTRUCTURE only: the host or the emulator failed; no regression is claimed',
  error: 'ERROR: bad input or a patch that does not build',
};

/** Categories listed point by point; the others are counted. */
const LISTED: readonly PointCategory[] = ['new-failure', 'known-now-passes', 'fixed', 'flaky', 'new-skip', 'gone', 'still-failing', 'not-run'];
/** Points listed per category before "... and N more". */
const MAX_LISTED = 25;

function transition(c: PointChange): string {
  const rr = c.reruns?.length ? `; reruns: ${c.reruns.join(', ')}` : '';
  return `${c.before ?? 'absent'} -> ${c.now ?? 'absent'}${rr}`;
}

function unitLines(u: UnitNight, md: boolean): string[] {
  const out: string[] = [];
  const code = (s: string) => (md ? `\`${s.replace(/`/g, "'")}\`` : s);
  const h = (s: string) => (md ? `### ${s}` : s);
  const li = (s: string) => (md ? `- ${s}` : `  ${s}`);
  out.push(h(`${u.series}: ${VERDICT_LINE[u.verdict]}`));
  const f = u.final;
  if (f) out.push(`run: ${f.outcome.class.toUpperCase()} (${f.outcome.code}): ${f.outcome.title}`);
  const retries = u.attempts.filter((a) => a.purpose === 'infra-retry').length;
  if (retries) {
    out.push(`infra retries: ${retries} (${u.attempts.map((a) => `${a.outcome.class}${a.outcome.class === 'infra' ? ` ${a.outcome.code}` : ''}`).join(' -> ')}); an infra attempt is never compared`);
  }
  if (u.kernel.identity) {
    const ch = u.kernel.changed === undefined ? 'first night of this series' : u.kernel.changed ? `CHANGED since the last night (was ${code(u.kernel.previous!)})` : 'unchanged since the last night';
    out.push(`kernel: ${code(u.kernel.identity)}, ${ch}`);
  }
  out.push(u.baseline ? `baseline: night ${u.baseline.nightId} of ${u.baseline.startedAt.slice(0, 16).replace('T', ' ')} UTC${u.baseline.runDir ? ` (${code(u.baseline.runDir)})` : ''}` : 'baseline: none yet (first night with evidence): every point is new');

  const newTitles = u.reports.filter((r) => r.isNew);
  if (newTitles.length) {
    out.push('', md ? '**new kernel reports**' : 'NEW KERNEL REPORTS');
    for (const r of newTitles) out.push(li(`${r.title} (x${r.count})`));
  }
  for (const s of u.stale) {
    out.push('', md ? '**stale expect_fail**' : 'STALE EXPECT_FAIL');
    out.push(li(`${code(s.probeKey)}: no point failed (${s.points} points); the lab still expects it to fail: "${s.reason}"`));
  }
  for (const cat of LISTED) {
    const cs = u.changes.filter((c) => c.category === cat);
    if (!cs.length) continue;
    out.push('', md ? `**${CATEGORY_TITLE[cat]} (${cs.length})**` : `${CATEGORY_TITLE[cat].toUpperCase()} (${cs.length})`);
    for (const c of cs.slice(0, MAX_LISTED)) {
      const flake = cat === 'flaky' ? u.flakes.find((x) => x.probeKey === c.probeKey && x.point === c.point) : undefined;
      out.push(li(`${code(c.probeKey)} ${c.point}: ${transition(c)}${flake ? `; flaky on ${flake.flaky} of ${flake.nights} nights` : ''}${c.reason && cat !== 'new-failure' ? ` (${c.reason})` : ''}`));
    }
    if (cs.length > MAX_LISTED) out.push(li(`... and ${cs.length - MAX_LISTED} more (digest.json has them all)`));
  }
  const newPoints = u.changes.filter((c) => c.category === 'new-point');
  if (newPoints.length) {
    const failingNew = newPoints.filter((c) => c.now === 'fail');
    out.push('', `${CATEGORY_TITLE['new-point']}: ${newPoints.length}${failingNew.length ? `, ${failingNew.length} failing:` : ''}`);
    for (const c of failingNew.slice(0, MAX_LISTED)) out.push(li(`${code(c.probeKey)} ${c.point}: ${transition(c)}`));
  }
  const known = u.reports.filter((r) => !r.isNew);
  if (known.length) {
    out.push('', md ? '**known kernel reports**' : 'known kernel reports');
    for (const r of known) out.push(li(`${r.title} (x${r.count} tonight; ${r.runs} runs since ${r.firstSeen.slice(0, 10)}; kernels: ${r.kernels.join(', ')})`));
  }
  out.push('', `unchanged: ${u.counts.unchanged} points${u.reruns.length ? `; reruns: ${u.reruns.map((r) => `${r.outcome.class} (${r.probes?.join(', ')})`).join(', ')}` : ''}`);
  if (u.report) out.push(`report: ${code(u.report)}`);
  return out;
}

function headline(d: NightDigest): string {
  const n = (cat: PointCategory) => d.units.reduce((k, u) => k + u.counts[cat], 0);
  const parts = [
    `${n('new-failure')} new failure(s)`,
    `${d.units.reduce((k, u) => k + u.reports.filter((r) => r.isNew).length, 0)} new kernel report title(s)`,
    `${n('known-now-passes')} known failure(s) now passing`,
    `${n('fixed')} fixed`,
    `${n('flaky')} flaky`,
  ];
  return parts.join(', ');
}

export function formatDigestText(d: NightDigest): string {
  const out = [
    `hwlab nightly ${d.name}: ${VERDICT_LINE[d.verdict]} (exit ${d.exitCode})`,
    headline(d),
    `${d.startedAt.slice(0, 16).replace('T', ' ')} UTC, ${d.source}, hwlab ${d.hwlab}`,
  ];
  for (const u of d.units) out.push('', ...unitLines(u, false));
  if (d.report) out.push('', `HTML report: ${d.report}`);
  return out.join('\n') + '\n';
}

export function formatDigestMarkdown(d: NightDigest): string {
  const out = [
    `## hwlab nightly ${d.name}: ${VERDICT_LINE[d.verdict]}`,
    '',
    `${headline(d)} (exit ${d.exitCode}). ${d.startedAt.slice(0, 16).replace('T', ' ')} UTC, \`${d.source}\`, hwlab ${d.hwlab}.`,
  ];
  for (const u of d.units) out.push('', ...unitLines(u, true));
  if (d.report) out.push('', `HTML report: \`${d.report}\``);
  return out.join('\n') + '\n';
}

export async function writeDigest(d: NightDigest): Promise<{ text: string; markdown: string; json: string }> {
  const files = { text: path.join(d.folder, 'digest.txt'), markdown: path.join(d.folder, 'digest.md'), json: path.join(d.folder, 'digest.json') };
  await writeFile(files.text, formatDigestText(d));
  await writeFile(files.markdown, formatDigestMarkdown(d));
  await writeFile(files.json, `${JSON.stringify(d, null, 2)}\n`);
  return files;
}
