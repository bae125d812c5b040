// Probe windows from the runner's kmsg markers, and kernel reports attributed
// to them one by one, then kept once per title per probe and per run.
import test from 'ava';
import { dedupByTitle, type KernelReport } from '../../src/report/kernel-report.ts';
import { findConsoleReports } from '../../src/report/scan.ts';
import { attachKernelReports, attributeReports, probeWindowsFromConsole, unattributedReports } from '../../src/results/attribution.ts';
import { classifyRun, runReasons } from '../../src/results/outcome.ts';
import type { ProbeResult } from '../../src/results/tap.ts';

const probe = (name: string, extra: Partial<ProbeResult> = {}): ProbeResult => ({ name, ok: true, subtests: [], kernelReports: [], ...extra });
const report = (title: string, ts?: number): KernelReport => ({ kind: 'WARNING', title, count: 1, line: 1, fatal: false, excerpt: title, ...(ts === undefined ? {} : { timestampSec: ts }) });

const warning = (ts: string, func: string) => [
  `[${ts}] ------------[ cut here ]------------`,
  `[${ts}] WARNING: drivers/dma-buf/dma-buf.c:1403 at ${func}+0x4b/0x80, CPU#0: node/160`,
  `[${ts}] ---[ end trace 0000000000000000 ]---`,
];

test('windows are keyed by the probe\'s index and name, from markers with or without a caller id', (t) => {
  const w = probeWindowsFromConsole([
    '[    9.000000] hwlab-probe: begin 1 dmabuf-export',
    '[    9.200000][  T160] hwlab-probe: end 1 dmabuf-export',
    '[    9.300000] hwlab-probe: begin 2 map-type',
    '[    9.400000] hwlab-probe: end 2 map-type',
    '[    9.500000] hwlab-probe: begin 3 map-type',
    '[    9.600000] hwlab-probe: end 3 map-type',
  ].join('\n'));
  t.deepEqual(w, [
    { index: 1, probe: 'dmabuf-export', startSec: 9, endSec: 9.2 },
    { index: 2, probe: 'map-type', startSec: 9.3, endSec: 9.4 },
    { index: 3, probe: 'map-type', startSec: 9.5, endSec: 9.6 },
  ]);
});

test('a probe whose end marker never came (guest died) owns everything after its begin', (t) => {
  const w = probeWindowsFromConsole('[ 1.0] hwlab-probe: begin 1 dmabuf-fd\n[ 2.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n');
  t.deepEqual(w, [{ index: 1, probe: 'dmabuf-fd', startSec: 1, endSec: Number.POSITIVE_INFINITY }]);
});

test('attributeReports puts each report in the window that holds its timestamp', (t) => {
  const reports = [report('boot', 1.2), report('in-a', 10.5), report('edge-b', 20), report('in-b', 25), report('after', 99), report('no-ts')];
  const a = { index: 1, probe: 'a', startSec: 10, endSec: 19.9 };
  const b = { index: 2, probe: 'b', startSec: 20, endSec: 30 };
  const { byProbe, unattributed } = attributeReports(reports, [a, b]);
  t.deepEqual(byProbe.map((x) => [x.window, x.reports.map((r) => r.title)]), [[a, ['in-a']], [b, ['edge-b', 'in-b']]]);
  t.deepEqual(unattributed.map((r) => r.title), ['boot', 'after', 'no-ts']);
});

test('a report between a probe\'s markers is attached to that probe and fails it; others stay as they were', (t) => {
  const console = [
    '[    5.100000] hwlab-init: sshd started',
    '[    9.000000] hwlab-probe: begin 1 dmabuf-export',
    '[    9.200000] hwlab-probe: end 1 dmabuf-export',
    '[    9.300000] hwlab-probe: begin 2 reset-and-mem-toggle',
    '[    9.400000] ------------[ cut here ]------------',
    '[    9.400100] refcount_t: underflow; use-after-free.',
    '[    9.400200] WARNING: lib/refcount.c:28 at refcount_warn_saturate+0x5d/0x110, CPU#1: node/301',
    '[    9.400300] Modules linked in: vfio_pci vfio_pci_core vfio_iommu_type1 vfio',
    '[    9.400350] Call Trace:',
    '[    9.400360]  <TASK>',
    '[    9.400370]  ? refcount_warn_saturate+0x5d/0x110',
    '[    9.400380]  vfio_pci_dma_buf_move+0x1b0/0x200 [vfio_pci_core]',
    '[    9.400390]  </TASK>',
    '[    9.400400] ---[ end trace 0000000000000000 ]---',
    '[    9.500000] hwlab-probe: end 2 reset-and-mem-toggle',
    '[    9.600000] hwlab-probe: begin 3 dmabuf-fd',
    '[    9.700000] hwlab-probe: end 3 dmabuf-fd',
  ].join('\n');
  const found = findConsoleReports(console);
  t.is(found.length, 1);
  const probes = [probe('dmabuf-export'), probe('reset-and-mem-toggle'), probe('dmabuf-fd')];
  attachKernelReports(probes, found, probeWindowsFromConsole(console));
  t.deepEqual(probes.map((p) => [p.name, p.ok, p.kernelReports.length]), [['dmabuf-export', true, 0], ['reset-and-mem-toggle', false, 1], ['dmabuf-fd', true, 0]]);
  t.deepEqual(probes[1].diagnostics?.kernelReports, ['refcount: refcount_t: underflow in vfio_pci_dma_buf_move']);
  t.is(classifyRun(probes, dedupByTitle(found)).class, 'kernel');
});

