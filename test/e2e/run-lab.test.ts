// Boots real guests: the default lab must pass with every probe green and a
// clean kernel; the self-test lab must fail and say why; a broken lab file
// must be refused before anything boots; Ctrl-C must leave no QEMU behind.
import test from 'ava';
import { BAD_INPUT_CASES } from '../../src/guest/probes/catalog.ts';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadLab } from '../../src/lab/load.ts';
import { hwlab, cleanUpRunsDirs, qemuProcessesMentioning, readRun, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

test.serial('default lab: 7.2 built from Debian source boots, the fresh vfio-pci is loaded, all probes pass', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/default.yaml'), '--runs-dir', dir]);
  t.log(r.all?.split('\n').slice(-12).join('\n'));
  t.is(r.exitCode, 0, r.all);
  const { runDir, results } = await readRun(dir);
  t.is(results.outcome.class, 'pass');
  t.deepEqual(results.kernelReports, []);
  t.is(results.kernel?.kind, 'source');
  t.regex(results.kernel!.package, /^linux-source-7\.2 7\.2\.\d+/);
  t.regex(results.kernel!.version, /^7\.2\.\d+/);
  t.deepEqual(results.kernel!.patches, []);
  const verified = (results.kernel!.modulesVerified ?? []).map((m) => m.module).sort();
  // hwlab_importer: built with M= against this kernel, insmod'ed, build-id checked.
  for (const m of ['vfio', 'vfio_pci', 'vfio_pci_core', 'hwlab_importer']) t.true(verified.includes(m), `${m} verified (${verified.join(' ')})`);
  const lab = await loadLab(path.join(repoRoot, 'labs/default.yaml'));
  t.deepEqual(results.probes.map((p) => p.name), lab.probes.map((p) => p.name));
  t.true(lab.probes.length >= 15, 'the whole suite runs in the default lab');
  for (const [i, p] of results.probes.entries()) {
    const expectFail = lab.probes[i].expectFail;
    t.true(p.ok, `${p.name} ok`);
    t.is(p.todo, expectFail, `${p.name}: TODO exactly where the lab expects a known kernel bug`);
    t.true(p.subtests.length >= 1, `${p.name} has ${p.subtests.length} subtests`);
    if (expectFail === undefined) t.true(p.subtests.every((s) => s.ok), `${p.name}: every subtest ok`);
    // The known bug must still show: when it is fixed, the lab's expect_fail has to go.
    else t.true(p.subtests.some((s) => !s.ok), `${p.name}: the expected failure happened (${expectFail.slice(0, 60)}...)`);
  }
  // Every errno row hwlab can pose is really posed (not skipped) on one of the two devices:
  // shm0 for the region cases, iotest0 for the I/O, upper-half and unimplemented BARs.
  const posed = results.probes.filter((p) => p.name === 'dmabuf-bad-inputs').flatMap((p) => p.subtests).filter((s) => s.skip === undefined && s.ok);
  for (const c of BAD_INPUT_CASES) t.true(posed.some((s) => s.name.startsWith(`${c}:`)), `bad input ${c} posed and answered as the contract says`);
  for (const f of ['console.log', 'qemu-cmdline.sh', 'lab.resolved.json', 'probes.tap', 'results.json']) {
    t.true(existsSync(path.join(runDir, f)), `${f} written`);
  }
  const consoleLog = await readFile(path.join(runDir, 'console.log'), 'utf8');
  t.regex(consoleLog, /Linux version 7\.2\.\d+/);
  t.regex(consoleLog, /DMAR: IOMMU enabled/);
  // Probe windows for kernel report attribution come from these markers.
  t.regex(consoleLog, new RegExp(`hwlab-probe: begin 1 dmabuf-export[\\s\\S]*hwlab-probe: end ${lab.probes.length} ${lab.probes[lab.probes.length - 1].name}`));
  // The debug kernel: lockdep is on, so a lock-order problem in a probe would have been reported.
  t.regex(consoleLog, /RCU lockdep checking is enabled/);
  // surprise-removal had the host hot-remove its device through QMP.
  t.regex(await readFile(path.join(runDir, 'host-requests.log'), 'utf8'), /device_del shm2: done/);
  t.true(results.probes.every((p) => p.kernelReports.length === 0));
  const cmdline = await readFile(path.join(runDir, 'qemu-cmdline.sh'), 'utf8');
  t.regex(cmdline, /restrict=on/);
  t.regex(cmdline, /hostfwd=tcp:127\.0\.0\.1:\d+-:22/);
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'no QEMU left running');
});

