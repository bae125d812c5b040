import test from 'ava';
import { readFileSync } from 'node:fs';
import { attributeSplats, findSplats, type Splat } from '../../src/results/splat.ts';

const fixture = (name: string) =>
  readFileSync(new URL(`../fixtures/console/${name}`, import.meta.url), 'utf8');

interface Expect {
  kind: Splat['kind'];
  title: string;
  line: number;
  fatal: boolean;
}

// Real console excerpts (see test/fixtures/console/SOURCES.md) and what each must yield.
const CASES: Record<string, Expect[]> = {
  'warning-newfmt.txt': [{ kind: 'WARNING', title: 'WARNING in fast_dput', line: 1, fatal: false }],
  'refcount-underflow.txt': [{ kind: 'refcount', title: 'refcount_t: underflow; use-after-free.', line: 1, fatal: true }],
  'refcount-warn-first.txt': [{ kind: 'refcount', title: 'refcount_t: underflow; use-after-free.', line: 4, fatal: true }],
  'kasan-uaf.txt': [{ kind: 'KASAN', title: 'KASAN: slab-use-after-free Read in xas_start', line: 1, fatal: false }],
  'gpf-oops.txt': [{ kind: 'Oops', title: 'general protection fault in __se_sys_mremap', line: 1, fatal: true }],
  'lockdep-circular.txt': [
    { kind: 'lockdep', title: 'possible circular locking dependency detected in flush_workqueue', line: 1, fatal: false },
  ],
  'hung-task-twice.txt': [
    { kind: 'hung task', title: 'INFO: task hung in mount_bdev', line: 1, fatal: false },
    { kind: 'hung task', title: 'INFO: task hung in mount_bdev', line: 28, fatal: false },
  ],
  'rcu-stall.txt': [{ kind: 'RCU stall', title: 'INFO: rcu_sched self-detected stall on CPU', line: 1, fatal: false }],
  'panic-init.txt': [
    { kind: 'panic', title: 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b', line: 2, fatal: true },
  ],
  'null-deref.txt': [
    { kind: 'BUG', title: 'BUG: kernel NULL pointer dereference in kernfs_find_and_get_ns', line: 4, fatal: true },
  ],
  'null-deref-endtrace.txt': [{ kind: 'BUG', title: 'BUG: kernel NULL pointer dereference', line: 1, fatal: true }],
  'kernel-bug-vfio.txt': [{ kind: 'BUG', title: 'kernel BUG in vfio_iommu_type1_ioctl', line: 1, fatal: true }],
  'dma-api.txt': [{ kind: 'DMA-API', title: 'DMA-API: device driver maps memory from stack', line: 1, fatal: false }],
  'dma-api-warn-first.txt': [
    { kind: 'DMA-API', title: 'DMA-API: device driver frees DMA memory with different size', line: 1, fatal: false },
  ],
  'clean-boot.txt': [],
};

for (const [file, expected] of Object.entries(CASES)) {
  test(`${file}: kind, title, line`, (t) => {
    const got = findSplats(fixture(file)).map(({ kind, title, line, fatal }) => ({ kind, title, line, fatal }));
    t.deepEqual(got, expected);
  });
}

test('excerpt starts at the reported line and carries the timestamp', (t) => {
  const text = fixture('null-deref.txt');
  const [s] = findSplats(text);
  const lines = text.split('\n');
  t.is(s.excerpt.split('\n')[0], lines[s.line - 1]);
  t.is(s.timestampSec, 4.316079);
  // The interleaved fbcon line is inside the report, the boot lines before it are not.
  t.true(s.excerpt.includes('fbcon: Taking over console'));
  t.false(s.excerpt.includes('enable_guc'));
});

test('end trace closes the block; the Fatal exception panic after it is merged, not a second splat', (t) => {
  const splats = findSplats(fixture('null-deref-endtrace.txt'));
  t.is(splats.length, 1);
  t.true(splats[0].excerpt.includes('---[ end trace e25748bb637f10e1 ]---'));
  t.true(splats[0].excerpt.endsWith('Kernel panic - not syncing: Fatal exception'));
});

test('excerpts are capped', (t) => {
  const many = Array.from({ length: 200 }, (_, i) => `[  10.${String(i).padStart(6, '0')}]  frame_${i}+0x1/0x2`);
  const text = ['[  10.000000] ------------[ cut here ]------------', '[  10.000001] WARNING: CPU: 0 PID: 1 at drivers/vfio/pci/vfio_pci_core.c:1234 vfio_pci_dma_buf_move+0x12/0x40 [vfio_pci_core]', ...many].join('\n');
  const [s] = findSplats(text);
  t.is(s.title, 'WARNING in vfio_pci_dma_buf_move');
  t.true(s.excerpt.split('\n').length <= 60);
});

test('two WARNINGs separated by end markers are two splats, in order', (t) => {
  const one = [
    '[   50.100000] ------------[ cut here ]------------',
    '[   50.100001] WARNING: CPU: 1 PID: 301 at drivers/vfio/pci/vfio_pci_core.c:1234 vfio_pci_dma_buf_move+0x12/0x40 [vfio_pci_core]',
    '[   50.100002] Modules linked in: vfio_pci vfio_pci_core',
    '[   50.100003] CPU: 1 UID: 0 PID: 301 Comm: hwlab-probe Not tainted 7.2.3+deb14-amd64 #1 PREEMPT(lazy) Debian 7.2.3-1',
    '[   50.100004] ---[ end trace 0000000000000000 ]---',
  ];
  const two = one.map((l) => l.replace('50.1', '61.2').replace('vfio_pci_dma_buf_move', 'vfio_pci_core_close_device'));
  const text = ['[   49.000000] vfio-pci 0000:01:00.0: enabling device (0000 -> 0002)', ...one, '[   55.000000] hwlab-init[212]: next probe', ...two].join('\n');
  const s = findSplats(text);
  t.deepEqual(
    s.map((x) => [x.title, x.line, x.timestampSec]),
    [
      ['WARNING in vfio_pci_dma_buf_move', 2, 50.1],
      ['WARNING in vfio_pci_core_close_device', 8, 61.2],
    ],
  );
});

test('console without printk timestamps still parses, with CRLF line ends', (t) => {
  const text = 'Booting\r\nBUG: KASAN: use-after-free in vfio_pci_dma_buf_release+0x2c/0x90\r\nWrite of size 4 at addr ffff888004f1a2c0 by task hwlab-probe/301\r\n';
  const [s] = findSplats(text);
  t.is(s.kind, 'KASAN');
  t.is(s.title, 'KASAN: use-after-free Write in vfio_pci_dma_buf_release');
  t.is(s.line, 2);
  t.is(s.timestampSec, undefined);
});

test('attributeSplats puts each splat in the probe window that holds its timestamp', (t) => {
  const mk = (title: string, ts?: number): Splat => ({ kind: 'WARNING', title, line: 1, fatal: false, excerpt: title, timestampSec: ts });
  const splats = [mk('boot', 1.2), mk('in-a', 10.5), mk('edge-b', 20), mk('in-b', 25), mk('after', 99), mk('no-ts')];
  const { byProbe, unattributed } = attributeSplats(splats, [
    { probe: 'a', startSec: 10, endSec: 19.9 },
    { probe: 'b', startSec: 20, endSec: 30 },
  ]);
  t.deepEqual(byProbe.get('a')?.map((s) => s.title), ['in-a']);
  t.deepEqual(byProbe.get('b')?.map((s) => s.title), ['edge-b', 'in-b']);
  t.deepEqual(unattributed.map((s) => s.title), ['boot', 'after', 'no-ts']);
});
