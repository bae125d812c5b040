// JUnit XML, the format every CI engine's test tab reads (Jenkins' and
// Surefire's schema, junit-10.xsd; GitLab's and GitHub actions' JUnit
// readers take the same): one testsuite per cell and probe, one testcase per
// point. Outcome classes map onto JUnit's two kinds of bad: a failing point
// or a kernel report (title as the message, the excerpt as the text) is a
// failure, because the kernel did it; a run the host or emulator broke, or
// bad input, is an error, because no test verdict exists. Expected failures
// (TODO) and skips are skipped, with the reason.
import { unattributedReports } from '../results/attribution.ts';
import type { KernelReport } from '../report/kernel-report.ts';
import type { SubtestResult } from '../results/tap.ts';
import type { CellRecord, ProbeRow, ReportSummary } from './summary.ts';
import { testResults } from './summary.ts';

/** XML 1.0 cannot carry most control characters (a console excerpt may): they are written as \uXXXX. */
export function xmlText(s: string): string {
  return s
    .replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    .replace(/[\ud800-\udfff]/g, (c, i: number, all: string) => {
      // Keep valid surrogate pairs; a lone surrogate is not XML.
      const code = c.charCodeAt(0);
      const pairOk = code < 0xdc00 ? /[\udc00-\udfff]/.test(all[i + 1] ?? '') : /[\ud800-\udbff]/.test(all[i - 1] ?? '');
      return pairOk ? c : `\\u${code.toString(16)}`;
    })
    .replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}
