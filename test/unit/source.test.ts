import test from 'ava';
import { execa } from 'execa';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../../src/util/cache.ts';
import type { Step } from '../../src/util/progress.ts';
import { kernelVersionOf, resolveKernelTree, unpackSourceDeb } from '../../src/kernel/source.ts';

const DEMO = fileURLToPath(new URL('../fixtures/patches/demo-tree/', import.meta.url));

// One throwaway cache for this file (cacheRoot() reads HWLAB_CACHE at call time); tests run
// concurrently, so each uses distinct content and never shares an entry by accident.
const root = await mkdtemp(join(tmpdir(), 'hwlab-source-'));
process.env.HWLAB_CACHE = join(root, 'cache');
test.after.always(() => rm(root, { recursive: true, force: true }));

function recorder(): Step & { updates: string[] } {
  const updates: string[] = [];
  return { updates, update: (d) => void updates.push(d), done: () => 0, fail: () => 0 };
}

async function dir(name: string): Promise<string> {
  const d = join(root, name);
  await mkdir(d, { recursive: true });
  return d;
}

const gitEnv = {
  GIT_AUTHOR_NAME: 'Ada Example', GIT_AUTHOR_EMAIL: 'ada@example.org', GIT_AUTHOR_DATE: '2026-01-05T10:00:00Z',
  GIT_COMMITTER_NAME: 'Ada Example', GIT_COMMITTER_EMAIL: 'ada@example.org', GIT_COMMITTER_DATE: '2026-01-05T10:00:00Z',
};
const git = async (cwd: string, ...args: string[]) => (await execa('git', args, { cwd, env: gitEnv })).stdout.trim();

/** A git repo holding the demo tree, one commit, tagged v7.2-demo. */
async function demoRepo(name: string): Promise<string> {
  const repo = await dir(name);
  await cp(DEMO, repo, { recursive: true });
  await git(repo, 'init', '-q', '-b', 'master');
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-qm', 'demo: initial tree');
  await git(repo, 'tag', 'v7.2-demo');
  return repo;
}

/** Hashes of everything under .git except objects, to prove a resolve wrote nothing there. */
async function gitMetaState(repo: string): Promise<string> {
  const walk = async (d: string): Promise<string[]> => {
    const out: string[] = [];
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) out.push(...(await walk(p)));
      else out.push(`${p} ${(await stat(p)).mtimeMs} ${sha256(await readFile(p))}`);
    }
    return out;
  };
  return (await walk(join(repo, '.git'))).sort().join('\n');
}

test.serial('kernelVersionOf: VERSION.PATCHLEVEL.SUBLEVEL + EXTRAVERSION, as make kernelversion prints it', async (t) => {
  t.is(await kernelVersionOf(DEMO), '7.2.0-rc1');
  const d = await dir('kv');
  await writeFile(join(d, 'Makefile'), '# SPDX\nVERSION = 7\nPATCHLEVEL = 2\nSUBLEVEL = 13\nEXTRAVERSION =\nNAME = x\n');
  t.is(await kernelVersionOf(d), '7.2.13');
  // The real target agrees (the fixture Makefile carries the same recipe as Linux's).
  t.is((await execa('make', ['-s', '-C', DEMO, 'kernelversion'])).stdout.trim(), '7.2.0-rc1');
  await writeFile(join(d, 'Makefile'), 'all:\n\techo\n');
  await t.throwsAsync(kernelVersionOf(d), { message: /no numeric VERSION = line; not a kernel tree/ });
  await t.throwsAsync(kernelVersionOf(join(d, 'nope')), { message: /has no top-level Makefile/ });
});

test.serial('tarball: extracted once into the cache, keyed by sha256, tree is the single top-level directory', async (t) => {
  const d = await dir('tar1');
  await cp(DEMO, join(d, 'src/linux-demo'), { recursive: true });
  const tarball = join(d, 'linux-demo.tar.xz');
  await execa('tar', ['-C', join(d, 'src'), '-cJf', tarball, 'linux-demo']);
  const hash = sha256(await readFile(tarball));

  const step = recorder();
  const tree = await resolveKernelTree({ kind: 'tarball', path: tarball }, step);
  t.is(tree.id, `tar:${hash}`);
  t.is(tree.version, '7.2.0-rc1');
  t.is(tree.label, `tarball linux-demo.tar.xz (sha256 ${hash.slice(0, 12)})`);
  t.is(await readFile(join(tree.dir, 'drivers/demo/demo.c'), 'utf8'), await readFile(join(DEMO, 'drivers/demo/demo.c'), 'utf8'));
  t.true(tree.dir.startsWith(join(root, 'cache', 'kernel-src')));
  t.true(step.updates.some((u) => /^extracting linux-demo\.tar\.xz \d+%$/.test(u)));

  // Second resolve: a cache hit, nothing extracted again.
  const again = recorder();
  const tree2 = await resolveKernelTree({ kind: 'tarball', path: tarball }, again);
  t.deepEqual(tree2, tree);
  t.false(again.updates.some((u) => u.startsWith('extracting')));
});

