// Every file in test/fixtures/reports is a console excerpt with the reports it
// must yield written in its own header (see the README there); adding a case is
// adding a file. Each goes through both scanner inputs: the console text as
// the host reads it, and the same lines as the /dev/kmsg records the guest
// reads (prefixes stripped, escaped and parsed like the real device). Both
// must find the same titles, kinds and counts.
import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { parseRecord, type KmsgRecord } from '../../src/guest/lib/kmsg.ts';
import { dedupByTitle, type KernelReport, type KernelReportKind } from '../../src/report/kernel-report.ts';
import { findConsoleReports, findKmsgReports } from '../../src/report/scan.ts';

const DIR = new URL('../fixtures/reports/', import.meta.url);

interface Expected { title: string; kind: KernelReportKind; fatal: boolean; count: number; line?: number }
interface Golden { source: string; expected: Expected[]; console: string }

/** Header lines "KEY: value" up to the first blank line; each TITLE opens an expected report. */
function parseGolden(name: string, text: string): Golden {
  const nl = text.indexOf('\n\n');
  if (nl < 0) throw new Error(`${name}: no blank line after the header`);
  const expected: Expected[] = [];
  let source = '';
  let none = false;
  for (const line of text.slice(0, nl).split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([A-Z]+): (.*)$/.exec(line);
    if (!m) throw new Error(`${name}: bad header line ${JSON.stringify(line)}`);
    const [, key, value] = m;
    const cur = expected[expected.length - 1];
    if (key === 'SOURCE') source = value;
    else if (key === 'TITLE' && value === 'none') none = true;
    else if (key === 'TITLE') expected.push({ title: value, kind: undefined as unknown as KernelReportKind, fatal: false, count: 1 });
    else if (!cur) throw new Error(`${name}: ${key} before any TITLE`);
    else if (key === 'KIND') cur.kind = value as KernelReportKind;
    else if (key === 'FATAL') cur.fatal = value === 'true';
    else if (key === 'COUNT') cur.count = Number(value);
    else if (key === 'LINE') cur.line = Number(value);
    else throw new Error(`${name}: unknown header key ${key}`);
  }
  if (!source) throw new Error(`${name}: no SOURCE (where the excerpt comes from)`);
  if (none === expected.length > 0) throw new Error(`${name}: needs either TITLE lines or "TITLE: none"`);
  for (const e of expected) if (!e.kind) throw new Error(`${name}: TITLE ${e.title} has no KIND`);
  return { source, expected, console: text.slice(nl + 2) };
}

const PREFIX = /^(?:<\d+>)?\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])? ?/;

/** What /dev/kmsg would have given for the same console lines: one record per line, written and parsed like the device's. */
export function consoleToKmsg(consoleText: string): KmsgRecord[] {
  const lines = consoleText.split('\n').map((l) => l.replace(/\r$/, ''));
  const stamped = lines.some((l) => PREFIX.test(l));
  return lines.map((l, seq) => {
    const m = PREFIX.exec(l);
    // Unstamped text in a stamped log is userspace's: it reaches kmsg as facility 1 (user), as /dev/kmsg writes do.
    const kernel = m ? true : !stamped && l.trim() !== '';
    const message = m ? l.slice(m[0].length) : l;
    const escaped = message.replace(/[\x00-\x1f\x7f\\]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
    const usec = m ? Math.round(Number(m[1]) * 1e6) : 0;
    const rec = parseRecord(`${((kernel ? 0 : 1) << 3) | 4},${seq},${usec},-;${escaped}\n SUBSYSTEM=x\n`);
    if (!rec) throw new Error(`record ${seq} did not parse`);
    return rec;
  });
}

const shape = (rs: KernelReport[], withLine: boolean) =>
  rs.map(({ title, kind, fatal, count, line }) => ({ title, kind, fatal, count, ...(withLine ? { line } : {}) }));

const files = readdirSync(DIR).filter((f) => f.endsWith('.txt')).sort();

test('the golden directory has cases', (t) => {
  t.true(files.length >= 30, `${files.length} golden files`);
});

for (const file of files) {
  const golden = parseGolden(file, readFileSync(new URL(file, DIR), 'utf8'));
  const want = golden.expected;
  const withLine = want.every((e) => e.line !== undefined);

  test(`${file}: console`, (t) => {
    const got = dedupByTitle(findConsoleReports(golden.console));
    t.deepEqual(shape(got, withLine), want.map(({ line, ...rest }) => (withLine ? { ...rest, line } : rest)));
    const lines = golden.console.split('\n');
    for (const r of got) t.is(r.excerpt.split('\n')[0], lines[r.line - 1].replace(/\r$/, ''), `${r.title}: the excerpt starts at its line`);
  });

  test(`${file}: kmsg records`, (t) => {
    const got = dedupByTitle(findKmsgReports(consoleToKmsg(golden.console)));
    t.deepEqual(shape(got, false), want.map(({ line: _line, ...rest }) => rest));
  });
}
