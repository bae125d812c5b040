// better-sqlite3's native addon, built the first time the results history is
// opened instead of during the install. Compiling SQLite (one 9 MB C file, on
// one core) was 80 of a fresh clone's 95 s `npm ci` here: without install
// scripts npm ci took 8 s, the other packages' scripts 7 s more. The `hwlab` wrapper
// installs with the install scripts off and runs every package's but this
// one, so a first `hwlab run` (which never opens the history) starts its
// kernel build 80 s sooner; the first history, nightly or bisect command, or
// `npm test` (its pretest script), builds the addon once. A plain `npm ci`
// (CI's) builds it as usual, and this is then a file check.
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { execa } from 'execa';
import { boundToHwlab } from '../util/host-tools.ts';
import { InfraError } from '../util/errors.ts';
import { withLock } from '../util/lock.ts';

/** Where the installed better-sqlite3 package is, and the addon file its `bindings` loader finds first. */
export function sqliteAddonPaths(): { packageDir: string; addon: string; projectDir: string } {
  const packageDir = path.dirname(createRequire(import.meta.url).resolve('better-sqlite3/package.json'));
  // node_modules/better-sqlite3 -> the project that installed it (where npm rebuild runs).
  return { packageDir, addon: path.join(packageDir, 'build', 'Release', 'better_sqlite3.node'), projectDir: path.resolve(packageDir, '..', '..') };
}

const exists = (file: string) => stat(file).then(() => true, () => false);

/** The longest a build of the addon may take (about 75 s on 2 cores here). */
const BUILD_TIMEOUT_MS = 20 * 60_000;

/**
 * Builds better-sqlite3's addon if it is missing. Two hwlab processes that
 * both find it missing build it once: the second waits on the lock and then
 * finds the file.
 */
export async function ensureSqliteAddon(info: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): Promise<void> {
  const { packageDir, addon, projectDir } = sqliteAddonPaths();
  if (await exists(addon)) return;
  const writable = await access(packageDir, constants.W_OK).then(() => true, () => false);
  if (!writable) {
    throw new InfraError(`the results history needs better-sqlite3's native addon, which is not built in ${packageDir}, and this user cannot write there`,
      `run 'npm rebuild better-sqlite3' in ${projectDir} as its owner`, 'sqlite-addon-missing');
  }
  await withLock(path.join(packageDir, '.hwlab-build.lock'), `the build of better-sqlite3's addon in ${packageDir}`, BUILD_TIMEOUT_MS, async () => {
    if (await exists(addon)) return;
    info(`hwlab: building better-sqlite3's native addon for the results history (once per checkout; about 75 s on 2 cores)`);
    const r = await execa(...boundToHwlab('npm', ['rebuild', 'better-sqlite3', '--no-audit', '--no-fund', '--loglevel=error']), {
      cwd: projectDir, reject: false, all: true, timeout: BUILD_TIMEOUT_MS,
    });
    if (r.exitCode !== 0 || !(await exists(addon))) {
      const tail = String(r.all ?? '').trim().split('\n').slice(-20).join('\n');
      throw new InfraError(`npm rebuild better-sqlite3 in ${projectDir} ${r.timedOut ? 'timed out' : `failed (exit ${r.exitCode})`}${r.exitCode === 0 ? ` and left no ${addon}` : ''}:\n${tail}`,
        'the build needs python3, make and g++ (see the README\'s host packages)', 'sqlite-addon-build');
    }
  }, (pid) => info(`hwlab: waiting for hwlab process ${pid}, which is building better-sqlite3's addon`));
}
