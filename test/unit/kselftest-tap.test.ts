// kselftest's TAP 13 (run_kselftest.sh: one top-level point per program,
// the program's own TAP nested as "# " comments) into the results model, on
// streams captured from real guest runs (test/fixtures/kselftest/*.tap, the
// scratch build path shortened): nested points, SKIP with kselftest's reason
// (on a point, and for a whole program from what it printed), an expected
// failure, failing points with the program's exit code, and a stream cut off
// mid-program. No collection of 7.2's vfio, iommu, dmabuf-heaps or
// drivers/dma-buf selftests reports XFAIL, so that case is the format
// kselftest.h and ktap_helpers.sh print, written here.
import test from 'ava';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { markExpectedFailure, parseKselftestTap } from '../../src/results/kselftest.ts';
import { classifyRun } from '../../src/results/outcome.ts';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../fixtures/kselftest');
const fixture = (f: string) => readFileSync(path.join(dir, f), 'utf8');

test('a real run: five programs, nested points, a point SKIP and a program SKIP keep their reasons', (t) => {
  const { results, problems } = parseKselftestTap(fixture('vfio-nvme-and-shm0.tap'));
  t.deepEqual(problems, []);
  t.deepEqual(results.map((r) => [r.index, r.name, r.ok, r.subtests.length, r.skip ?? '']), [
    [1, 'vfio:vfio_pci_device_test', true, 5, ''],
    [2, 'vfio:vfio_iommufd_setup_test', true, 6, ''],
    [3, 'vfio:vfio_dma_mapping_mmio_test', true, 15, ''],
    [4, 'vfio:vfio_pci_driver_test', true, 0, 'No driver found for device 0000:02:00.0'],
    [5, 'vfio:vfio_pci_device_test', false, 5, ''],
  ]);
  t.deepEqual(results[0].subtests.map((s) => [s.id, s.name, s.ok, s.skip ?? '']), [
    [1, 'vfio_pci_device_test.config_space_read_write', true, ''],
    [2, 'vfio_pci_device_test.validate_bars', true, ''],
    [3, 'vfio_pci_device_test.reset', true, ''],
    [4, 'vfio_pci_irq_test.msi.enable_trigger_disable', true, 'MSI: not supported'],
    [5, 'vfio_pci_irq_test.msix.enable_trigger_disable', true, ''],
  ]);
  t.is(results[4].exitCode, 1);
  t.true(results[4].subtests.every((s) => !s.ok));
  // The lab's expect_fail turns the known failure into a TODO, points and all; the run passes.
  const before = classifyRun(results, []);
  t.is(before.class, 'fail');
  markExpectedFailure(results[4], 'known');
  t.deepEqual([results[4].ok, results[4].todo, results[4].subtests.every((s) => s.todo === 'known')], [true, 'known', true]);
  t.is(classifyRun(results, []).class, 'pass');
});

test('a real failing program: each failing point, the exit code, and the assertion it printed', (t) => {
  const { results } = parseKselftestTap(fixture('vfio-shm0-mmio-fails.tap'));
  const mmio = results.find((r) => r.name === 'vfio:vfio_dma_mapping_mmio_test')!;
  t.false(mmio.ok);
  t.is(mmio.exitCode, 1);
  t.is(mmio.subtests.length, 15);
  t.true(mmio.subtests.every((s) => !s.ok));
  // A program that fails before its own TAP starts (the library's assertion in device setup) still fails with a point.
  const driver = results.find((r) => r.name === 'vfio:vfio_pci_driver_test')!;
  t.deepEqual(driver.subtests.map((s) => [s.name, s.ok]), [['exits with success or skip (exited 1)', false]]);
  t.regex(String(driver.subtests[0].diagnostics?.output), /munmap\(map_align \+ size, map_base \+ align - map_align\) == 0/);
  const o = classifyRun(results, []);
  t.is(o.class, 'fail');
  t.regex(o.detail, /selftest vfio:vfio_dma_mapping_mmio_test failed: vfio_dma_mapping_mmio_test\.vfio_type1_iommu\.map_full_bar/);
});

test('a stream cut off inside a program: the programs before keep their results, the cut one fails as interrupted with its points so far', (t) => {
  const { results, problems } = parseKselftestTap(fixture('vfio-truncated.tap'));
  t.deepEqual(results.map((r) => [r.name, r.ok]), [
    ['vfio:vfio_pci_device_test', true], ['vfio:vfio_iommufd_setup_test', true], ['vfio:vfio_dma_mapping_mmio_test', false],
  ]);
  const cut = results[2];
  t.regex(String(cut.diagnostics?.error), /interrupted: no result line/);
  t.is(cut.subtests.length, 5);
  t.true(cut.subtests.every((s) => s.ok));
  t.deepEqual(problems, ['stream ended inside vfio:vfio_dma_mapping_mmio_test']);
  // Without a failing point or a kernel report the run is the host's or emulator's (infra), never a pass.
  t.is(classifyRun(results, []).class, 'infra');
});

test('XFAIL as kselftest prints it: on a point (kselftest.h) and for a program (runner.sh); neither fails the run', (t) => {
  const tap = [
    'TAP version 13', '1..2',
    '# timeout set to 45', '# selftests: x: prog_a',
    '# TAP version 13', '# 1..2', '# ok 1 a.one', '# ok 2 a.two # XFAIL not on this IOMMU', '# # Totals: pass:1 fail:0 xfail:1 xpass:0 skip:0 error:0',
    'ok 1 selftests: x: prog_a',
    '# selftests: x: prog_b', '# TAP version 13', '# 1..1', '# ok 1 b # XFAIL known race', 'ok 2 selftests: x: prog_b # XFAIL',
    '',
  ].join('\n');
  const { results, problems } = parseKselftestTap(tap);
  t.deepEqual(problems, []);
  t.deepEqual(results[0].subtests.map((s) => [s.name, s.ok, s.todo ?? '']), [['a.one', true, ''], ['a.two', true, 'XFAIL: not on this IOMMU']]);
  t.deepEqual([results[1].ok, results[1].todo], [true, 'XFAIL: known race']);
  t.is(classifyRun(results, []).class, 'pass');
});

test('what runner.sh says about a program: TIMEOUT and a missing result are failures with a point of their own; no version line is a stream problem', (t) => {
  const { results, problems } = parseKselftestTap('1..2\n# selftests: iommu: iommufd\n# TAP version 13\n# 1..9\n# ok 1 x\nnot ok 1 selftests: iommu: iommufd # TIMEOUT 45 seconds\n# selftests: a: b\nnot ok 2 selftests: a: b\n');
  t.deepEqual(results.map((r) => r.subtests.map((s) => [s.name, s.ok])), [
    [['x', true], ["finishes within kselftest's timeout (45 seconds)", false]],
    [['runs (run_kselftest.sh reported it not ok)', false]],
  ]);
  t.regex(String(results[0].diagnostics?.error), /timed out: kselftest's timeout of 45 seconds/);
  t.deepEqual(results[0].diagnostics?.tapErrors, ['incorrect number of tests']);
  t.deepEqual(problems, ["no 'TAP version' line: kselftest output missing or garbled"]);
});