test.serial('tarball: gzip with files at the top accepted when the Makefile is there; several top-level dirs refused', async (t) => {
  const d = await dir('tar2');
  await cp(DEMO, join(d, 'flat'), { recursive: true });
  await writeFile(join(d, 'flat/README'), 'flat layout\n'); // distinct content -> distinct cache entry
  const flat = join(d, 'flat.tgz');
  await execa('tar', ['-C', join(d, 'flat'), '-czf', flat, '.']);
  const tree = await resolveKernelTree({ kind: 'tarball', path: flat }, recorder());
  t.is(await readFile(join(tree.dir, 'README'), 'utf8'), 'flat layout\n');

  await mkdir(join(d, 'two/a'), { recursive: true });
  await mkdir(join(d, 'two/b'), { recursive: true });
  const two = join(d, 'two.tar');
  await execa('tar', ['-C', join(d, 'two'), '-cf', two, 'a', 'b']);
  await t.throwsAsync(resolveKernelTree({ kind: 'tarball', path: two }, recorder()), {
    message: /expected one top-level directory holding the kernel tree, found 2 entries \(a, b\)/,
  });
  await writeFile(join(d, 'junk.tar.gz'), 'not a tarball at all, just text that is long enough to sniff\n');
  await t.throwsAsync(resolveKernelTree({ kind: 'tarball', path: join(d, 'junk.tar.gz') }, recorder()), { message: /not a tar archive/ });
  await t.throwsAsync(resolveKernelTree({ kind: 'tarball', path: join(d, 'missing.tar') }, recorder()), { message: /missing\.tar is not a file/ });
});

test.serial('git: HEAD of a clean tree is exported by commit, without touching the user .git', async (t) => {
  const repo = await demoRepo('git1');
  const head = await git(repo, 'rev-parse', 'HEAD');
  const before = await gitMetaState(repo);
  const step = recorder();
  const tree = await resolveKernelTree({ kind: 'git', path: repo }, step);
  t.is(tree.id, `git:${head}`);
  t.is(tree.version, '7.2.0-rc1');
  t.is(tree.label, `git ${repo} @ ${head.slice(0, 12)} (demo: initial tree)`);
  t.is(await readFile(join(tree.dir, 'drivers/demo/demo.h'), 'utf8'), await readFile(join(repo, 'drivers/demo/demo.h'), 'utf8'));
  t.false(existsSync(join(tree.dir, '.git')));
  t.is(await gitMetaState(repo), before, 'nothing under .git changed (no worktree metadata, no index refresh)');
  // Same commit again: cache hit.
  const again = recorder();
  t.deepEqual(await resolveKernelTree({ kind: 'git', path: repo }, again), tree);
  t.false(again.updates.some((u) => u.startsWith('exporting')));
});

test.serial('git: a dirty tree is refused without ref, and exported as committed with ref', async (t) => {
  const repo = await demoRepo('git2');
  await writeFile(join(repo, 'drivers/demo/demo.h'), '/* edited, not committed */\n');
  await writeFile(join(repo, 'notes.txt'), 'untracked\n');
  const err = await t.throwsAsync(resolveKernelTree({ kind: 'git', path: repo }, recorder()), {
    message: new RegExp(`kernel.path ${repo} has uncommitted changes; hwlab builds committed trees only:\\n  M drivers/demo/demo.h\\n  \\?\\? notes.txt$`),
  });
  t.regex((err as { hint?: string }).hint ?? '', /commit or stash them, or set kernel\.ref/);

  const tree = await resolveKernelTree({ kind: 'git', path: repo, ref: 'HEAD' }, recorder());
  t.regex(await readFile(join(tree.dir, 'drivers/demo/demo.h'), 'utf8'), /DEMO_MAX\t4096/);
  t.false(existsSync(join(tree.dir, 'notes.txt')));
  // The user's edit is still there.
  t.is(await readFile(join(repo, 'drivers/demo/demo.h'), 'utf8'), '/* edited, not committed */\n');
});

