// hwlab bisect end to end (npm run test:bisect, not part of npm test: the
// first run builds the test history's base tree cold, 15 to 30 minutes on 2
// cores). A bare git repository holds Debian's 7.2 source and eight commits
// on top, one of which applies the catalogue's 03-attach-allows-no-p2p
// patch (test/e2e/kernel-history.ts). Bisect must name that commit, with at
// most ceil(log2(8)) + 1 lab runs, every step an incremental build of the
// one shared tree, and every step in the history.
import test from 'ava';
import Database from 'better-sqlite3';
import path from 'node:path';
import type { BisectResult } from '../../src/bisect/bisect.ts';
import { loadLab } from '../../src/lab/load.ts';
import { resolveKernelTree } from '../../src/kernel/source.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { hwlab, qemuProcessesMentioning, removeRunsDirs, repoRoot, runsDir } from '../e2e/helpers.ts';
import { kernelHistory } from '../e2e/kernel-history.ts';
import { ensureSqliteAddon } from '../../src/history/addon.ts';

// Run without npm's pretest (npx ava ...) in a checkout the hwlab wrapper installed: the addon is built here once.
test.before(() => ensureSqliteAddon());

test.after.always(removeRunsDirs);

test('bisect names the commit that applies the catalogue patch, in at most 4 lab runs', async (t) => {
  const lab = await loadLab(path.join(repoRoot, 'labs/smoke.yaml'));
  if (lab.kernel.kind !== 'source') throw new Error('labs/smoke.yaml builds from source');
  const tree = await silentProgress().run('kernel tree', (s) => resolveKernelTree(lab.kernel.kind === 'source' ? lab.kernel.source : (undefined as never), s));
  const h = await kernelHistory(tree.dir, tree.id, path.join(repoRoot, 'labs/mutants/03-attach-allows-no-p2p.patch'), (l) => t.log(l));
  t.is(h.commits.length, 8);
  const dir = runsDir();
  const history = path.join(dir, 'history.sqlite');
  const r = await hwlab(['bisect', path.join(repoRoot, 'labs/smoke.yaml'), '--tree', h.repo, '--good', h.base, '--bad', h.commits.at(-1)!.sha, '--history', history, '--runs-dir', dir, '--json'], { timeoutMs: 3 * 3600_000 });
  t.log(r.stderr.split('\n').filter((l) => /bisect|make|build/.test(l)).slice(-40).join('\n'));
  t.is(r.exitCode, 0, r.all);
  const res = JSON.parse(r.stdout) as BisectResult;
  t.is(res.firstBad?.commit, h.bad.sha);
  t.is(res.firstBad?.subject, h.bad.subject);
  t.true(res.labRuns <= Math.ceil(Math.log2(8)) + 1, `${res.labRuns} lab runs`);
  t.deepEqual(res.oracleProbes, ['importer-refusals(shm0)']);
  t.true(res.firstBad!.failingPoints.length >= 1);
  t.truthy(res.firstBad!.runDir);
  const db = new Database(history, { readonly: true });
  t.is((db.prepare("SELECT count(*) AS c FROM runs WHERE purpose = 'bisect'").get() as { c: number }).c, res.labRuns);
  db.close();
  // Steps after the first are incremental builds of the one shared tree.
  const results = await Promise.all(res.steps.map(async (s) => JSON.parse(await import('node:fs/promises').then((f) => f.readFile(path.join(s.runDir, 'results.json'), 'utf8'))) as { kernel?: { built?: boolean; incrementalFrom?: string; buildSeconds?: number } }));
  for (const [i, k] of results.slice(1).entries()) t.truthy(k.kernel?.incrementalFrom ?? (k.kernel?.built === false ? 'cached' : undefined), `step ${i + 1} built incrementally or reused`);
  t.log(res.steps.map((s) => `${s.n} ${s.commit.slice(0, 12)} ${s.verdict} build ${results[res.steps.indexOf(s)].kernel?.buildSeconds?.toFixed(0) ?? '-'} s`).join('\n'));
  t.deepEqual(await qemuProcessesMentioning(dir), []);
});
