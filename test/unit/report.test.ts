import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { classifyRun } from '../../src/results/outcome.ts';
import { formatResultTable, writeRunResults, type RunResults } from '../../src/results/report.ts';
import type { Splat } from '../../src/results/splat.ts';
import { parseProbeTap, TAP_STREAM_PROBE, type ProbeResult } from '../../src/results/tap.ts';

const probe = (name: string, extra: Partial<ProbeResult> = {}): ProbeResult => ({ name, ok: true, subtests: [], splats: [], ...extra });
const splat: Splat = {
  kind: 'WARNING',
  title: 'WARNING in vfio_pci_dma_buf_move',
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
  const out = formatResultTable({ probes, splats: [splat], outcome: classifyRun(probes, [splat]) });
  const rows = out.split('\n');
  t.regex(rows[0], /^PROBE\s+SUBTESTS\s+STATUS\s+DURATION$/);
  t.regex(out, /^bar-mmap\s+1\/1\s+PASS\s+3\.0ms$/m);
  t.regex(out, /^dmabuf-move\s+1\/2\s+FAIL\s+1\.50s$/m);
  t.regex(out, /^p2p-nvme\s+-\s+SKIP\s+-$/m);
  t.regex(out, /^known-bad\s+0\/1\s+TODO\s+-$/m);
  t.regex(out, /^ {2}not ok 2 - move_notify revokes mapping$/m);
  t.regex(out, /^ {6}errno: EFAULT$/m);
  t.regex(out, /^SPLAT WARNING: WARNING in vfio_pci_dma_buf_move {2}\[console line 812\]$/m);
  t.true(out.includes('vfio_pci_core.c:1234'));
  t.true(out.includes('... (6 more lines)'));
  t.regex(out, /^outcome: KERNEL: WARNING in vfio_pci_dma_buf_move$/m);
  t.regex(out, /^ {2}- probe dmabuf-move failed: move_notify revokes mapping$/m);
  // Details come after the table, not interleaved.
  t.true(out.indexOf('not ok 2') > out.indexOf('known-bad'));
});

test('the tap-stream failure row shows as FAIL with its reasons', (t) => {
  const probes = parseProbeTap('TAP version 14\n1..2\n# Subtest: a\n    1..1\n    ok 1 - x\nok 1 - a\n');
  const out = formatResultTable({ probes, splats: [] });
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
      outcome: classifyRun(probes, [splat]),
      kernel: { kind: 'stock', package: 'linux-image-7.2.3+deb14-amd64', version: '7.2.3-1', release: '7.2.3+deb14-amd64' },
      machine: { backend: 'qemu', accel: 'tcg', accelNote: '/dev/kvm not accessible' },
      probes,
      splats: [splat],
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

test('a splat between a probe\'s kmsg markers is attached to that probe and fails it; others stay as they were', async (t) => {
  const { attachSplatsToProbes } = await import('../../src/results/report.ts');
  const { findSplats, probeWindowsFromConsole } = await import('../../src/results/splat.ts');
  const console = [
    '[    5.100000] hwlab-init: sshd started',
    '[    9.000000] hwlab-probe: begin 1 dmabuf-export',
    '[    9.200000] hwlab-probe: end 1 dmabuf-export',
    '[    9.300000] hwlab-probe: begin 2 reset-and-mem-toggle',
    '[    9.400000] ------------[ cut here ]------------',
    '[    9.400100] refcount_t: underflow; use-after-free.',
    '[    9.400200] WARNING: CPU: 1 PID: 301 at lib/refcount.c:28 refcount_warn_saturate+0x5d/0x110',
    '[    9.400300] Modules linked in: vfio_pci vfio_pci_core vfio_iommu_type1 vfio',
    '[    9.400400] ---[ end trace 0000000000000000 ]---',
    '[    9.500000] hwlab-probe: end 2 reset-and-mem-toggle',
    '[    9.600000] hwlab-probe: begin 3 dmabuf-fd',
    '[    9.700000] hwlab-probe: end 3 dmabuf-fd',
  ].join('\n');
  const splats = findSplats(console);
  t.is(splats.length, 1);
  const windows = probeWindowsFromConsole(console);
  t.deepEqual(windows.map((w) => w.probe), ['1 dmabuf-export', '2 reset-and-mem-toggle', '3 dmabuf-fd']);
  const probes = [probe('dmabuf-export'), probe('reset-and-mem-toggle'), probe('dmabuf-fd')];
  attachSplatsToProbes(probes, splats, windows);
  t.deepEqual(probes.map((p) => [p.name, p.ok, p.splats.length]), [['dmabuf-export', true, 0], ['reset-and-mem-toggle', false, 1], ['dmabuf-fd', true, 0]]);
  t.deepEqual(probes[1].diagnostics?.kernelSplats, ['refcount: refcount_t: underflow; use-after-free.']);
  t.is(classifyRun(probes, splats).class, 'kernel');
});

test('a probe whose end marker never came (guest died) owns everything after its begin', async (t) => {
  const { probeWindowsFromConsole } = await import('../../src/results/splat.ts');
  const w = probeWindowsFromConsole('[ 1.0] hwlab-probe: begin 1 dmabuf-fd\n[ 2.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n');
  t.deepEqual(w, [{ probe: '1 dmabuf-fd', startSec: 1, endSec: Number.POSITIVE_INFINITY }]);
});
