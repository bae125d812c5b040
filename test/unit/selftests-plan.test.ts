// The lab's `selftests:` section (schema, cross-checks, locations), what a
// collection's config file asks of the kernel config, the plan against the
// kernel tree's Makefiles and the built kselftest-list.txt, and how a test's
// BDFs reach it (kselftest's KSELFTEST_<NAME>_ARGS). The collection files
// are real 7.2 excerpts (test/fixtures/kselftest/tree).
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLab } from '../../src/lab/load.ts';
import { YamlError } from '../../src/util/yaml.ts';
import { InputError } from '../../src/util/errors.ts';
import { formatUnmet, unmetSelftestSymbols } from '../../src/selftests/config.ts';
import { checkSelftestsAgainstTree, makefileTestNames, parseKselftestList, planSelftests } from '../../src/selftests/plan.ts';
import { kselftestArgsVar, formatSelftestMarker, parseSelftestMarker } from '../../src/protocol/protocol.ts';
import { joinedPart, selftestArgv, KSELFTEST_BACKSTOP_SEC } from '../../src/run/selftest-phase.ts';
import { selftestsKey } from '../../src/selftests/build.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const tree = path.join(repo, 'test/fixtures/kselftest/tree');
const labFile = path.join(repo, 'test/fixtures/labs/inline.yaml');

const LAB = `kernel: { debian: linux-source-7.2 }
image: bookworm
topology:
  root_ports: [rp0, rp1]
  endpoints:
    - { id: shm0, type: ivshmem-plain, port: rp0 }
    - { id: nvme0, type: nvme, port: rp1 }
`;

function yamlError(fn: () => unknown): YamlError {
  try {
    fn();
  } catch (e) {
    if (e instanceof YamlError) return e;
    throw e;
  }
  throw new Error('expected a YamlError');
}

test('selftests: entries with defaults, devices by endpoint id, each located in the file', (t) => {
  const lab = parseLab(`${LAB}selftests:
  timeout: 90
  tests:
    - { collection: vfio, test: vfio_pci_device_test, devices: [nvme0] }
    - { collection: iommu, timeout: 900, expect_fail: "known" }
`, labFile);
  t.deepEqual(lab.selftests?.map(({ at, ...s }) => s), [
    { collection: 'vfio', test: 'vfio_pci_device_test', devices: ['nvme0'], timeoutSec: 90 },
    { collection: 'iommu', devices: [], timeoutSec: 900, expectFail: 'known' },
  ]);
  t.regex(lab.selftests![1].at, /inline\.yaml:12:7$/);
  // A lab without the section carries no selftest keys at all.
  t.false('selftests' in parseLab(LAB, labFile));
});

test('selftests: bad names, unknown endpoints and a prebuilt kernel are refused with file:line and field', (t) => {
  const err = yamlError(() => parseLab(`${LAB}selftests:
  tests:
    - { collection: "vfio; reboot" }
    - { collection: vfio, test: "a b" }
    - { collection: vfio, tests: x }
`, labFile));
  const msg = err.message;
  t.regex(msg, /inline\.yaml:10:\d+: selftests\.tests\[0\]\.collection: must be a directory under tools\/testing\/selftests/);
  t.regex(msg, /inline\.yaml:11:\d+: selftests\.tests\[1\]\.test: must be the name of a test program/);
  t.regex(msg, /inline\.yaml:12:\d+: selftests\.tests\[2\]\.tests: unknown key "tests" \(allowed: collection, test, devices, timeout, expect_fail\)/);
  // Cross-references are checked once the file has the right shape, all at once too.
  const refs = yamlError(() => parseLab(`${LAB}selftests:\n  tests:\n    - { collection: vfio, devices: [nvme1, rp0] }\n`, labFile)).message;
  t.regex(refs, /inline\.yaml:10:\d+: selftests\.tests\[0\]\.devices\[0\]: no endpoint "nvme1" \(endpoints: shm0, nvme0\)/);
  t.regex(refs, /inline\.yaml:10:\d+: selftests\.tests\[0\]\.devices\[1\]: "rp0" is a root port, not an endpoint/);
  const prebuilt = yamlError(() => parseLab(`kernel: { debian: linux-image-7.2 }\nimage: bookworm\nselftests: { tests: [{ collection: vfio }] }\n`, labFile));
  t.regex(prebuilt.message, /inline\.yaml:3:\d+: selftests: .*need a kernel built from source .*not the prebuilt linux-image-7.2/);
});

