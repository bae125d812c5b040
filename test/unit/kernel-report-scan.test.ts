// The scanner's behaviour beyond titles (those are the golden files'): line
// parsing of both inputs, excerpt bounds, merged panics, dedup with counts,
// and the title helpers every format goes through.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { cleanFunc, renderTitle, sanitizeTitle } from '../../src/report/formats.ts';
import { dedupByTitle, describeReport, reportDiagnostics } from '../../src/report/kernel-report.ts';
import { consoleLines, kmsgLines } from '../../src/report/lines.ts';
import { findConsoleReports, findKmsgReports, MAX_EXCERPT_LINES } from '../../src/report/scan.ts';

/** A golden file's console text (what follows its header). */
const golden = (name: string) => {
  const text = readFileSync(new URL(`../fixtures/reports/${name}`, import.meta.url), 'utf8');
  return text.slice(text.indexOf('\n\n') + 2);
};

const warn72 = (ts: string, func = 'hwi_invalidate_mappings+0x32/0x78 [hwlab_importer]', cpu = 1, pid = 160) => [
  `[${ts}] ------------[ cut here ]------------`,
  `[${ts}] WARNING: hwlab_importer.c:176 at ${func}, CPU#${cpu}: node/${pid}`,
  `[${ts}] Modules linked in: hwlab_importer vfio_pci vfio_pci_core`,
  `[${ts}] CPU: ${cpu} UID: 0 PID: ${pid} Comm: node Not tainted 7.2.13 #1 PREEMPT`,
  `[${ts}] RIP: 0010:${func}`,
  `[${ts}] ---[ end trace 0000000000000000 ]---`,
];

test('console lines: level, timestamp and caller id come off; the message keeps its own indent', (t) => {
  const [a, b, c, d] = consoleLines('<4>[   12.345678][ T1234] WARNING: x\n[    1.000000]  func+0x1/0x2\nplain user text\n[    2.5] ');
  t.like(a, { text: 'WARNING: x', ts: 12.345678, kernel: true });
  t.like(b, { text: ' func+0x1/0x2', ts: 1, kernel: true });
  t.like(c, { text: 'plain user text', kernel: false });
  t.like(d, { text: '', ts: 2.5, kernel: true });
  t.is(a.raw, '<4>[   12.345678][ T1234] WARNING: x');
});

test('kmsg lines: a multi-line record is several lines at one time; userspace records never start a report', (t) => {
  const lines = kmsgLines([
    { facility: 0, usec: 5_000_000, message: 'first\nsecond' },
    { facility: 1, usec: 6_000_000, message: 'BUG: written to /dev/kmsg by a program' },
  ]);
  t.deepEqual(lines.map((l) => [l.text, l.ts, l.kernel]), [['first', 5, true], ['second', 5, true], ['BUG: written to /dev/kmsg by a program', 6, false]]);
  t.is(lines[0].raw, '[    5.000000] first');
  t.deepEqual(findKmsgReports([{ facility: 1, usec: 1, message: 'WARNING: CPU: 0 PID: 1 at x.c:1 f+0x1/0x2' }]), []);
});

test('excerpt starts at the reported line and carries the timestamp; an interleaved line stays inside', (t) => {
  const text = golden('null-deref-interleaved.txt');
  const [r] = findConsoleReports(text);
  t.is(r.excerpt.split('\n')[0], text.split('\n')[r.line - 1]);
  t.is(r.timestampSec, 4.316079);
  t.true(r.excerpt.includes('fbcon: Taking over console'));
  t.false(r.excerpt.includes('enable_guc'));
});

test('end trace closes the block; the Fatal exception panic after it is merged, not a second report', (t) => {
  const reports = findConsoleReports(golden('null-deref-endtrace.txt'));
  t.is(reports.length, 1);
  t.true(reports[0].fatal);
  t.true(reports[0].excerpt.includes('---[ end trace e25748bb637f10e1 ]---'));
  t.true(reports[0].excerpt.endsWith('Kernel panic - not syncing: Fatal exception'));
});

test('excerpts are capped', (t) => {
  const many = Array.from({ length: 200 }, (_, i) => `[  10.${String(i).padStart(6, '0')}]  frame_${i}+0x1/0x2`);
  const text = ['[  10.000000] ------------[ cut here ]------------', '[  10.000001] WARNING: CPU: 0 PID: 1 at drivers/vfio/pci/vfio_pci_core.c:1234 vfio_pci_dma_buf_move+0x12/0x40 [vfio_pci_core]', ...many].join('\n');
  const [r] = findConsoleReports(text);
  t.is(r.title, 'WARNING in vfio_pci_dma_buf_move');
  t.true(r.excerpt.split('\n').length <= MAX_EXCERPT_LINES);
});

