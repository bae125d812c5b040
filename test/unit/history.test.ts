// The results history on disk: schema migration, recording runs and their
// points, report titles tracked across runs, flake rates, two processes
// writing at once, and a process killed inside a transaction.
import test from 'ava';
import Database from 'better-sqlite3';
import { execa } from 'execa';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openHistory, SCHEMA_VERSION, schemaVersion } from '../../src/history/db.ts';
import { finishNight, startNight } from '../../src/history/nights.ts';
import { PROBE_POINT, pointsOf } from '../../src/history/points.ts';
import { baselineNight, flakeRate, listRuns, pointHistory, pointsOfRun, reportTitles, titlesOfRun } from '../../src/history/query.ts';
import { recordRun } from '../../src/history/record.ts';
import { InputError } from '../../src/util/errors.ts';
import { cell, report } from './helpers/history-cells.ts';
import { tempDir } from './helpers/temp.ts';
import { ensureSqliteAddon } from '../../src/history/addon.ts';

// Run without npm's pretest (npx ava ...) in a checkout the hwlab wrapper installed: the addon is built here once.
test.before(() => ensureSqliteAddon());

const here = path.dirname(fileURLToPath(import.meta.url));
const writer = path.join(here, 'helpers', 'history-writer.ts');
const tmpDb = () => path.join(tempDir('hwlab-history-'), 'history.sqlite');

test('a version 1 history is migrated forward with its runs kept; a newer one is refused', (t) => {
  const file = tmpDb();
  const v1 = openHistory(file, { upTo: 1 });
  t.is(schemaVersion(v1), 1);
  // Written as version 1's code wrote it (no night_id yet).
  const id = Number(v1.prepare(`INSERT INTO runs (run_dir, lab, cell, started_at, recorded_at, purpose, outcome_class, outcome_code, outcome_title, hwlab_version)
    VALUES ('/runs/a', 'smoke', 'smoke', '2026-12-01T00:00:00.000Z', '2026-12-01T00:00:00.000Z', 'run', 'pass', 'pass', 'ok', '0.1.0')`).run().lastInsertRowid);
  v1.prepare("INSERT INTO points (run_id, probe_key, probe, device, point, status) VALUES (?, 'dmabuf-export(shm0)', 'dmabuf-export', 'shm0', 'export', 'pass')").run(id);
  v1.close();
  const db = openHistory(file);
  t.is(schemaVersion(db), SCHEMA_VERSION);
  t.is(listRuns(db).length, 1);
  t.is(listRuns(db)[0].nightId, undefined);
  t.deepEqual(pointsOfRun(db, id).map((p) => p.status), ['pass']);
  // Version 2's tables and column exist.
  t.notThrows(() => db.prepare('SELECT night_id FROM runs').all());
  t.notThrows(() => db.prepare('SELECT * FROM night_points').all());
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db.close();
  const err = t.throws(() => openHistory(file), { instanceOf: InputError });
  t.regex(err.message, /schema version 3 is newer than this hwlab knows \(2\)/);
});

test('WAL and a busy timeout are set', (t) => {
  const db = openHistory(tmpDb());
  t.is(db.pragma('journal_mode', { simple: true }), 'wal');
  t.true((db.pragma('busy_timeout', { simple: true }) as number) >= 10_000);
  db.close();
});

test('a run is recorded with every point, once; a probe without points is one point', (t) => {
  const db = openHistory(tmpDb());
  const c = cell('/runs/b', '2026-12-01T00:00:00.000Z', [
    { name: 'dmabuf-export', device: 'shm0', points: ['export=pass', 'slice=fail'] },
    { name: 'importer-multirange', device: 'shm0', points: ['map covers both=todo', 'range 1 bytes=skip'] },
    { name: 'lifetime', device: 'shm0', points: [] },
  ]);
  const first = recordRun(db, c, { purpose: 'run' });
  t.true(first.added);
  t.deepEqual(recordRun(db, c, { purpose: 'import' }), { id: first.id, added: false });
  const pts = pointsOfRun(db, first.id);
  t.deepEqual(pts.map((p) => `${p.probeKey} :: ${p.point}=${p.status}`), [
    'dmabuf-export(shm0) :: export=pass', 'dmabuf-export(shm0) :: slice=fail',
    'importer-multirange(shm0) :: map covers both=todo', 'importer-multirange(shm0) :: range 1 bytes=skip',
    `lifetime(shm0) :: ${PROBE_POINT}=pass`,
  ]);
  t.deepEqual(pointsOf(c), pts);
  const run = listRuns(db)[0];
  t.is(run.failing, 1);
  t.is(run.kernelRelease, '7.2.13-hwlab');
  t.regex(run.hwlabVersion, /^0\.1\.0/);
  db.close();
});