test.serial('smoke lab: the local loop reuses the default lab\'s kernel build and passes its quick checks', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/smoke.yaml'), '--runs-dir', dir]);
  t.is(r.exitCode, 0, r.all);
  // Same config as the default lab, built just before: make must not run again.
  t.regex(r.all ?? '', /from cache, make not run/);
  const { results } = await readRun(dir);
  t.is(results.outcome.class, 'pass');
  t.deepEqual(results.kernelReports, []);
  t.is(results.kernel?.kind, 'source');
  const lab = await loadLab(path.join(repoRoot, 'labs/smoke.yaml'));
  t.deepEqual(results.probes.map((p) => p.name), lab.probes.map((p) => p.name));
  t.true(results.probes.every((p) => p.ok && p.subtests.length >= 1 && p.subtests.every((s) => s.ok)));
  t.log(`smoke lab: total ${results.timings.total?.toFixed(1)} s, probes ${results.timings.probes?.toFixed(1)} s`);
});

test.serial('prebuilt lab: Debian linux-image-7.2 passes the same probes without a build', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/prebuilt.yaml'), '--runs-dir', dir]);
  t.is(r.exitCode, 0, r.all);
  const { results } = await readRun(dir);
  t.is(results.kernel?.kind, 'stock');
  t.regex(results.kernel!.package, /^linux-image-7\.2\.\d+/);
  t.regex(results.kernel!.version, /^7\.2\.\d+-\d+/);
  t.true(results.probes.length === 4 && results.probes.every((p) => p.ok && p.subtests.every((s) => s.ok)));
});

test.serial('self-test lab: a wrong errno expectation fails the run and names the case', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/selftest-must-fail.yaml'), '--runs-dir', dir]);
  t.is(r.exitCode, 1, r.all);
  t.regex(r.all ?? '', /dmabuf-bad-inputs\s+\S+\s+FAIL/);
  const { results } = await readRun(dir);
  t.is(results.outcome.class, 'fail');
  const bad = results.probes.find((p) => p.name === 'dmabuf-bad-inputs')!;
  t.false(bad.ok);
  const failed = bad.subtests.filter((s) => !s.ok);
  t.is(failed.length, 1, JSON.stringify(failed));
  t.regex(failed[0].name, /^zero_length:/);
  t.is(failed[0].diagnostics?.expected, 'ENOENT');
  t.is(failed[0].diagnostics?.actual, 'EINVAL');
  t.true(results.probes.find((p) => p.name === 'dmabuf-export')!.ok, 'the other probe still passes');
  t.regex(results.outcome.title, /^dmabuf-bad-inputs: zero_length:/);
});

test.serial('a boot that cannot finish in time is infra: exit 3, the boot phase named, no QEMU left', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/selftest-boot-timeout.yaml'), '--runs-dir', dir]);
  t.is(r.exitCode, 3, r.all);
  const { runDir, results } = await readRun(dir);
  t.deepEqual([results.outcome.class, results.outcome.code, results.failure?.phase], ['infra', 'boot-timeout', 'boot']);
  t.deepEqual(results.kernelReports, []);
  t.deepEqual(results.probes, []);
  t.regex(r.all ?? '', /^INFRA \(boot-timeout\): the guest did not start sshd in 1 s/m);
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'no QEMU left running');
});

test.serial('a lab file with errors is refused with file:line:col before anything boots', async (t) => {
  const r = await hwlab(['run', path.join(repoRoot, 'test/fixtures/labs/bad-schema.yaml')], { timeoutMs: 60_000 });
  t.is(r.exitCode, 2);
  t.regex(r.all ?? '', /bad-schema\.yaml:\d+:\d+: /);
  t.notRegex(r.all ?? '', /boot and SSH/);
});

test.serial('Ctrl-C during boot ends QEMU and exits 130', async (t) => {
  const dir = runsDir();
  const child = hwlab(['run', path.join(repoRoot, 'labs/default.yaml'), '--runs-dir', dir]);
  let out = '';
  child.all?.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 20 * 60_000;
  while (!out.includes('==> boot and SSH') && Date.now() < deadline) await sleep(100);
  t.true(out.includes('==> boot and SSH'), out);
  await sleep(1500); // QEMU is up and booting
  const runDir = path.join(dir, (await import('node:fs')).readdirSync(dir)[0]);
  t.true((await qemuProcessesMentioning(runDir)).length > 0, 'QEMU was running');
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, r.all);
  t.deepEqual(await qemuProcessesMentioning(runDir), [], 'no QEMU left running');
});
