// `hwlab run labs/smoke.yaml` as an ordinary user (issue 11): no root in the
// run itself. The test (as root) makes sure the user `hwlab-e2e` exists with
// a subordinate id range, then runs the real CLI as that user through
// runuser, with the user's own HOME: its own cache (~/.cache/hwlab) and its
// own SSH key. The user builds the guest image itself (mmdebstrap in unshare
// mode, then fakeroot and mkfs.ext4) whenever its image entry is missing or
// the builder changed (the entry's key covers the builder), and
// HWLAB_NONROOT_IMAGE=fresh removes it first to force that build. A second
// run, with the user's subordinate ids taken away, shows they are needed only
// for that build.
//
// To spare a 15-minute kernel build as the new user, the user's cache is
// seeded with COPIES (cp -a, then chown; never hard links into root's cache)
// of root's already-built smoke kernel entries: the private apt state (the
// resolved version), the kernel source entry, the kernel config entries and
// the smoke kernel's build entry. hwlab's importer module, the initramfs and
// the image are built by the user.
//
// The repository checkout must be readable by the user (a clone under /tmp
// or /srv is; one under /root is not): the test says so if it is not.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { buildKernel } from '../../src/kernel/build.ts';
import { aptDir } from '../../src/kernel/debian.ts';
import { loadLab } from '../../src/lab/load.ts';
import { cacheRoot } from '../../src/util/cache.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { unprivilegedChecks } from '../../src/util/unprivileged.ts';
import type { RunResults } from '../../src/results/report.ts';
import { repoRoot } from './helpers.ts';
import { smokeBuilds, smokeLab } from './smoke-builds.ts';

const USER = 'hwlab-e2e';

/** The repository's tracked files and node_modules, copied to a folder under /tmp every user can read. */
async function readableCopy(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-e2e-checkout-'));
  const files = (await execa('git', ['-C', repoRoot, 'ls-files', '-z'])).stdout.split('\0').filter(Boolean);
  await execa('cp', ['-a', '--parents', '-t', dir, '--', ...files, 'node_modules'], { cwd: repoRoot });
  await execa('chmod', ['-R', 'a+rX', dir]);
  return dir;
}

const asUser = (home: string, args: string[], timeout: number) =>
  execa('runuser', ['-u', USER, '--', 'env', '-u', 'XDG_CACHE_HOME', '-u', 'HWLAB_CACHE', `HOME=${home}`, 'CI=true', ...args],
    { reject: false, all: true, timeout, cwd: '/' });

async function ensureUser(): Promise<{ home: string; uid: number }> {
  if ((await execa('id', ['-u', USER], { reject: false })).exitCode !== 0) {
    // Debian's useradd gives a new user a subordinate uid/gid range (SUB_UID_COUNT in login.defs).
    await execa('useradd', ['--create-home', '--user-group', '--shell', '/bin/sh', USER]);
  }
  const [, , uid, , , home] = (await execa('getent', ['passwd', USER])).stdout.split(':');
  return { home, uid: Number(uid) };
}

/** `cp -a` of a path under root's cache into the user's, owned by the user. */
async function seed(rel: string, userCache: string, uid: number): Promise<void> {
  const dest = path.join(userCache, rel);
  if (!existsSync(dest)) {
    await execa('mkdir', ['-p', path.dirname(dest)]);
    await execa('cp', ['-a', '--', path.join(cacheRoot(), rel), dest]);
    await execa('chown', ['-R', `${uid}:${uid}`, '--', path.join(userCache, rel.split('/')[0])]);
  }
  // mkdir -p ran as root: the user's ~/.cache and ~/.cache/hwlab must be the user's.
  await execa('chown', [`${uid}:${uid}`, '--', path.dirname(userCache), userCache]);
}

