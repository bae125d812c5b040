// The selftest phase on the fake machine backend: each planned test runs
// through the wrapper with its endpoints' BDFs, a hung test is killed at its
// timeout with the blocked tasks and its stacks and the rest still run, a
// kernel report inside a test's markers belongs to that test, and the
// outcome class follows the same rules as for probes (SKIP and XFAIL pass,
// a failure fails, a report is `kernel`).
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLab } from '../../src/lab/load.ts';
import { FakeBackend, type FakeInstance, type FakeScript } from '../../src/machine/fake.ts';
import { runOnMachine } from '../../src/run/on-machine.ts';
import type { PreparedLab } from '../../src/run/prepare.ts';
import { FAKE_PREPARED } from './helpers/fake-prepared.ts';
import type { RunResults } from '../../src/results/report.ts';
import { formatResultTable } from '../../src/results/report.ts';
import { planSelftests, parseKselftestList } from '../../src/selftests/plan.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

const lab = parseLab(`kernel: { debian: linux-source-7.2 }
image: bookworm
topology:
  root_ports: [rp0, rp1]
  endpoints:
    - { id: shm0, type: ivshmem-plain, port: rp0 }
    - { id: nvme0, type: nvme, port: rp1 }
selftests:
  timeout: 30
  tests:
    - { collection: vfio, test: vfio_pci_device_test, devices: [nvme0] }
    - { collection: vfio, test: vfio_pci_driver_test, devices: [shm0] }
    - { collection: iommu, test: iommufd, timeout: 0.3 }
    - { collection: drivers/dma-buf, test: udmabuf }
`, path.join(repo, 'test/fixtures/labs/inline.yaml'));

const LIST = 'vfio:vfio_pci_device_test\nvfio:vfio_pci_driver_test\niommu:iommufd\ndrivers/dma-buf:udmabuf\n';

const prepared: PreparedLab = {
  ...FAKE_PREPARED,
  selftests: {
    built: { installDir: '/fake/install', tarball: '/fake/kselftest.tar.gz', list: LIST, collections: ['vfio', 'iommu', 'drivers/dma-buf'], cacheKey: 'st', built: false },
    plan: planSelftests(lab.selftests!, parseKselftestList(LIST)),
  },
};

/** run_kselftest.sh's output for one test, with the program's own lines nested. */
const ksft = (c: string, tname: string, inner: string[], result: string) =>
  `TAP version 13\n1..1\n# timeout set to 90\n# selftests: ${c}: ${tname}\n${inner.map((l) => (l ? `# ${l}` : '#')).join('\n')}\n${result}\n`;

const DEVICE_TEST = ksft('vfio', 'vfio_pci_device_test', [
  'TAP version 13', '1..3', '# Starting 3 tests from 2 test cases.',
  'ok 1 vfio_pci_device_test.config_space_read', 'ok 2 vfio_pci_device_test.dma_buf # XFAIL not on this kernel',
  'ok 3 vfio_pci_irq_test.msi.enable # SKIP MSI: not supported', '# PASSED: 3 / 3 tests passed.', '# Totals: pass:1 fail:0 xfail:1 xpass:0 skip:1 error:0',
], 'ok 1 selftests: vfio: vfio_pci_device_test');
const DRIVER_SKIP = ksft('vfio', 'vfio_pci_driver_test', ['TAP version 13', '1..0 # SKIP No driver found for device 0000:01:00.0'], 'ok 1 selftests: vfio: vfio_pci_driver_test # SKIP');
const UDMABUF = ksft('drivers/dma-buf', 'udmabuf', ['TAP version 13', '1..2', 'ok 1 udmabuf: create', 'not ok 2 udmabuf: [FAIL,test-2]'], 'not ok 1 selftests: drivers/dma-buf: udmabuf # exit=1');

async function run(t: { teardown: (fn: () => Promise<void>) => void }, script: FakeScript): Promise<{ results: RunResults; m: FakeInstance; runDir: string }> {
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-fake-selftests-'));
  t.teardown(() => rm(runDir, { recursive: true, force: true }));
  const backend = new FakeBackend(script);
  const results = await runOnMachine({ lab, prepared, runDir, progress: silentProgress(), privateKey: 'key', startedAt: Date.now(), timings: {} }, backend);
  return { results, m: backend.instances[0] as FakeInstance, runDir };
}