test.serial('git: ref resolves tags, branches and short shas to the commit; bad refs are named', async (t) => {
  const repo = await demoRepo('git3');
  const first = await git(repo, 'rev-parse', 'HEAD');
  await writeFile(join(repo, 'Makefile'), (await readFile(join(repo, 'Makefile'), 'utf8')).replace('EXTRAVERSION = -rc1', 'EXTRAVERSION = -rc2'));
  await git(repo, 'commit', '-qam', 'Linux 7.2-rc2');
  const second = await git(repo, 'rev-parse', 'HEAD');
  await git(repo, 'branch', 'old', first);

  const byTag = await resolveKernelTree({ kind: 'git', path: repo, ref: 'v7.2-demo' }, recorder());
  t.is(byTag.id, `git:${first}`); // an annotated or light tag peels to its commit
  t.is(byTag.version, '7.2.0-rc1');
  t.is(byTag.label, `git ${repo} v7.2-demo @ ${first.slice(0, 12)} (demo: initial tree)`);
  t.is((await resolveKernelTree({ kind: 'git', path: repo, ref: 'old' }, recorder())).dir, byTag.dir);
  t.is((await resolveKernelTree({ kind: 'git', path: repo, ref: first.slice(0, 10) }, recorder())).id, `git:${first}`);
  const head = await resolveKernelTree({ kind: 'git', path: repo }, recorder());
  t.is(head.id, `git:${second}`);
  t.is(head.version, '7.2.0-rc2');

  await t.throwsAsync(resolveKernelTree({ kind: 'git', path: repo, ref: 'no-such-branch' }, recorder()), {
    message: `kernel.ref "no-such-branch" does not name a commit in ${repo}`,
  });
  // A ref that looks like an option is a ref, not an option.
  await t.throwsAsync(resolveKernelTree({ kind: 'git', path: repo, ref: '--all' }, recorder()), { message: /kernel\.ref "--all" does not name a commit/ });
  const plain = await dir('not-git');
  await t.throwsAsync(resolveKernelTree({ kind: 'git', path: plain }, recorder()), { message: /is not inside a git repository/ });
});

test.serial('debian .deb layout: usr/src/linux-source-*.tar.xz is unpacked to the tree (local fake package)', async (t) => {
  if (!(await execa('dpkg-deb', ['--version'], { reject: false }).catch(() => undefined))?.stdout) return t.pass('no dpkg-deb here');
  const d = await dir('deb');
  const pkg = join(d, 'pkg');
  await mkdir(join(pkg, 'DEBIAN'), { recursive: true });
  await mkdir(join(pkg, 'usr/src'), { recursive: true });
  await writeFile(join(pkg, 'DEBIAN/control'), 'Package: linux-source-7.2\nVersion: 7.2.0~rc1-1\nArchitecture: all\nMaintainer: Ada <ada@example.org>\nDescription: fake\n');
  await cp(DEMO, join(d, 'x/linux-source-7.2'), { recursive: true });
  await execa('tar', ['-C', join(d, 'x'), '-cJf', join(pkg, 'usr/src/linux-source-7.2.tar.xz'), 'linux-source-7.2']);
  await execa('dpkg-deb', ['--build', '--root-owner-group', pkg, join(d, 'fake.deb')]);
  const tmp = await dir('deb-entry');
  await unpackSourceDeb(join(d, 'fake.deb'), tmp, 'debian:linux-source-7.2=7.2.0~rc1-1', recorder());
  t.deepEqual((await readdir(tmp)).sort(), ['source.json', 'tree']);
  t.deepEqual(JSON.parse(await readFile(join(tmp, 'source.json'), 'utf8')), { id: 'debian:linux-source-7.2=7.2.0~rc1-1', version: '7.2.0-rc1' });
  t.true(existsSync(join(tmp, 'tree/drivers/demo/demo.c')));
});

const network = process.env.HWLAB_NETWORK_TESTS === '1' ? test : test.skip;
network('network: debian linux-source-7.2 is resolved, downloaded and unpacked into the cache', async (t) => {
  const step = recorder();
  const tree = await resolveKernelTree(
    { kind: 'debian-source', package: 'linux-source-7.2', suite: 'sid', mirror: 'http://deb.debian.org/debian' },
    step,
  );
  t.regex(tree.id, /^debian:linux-source-7\.2=7\.2\.\d+-\d+/);
  t.regex(tree.version, /^7\.2\.\d+$/);
  t.is(tree.label, `linux-source-7.2 ${tree.id.split('=')[1]}`);
  t.true(existsSync(join(tree.dir, 'drivers/vfio/pci/vfio_pci_dmabuf.c')));
  t.log(tree, step.updates.filter((u, i, a) => a.indexOf(u) === i).slice(-5));
});