test('a collection config file is checked by symbol: y or m satisfy y, "is not set" wants n, values must match', (t) => {
  const iommu = { collection: 'iommu', file: 'tools/testing/selftests/iommu/config', text: 'CONFIG_IOMMUFD=y\nCONFIG_FAULT_INJECTION_DEBUG_FS=y\nCONFIG_FAULT_INJECTION=y\nCONFIG_IOMMUFD_TEST=y\nCONFIG_FAILSLAB=y\n' };
  const other = { collection: 'x', file: 'tools/testing/selftests/x/config', text: '# CONFIG_FOO is not set\nCONFIG_HZ=250\nCONFIG_BAR=m\n' };
  const kernel = 'CONFIG_IOMMUFD=m\nCONFIG_FAULT_INJECTION=y\n# CONFIG_FAULT_INJECTION_DEBUG_FS is not set\nCONFIG_FOO=y\nCONFIG_HZ=250\nCONFIG_BAR=y\n';
  const unmet = unmetSelftestSymbols([iommu, other], kernel);
  t.deepEqual(unmet.map((u) => `${u.symbol}:${u.wanted}:${u.got}`), ['FAULT_INJECTION_DEBUG_FS:y:n', 'IOMMUFD_TEST:y:n', 'FAILSLAB:y:n', 'FOO:n:y']);
  t.is(formatUnmet(unmet[1]), 'tools/testing/selftests/iommu/config:4: CONFIG_IOMMUFD_TEST=y is wanted by the iommu selftests; the kernel config has it unset');
  t.is(formatUnmet(unmet[3]), 'tools/testing/selftests/x/config:1: CONFIG_FOO is not set is wanted by the x selftests; the kernel config has CONFIG_FOO=y');
});

test('the collections of 7.2 against the tree: Makefile test names, config files, unknown collection or test named at the lab entry', async (t) => {
  t.deepEqual(makefileTestNames('TEST_GEN_PROGS :=\nTEST_GEN_PROGS += iommufd\nTEST_GEN_PROGS += iommufd_fail_nth\n'), ['iommufd', 'iommufd_fail_nth']);
  t.deepEqual(makefileTestNames('TEST_PROGS := a.sh \\\n\tb.sh # c\nTEST_GEN_PROGS = $(OUTPUT)/x y\n'), ['a.sh', 'b.sh', 'y']);
  const at = 'labs/x.yaml:9:7';
  const configs = await checkSelftestsAgainstTree([
    { collection: 'vfio', test: 'vfio_pci_device_test', devices: [], timeoutSec: 1, at },
    { collection: 'iommu', devices: [], timeoutSec: 1, at },
  ], tree);
  t.deepEqual(configs.map((c) => c.file), ['tools/testing/selftests/iommu/config']);
  const err = await t.throwsAsync(checkSelftestsAgainstTree([
    { collection: 'vfio', test: 'vfio_no_such_test', devices: [], timeoutSec: 1, at },
    { collection: 'nope', devices: [], timeoutSec: 1, at: 'labs/x.yaml:10:7' },
  ], tree), { instanceOf: InputError });
  t.regex(err!.message, /labs\/x\.yaml:9:7: "vfio_no_such_test" is not a test of the vfio selftests \(its Makefile lists: vfio_dma_mapping_test, .*vfio_pci_sriov_uapi_test\)/);
  t.regex(err!.message, /labs\/x\.yaml:10:7: selftests collection "nope": no tools\/testing\/selftests\/nope\/Makefile in the kernel tree/);
});