const attr = (s: string) => xmlText(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;');
/** Seconds as junit-10.xsd's time pattern wants them: at most three decimals, no exponent. */
const secs = (s: number | undefined) => Math.max(0, s ?? 0).toFixed(3);

interface Case {
  name: string;
  classname: string;
  time?: number;
  kind: 'pass' | 'failure' | 'error' | 'skipped';
  type?: string;
  message?: string;
  text?: string;
}

function diagText(d: Record<string, unknown> | undefined): string {
  return d ? JSON.stringify(d, null, 2) : '';
}

function reportCase(r: KernelReport, classname: string): Case {
  return {
    name: `kernel report: ${r.title}`, classname, kind: 'failure', type: `kernel:${r.kind}`,
    message: `${r.title}${r.count > 1 ? ` (x${r.count})` : ''}`, text: `${r.excerpt}\n\n(first at console line ${r.line}${r.timestampSec !== undefined ? `, ${r.timestampSec} s after boot` : ''})`,
  };
}

function pointCase(s: SubtestResult, classname: string): Case {
  const name = `${s.id} ${s.name}`;
  if (s.skip !== undefined) return { name, classname, kind: 'skipped', message: s.skip };
  if (s.todo !== undefined && !s.ok) return { name, classname, kind: 'skipped', message: `TODO (expected failure): ${s.todo}`, text: diagText(s.diagnostics) };
  if (s.ok) return { name, classname, kind: 'pass' };
  if (s.harness !== undefined) return { name, classname, kind: 'error', type: 'harness', message: s.harness, text: diagText(s.diagnostics) };
  return { name, classname, kind: 'failure', type: 'fail', message: s.name, text: diagText(s.diagnostics) };
}

function probeCases(c: CellRecord, row: ProbeRow): Case[] {
  const classname = `hwlab.${c.id}.${row.key}`;
  const p = row.result;
  if (!p || row.class === 'not-run') {
    const why = p?.notRun ?? (c.results.failure ? `the run stopped in ${c.results.failure.phase}: ${c.results.failure.message.split('\n')[0]}` : 'no result for this probe');
    return [{ name: 'not run', classname, kind: 'skipped', message: why }];
  }
  if (p.skip !== undefined && p.subtests.length === 0) return [{ name: 'skipped', classname, kind: 'skipped', message: p.skip }];
  const cases = p.subtests.map((s) => pointCase(s, classname));
  // A probe that stopped without a failing point (interrupted): no verdict, so an error.
  if (row.class === 'infra') cases.push({ name: 'probe finished', classname, kind: 'error', type: 'infra', message: String(p.diagnostics?.error ?? 'the probe did not finish'), text: diagText(p.diagnostics) });
  if (cases.length === 0) cases.push({ name: 'probe', classname, kind: p.ok ? 'pass' : 'error', ...(p.ok ? {} : { type: 'infra', message: 'no points and no result' }) });
  for (const r of p.kernelReports) cases.push(reportCase(r, classname));
  return cases;
}

function runCases(c: CellRecord): Case[] {
  const classname = `hwlab.${c.id}.(run)`;
  const { failure, outcome } = c.results;
  const cases: Case[] = [];
  if (failure) {
    cases.push({ name: `run (${failure.phase})`, classname, time: c.results.timings.total, kind: 'error', type: `${failure.class}:${failure.code}`, message: failure.message.split('\n')[0], text: `${failure.message}${failure.hint ? `\nhint: ${failure.hint}` : ''}` });
  } else if (outcome.class === 'infra' || outcome.class === 'error') {
    cases.push({ name: 'run', classname, time: c.results.timings.total, kind: 'error', type: `${outcome.class}:${outcome.code}`, message: outcome.title, text: outcome.detail });
  } else cases.push({ name: 'run', classname, time: c.results.timings.total, kind: 'pass' });
  for (const r of unattributedReports(c.results.kernelReports, testResults(c.results))) cases.push(reportCase(r, classname));
  return cases;
}

function suiteXml(name: string, cases: Case[], time: number | undefined, timestamp: string, props: Array<[string, string]>): string {
  const count = (k: Case['kind']) => cases.filter((x) => x.kind === k).length;
  const out = [`  <testsuite name="${attr(name)}" tests="${cases.length}" failures="${count('failure')}" errors="${count('error')}" skipped="${count('skipped')}" time="${secs(time)}" timestamp="${attr(timestamp)}">`];
  if (props.length) out.push('    <properties>', ...props.map(([k, v]) => `      <property name="${attr(k)}" value="${attr(v)}"/>`), '    </properties>');
  for (const k of cases) {
    const open = `    <testcase name="${attr(k.name)}" classname="${attr(k.classname)}" time="${secs(k.time)}"`;
    if (k.kind === 'pass') {
      out.push(`${open}/>`);
      continue;
    }
    const typeAttr = k.type ? ` type="${attr(k.type)}"` : '';
    const msgAttr = k.message !== undefined ? ` message="${attr(k.message)}"` : '';
    out.push(`${open}>`, `      <${k.kind}${msgAttr}${typeAttr}>${xmlText(k.text ?? '')}</${k.kind}>`, '    </testcase>');
  }
  out.push('  </testsuite>');
  return out.join('\n');
}

export function junitXml(s: ReportSummary): string {
  const suites: string[] = [];
  let tests = 0;
  let failures = 0;
  let errors = 0;
  const add = (name: string, cases: Case[], time: number | undefined, c: CellRecord, props: Array<[string, string]>) => {
    tests += cases.length;
    failures += cases.filter((x) => x.kind === 'failure').length;
    errors += cases.filter((x) => x.kind === 'error').length;
    suites.push(suiteXml(name, cases, time, c.results.startedAt, props));
  };
  for (const c of s.cells) {
    const props: Array<[string, string]> = [
      ['cell', c.id], ['lab', c.results.lab], ['outcome', c.results.outcome.class],
      ...Object.entries(c.meta?.axes ?? {}).map(([k, v]): [string, string] => [`axis.${k}`, v]),
      ...(c.results.kernel ? [['kernel', `${c.results.kernel.package} (${c.results.kernel.release})`] as [string, string]] : []),
      ...(c.meta?.reproduce ? [['reproduce', c.meta.reproduce] as [string, string]] : []),
    ];
    add(`${c.id}/(run)`, runCases(c), c.results.timings.total, c, props);
    for (const row of c.probes) add(`${c.id}/${row.key}`, probeCases(c, row), row.result?.durationMs !== undefined ? row.result.durationMs / 1000 : undefined, c, [['cell', c.id], ['probe', row.name], ...(row.device ? [['device', row.device] as [string, string]] : []), ...(row.collection ? [['kselftest-collection', row.collection] as [string, string]] : []), ['class', row.class]]);
  }
  const total = s.cells.reduce((n, c) => n + (c.results.timings.total ?? 0), 0);
  return [
    '<?xml version="1.0" encoding="UTF-8"?>',
    `<testsuites name="${attr(`hwlab ${s.kind} ${s.name}`)}" tests="${tests}" failures="${failures}" errors="${errors}" time="${secs(total)}">`,
    ...suites,
    '</testsuites>',
    '',
  ].join('\n');
}
