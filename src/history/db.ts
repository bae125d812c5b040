// The results history: an embedded SQLite database (better-sqlite3) that
// remembers every run, point and kernel report, so a nightly run can be
// compared with the last good night. SQLite gives what a history needs from
// a file: a versioned schema (PRAGMA user_version, migrated forward in one
// transaction each), transactions, so a process killed mid-write loses
// nothing that was committed, and WAL with a busy timeout, so two hwlab
// processes can write at once and each waits its turn instead of failing.
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { InfraError, InputError } from '../util/errors.ts';

export type HistoryDb = Database.Database;

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** `$HWLAB_HISTORY`, else runs/history.sqlite beside the run folders (not the cache: pruning the cache must never lose history). */
export function defaultHistoryPath(): string {
  return process.env.HWLAB_HISTORY ?? path.join(repoRoot, 'runs', 'history.sqlite');
}

/** How long a writer waits for another process's write transaction before giving up (ms). */
export const BUSY_TIMEOUT_MS = 30_000;

/**
 * The schema, one step per version: step i takes a database at version i to
 * i + 1. Steps are never edited once released; a change is a new step.
 */
export const MIGRATIONS: readonly string[] = [
  // 1: runs, their points and kernel reports, and report titles across runs.
  `
  CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    run_dir TEXT NOT NULL UNIQUE,
    lab TEXT NOT NULL,
    cell TEXT NOT NULL,
    started_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    purpose TEXT NOT NULL,
    outcome_class TEXT NOT NULL,
    outcome_code TEXT NOT NULL,
    outcome_title TEXT NOT NULL,
    kernel_kind TEXT,
    kernel_package TEXT,
    kernel_version TEXT,
    kernel_release TEXT,
    kernel_config_sha256 TEXT,
    kernel_patches TEXT NOT NULL DEFAULT '[]',
    kernel_identity TEXT,
    hwlab_version TEXT NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}'
  );
  CREATE INDEX runs_by_cell ON runs (cell, started_at);
  CREATE TABLE points (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    probe_key TEXT NOT NULL,
    probe TEXT NOT NULL,
    device TEXT,
    point TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    PRIMARY KEY (run_id, probe_key, point)
  );
  CREATE INDEX points_by_probe ON points (probe, point);
  CREATE TABLE run_reports (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, title)
  );
  CREATE TABLE report_titles (
    title TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    count INTEGER NOT NULL,
    runs INTEGER NOT NULL,
    first_run_id INTEGER NOT NULL,
    last_run_id INTEGER NOT NULL
  );
  CREATE TABLE report_kernels (
    title TEXT NOT NULL REFERENCES report_titles (title),
    kernel TEXT NOT NULL,
    PRIMARY KEY (title, kernel)
  );
  `,
  // 2: nights (hwlab nightly) and each point's class on each night (flake rates come from these).
  `
  CREATE TABLE nights (
    id INTEGER PRIMARY KEY,
    series TEXT NOT NULL,
    source TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    run_id INTEGER REFERENCES runs (id),
    baseline_night_id INTEGER REFERENCES nights (id),
    kernel_identity TEXT,
    kernel_changed INTEGER,
    outcome_class TEXT,
    verdict TEXT,
    folder TEXT NOT NULL
  );
  CREATE INDEX nights_by_series ON nights (series, id);
  ALTER TABLE runs ADD COLUMN night_id INTEGER REFERENCES nights (id);
  CREATE TABLE night_points (
    night_id INTEGER NOT NULL REFERENCES nights (id),
    probe_key TEXT NOT NULL,
    point TEXT NOT NULL,
    category TEXT NOT NULL,
    PRIMARY KEY (night_id, probe_key, point)
  );
  `,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Opens (creating when missing) and migrates the history at `file`. A
 * database from a newer hwlab is refused rather than written with a schema
 * this one does not know.
 */
export function openHistory(file = defaultHistoryPath(), opts: { upTo?: number } = {}): HistoryDb {
  mkdirSync(path.dirname(file), { recursive: true });
  let db: HistoryDb;
  try {
    db = new Database(file, { timeout: BUSY_TIMEOUT_MS });
  } catch (err) {
    const message = (err as Error).message;
    // The addon not built (callers run ensureSqliteAddon first; this is for those that did not): not the file's fault.
    if (/Could not locate the bindings file/.test(message)) {
      throw new InfraError(`cannot open the results history ${file}: better-sqlite3's native addon is not built`, 'run npm rebuild better-sqlite3 in the hwlab checkout', 'sqlite-addon-missing');
    }
    throw new InputError(`${file}: cannot open the results history (${message})`, 'give another file with --history FILE or HWLAB_HISTORY');
  }
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.pragma('foreign_keys = ON');
    migrate(db, file, opts.upTo ?? SCHEMA_VERSION);
  } catch (err) {
    db.close();
    throw err;
  }
  return db;
}

function migrate(db: HistoryDb, file: string, target: number): void {
  // BEGIN IMMEDIATE: two processes opening a fresh file at once must not both run step 1.
  const step = db.transaction(() => {
    const v = db.pragma('user_version', { simple: true }) as number;
    if (v > SCHEMA_VERSION) {
      throw new InputError(`${file}: results history schema version ${v} is newer than this hwlab knows (${SCHEMA_VERSION})`, 'use a newer hwlab, or another history file (--history FILE)');
    }
    if (v >= target) return false;
    db.exec(MIGRATIONS[v]);
    db.pragma(`user_version = ${v + 1}`);
    return true;
  });
  while (step.immediate()) { /* one version per transaction */ }
}

export function schemaVersion(db: HistoryDb): number {
  return db.pragma('user_version', { simple: true }) as number;
}