test('the plan expands a collection from kselftest-list.txt, in lab order, and refuses what was not built', (t) => {
  const list = parseKselftestList('vfio:vfio_pci_device_test\nvfio:vfio_dma_mapping_test\niommu:iommufd\niommu:iommufd_fail_nth\n');
  const plan = planSelftests([
    { collection: 'iommu', devices: [], timeoutSec: 5, at: 'a:1:1' },
    { collection: 'vfio', test: 'vfio_pci_device_test', devices: ['shm0'], timeoutSec: 7, expectFail: 'r', at: 'a:2:1' },
  ], list);
  t.deepEqual(plan.map((p) => [p.index, `${p.collection}:${p.test}`, p.devices.join(), p.timeoutSec, p.expectFail ?? '']), [
    [1, 'iommu:iommufd', '', 5, ''], [2, 'iommu:iommufd_fail_nth', '', 5, ''], [3, 'vfio:vfio_pci_device_test', 'shm0', 7, 'r'],
  ]);
  const err = t.throws(() => planSelftests([{ collection: 'dmabuf-heaps', devices: [], timeoutSec: 1, at: 'a:3:1' }], list), { instanceOf: InputError });
  t.regex(err!.message, /a:3:1: the dmabuf-heaps selftests built no test/);
});

test('BDFs travel as kselftest args (KSELFTEST_<NAME>_ARGS, sanitized as runner.sh does); markers round-trip', (t) => {
  t.is(kselftestArgsVar('vfio_pci_device_test'), 'KSELFTEST_VFIO_PCI_DEVICE_TEST_ARGS');
  t.is(kselftestArgsVar('dmabuf-heap'), 'KSELFTEST_DMABUF_HEAP_ARGS');
  t.is(kselftestArgsVar('cpu-on-off-test.sh'), 'KSELFTEST_CPU_ON_OFF_TEST_SH_ARGS');
  const plan = { index: 3, collection: 'vfio', test: 'vfio_pci_device_test', devices: ['shm0'], timeoutSec: 100, at: 'a:1:1' };
  t.deepEqual(selftestArgv(plan, ['0000:01:00.0']), ['/run/hwlab/kselftest/hwlab-run-one.sh', '3', 'vfio', 'vfio_pci_device_test', String(100 + KSELFTEST_BACKSTOP_SEC), 'KSELFTEST_VFIO_PCI_DEVICE_TEST_ARGS', '0000:01:00.0']);
  const m = { edge: 'begin' as const, index: 3, test: 'drivers/dma-buf:udmabuf' };
  t.is(formatSelftestMarker(m), 'hwlab-selftest: begin 3 drivers/dma-buf:udmabuf');
  t.deepEqual(parseSelftestMarker(formatSelftestMarker(m)), m);
  t.is(parseSelftestMarker('hwlab-probe: begin 1 x'), null);
});

test('one test\'s run_kselftest.sh output joins the run\'s stream renumbered, without its own header', (t) => {
  const out = 'TAP version 13\n1..1\n# timeout set to 360\n# selftests: vfio: vfio_pci_device_test\n# TAP version 13\n# 1..1\n# ok 1 x\nok 1 selftests: vfio: vfio_pci_device_test\n';
  t.is(joinedPart(out, 4), '# timeout set to 360\n# selftests: vfio: vfio_pci_device_test\n# TAP version 13\n# 1..1\n# ok 1 x\nok 4 selftests: vfio: vfio_pci_device_test\n');
  t.is(joinedPart('TAP version 13\n1..1\nnot ok 1 selftests: a: b # exit=1\n', 2), 'not ok 2 selftests: a: b # exit=1\n');
});

test('the selftests cache key follows the kernel, the collections (in any order), the selftest patches and the wrapper', (t) => {
  const k = { cacheKey: 'k1' };
  const a = selftestsKey(k, ['vfio', 'iommu'], [], 'sh');
  t.is(a, selftestsKey(k, ['iommu', 'vfio'], [], 'sh'));
  t.not(a, selftestsKey({ cacheKey: 'k2' }, ['vfio', 'iommu'], [], 'sh'));
  t.not(a, selftestsKey(k, ['vfio'], [], 'sh'));
  t.not(a, selftestsKey(k, ['vfio', 'iommu'], [{ sha256: 'x' }], 'sh'));
  t.not(a, selftestsKey(k, ['vfio', 'iommu'], [], 'sh2'));
});