test('kernel report titles: first and last seen, count, runs, kernels; a title is new only on its first run', (t) => {
  const db = openHistory(tmpDb());
  const probes = (reports: ReturnType<typeof report>[]) => [{ name: 'revoke-triggers', device: 'shm0', points: ['flr=pass'] as const, reports }].map((p) => ({ ...p, points: [...p.points] }));
  const a = recordRun(db, cell('/runs/1', '2026-12-01T00:00:00.000Z', probes([report('WARNING in vfio_pci_dma_buf_move', 2)]), { release: '7.2.13-hwlab' }), { purpose: 'nightly' });
  const b = recordRun(db, cell('/runs/2', '2026-12-02T00:00:00.000Z', probes([report('WARNING in vfio_pci_dma_buf_move'), report('possible circular locking dependency detected')]), { release: '7.2.14-hwlab' }), { purpose: 'nightly' });
  recordRun(db, cell('/runs/3', '2026-12-03T00:00:00.000Z', probes([])), { purpose: 'nightly' });
  const titles = reportTitles(db);
  const warn = titles.find((x) => x.title.startsWith('WARNING'))!;
  const lockdep = titles.find((x) => x.title.startsWith('possible'))!;
  t.like(warn, { title: 'WARNING in vfio_pci_dma_buf_move', firstSeen: '2026-12-01T00:00:00.000Z', lastSeen: '2026-12-02T00:00:00.000Z', count: 3, runs: 2 });
  t.deepEqual(warn.kernels, ['7.2.13-hwlab', '7.2.14-hwlab']);
  t.like(lockdep, { count: 1, runs: 1, firstSeen: '2026-12-02T00:00:00.000Z' });
  t.deepEqual(titlesOfRun(db, a.id).map((x) => [x.title, x.seenBefore]), [['WARNING in vfio_pci_dma_buf_move', false]]);
  t.deepEqual(titlesOfRun(db, b.id).map((x) => [x.title, x.seenBefore]), [['WARNING in vfio_pci_dma_buf_move', true], ['possible circular locking dependency detected', false]]);
  db.close();
});

test('flake rate over nights, point history, and the baseline skips infra nights', (t) => {
  const db = openHistory(tmpDb());
  const nights = ['flaky', 'unchanged', 'flaky', 'unchanged'] as const;
  for (const [i, category] of nights.entries()) {
    const n = startNight(db, { series: 'smoke', source: 'labs/smoke.yaml', folder: `/runs/n${i}` });
    const run = recordRun(db, cell(`/runs/n${i}/run`, `2026-12-0${i + 1}T00:00:00.000Z`, [{ name: 'stress', device: 'shm0', points: [`workers start=${category === 'flaky' ? 'fail' : 'pass'}`] }]), { purpose: 'nightly', nightId: n });
    finishNight(db, n, { runId: run.id, outcomeClass: category === 'flaky' ? 'fail' : 'pass', verdict: 'x', changes: [{ probeKey: 'stress(shm0)', point: 'workers start', category }] });
  }
  const infra = startNight(db, { series: 'smoke', source: 'labs/smoke.yaml', folder: '/runs/n4' });
  finishNight(db, infra, { outcomeClass: 'infra', verdict: 'infra', changes: [] });
  t.deepEqual(flakeRate(db, 'smoke', 'stress(shm0)', 'workers start'), { flaky: 2, nights: 4, rate: 0.5 });
  t.is(baselineNight(db, 'smoke')?.folder, '/runs/n3');
  const h = pointHistory(db, 'stress', 'WORKERS');
  t.deepEqual(h.map((e) => `${e.status}/${e.category}`), ['fail/flaky', 'pass/unchanged', 'fail/flaky', 'pass/unchanged']);
  db.close();
});

test('two processes writing at once lose nothing and fail nothing', async (t) => {
  const file = tmpDb();
  openHistory(file).close();
  const n = 40;
  const [a, b] = await Promise.all(['a', 'b'].map((tag) => execa('node', ['--import', 'tsx', writer, 'write', file, tag, String(n)], { reject: false, timeout: 120_000 })));
  t.is(a.exitCode, 0, a.stderr);
  t.is(b.exitCode, 0, b.stderr);
  const db = openHistory(file);
  t.is(listRuns(db, { limit: 1000 }).length, 2 * n);
  t.is((db.prepare('SELECT count(*) AS c FROM points').get() as { c: number }).c, 2 * n * 3);
  // Each writer's title counted once per odd run of its own.
  t.deepEqual(reportTitles(db).map((r) => [r.title, r.runs]).sort(), [['WARNING in writer_a', n / 2], ['WARNING in writer_b', n / 2]]);
  t.is(db.pragma('integrity_check', { simple: true }), 'ok');
  db.close();
});

test('a process killed inside a transaction loses nothing that was committed, and leaves no part of its open write', async (t) => {
  const file = tmpDb();
  const child = execa('node', ['--import', 'tsx', writer, 'crash', file, 'c', '5'], { reject: false, timeout: 120_000 });
  await new Promise<void>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('inside')) resolve();
    });
    child.once('exit', () => reject(new Error(`writer exited before its transaction: ${out}`)));
  });
  // While it holds the write lock, a reader still sees the committed runs (WAL).
  const reader = new Database(file, { readonly: true });
  t.is((reader.prepare('SELECT count(*) AS c FROM runs').get() as { c: number }).c, 5);
  reader.close();
  child.kill('SIGKILL');
  const r = await child;
  t.is(r.signal, 'SIGKILL');
  const db = openHistory(file);
  t.is(db.pragma('integrity_check', { simple: true }), 'ok');
  t.deepEqual(listRuns(db).map((x) => x.runDir).sort(), [0, 1, 2, 3, 4].map((i) => `/runs/c-${i}`));
  t.is((db.prepare("SELECT count(*) AS c FROM points p JOIN runs r ON r.id = p.run_id WHERE r.run_dir = '/runs/c-5'").get() as { c: number }).c, 0);
  t.is(reportTitles(db)[0].runs, 2);
  // The lock died with the process: a new write goes through at once.
  t.true(recordRun(db, cell('/runs/after', '2026-12-09T00:00:00.000Z', [{ name: 'dmabuf-export', device: 'shm0', points: ['export=pass'] }]), { purpose: 'import' }).added);
  db.close();
});
