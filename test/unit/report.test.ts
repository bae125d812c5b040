import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { classifyRun } from '../../src/results/outcome.ts';
import { formatResultTable, writeRunResults, type RunResults } from '../../src/results/report.ts';
import type { KernelReport } from '../../src/report/kernel-report.ts';
import { parseProbeTap, TAP_STREAM_PROBE, type ProbeResult } from '../../src/results/tap.ts';

const probe = (name: string, extra: Partial<ProbeResult> = {}): ProbeResult => ({ name, ok: true, subtests: [], kernelReports: [], ...extra });
const warning: KernelReport = {
  kind: 'WARNING',
  title: 'WARNING in vfio_pci_dma_buf_move',
  count: 899,
  line: 812,
  timestampSec: 50.1,
  fatal: false,
  excerpt: [
    '[   50.100000] ------------[ cut here ]------------',
    '[   50.100001] WARNING: CPU: 1 PID: 301 at drivers/vfio/pci/vfio_pci_core.c:1234 vfio_pci_dma_buf_move+0x12/0x40 [vfio_pci_core]',
    ...Array.from({ length: 12 }, (_, i) => `[   50.1000${10 + i}]  frame_${i}+0x1/0x2`),
  ].join('\n'),
};

test('table lists every probe with counts, status and duration; details below', (t) => {
  const probes: ProbeResult[] = [
    probe('bar-mmap', { durationMs: 3, subtests: [{ id: 1, name: 'mmap', ok: true }] }),
    probe('dmabuf-move', {
      ok: false,
      durationMs: 1500,
      subtests: [
        { id: 1, name: 'export', ok: true },
        { id: 2, name: 'move_notify revokes mapping', ok: false, diagnostics: { errno: 'EFAULT', found: -14 } },
      ],
    }),
    probe('p2p-nvme', { skip: 'no CMB' }),
    probe('known-bad', { todo: 'fails on 7.2', subtests: [{ id: 1, name: 'revoke', ok: false, todo: 'fails on 7.2' }] }),
  ];
  probes[1].kernelReports = [{ ...warning, count: 3 }];
  const out = formatResultTable({ probes, kernelReports: [warning], outcome: classifyRun(probes, [warning]) });
  const rows = out.split('\n');
  t.regex(rows[0], /^PROBE\s+SUBTESTS\s+STATUS\s+DURATION$/);
  t.regex(out, /^bar-mmap\s+1\/1\s+PASS\s+3\.0ms$/m);
  t.regex(out, /^dmabuf-move\s+1\/2\s+FAIL\s+1\.50s$/m);
  t.regex(out, /^p2p-nvme\s+-\s+SKIP\s+-$/m);
  t.regex(out, /^known-bad\s+0\/1\s+TODO\s+-$/m);
  t.regex(out, /^ {2}not ok 2 - move_notify revokes mapping$/m);
  t.regex(out, /^ {6}errno: EFAULT$/m);
  t.regex(out, /^KERNEL REPORT WARNING: WARNING in vfio_pci_dma_buf_move \(x899\) {2}\[first at console line 812\]$/m);
  t.regex(out, /^ {2}kernel WARNING: WARNING in vfio_pci_dma_buf_move \(x3\) \(first at console line 812\)$/m);
  t.regex(out, /^ {2}- kernel WARNING: WARNING in vfio_pci_dma_buf_move \(x899\)$/m);
  // Each title once, however many times it came.
  t.is(out.split('vfio_pci_core.c:1234').length - 1, 1);
  t.true(out.includes('vfio_pci_core.c:1234'));
  t.true(out.includes('... (6 more lines)'));
  t.regex(out, /^outcome: KERNEL: WARNING in vfio_pci_dma_buf_move \(x899\)$/m);
  t.regex(out, /^ {2}- probe dmabuf-move failed: move_notify revokes mapping$/m);
  // Details come after the table, not interleaved.
  t.true(out.indexOf('not ok 2') > out.indexOf('known-bad'));
});

test('the tap-stream failure row shows as FAIL with its reasons', (t) => {
  const probes = parseProbeTap('TAP version 14\n1..2\n# Subtest: a\n    1..1\n    ok 1 - x\nok 1 - a\n');
  const out = formatResultTable({ probes, kernelReports: [] });
  t.regex(out, new RegExp(`^${TAP_STREAM_PROBE.replace(/[()]/g, '\\$&')}\\s+-\\s+FAIL`, 'm'));
  t.true(out.includes('incorrect number of tests: planned 2, got 1'));
});

test('writeRunResults writes results.json that round-trips', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'hwlab-report-'));
  try {
    const probes = [probe('a')];
    const results: RunResults = {
      lab: 'dmabuf-ivshmem',
      startedAt: '2026-10-01T12:00:00.000Z',
      outcome: classifyRun(probes, [warning]),
      kernel: { kind: 'stock', package: 'linux-image-7.2.3+deb14-amd64', version: '7.2.3-1', release: '7.2.3+deb14-amd64' },
      machine: { backend: 'qemu', accel: 'tcg', accelNote: '/dev/kvm not accessible' },
      probes,
      kernelReports: [warning],
      timings: { bootMs: 4200, probesMs: 800 },
      runDir: dir,
    };
    const file = await writeRunResults(join(dir, 'run-1'), results);
    t.is(file, join(dir, 'run-1', 'results.json'));
    t.deepEqual(JSON.parse(await readFile(file, 'utf8')), results);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
