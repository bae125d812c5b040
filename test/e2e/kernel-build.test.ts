// Issue B end to end: a patch given with --patch reaches the running driver
// (a probe sees its changed errno); a patch that does not apply and a config
// that cannot hold both stop before any build, saying why.
import test from 'ava';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { hwlab, cleanUpRunsDirs, readRun, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

const defaultLab = path.join(repoRoot, 'labs/default.yaml');
const patches = path.join(repoRoot, 'test/fixtures/patches');

test.serial('--patch: a vfio-pci change (zero length -> ENOENT) is built, loaded, and seen by the probe', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', defaultLab, '--patch', path.join(patches, 'vfio-zero-length-enoent.patch'), '--runs-dir', dir]);
  t.log(r.all?.split('\n').filter((l) => /kernel build|PASS|FAIL/.test(l)).join('\n'));
  t.is(r.exitCode, 1, r.all);
  const { results } = await readRun(dir);
  t.is(results.kernel?.kind, 'source');
  t.is(results.outcome.class, 'fail');
  t.deepEqual(results.kernel!.patches?.map((p) => p.name), ['vfio-zero-length-enoent.patch']);
  t.regex(results.kernel!.patches?.[0].sha256 ?? '', /^[0-9a-f]{64}$/);
  t.true((results.kernel!.modulesVerified ?? []).some((m) => m.module === 'vfio_pci_core'), 'the patched module is the loaded one');
  const bad = results.probes.find((p) => p.name === 'dmabuf-bad-inputs')!;
  const failed = bad.subtests.filter((s) => !s.ok);
  t.is(failed.length, 1, JSON.stringify(failed));
  t.regex(failed[0].name, /^zero_length:/);
  t.is(failed[0].diagnostics?.expected, 'EINVAL');
  t.is(failed[0].diagnostics?.actual, 'ENOENT');
  for (const p of results.probes.filter((x) => x.name !== 'dmabuf-bad-inputs')) t.true(p.ok, `${p.name} still passes`);
});

test.serial('a patch that does not apply stops the run before any build, naming patch, file and hunk', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', defaultLab, '--patch', path.join(patches, 'does-not-apply.patch'), '--runs-dir', dir]);
  t.is(r.exitCode, 2, r.all);
  const out = r.all ?? '';
  t.regex(out, /does-not-apply\.patch/);
  t.regex(out, /drivers\/vfio\/pci\/vfio_pci_dmabuf\.c: hunk #2 FAILED/);
  t.regex(out, /@@ -\d+,\d+ \+\d+,\d+ @@/);
  t.notRegex(out, /^\s+CC\s/m, 'make never compiled anything');
  t.notRegex(out, /boot and SSH/);
  const runDir = path.join(dir, (await readdir(dir))[0]);
  t.regex(await readFile(path.join(runDir, 'error.txt'), 'utf8'), /does-not-apply\.patch.*does not apply/);
  // A run that stopped before booting still has results, with its class.
  const { results } = await readRun(dir);
  t.deepEqual([results.outcome.class, results.outcome.code, results.failure?.phase], ['error', 'patch-does-not-apply', 'prepare']);
});

test.serial('a config symbol that cannot be set stops before building and names the unmet dependency', async (t) => {
  const r = await hwlab(['run', path.join(repoRoot, 'test/fixtures/labs/config-p2pdma-without-zone-device.yaml'), '--runs-dir', runsDir()]);
  t.is(r.exitCode, 2, r.all);
  const out = r.all ?? '';
  t.regex(out, /no-zone-device\.config:4: CONFIG_PCI_P2PDMA=y became/);
  t.regex(out, /ZONE_DEVICE/);
  t.regex(out, /nothing was built/);
  t.notRegex(out, /boot and SSH/);
});

test.serial('fast path: drivers/vfio/pci rebuilt against the prebuilt kernel\'s headers carries the patch into the guest', async (t) => {
  const dir = runsDir();
  const r = await hwlab(['run', path.join(repoRoot, 'labs/fastpath.yaml'), '--patch', path.join(patches, 'vfio-zero-length-enoent.patch'), '--runs-dir', dir]);
  t.is(r.exitCode, 1, r.all);
  const { results } = await readRun(dir);
  t.is(results.kernel?.kind, 'overlay');
  t.is(results.outcome.class, 'fail');
  t.deepEqual(results.kernel!.driverDirs, ['drivers/vfio/pci']);
  t.deepEqual(results.kernel!.patches?.map((p) => p.name), ['vfio-zero-length-enoent.patch']);
  const verified = (results.kernel!.modulesVerified ?? []).map((m) => m.module.replace(/-/g, '_'));
  t.true(verified.includes('vfio_pci_core'), `rebuilt vfio_pci_core runs in the guest (${verified.join(' ')})`);
  const bad = results.probes.find((p) => p.name === 'dmabuf-bad-inputs')!;
  const failed = bad.subtests.filter((s) => !s.ok);
  t.is(failed.length, 1, JSON.stringify(failed));
  t.is(failed[0].diagnostics?.actual, 'ENOENT');
});

test.serial('fast path refuses a patch outside the driver directories', async (t) => {
  const r = await hwlab(['run', path.join(repoRoot, 'labs/fastpath.yaml'), '--patch', path.join(patches, '0001-demo-return-ENOENT-for-a-zero-length.patch'), '--runs-dir', runsDir()]);
  t.is(r.exitCode, 2, r.all);
  t.regex(r.all ?? '', /drivers\/demo\/demo\.c/);
  t.notRegex(r.all ?? '', /boot and SSH/);
});
