// A self-contained HTML report (one file, inline CSS and a few lines of
// script, nothing fetched): the grid of cells x probes coloured by class,
// each square a link to that probe's points in the cell; per cell its axes,
// kernel, timings, outcome, expectations, kernel report excerpts, the
// command that runs it again, and links to its console and build logs
// (relative, so the report works inside a CI artifact as on this machine).
import { unattributedReports } from '../results/attribution.ts';
import type { OutcomeClass } from '../results/outcome.ts';
import type { KernelReport } from '../report/kernel-report.ts';
import { CLASS_WORDS, secondsText } from './grid.ts';
import type { CellRecord, ProbeClass, ProbeRow, ReportSummary } from './summary.ts';
import { testResults } from './summary.ts';

/** The colour of each class: the grid's squares, the badges (the e2e screenshot test looks for them). */
export const CLASS_COLOURS: Record<ProbeClass | OutcomeClass, string> = {
  pass: '#2e7d32', fail: '#c62828', kernel: '#6a1b9a', infra: '#ef6c00', error: '#37474f',
  todo: '#f9a825', skip: '#90a4ae', 'not-run': '#d7ccc8',
};

export interface HtmlOptions {
  /** A link (relative to the report) to a file of the cell's folder, or undefined when there is none. */
  link: (cell: CellRecord, file: string) => string | undefined;
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const anchor = (ci: number, key: string) => `c${ci}-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
const badge = (cls: ProbeClass | OutcomeClass, text: string = cls) => `<span class="badge" style="background:${CLASS_COLOURS[cls]}">${esc(text)}</span>`;

const LOG_FILES = ['console.log', 'kernel-build.log', 'driver-build.log', 'hwlab.log', 'qemu-cmdline.sh', 'probes.tap', 'results.json', 'lab.resolved.json', 'error.txt'];

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121;background:#fff}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}h3{font-size:1.05em}
.badge{color:#fff;border-radius:3px;padding:1px 6px;font-weight:600;font-size:.9em}
table.grid{border-collapse:collapse}
table.grid th.probe{writing-mode:vertical-rl;transform:rotate(180deg);font-weight:normal;font-size:.85em;padding:4px 2px;white-space:nowrap}
table.grid td,table.grid th{border:1px solid #e0e0e0;padding:2px 6px}
table.grid td.sq{width:22px;height:22px;padding:0}
table.grid td.sq a{display:block;width:100%;height:22px}
table.grid td.none{background:#fafafa}
pre{background:#f5f5f5;padding:8px;overflow-x:auto;font-size:12px;max-height:30em}
table.points{border-collapse:collapse;margin:4px 0 12px}table.points td{border-bottom:1px solid #eee;padding:2px 8px;vertical-align:top}
details{margin:4px 0}summary{cursor:pointer}
:target{outline:3px solid #1565c0}
.muted{color:#757575}
`;

function pointsTable(row: ProbeRow): string {
  const p = row.result;
  if (!p) return '<p class="muted">not run</p>';
  const rows = p.subtests.map((s) => {
    const cls: ProbeClass = s.skip !== undefined ? 'skip' : s.todo !== undefined && !s.ok ? 'todo' : s.ok ? 'pass' : s.harness !== undefined ? 'infra' : 'fail';
    const note = s.skip ?? s.todo ?? '';
    const diag = s.diagnostics && (!s.ok || s.todo !== undefined) ? `<pre>${esc(JSON.stringify(s.diagnostics, null, 2))}</pre>` : '';
    return `<tr><td>${s.id}</td><td>${badge(cls)}</td><td>${esc(s.name)}${note ? ` <span class="muted">(${esc(note)})</span>` : ''}${diag}</td></tr>`;
  });
  const extra = [
    p.notRun ? `<p>${esc(p.notRun)}</p>` : '',
    p.todo !== undefined ? `<p>TODO: ${esc(p.todo)}</p>` : '',
    p.diagnostics ? `<pre>${esc(JSON.stringify(p.diagnostics, null, 2))}</pre>` : '',
    ...p.kernelReports.map(reportBlock),
  ].join('');
  return `${extra}<table class="points">${rows.join('')}</table>`;
}

function reportBlock(r: KernelReport): string {
  return `<div class="report"><p>${badge('kernel', r.kind)} <b>${esc(r.title)}</b>${r.count > 1 ? ` (x${r.count})` : ''} <span class="muted">first at console line ${r.line}${r.timestampSec !== undefined ? `, ${r.timestampSec} s after boot` : ''}</span></p><pre>${esc(r.excerpt)}</pre></div>`;
}

function cellSection(c: CellRecord, ci: number, opts: HtmlOptions): string {
  const r = c.results;
  const o = r.outcome;
  // A matrix cell's kernel was built once for all the cells that share it: that make output sits in the matrix folder's builds/.
  const buildLog = c.meta ? [['kernel build', opts.link(c, `../../builds/${c.meta.build.key}/kernel-build.log`)] as const] : [];
  const links = [...LOG_FILES.map((f) => [f, opts.link(c, f)] as const), ...buildLog].filter(([, l]) => l).map(([f, l]) => `<a href="${esc(l!)}">${esc(f)}</a>`).join(' · ');
  const t = r.timings;
  const timings = ['prepare', 'boot_to_ssh', 'setup', 'probes', 'teardown', 'total'].filter((k) => t[k] !== undefined).map((k) => `${k} ${secondsText(t[k])}`).join(', ');
  const k = r.kernel;
  const parts = [
    `<h2 id="c${ci}">${esc(c.id)} ${badge(o.class)}</h2>`,
    `<p>${esc(o.title)}${o.class === 'pass' ? '' : ` <span class="muted">(${esc(o.code)})</span>`}</p>`,
    o.class !== 'pass' && o.detail ? `<pre>${esc(o.detail)}</pre>` : '',
    r.failure?.hint ? `<p>hint: ${esc(r.failure.hint)}</p>` : '',
    `<p>lab <b>${esc(r.lab)}</b>${Object.entries(c.meta?.axes ?? {}).filter(([a]) => a !== 'lab').map(([a, v]) => `, ${esc(a)} <b>${esc(v)}</b>`).join('')}${k ? `; kernel ${esc(k.package)} (${esc(k.release)}${k.built ? `, built in ${secondsText(k.buildSeconds)}` : ''})` : ''}${r.machine ? `; ${esc(r.machine.accelNote)}` : ''}</p>`,
    `<p class="muted">started ${esc(r.startedAt)}; ${esc(timings || 'no timings')}${c.meta ? `; build ${esc(c.meta.build.label)}` : ''}</p>`,
    c.meta?.reproduce ? `<p>run it again: <code>${esc(c.meta.reproduce)}</code></p>` : '',
    links ? `<p>${links}</p>` : '',
    c.meta?.expectations.length ? `<ul>${c.meta.expectations.map((e) => `<li>${esc(e.probe)}${e.device ? ` on ${esc(e.device)}` : ''}: ${esc(e.what)} <span class="muted">(${esc(e.reason)}; ${esc(e.at)})</span></li>`).join('')}</ul>` : '',
    ...unattributedReports(r.kernelReports, testResults(r)).map(reportBlock),
    ...c.probes.map((row) => `<details id="${anchor(ci, row.key)}"${row.class !== 'pass' && row.class !== 'skip' ? ' open' : ''}><summary>${badge(row.class)} ${esc(row.key)}${row.result?.durationMs !== undefined ? ` <span class="muted">${secondsText(row.result.durationMs / 1000)}</span>` : ''}</summary>${pointsTable(row)}</details>`),
  ];
  return `<section>${parts.join('\n')}</section>`;
}

export function htmlReport(s: ReportSummary, opts: HtmlOptions): string {
  const head = `<tr><th>cell</th><th>class</th><th>time</th>${s.columns.map((k) => `<th class="probe" title="${esc(k)}">${esc(k)}</th>`).join('')}</tr>`;
  const rows = s.cells.map((c, ci) => {
    const sq = s.columns.map((k) => {
      const row = c.probes.find((p) => p.key === k);
      if (!row) return '<td class="sq none"></td>';
      return `<td class="sq" data-class="${row.class}" style="background:${CLASS_COLOURS[row.class]}" title="${esc(`${c.id} / ${k}: ${CLASS_WORDS[row.class]}`)}"><a href="#${anchor(ci, k)}"></a></td>`;
    }).join('');
    return `<tr><td><a href="#c${ci}">${esc(c.id)}</a></td><td>${badge(c.results.outcome.class)}</td><td>${secondsText(c.results.timings.total)}</td>${sq}</tr>`;
  }).join('\n');
  const legend = (Object.keys(CLASS_WORDS) as ProbeClass[]).map((k) => `${badge(k, k)} ${esc(CLASS_WORDS[k])}`).join(' &nbsp; ');
  const counts = (Object.keys(s.counts) as OutcomeClass[]).filter((k) => s.counts[k]).map((k) => `${s.counts[k]} ${k}`).join(', ');
  // Opens the probe a grid square points at (a closed <details> would hide its points).
  const script = `function openTarget(){var e=document.getElementById(location.hash.slice(1));if(e&&e.tagName==='DETAILS')e.open=true}addEventListener('hashchange',openTarget);openTarget();`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hwlab ${esc(s.kind)} ${esc(s.name)}: ${esc(s.outcome.class)}</title>
<style>${STYLE}</style></head>
<body>
<h1>hwlab ${esc(s.kind)} ${esc(s.name)} ${badge(s.outcome.class, s.outcome.class.toUpperCase())}</h1>
<p>${esc(s.outcome.title)}</p>
<p class="muted">${s.cells.length} cell${s.cells.length === 1 ? '' : 's'} (${esc(counts)}); written ${esc(s.createdAt)}</p>
<table class="grid" id="grid">
${head}
${rows}
</table>
<p>${legend}</p>
${s.cells.map((c, ci) => cellSection(c, ci, opts)).join('\n')}
<script>${script}</script>
</body></html>
`;
}