const hanging: FakeScript['selftests'] = {
  // run_kselftest.sh outlives the killed program and reports it, as it did in a real guest.
  'iommu:iommufd': {
    steps: [{ stdout: 'TAP version 13\n1..1\n# timeout set to 90\n# selftests: iommu: iommufd\n# TAP version 13\n# 1..2\n# ok 1 iommufd.simple_close\n' }, { hang: true }],
    afterKill: 'not ok 1 selftests: iommu: iommufd # exit=137\n',
  },
};

test('every test runs through the wrapper with its BDFs; a hung one is killed with the stacks and the rest still run', async (t) => {
  const { results, m, runDir } = await run(t, {
    selftests: {
      'vfio:vfio_pci_device_test': { steps: [{ stdout: DEVICE_TEST }] },
      'vfio:vfio_pci_driver_test': { steps: [{ stdout: DRIVER_SKIP }], exit: 4 },
      ...hanging,
      'drivers/dma-buf:udmabuf': { steps: [{ stdout: UDMABUF }], exit: 1 },
    },
    blockedTasks: 'task iommufd tid 300 state D (disk sleep)\n  [<0>] iommufd_fops_release+0x10/0x20',
    selftestStacks: 'pid 300 iommufd state D wchan iommufd_fops_release',
  });
  const runs = m.calls.map((c) => c.argv).filter((a) => a[0] === '/run/hwlab/kselftest/hwlab-run-one.sh');
  // nvme0 is the second endpoint: bus 2 in the fake's layout; iommufd is given no device.
  t.deepEqual(runs.filter((a) => a.length > 2).map((a) => a.slice(1, 4).concat(a.slice(5)).join(' ')), [
    '1 vfio vfio_pci_device_test KSELFTEST_VFIO_PCI_DEVICE_TEST_ARGS 0000:02:00.0',
    '2 vfio vfio_pci_driver_test KSELFTEST_VFIO_PCI_DRIVER_TEST_ARGS 0000:01:00.0',
    '3 iommu iommufd KSELFTEST_IOMMUFD_ARGS',
    '4 drivers/dma-buf udmabuf KSELFTEST_UDMABUF_ARGS',
  ]);
  t.true(runs.some((a) => a[1] === '--stacks') && runs.some((a) => a[1] === '--kill'), 'stacks listed, then killed');
  // Both endpoints the selftests take were bound to vfio-pci, in one guest command.
  const binds = m.calls.filter((c) => c.argv[0] === 'sh' && c.argv[2].includes('vfio-pci >'));
  t.is(binds.length, 1);
  t.is(binds[0].argv.slice(4).length, 2);
  const st = results.selftests!;
  t.deepEqual(st.map((s) => [s.name, s.ok, s.skip ?? '', s.todo ?? '']), [
    ['vfio:vfio_pci_device_test', true, '', ''],
    ['vfio:vfio_pci_driver_test', true, 'No driver found for device 0000:01:00.0', ''],
    ['iommu:iommufd', false, '', ''],
    ['drivers/dma-buf:udmabuf', false, '', ''],
  ]);
  t.deepEqual(st[0].subtests.map((s) => [s.name, s.skip ?? '', s.todo ?? '']), [
    ['vfio_pci_device_test.config_space_read', '', ''], ['vfio_pci_device_test.dma_buf', '', 'XFAIL: not on this kernel'], ['vfio_pci_irq_test.msi.enable', 'MSI: not supported', ''],
  ]);
  t.deepEqual(st[0].devices, ['nvme0']);
  const hung = st[2];
  t.regex(String(hung.diagnostics?.error), /timed out: no result after 0.3 s; hwlab killed it/);
  t.regex(String(hung.diagnostics?.blockedTasks), /iommufd_fops_release/);
  t.regex(String(hung.diagnostics?.testStacks), /pid 300 iommufd state D/);
  t.deepEqual(hung.subtests.map((s) => [s.name, s.ok]), [['iommufd.simple_close', true], ["finishes within kselftest's timeout (0.3 seconds)", false]]);
  t.is(st[3].exitCode, 1);
  t.is(results.outcome.class, 'fail');
  t.regex(results.outcome.detail, /selftest iommu:iommufd failed: finishes within/);
  t.regex(results.outcome.detail, /selftest drivers\/dma-buf:udmabuf failed: udmabuf: \[FAIL,test-2\]/);
  const tap = await readFile(path.join(runDir, 'selftests.tap'), 'utf8');
  t.regex(tap, /^TAP version 13\n1\.\.4\n/);
  // The wrapper's report of hwlab's kill (exit=137) is kept as a comment; the result is the timeout.
  t.regex(tap, /# hwlab: after the kill, hwlab-run-one.sh reported: not ok 3 selftests: iommu: iommufd # exit=137\n# hwlab: killed at its timeout of 0.3 s\nnot ok 3 selftests: iommu: iommufd # TIMEOUT 0.3 seconds\n/);
  t.regex(tap, /not ok 4 selftests: drivers\/dma-buf: udmabuf # exit=1/);
  const table = formatResultTable(results);
  t.regex(table, /SELFTEST +SUBTESTS +STATUS/);
  t.regex(table, /SKIP vfio:vfio_pci_driver_test: No driver found for device 0000:01:00.0/);
  t.false(/^PROBE/m.test(table), 'a lab of selftests alone has no probe table');
  t.is(results.probes.length, 0);
  t.false(m.calls.some((c) => c.argv[0] === 'node'), 'no probe runner for a lab without probes');
});

test('SKIP and XFAIL pass the run; a kernel report inside a test belongs to it and makes the run `kernel`', async (t) => {
  const pass = await run(t, {
    selftests: {
      'vfio:vfio_pci_device_test': { steps: [{ stdout: DEVICE_TEST }] },
      'vfio:vfio_pci_driver_test': { steps: [{ stdout: DRIVER_SKIP }], exit: 4 },
      'iommu:iommufd': { steps: [{ stdout: ksft('iommu', 'iommufd', ['TAP version 13', '1..1', 'ok 1 iommufd.x'], 'ok 1 selftests: iommu: iommufd') }] },
      'drivers/dma-buf:udmabuf': { steps: [{ stdout: ksft('drivers/dma-buf', 'udmabuf', ['1..1', 'ok 1 a # XFAIL known'], 'ok 1 selftests: drivers/dma-buf: udmabuf # XFAIL') }], exit: 2 },
    },
  });
  t.is(pass.results.outcome.class, 'pass', pass.results.outcome.detail);
  t.is(pass.results.selftests![3].todo, 'XFAIL: known');

  const warn = await run(t, {
    selftests: {
      'iommu:iommufd': {
        steps: [
          { stdout: 'TAP version 13\n1..1\n# selftests: iommu: iommufd\n# 1..1\n' },
          { console: 'WARNING: CPU: 0 PID: 250 at drivers/iommu/iommufd/selftest.c:100 mock_domain_free+0x20/0x30' },
          { console: '---[ end trace 0000000000000000 ]---' },
          { stdout: '# ok 1 iommufd.x\nok 1 selftests: iommu: iommufd\n' },
        ],
      },
    },
  });
  t.is(warn.results.outcome.class, 'kernel', warn.results.outcome.detail);
  const st = warn.results.selftests!.find((s) => s.name === 'iommu:iommufd')!;
  t.is(st.kernelReports.length, 1);
  t.regex(st.kernelReports[0].title, /mock_domain_free/);
  t.false(st.ok);
  t.true(warn.results.selftests!.filter((s) => s !== st).every((s) => s.kernelReports.length === 0));
});

test('the guest dying mid-test keeps the tests before, fails the one cut off and reports the rest as not run', async (t) => {
  const { results } = await run(t, {
    selftests: {
      'vfio:vfio_pci_driver_test': { steps: [{ stdout: 'TAP version 13\n1..1\n# selftests: vfio: vfio_pci_driver_test\n# TAP version 13\n# 1..4\n# ok 1 a\n' }, { console: 'Kernel panic - not syncing: Fatal exception' }, { die: { code: 0, signal: null } }] },
    },
  });
  const st = results.selftests!;
  t.deepEqual(st.map((s) => [s.name, s.ok, s.notRun !== undefined]), [
    ['vfio:vfio_pci_device_test', true, false],
    ['vfio:vfio_pci_driver_test', false, false],
    ['iommu:iommufd', false, true],
    ['drivers/dma-buf:udmabuf', false, true],
  ]);
  t.regex(String(st[1].diagnostics?.error), /interrupted/);
  t.is(results.failure?.phase, 'selftests');
  t.is(results.outcome.class, 'kernel');
  t.regex(results.outcome.detail, /2 selftest\(s\) not run: iommu:iommufd, drivers\/dma-buf:udmabuf/);
});
