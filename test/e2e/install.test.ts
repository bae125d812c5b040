// The `hwlab` wrapper's install on a fresh checkout, for real (npm registry or
// npm's cache): npm ci without install scripts, then every package's scripts
// but better-sqlite3's, whose addon the first use of the results history
// builds (src/history/addon.ts), also after a build stopped by Ctrl-C. About
// two minutes, most of it compiling SQLite.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from './helpers.ts';

const SSH2_ADDON = 'node_modules/ssh2/lib/protocol/crypto/build/Release/sshcrypto.node';
const SQLITE_ADDON = 'node_modules/better-sqlite3/build/Release/better_sqlite3.node';
const PENDING = 'node_modules/.hwlab-scripts-pending';

test('a fresh checkout installs without compiling SQLite, finishes an interrupted install, and builds the addon when the history is first opened, and a build stopped by Ctrl-C leaves nothing behind', async (t) => {
  const checkout = await mkdtemp(path.join(os.tmpdir(), 'hwlab-e2e-install-'));
  t.teardown(() => rm(checkout, { recursive: true, force: true }));
  await execa('cp', ['-a', '-t', checkout, '--', 'hwlab', 'package.json', 'package-lock.json', 'tsconfig.json', 'src'], { cwd: repoRoot });
  const at = (rel: string) => path.join(checkout, rel);
  const wrapper = (args: string[]) => execa(at('hwlab'), args, { cwd: checkout, reject: false, all: true, timeout: 15 * 60_000, env: { HWLAB_HISTORY: at('history.sqlite') } });

  const first = await wrapper(['--help']);
  t.is(first.exitCode, 0, first.all);
  t.regex(first.stderr, /installing npm dependencies \(npm ci\)/);
  t.true(existsSync(at(SSH2_ADDON)), 'ssh2\'s install script ran');
  t.false(existsSync(at(SQLITE_ADDON)), 'better-sqlite3 was not compiled');
  t.false(existsSync(at(PENDING)), 'the install is marked complete');

  // An install stopped after npm ci (the marker left): the next start runs the scripts, not npm ci again.
  await rm(at('node_modules/ssh2/lib/protocol/crypto/build'), { recursive: true });
  await execa('touch', [at(PENDING)]);
  const resumed = await wrapper(['--help']);
  t.is(resumed.exitCode, 0, resumed.all);
  t.notRegex(resumed.stderr, /installing npm dependencies/);
  t.true(existsSync(at(SSH2_ADDON)), 'ssh2\'s install script ran again');
  t.false(existsSync(at(PENDING)));

  // Bad input is refused before the build.
  const bad = await wrapper(['history', 'runz']);
  t.is(bad.exitCode, 2, bad.all);
  t.regex(bad.stderr, /unknown subcommand "runz"/);
  t.false(existsSync(at(SQLITE_ADDON)), 'no build for a refused command');

  // Ctrl-C during the build: exit 130, npm's whole process tree ended, no half-built addon or lock file left.
  const gccTemps = async () => (await readdir(os.tmpdir())).filter((f) => /^cc\w+\.(s|o|res)$/.test(f));
  const tempsBefore = await gccTemps();
  const stopped = wrapper(['history']);
  // The wait ends with the process too, should it never say it is building.
  await Promise.race([stopped, new Promise<void>((resolve) => stopped.stderr?.on('data', (d: Buffer) => { if (/building better-sqlite3/.test(String(d))) resolve(); }))]);
  await new Promise((r) => setTimeout(r, 5000)); // into the compile
  stopped.kill('SIGINT');
  const interrupted = await stopped;
  t.is(interrupted.exitCode, 130, interrupted.all);
  const inCheckout = (await execa('ps', ['-eo', 'pid=,args='])).stdout.split('\n').filter((l) => /node-gyp|cc1|prebuild-install/.test(l) && l.includes(checkout));
  const compilers = (await execa('pgrep', ['-f', 'sqlite3\\.c'], { reject: false })).stdout.trim();
  t.deepEqual(inCheckout, [], 'no build process left');
  t.is(compilers, '', 'no compiler of sqlite3.c left');
  t.false(existsSync(at('node_modules/better-sqlite3/build')), 'no half-built addon');
  t.false(existsSync(at('node_modules/better-sqlite3/.hwlab-build.lock')), 'no lock file');
  t.deepEqual((await gccTemps()).filter((f) => !tempsBefore.includes(f)), [], 'no temporary file of the compiler left in /tmp');

  const history = await wrapper(['history']);
  t.is(history.exitCode, 0, history.all);
  t.regex(history.stderr, /building better-sqlite3's native addon/);
  t.regex(history.stdout, /no run recorded in .*history\.sqlite/);
  t.true(existsSync(at(SQLITE_ADDON)));

  const again = await wrapper(['history']);
  t.is(again.exitCode, 0, again.all);
  t.notRegex(again.stderr, /building/);
});
