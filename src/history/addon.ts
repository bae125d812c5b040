// better-sqlite3's native addon, built the first time the results history is
// opened instead of during the install. Compiling SQLite (one 9 MB C file, on
// one core) was 80 of a fresh clone's 95 s `npm ci` here: without install
// scripts npm ci took 8 s, the other packages' scripts 7 s more. The `hwlab` wrapper
// installs with the install scripts off and runs every package's but this
// one, so a first `hwlab run` (which never opens the history) starts its
// kernel build 80 s sooner; the first history, nightly or bisect command, or
// `npm test` (its pretest script), builds the addon once. A plain `npm ci`
// (CI's) builds it as usual, and this is then a file check.
import { constants, existsSync } from 'node:fs';
import { access, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { execa } from 'execa';
import { onCleanup } from '../util/cleanup.ts';
import { boundToHwlab } from '../util/host-tools.ts';
import { InfraError } from '../util/errors.ts';
import { withLock } from '../util/lock.ts';
import { openHistory, type HistoryDb } from './db.ts';

/** Where the installed better-sqlite3 package is, and the addon file its `bindings` loader finds first. */
export function sqliteAddonPaths(): { packageDir: string; addon: string; projectDir: string } {
  const packageDir = path.dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json'));
  // node_modules/better-sqlite3 -> the project that installed it (where npm rebuild runs).
  return { packageDir, addon: path.join(packageDir, 'build', 'Release', 'better_sqlite3.node'), projectDir: path.resolve(packageDir, '..', '..') };
}

/** The longest a build of the addon may take (about 75 s on 2 cores here). */
const BUILD_TIMEOUT_MS = 20 * 60_000;

/**
 * Builds better-sqlite3's addon if it is missing. Two hwlab processes that
 * both find it missing build it once: the second waits on the lock and then
 * finds the file.
 */
export async function ensureSqliteAddon(info: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<void> {
  const { packageDir, addon, projectDir } = sqliteAddonPaths();
  if (existsSync(addon)) return;
  const writable = await access(packageDir, constants.W_OK).then(() => true, () => false);
  if (!writable) {
    throw new InfraError(`the results history needs better-sqlite3's native addon, which is not built in ${packageDir}, and this user cannot write there`,
      `run 'npm rebuild better-sqlite3' in ${projectDir} as its owner`, 'sqlite-addon-missing');
  }
  await withLock(path.join(packageDir, '.hwlab-build.lock'), `the build of better-sqlite3's addon in ${packageDir}`, BUILD_TIMEOUT_MS, async () => {
    if (existsSync(addon)) return;
    info(`hwlab: building better-sqlite3's native addon for the results history (once per checkout; about 75 s on 2 cores)`);
    await buildAddon(projectDir, packageDir, addon);
  }, (pid) => info(`hwlab: waiting for hwlab process ${pid}, which is building better-sqlite3's addon`));
}

/**
 * npm rebuild in its own process group: npm starts sh, node-gyp, make and
 * the compiler, which outlive npm when only npm is signalled (seen: a Ctrl-C
 * left cc1 compiling SQLite). Timeout, Ctrl-C and hwlab's other exits end the
 * whole group (endGroup), and a build that did not finish leaves no build/ folder, so a
 * half-linked addon is never taken for a built one.
 */
async function buildAddon(projectDir: string, packageDir: string, addon: string): Promise<void> {
  const buildDir = path.join(packageDir, 'build');
  const child = execa(...boundToHwlab('npm', ['rebuild', 'better-sqlite3', '--no-audit', '--no-fund', '--loglevel=error']), {
    cwd: projectDir, reject: false, all: true, detached: true,
  });
  let stopped: string | undefined;
  let ending: Promise<void> | undefined;
  const stop = (why: string) => {
    stopped ??= why;
    ending ??= child.pid ? endGroup(child.pid) : Promise.resolve();
    return ending;
  };
  const forget = onCleanup(async () => {
    await stop('stopped');
    await child;
    await rm(buildDir, { recursive: true, force: true });
  });
  const timer = setTimeout(() => void stop(`timed out after ${BUILD_TIMEOUT_MS / 60_000} min`), BUILD_TIMEOUT_MS);
  try {
    const r = await child;
    await ending;
    if (r.exitCode === 0 && !stopped && existsSync(addon)) return;
    await rm(buildDir, { recursive: true, force: true });
    const tail = String(r.all ?? '').trim().split('\n').slice(-20).join('\n');
    const how = stopped ?? (r.exitCode === 0 ? `exited 0 and left no ${addon}` : `failed (exit ${r.exitCode ?? r.signal})`);
    throw new InfraError(`npm rebuild better-sqlite3 in ${projectDir} ${how}:\n${tail}`,
      'the build needs python3, make and g++ (see the README\'s host packages)', 'sqlite-addon-build');
  } finally {
    clearTimeout(timer);
    forget();
  }
}

/**
 * SIGTERM to the group first: gcc's driver then removes its /tmp/cc*.s files
 * and make its half-written targets (a SIGKILL left the .s files behind);
 * SIGKILL to whatever is left after 5 s.
 */
async function endGroup(pgid: number): Promise<void> {
  const signal = (sig: NodeJS.Signals | 0) => {
    try {
      process.kill(-pgid, sig);
      return true;
    } catch {
      return false; // ESRCH: the group has ended
    }
  };
  if (!signal('SIGTERM')) return;
  for (const deadline = Date.now() + 5000; Date.now() < deadline;) {
    await new Promise((r) => setTimeout(r, 100));
    if (!signal(0)) return;
  }
  signal('SIGKILL');
}

/** The results history, opened once better-sqlite3's addon is there (built now if it is missing). */
export async function openHistoryBuilt(file: string, info?: (line: string) => void): Promise<HistoryDb> {
  await ensureSqliteAddon(info);
  return openHistory(file);
}
