// The kernel's own selftests on real guests (issue G), on the default lab's
// kernel build (labs/kselftest-vfio.yaml shares its config): the vfio
// selftests build from the lab's tree, run through kselftest's
// run_kselftest.sh with the endpoints' BDFs, and land in results.json, the
// table, JUnit and HTML beside probes; a test past its timeout is killed
// with the guest's stacks and the next one still runs; a collection whose
// config file the kernel config does not satisfy is refused before any
// build. labs/kselftest.yaml (iommufd, dmabuf-heaps, udmabuf: a kernel
// config of its own) is `npm run test:kselftest`.
import test from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { hwlab, qemuProcessesMentioning, readRun, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

/** A folder for a lab file written by a test: labs/ beside a link to the repository's images/ (where a lab's recipe is looked up). */
async function labsDir(): Promise<string> {
  const dir = runsDir();
  await mkdir(path.join(dir, 'labs'));
  await symlink(path.join(repoRoot, 'images'), path.join(dir, 'images'));
  return dir;
}

const LAB = path.join(repoRoot, 'labs/kselftest-vfio.yaml');

test.serial('vfio selftests on the default kernel: pass, skip with kselftest\'s reason, expected failure as TODO; every report shows them', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', LAB, '--runs-dir', dir]);
  t.log(r.all?.split('\n').slice(-16).join('\n'));
  t.is(r.exitCode, 0, r.all);
  const { runDir, results } = await readRun(dir);
  t.is(results.outcome.class, 'pass', results.outcome.detail);
  t.deepEqual(results.kernelReports, []);
  t.deepEqual(results.probes, []);
  const st = results.selftests ?? [];
  t.deepEqual(st.map((s) => `${s.name}(${(s.devices ?? []).join()})`), [
    'vfio:vfio_pci_device_test(nvme0)', 'vfio:vfio_iommufd_setup_test(nvme0)', 'vfio:vfio_dma_mapping_mmio_test(nvme0)',
    'vfio:vfio_pci_driver_test(nvme0)', 'vfio:vfio_pci_device_test(shm0)',
  ]);
  // Points per subtest from each program's own TAP: the harness's fixture variants (type1, type1v2, iommufd compat, iommufd).
  for (const s of st.slice(0, 3)) {
    t.true(s.ok && s.skip === undefined && s.todo === undefined, `${s.name} passed`);
    t.true(s.subtests.length >= 4 && s.subtests.every((x) => x.ok), `${s.name}: ${s.subtests.length} points, all ok`);
  }
  t.true(st[2].subtests.some((x) => /\.iommufd\.map_full_bar$/.test(x.name)), 'the iommufd variant of the MMIO mapping test ran');
  // nvme has MSI-X, not MSI: kselftest's own SKIP reason is kept on the point.
  t.true(st[0].subtests.some((x) => x.skip === 'MSI: not supported'), 'MSI point skipped with the reason');
  // No Intel IOAT/DSA engine under QEMU: the whole program skips, with what it printed.
  t.regex(st[3].skip ?? '', /^No driver found for device 0000:[0-9a-f]{2}:00\.0$/);
  t.regex(st[4].todo ?? '', /selftest library bug: vfio_pci_bar_map/);
  t.true(st[4].subtests.some((x) => !x.ok), 'the expected failure still happens (when it is fixed, the lab\'s expect_fail goes)');
  t.true(st.every((s) => s.kernelReports.length === 0 && (s.durationMs ?? 0) > 0));
  t.true((results.timings.selftests ?? 0) > 0);
  t.deepEqual(results.selftestsBuild?.collections, ['vfio']);
  // The BDFs went to each test: the device test printed the nvme's IDs read through VFIO.
  const tap = await readFile(path.join(runDir, 'selftests.tap'), 'utf8');
  t.regex(tap, /^TAP version 13\n1\.\.5\n/);
  t.regex(tap, /# Vendor: 1b36, Device: 0010/);
  const devices = JSON.parse(await readFile(path.join(runDir, 'devices.json'), 'utf8')) as Record<string, { bdf: string }>;
  t.regex(tap, new RegExp(`No driver found for device ${devices.nvme0.bdf}`));
  const consoleLog = await readFile(path.join(runDir, 'console.log'), 'utf8');
  t.regex(consoleLog, /hwlab-selftest: begin 1 vfio:vfio_pci_device_test[\s\S]*hwlab-selftest: end 5 vfio:vfio_pci_device_test/);
  // The table, JUnit and HTML show the selftests beside (here: instead of) probes.
  t.regex(r.stdout, /SELFTEST +SUBTESTS +STATUS +DURATION/);
  t.regex(r.stdout, /SKIP vfio:vfio_pci_driver_test: No driver found/);
  const junit = await readFile(path.join(runDir, 'junit.xml'), 'utf8');
  t.regex(junit, /<testsuite name="[^"]*\/kselftest:vfio:vfio_dma_mapping_mmio_test\(nvme0\)" tests="15" failures="0"/);
  t.regex(junit, /<property name="kselftest-collection" value="vfio"\/>/);
  t.regex(junit, /<skipped message="MSI: not supported"/);
  const html = await readFile(path.join(runDir, 'report.html'), 'utf8');
  t.regex(html, /kselftest:vfio:vfio_iommufd_setup_test\(nvme0\)/);
  t.deepEqual(await qemuProcessesMentioning(runDir), []);
});

test.serial('a selftest past its timeout is killed with the guest\'s stacks, and the next one still runs', async (t) => {
  const dir = await labsDir();
  // The MMIO mapping test takes about 5 s on a quiet host and 20 s or more on a busy one:
  // 2 s is a hang as far as the run can tell, whatever the host's load.
  const lab = path.join(dir, 'labs/timeout.yaml');
  await writeFile(lab, `kernel: { debian: linux-source-7.2 }
image: bookworm
topology:
  root_ports: [rp0]
  endpoints: [{ id: nvme0, type: nvme, port: rp0 }]
selftests:
  patches: [${path.join(repoRoot, 'labs/selftest-patches/0001-selftests-vfio-define-calloc_assert.patch')}]
  tests:
    - { collection: vfio, test: vfio_dma_mapping_mmio_test, devices: [nvme0], timeout: 2 }
    - { collection: vfio, test: vfio_iommufd_setup_test, devices: [nvme0] }
`);
  const r = await hwlab(['run', lab, '--runs-dir', path.join(dir, 'runs'), '--json']);
  t.is(r.exitCode, 1, r.stderr);
  const results = JSON.parse(r.stdout) as import('../../src/results/report.ts').RunResults;
  t.is(results.outcome.class, 'fail', results.outcome.detail);
  const [hung, next] = results.selftests ?? [];
  t.is(hung.name, 'vfio:vfio_dma_mapping_mmio_test');
  t.false(hung.ok);
  t.regex(String(hung.diagnostics?.error), /timed out: no result after 2 s; hwlab killed it/);
  // The test's session: kselftest's runner, GNU timeout and (once started) the program, each with its kernel stack.
  t.regex(String(hung.diagnostics?.testStacks), /^pid \d+ (run_kselftest|timeout|vfio_dma_mappin)\S* state \S+\n {2}\[<0>\] /m);
  t.true(typeof hung.diagnostics?.blockedTasks === 'string');
  t.true(hung.subtests.some((x) => /^finishes within/.test(x.name) && !x.ok));
  t.is(next.name, 'vfio:vfio_iommufd_setup_test');
  t.true(next.ok && next.subtests.length > 0, 'the test after the killed one ran and passed');
  t.regex(results.outcome.detail, /selftest vfio:vfio_dma_mapping_mmio_test failed: finishes within/);
  t.deepEqual(await qemuProcessesMentioning(results.runDir), []);
});

test.serial('a collection whose config file the kernel config does not satisfy is refused by symbol, before anything is built', async (t) => {
  const dir = await labsDir();
  const lab = path.join(dir, 'labs/iommu.yaml');
  // The default fragments lack CONFIG_IOMMUFD_TEST and fault injection (tools/testing/selftests/iommu/config).
  await writeFile(lab, 'kernel: { debian: linux-source-7.2 }\nimage: bookworm\nselftests:\n  tests:\n    - { collection: iommu, test: iommufd }\n    - { collection: vfoo }\n');
  const r1 = await hwlab(['run', lab, '--runs-dir', path.join(dir, 'runs1')], { timeoutMs: 600_000 });
  t.is(r1.exitCode, 2, r1.all);
  t.regex(r1.all ?? '', /iommu\.yaml:6:7: selftests collection "vfoo": no tools\/testing\/selftests\/vfoo\/Makefile in the kernel tree/);
  await writeFile(lab, 'kernel: { debian: linux-source-7.2 }\nimage: bookworm\nselftests:\n  tests:\n    - { collection: iommu, test: iommufd }\n');
  const r = await hwlab(['run', lab, '--runs-dir', path.join(dir, 'runs')], { timeoutMs: 600_000 });
  t.is(r.exitCode, 2, r.all);
  t.regex(r.all ?? '', /tools\/testing\/selftests\/iommu\/config:4: CONFIG_IOMMUFD_TEST=y is wanted by the iommu selftests; the kernel config has it unset/);
  t.regex(r.all ?? '', /CONFIG_FAILSLAB=y is wanted/);
  t.notRegex(r.all ?? '', /==> kernel build/);
  const { results } = await readRun(path.join(dir, 'runs'));
  t.is(results.outcome.code, 'selftest-config');
  t.is(results.failure?.phase, 'prepare');
  t.false(existsSync(path.join(results.runDir, 'console.log')), 'nothing booted');
});

test.serial('selftests.patches that add a test and a config symbol are checked as patched, before anything is built', async (t) => {
  const dir = await labsDir();
  const lab = path.join(dir, 'labs/udmabuf-extra.yaml');
  // A new program in the collection's Makefile and a symbol its config file now asks for.
  await writeFile(path.join(dir, 'labs/extra.patch'), [
    '--- a/tools/testing/selftests/drivers/dma-buf/Makefile',
    '+++ b/tools/testing/selftests/drivers/dma-buf/Makefile',
    '@@ -1,7 +1,7 @@',
    ' # SPDX-License-Identifier: GPL-2.0-only',
    ' CFLAGS += $(KHDR_INCLUDES)',
    ' ',
    '-TEST_GEN_PROGS := udmabuf',
    '+TEST_GEN_PROGS := udmabuf udmabuf_extra',
    ' ',
    ' top_srcdir ?=../../../../..',
    ' ',
    '--- a/tools/testing/selftests/drivers/dma-buf/config',
    '+++ b/tools/testing/selftests/drivers/dma-buf/config',
    '@@ -1 +1,2 @@',
    ' CONFIG_UDMABUF=y',
    '+CONFIG_IOMMUFD_TEST=y',
    '',
  ].join('\n'));
  await writeFile(lab, 'kernel: { debian: linux-source-7.2 }\nimage: bookworm\nselftests:\n  patches: [extra.patch]\n  tests:\n    - { collection: drivers/dma-buf, test: udmabuf_extra }\n');
  const r = await hwlab(['run', lab, '--runs-dir', path.join(dir, 'runs')], { timeoutMs: 600_000 });
  t.is(r.exitCode, 2, r.all);
  t.notRegex(r.all ?? '', /is not a test of/, 'the test the patch adds is known');
  t.regex(r.all ?? '', /tools\/testing\/selftests\/drivers\/dma-buf\/config:2: CONFIG_IOMMUFD_TEST=y is wanted by the drivers\/dma-buf selftests/);
  t.notRegex(r.all ?? '', /==> kernel build/);
});
