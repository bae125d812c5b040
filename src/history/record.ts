// Writing runs into the history, one transaction per run: the run, its
// points, its kernel reports and the report titles' running tallies (first
// and last seen, count, the kernels each title was seen on, as syzkaller's
// dashboard keeps them) land together or not at all.
import { execaSync } from 'execa';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CellRecord } from '../reports/summary.ts';
import type { KernelRecord } from '../results/report.ts';
import type { HistoryDb } from './db.ts';
import { pointsOf } from './points.ts';

/** Why a run was made: a plain run or an import, a night's run, a retry after infra, a rerun of new failures, a bisect step. */
export type RunPurpose = 'run' | 'import' | 'nightly' | 'infra-retry' | 'rerun' | 'bisect';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let cachedVersion: string | undefined;

/** package.json's version and, in a git checkout, the commit (with -dirty): which hwlab judged the run. */
export function hwlabVersion(): string {
  if (cachedVersion) return cachedVersion;
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
  const git = execaSync('git', ['-C', repoRoot, 'describe', '--always', '--dirty', '--abbrev=12'], { reject: false, timeout: 10_000 });
  cachedVersion = git.exitCode === 0 && git.stdout ? `${pkg.version}+${git.stdout.trim()}` : pkg.version;
  return cachedVersion;
}

/**
 * What makes two runs' kernels the same kernel: package and exact version,
 * the applied series by content, the config. A night whose identity differs
 * from the last night's ran a new kernel.
 */
export function kernelIdentity(k: KernelRecord | undefined): string | undefined {
  if (!k) return undefined;
  const patches = (k.patches ?? []).map((p) => p.sha256.slice(0, 12)).join(',');
  return `${k.kind}:${k.package}=${k.version}${patches ? ` +[${patches}]` : ''}${k.configSha256 ? ` config:${k.configSha256.slice(0, 12)}` : ''}`;
}

/** The name a title's kernel list uses: the release and, when patched, the series. */
function kernelLabel(k: KernelRecord | undefined): string {
  if (!k) return '(unknown kernel)';
  const n = k.patches?.length ?? 0;
  return `${k.release}${n ? ` +${n} patch${n === 1 ? '' : 'es'}` : ''}`;
}

export interface RecordOptions {
  purpose: RunPurpose;
  nightId?: number;
  /** Overrides the cell's id (matrix cells carry their own; a single run is its lab's name). */
  cell?: string;
}

export interface RecordedRun {
  id: number;
  /** False when that run folder was already in the history (imports are idempotent). */
  added: boolean;
}

export function recordRun(db: HistoryDb, cell: CellRecord, opts: RecordOptions): RecordedRun {
  const r = cell.results;
  const write = db.transaction((): RecordedRun => {
    // Inside the transaction: two processes importing one folder at once must not both add it.
    const existing = db.prepare('SELECT id FROM runs WHERE run_dir = ?').get(cell.dir) as { id: number } | undefined;
    if (existing) return { id: existing.id, added: false };
    const k = r.kernel;
    const info = db.prepare(`INSERT INTO runs (run_dir, lab, cell, started_at, recorded_at, purpose, night_id, outcome_class, outcome_code, outcome_title,
      kernel_kind, kernel_package, kernel_version, kernel_release, kernel_config_sha256, kernel_patches, kernel_identity, hwlab_version, timings)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`).run(
      cell.dir, r.lab, opts.cell ?? cell.id, r.startedAt, new Date().toISOString(), opts.purpose, opts.nightId ?? null,
      r.outcome.class, r.outcome.code, r.outcome.title,
      k?.kind ?? null, k?.package ?? null, k?.version ?? null, k?.release ?? null, k?.configSha256 ?? null,
      JSON.stringify(k?.patches ?? []), kernelIdentity(k) ?? null, hwlabVersion(), JSON.stringify(r.timings ?? {}),
    );
    const runId = Number(info.lastInsertRowid);
    const insPoint = db.prepare('INSERT INTO points (run_id, probe_key, probe, device, point, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?)');
    for (const p of pointsOf(cell)) insPoint.run(runId, p.probeKey, p.probe, p.device ?? null, p.point, p.status, p.reason ?? null);
    const insReport = db.prepare('INSERT INTO run_reports (run_id, title, kind, count) VALUES (?, ?, ?, ?)');
    const upsertTitle = db.prepare(`INSERT INTO report_titles (title, kind, first_seen, last_seen, count, runs, first_run_id, last_run_id)
      VALUES (@title, @kind, @at, @at, @count, 1, @runId, @runId)
      ON CONFLICT (title) DO UPDATE SET count = count + @count, runs = runs + 1,
        first_seen = min(first_seen, @at), last_seen = max(last_seen, @at),
        first_run_id = CASE WHEN @at < first_seen THEN @runId ELSE first_run_id END,
        last_run_id = CASE WHEN @at >= last_seen THEN @runId ELSE last_run_id END`);
    const addKernel = db.prepare('INSERT OR IGNORE INTO report_kernels (title, kernel) VALUES (?, ?)');
    for (const rep of r.kernelReports ?? []) {
      insReport.run(runId, rep.title, rep.kind, rep.count);
      upsertTitle.run({ title: rep.title, kind: rep.kind, at: r.startedAt, count: rep.count, runId });
      addKernel.run(rep.title, kernelLabel(k));
    }
    return { id: runId, added: true };
  });
  // IMMEDIATE: take the write lock up front, so a concurrent writer waits (busy timeout) instead of failing on upgrade.
  return write.immediate();
}