test('the same WARNING on other CPUs and tasks is one title; dedup keeps the first occurrence and counts', (t) => {
  const text = [...warn72('   20.000001'), ...warn72('   21.000001', 'hwi_invalidate_mappings+0x40/0x78 [hwlab_importer]', 0, 171), ...warn72('   22.000001')].join('\n');
  const all = findConsoleReports(text);
  t.deepEqual(all.map((r) => [r.title, r.count, r.line]), [
    ['WARNING in hwi_invalidate_mappings', 1, 1],
    ['WARNING in hwi_invalidate_mappings', 1, 7],
    ['WARNING in hwi_invalidate_mappings', 1, 13],
  ]);
  const [one, ...rest] = dedupByTitle(all);
  t.deepEqual(rest, []);
  t.like(one, { title: 'WARNING in hwi_invalidate_mappings', count: 3, line: 1, timestampSec: 20.000001, fatal: false });
  t.is(one.excerpt, all[0].excerpt);
  t.is(describeReport(one), 'WARNING: WARNING in hwi_invalidate_mappings (x3)');
  t.is(describeReport({ ...one, count: 1, fatal: true }), 'WARNING (fatal): WARNING in hwi_invalidate_mappings');
});

test('dedup: fatal if any occurrence was; titles keep the order they first came in', (t) => {
  const base = { kind: 'WARNING' as const, count: 1, line: 1, excerpt: 'x', fatal: false };
  const got = dedupByTitle([{ ...base, title: 'b' }, { ...base, title: 'a', count: 2 }, { ...base, title: 'b', fatal: true, line: 9 }]);
  t.deepEqual(got.map((r) => [r.title, r.count, r.fatal, r.line]), [['b', 2, true, 1], ['a', 2, false, 1]]);
});

test('diagnostics carry kind, title, count and the first excerpt lines', (t) => {
  const [r] = dedupByTitle(findConsoleReports([...warn72('   20.000001'), ...warn72('   21.000001')].join('\n')));
  const [d] = reportDiagnostics([r], 2);
  t.deepEqual(d, { kind: 'WARNING', title: 'WARNING in hwi_invalidate_mappings', count: 2, fatal: false, excerpt: [
    '[   20.000001] ------------[ cut here ]------------',
    '[   20.000001] WARNING: hwlab_importer.c:176 at hwi_invalidate_mappings+0x32/0x78 [hwlab_importer], CPU#1: node/160',
  ] });
});

test('7.x "Oops: Oops: 0002 [#1]" on its own is an Oops; under a page-fault BUG it only makes the BUG fatal', (t) => {
  const oops = ['[    9.404204] Oops: Oops: 0002 [#1] SMP', '[    9.404787] RIP: 0010:vfio_device_put_registration+0xa/0x35 [vfio]'];
  t.deepEqual(findConsoleReports(oops.join('\n')).map((r) => [r.kind, r.title, r.fatal]), [['Oops', 'Oops in vfio_device_put_registration', true]]);
  const bug = ['[    9.403509] BUG: unable to handle page fault for address: ffffc90000a00000', '[    9.403863] #PF: supervisor read access in kernel mode', ...oops];
  t.deepEqual(findConsoleReports(bug.join('\n')).map((r) => [r.kind, r.title, r.fatal]), [['BUG', 'BUG: unable to handle page fault in vfio_device_put_registration', true]]);
});

test('title helpers: clone suffixes, optional parts, offsets and addresses', (t) => {
  t.is(cleanFunc('vfio_pci_dma_buf_move.cold'), 'vfio_pci_dma_buf_move');
  t.is(cleanFunc('ath9k_init_htc_services.constprop.0'), 'ath9k_init_htc_services');
  t.is(cleanFunc('foo.isra.0.cold'), 'foo');
  t.is(cleanFunc('__se_sys_mremap'), 'sys_mremap');
  t.is(cleanFunc('__x64_sys_ioctl'), 'sys_ioctl');
  t.is(cleanFunc('vfio_pci_core_ioctl'), 'vfio_pci_core_ioctl');
  t.is(renderTitle('KASAN: {what}[ {access}] in {FUNC}', { what: 'use-after-free', FUNC: 'f' }), 'KASAN: use-after-free in f');
  t.is(renderTitle('KASAN: {what}[ {access}] in {FUNC}', { what: 'use-after-free', access: 'Read', FUNC: 'f' }), 'KASAN: use-after-free Read in f');
  t.is(sanitizeTitle('BUG: Dentry ffff88801f2e4c38 still in use  (1)'), 'BUG: Dentry still in use (1)');
  t.is(sanitizeTitle('x in f+0x12/0x40'), 'x in f');
});