test('attribution is per report, then one entry per title per probe and per run, with counts', (t) => {
  const console = [
    '[   10.000000] hwlab-probe: begin 1 revoke-triggers',
    ...warning('   10.100000', 'dma_buf_invalidate_mappings'),
    ...warning('   10.200000', 'dma_buf_invalidate_mappings'),
    ...warning('   10.300000', 'dma_buf_invalidate_mappings'),
    '[   11.000000] hwlab-probe: end 1 revoke-triggers',
    ...warning('   11.500000', 'dma_buf_invalidate_mappings'),
    '[   12.000000] hwlab-probe: begin 2 stress',
    ...warning('   12.100000', 'dma_buf_invalidate_mappings'),
    ...warning('   12.200000', 'vfio_pci_dma_buf_move'),
    '[   13.000000] hwlab-probe: end 2 stress',
    '[   13.100000] hwlab-probe: begin 3 importer-refusals',
    '[   13.200000] hwlab-probe: end 3 importer-refusals',
  ].join('\n');
  const found = findConsoleReports(console);
  t.is(found.length, 6);
  const probes = [probe('revoke-triggers'), probe('stress'), probe('importer-refusals', { todo: 'known' })];
  attachKernelReports(probes, found, probeWindowsFromConsole(console));
  const run = dedupByTitle(found);
  t.deepEqual(probes.map((p) => p.kernelReports.map((r) => [r.title, r.count, r.line])), [
    [['WARNING in dma_buf_invalidate_mappings', 3, 2]],
    [['WARNING in dma_buf_invalidate_mappings', 1, 16], ['WARNING in vfio_pci_dma_buf_move', 1, 19]],
    [],
  ]);
  t.deepEqual(run.map((r) => [r.title, r.count]), [['WARNING in dma_buf_invalidate_mappings', 5], ['WARNING in vfio_pci_dma_buf_move', 1]]);
  t.deepEqual(probes[0].diagnostics?.kernelReports, ['WARNING: WARNING in dma_buf_invalidate_mappings (x3)']);
  // The one between the probes is what no probe accounts for.
  t.deepEqual(unattributedReports(run, probes).map((r) => [r.title, r.count]), [['WARNING in dma_buf_invalidate_mappings', 1]]);
  t.deepEqual(runReasons(probes, run).filter((r) => r.startsWith('kernel')), [
    'kernel WARNING: WARNING in dma_buf_invalidate_mappings (x5)',
    'kernel WARNING: WARNING in vfio_pci_dma_buf_move',
  ]);
});

test('a probe that only failed for a report in its window says so, not that it did not finish', (t) => {
  const console = ['[ 1.0] hwlab-probe: begin 1 stress', ...warning('    1.100000', 'dma_buf_invalidate_mappings'), ...warning('    1.200000', 'dma_buf_invalidate_mappings'), '[ 2.0] hwlab-probe: end 1 stress'].join('\n');
  const found = findConsoleReports(console);
  const probes = [probe('stress', { subtests: [{ id: 1, name: 'x', ok: true }] })];
  attachKernelReports(probes, found, probeWindowsFromConsole(console));
  t.deepEqual(runReasons(probes, dedupByTitle(found)), [
    'kernel WARNING: WARNING in dma_buf_invalidate_mappings (x2)',
    'probe stress failed: kernel reported WARNING in dma_buf_invalidate_mappings (x2) during it',
  ]);
});

test('a report in a window whose probe is not at that place in the results is not attached anywhere', (t) => {
  const probes = [probe('other')];
  attachKernelReports(probes, [report('w', 1.5)], [{ index: 1, probe: 'dmabuf-fd', startSec: 1, endSec: 2 }]);
  t.deepEqual(probes[0].kernelReports, []);
  t.true(probes[0].ok);
});