test('an ordinary user runs the smoke lab: its own cache, key and image (mmdebstrap unshare), TCG, no root', async (t) => {
  if (process.getuid?.() !== 0) {
    t.fail('this test runs as root: it creates the user hwlab-e2e and runs hwlab as that user with runuser');
    return;
  }
  const { home, uid } = await ensureUser();
  const failed = (await unprivilegedChecks({ user: USER, uid })).filter((c) => !c.ok);
  t.deepEqual(failed, [], 'the user has what doctor asks for');
  // A checkout the user cannot read (one under /root, as CI's may be): run from a copy it can.
  const readable = await execa('runuser', ['-u', USER, '--', 'test', '-r', path.join(repoRoot, 'src/cli/hwlab.js')], { reject: false });
  const checkout = readable.exitCode === 0 ? repoRoot : await readableCopy();
  if (checkout !== repoRoot) t.teardown(() => rm(checkout, { recursive: true, force: true }));
  const userSmokeLab = path.join(checkout, path.relative(repoRoot, smokeLab));

  // The smoke kernel as root has it (a cache hit when warm), and the entries it lives in.
  const lab = await loadLab(smokeLab);
  if (lab.kernel.kind !== 'source' || lab.kernel.source.kind !== 'debian-source') throw new Error('labs/smoke.yaml must build linux-source from Debian');
  const builds = await smokeBuilds(silentProgress());
  const kernel = await buildKernel(await builds.request([], path.join(home, '..', `.hwlab-e2e-seed-${process.pid}.log`)));
  await rm(path.join(home, '..', `.hwlab-e2e-seed-${process.pid}.log`), { force: true });
  const userCache = path.join(home, '.cache/hwlab');
  const relOf = (p: string) => path.relative(cacheRoot(), p).split(path.sep).slice(0, 2).join('/');
  const seeded = [relOf(aptDir(lab.kernel.source)), relOf(builds.tree.dir), 'kconfig', relOf(kernel.cacheDir)];
  // Copies of an older smoke kernel (root's moved on) would only fill the disk: the user keeps the current ones.
  for (const kind of ['kernel-src', 'kernel-build']) {
    for (const e of await readdir(path.join(userCache, kind)).catch(() => [] as string[])) {
      if (!seeded.includes(`${kind}/${e}`)) await rm(path.join(userCache, kind, e), { recursive: true, force: true });
    }
  }
  for (const rel of seeded) await seed(rel, userCache, uid);
  if (process.env.HWLAB_NONROOT_IMAGE === 'fresh') await rm(path.join(userCache, 'image'), { recursive: true, force: true });
  const runs = path.join(home, 'runs');
  await rm(runs, { recursive: true, force: true });

  const doctor = await asUser(home, [path.join(checkout, 'hwlab'), 'doctor'], 120_000);
  t.regex(doctor.stdout, new RegExp(`^ok   running as ${USER} \\(uid ${uid}\\): runs need no root`, 'm'), doctor.all);
  t.notRegex(doctor.stdout, /^FAIL/m, doctor.all);

  const run = await asUser(home, [path.join(checkout, 'hwlab'), 'run', userSmokeLab, '--runs-dir', runs, '--json'], 30 * 60_000);
  t.log(run.stderr.split('\n').filter((l) => /^ {4}ok |FAILED|^ok |image|kernel/.test(l)).join('\n'));
  t.is(run.exitCode, 0, run.all);
  const results = JSON.parse(run.stdout) as RunResults;
  t.is(results.outcome.class, 'pass', run.stderr);
  t.regex(run.stderr, /ok kernel build .*from cache, make not run/, 'the seeded kernel was a cache hit');
  // Everything the run made is the user's, under the user's home.
  const [folder] = await readdir(runs);
  t.truthy(folder);
  const notOwned = await execa('find', [userCache, runs, '-not', '-uid', String(uid)], { reject: false });
  t.is(notOwned.stdout.trim(), '', 'no file owned by anyone else (root or a subordinate uid) in the cache or the runs');
  t.true(existsSync(path.join(userCache, 'ssh/id_ed25519')), "the user's own hwlab key");
  const images = await readdir(path.join(userCache, 'image'));
  t.true(images.some((e) => !e.startsWith('.')), 'an image entry built by the user');

  // With the image in the user's cache the subordinate ids are not needed: a run
  // without them passes. usermod takes the user's range away for this run only.
  const ranges = await unprivilegedChecks({ user: USER, uid });
  const range = /ids (\d+)\.\.(\d+)/.exec(ranges.find((c) => c.what.startsWith('/etc/subuid'))?.what ?? '');
  if (!range) throw new Error(`no subuid range for ${USER} to take away: ${JSON.stringify(ranges)}`);
  const span = `${range[1]}-${range[2]}`;
  await execa('usermod', ['--del-subuids', span, '--del-subgids', span, USER]);
  try {
    t.true((await unprivilegedChecks({ user: USER, uid })).some((c) => !c.ok), 'the user has no subordinate ids now');
    await rm(runs, { recursive: true, force: true });
    const again = await asUser(home, [path.join(checkout, 'hwlab'), 'run', userSmokeLab, '--runs-dir', runs, '--json'], 10 * 60_000);
    t.is(again.exitCode, 0, again.all);
    t.is((JSON.parse(again.stdout) as RunResults).outcome.class, 'pass', again.stderr);
    t.notRegex(again.stderr, /not ready for runs as an ordinary user/);
  } finally {
    await execa('usermod', ['--add-subuids', span, '--add-subgids', span, USER]);
  }
});

test('the wrapper refuses, with what to run, to npm ci into a checkout the user cannot write', async (t) => {
  if (process.getuid?.() !== 0) {
    t.fail('this test runs as root: it runs the wrapper as the user hwlab-e2e with runuser');
    return;
  }
  const { home } = await ensureUser();
  // Only the wrapper and npm's files, owned by root and readable by all: no
  // node_modules (never installed), then one older than package-lock.json.
  const checkout = await mkdtemp(path.join(os.tmpdir(), 'hwlab-e2e-wrapper-'));
  t.teardown(() => rm(checkout, { recursive: true, force: true }));
  await execa('cp', ['-a', '-t', checkout, '--', 'hwlab', 'package.json', 'package-lock.json'], { cwd: repoRoot });
  await execa('chmod', ['755', checkout]);
  const expected = new RegExp(`npm dependencies missing or older than package-lock.json in ${checkout}, and this user cannot write there: run 'npm ci' in ${checkout} as its owner`);

  const never = await asUser(home, [path.join(checkout, 'hwlab'), 'doctor'], 60_000);
  t.is(never.exitCode, 2, never.all);
  t.regex(never.stderr, expected);
  t.false(existsSync(path.join(checkout, 'node_modules')), 'nothing was installed');

  await execa('mkdir', ['-m', '755', path.join(checkout, 'node_modules')]);
  await execa('touch', ['-d', '2020-01-01', path.join(checkout, 'node_modules/.package-lock.json')]);
  const stale = await asUser(home, [path.join(checkout, 'hwlab'), 'doctor'], 60_000);
  t.is(stale.exitCode, 2, stale.all);
  t.regex(stale.stderr, expected);
  t.deepEqual(await readdir(path.join(checkout, 'node_modules')), ['.package-lock.json'], 'the stale install was left as it was');
});
