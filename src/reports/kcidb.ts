// KCIDB JSON (KernelCI's common results schema, v5.3: checkouts, builds,
// tests, issues, incidents), so a lab can submit to KernelCI. One checkout
// per kernel source and patch series, one build per kernel build the cells
// shared, one test per probe and per point of each cell, with the cell (its
// axes, vIOMMU, lab) as the test's environment. Statuses follow KCIDB's
// meanings: a failing point or a kernel report is FAIL (the code is faulty),
// a probe that stopped without a verdict is ERROR, one an earlier hang kept
// from running is MISS. An expected failure (TODO) is what it is, a FAIL,
// linked through an incident to an issue that carries the reason: KCIDB's
// own way of saying "known".
import type { KernelReport } from '../report/kernel-report.ts';
import { unattributedReports } from '../results/attribution.ts';
import { sha256 } from '../util/cache.ts';
import type { CellRecord, ProbeClass, ReportSummary } from './summary.ts';
import { testResults } from './summary.ts';

export const KCIDB_VERSION = { major: 5, minor: 3 } as const;
export const DEFAULT_ORIGIN = 'hwlab';
/** KCIDB's limit on log excerpts. */
const MAX_EXCERPT = 16384;

type Status = 'FAIL' | 'ERROR' | 'MISS' | 'PASS' | 'DONE' | 'SKIP';

export interface KcidbReport {
  version: { major: number; minor: number };
  checkouts: Array<Record<string, unknown>>;
  builds: Array<Record<string, unknown>>;
  tests: Array<Record<string, unknown>>;
  issues: Array<Record<string, unknown>>;
  incidents: Array<Record<string, unknown>>;
}

const STATUS: Record<ProbeClass, Status> = {
  pass: 'PASS', fail: 'FAIL', kernel: 'FAIL', infra: 'ERROR', todo: 'FAIL', skip: 'SKIP', 'not-run': 'MISS',
};

/** A path segment of KCIDB's test tree: [a-zA-Z0-9_-]+. */
export function pathSegment(s: string, max = 80): string {
  const out = s.replace(/[^a-zA-Z0-9_-]+/g, '_').replace(/^_+|_+$/g, '').slice(0, max);
  return out || '_';
}

const excerpt = (s: string) => (s.length > MAX_EXCERPT ? `${s.slice(0, MAX_EXCERPT - 20)}\n... (cut)` : s).replace(/\0/g, '');
const reportText = (r: KernelReport) => excerpt(`${r.title}${r.count > 1 ? ` (x${r.count})` : ''}\n${r.excerpt}`);

/** KCIDB's patchset hash: sha256 over the newline-terminated sha256 of each patch, in order; '' without patches. */
export function patchsetHash(patchShas: readonly string[]): string {
  return patchShas.length ? sha256(patchShas.map((h) => `${h}\n`).join('')) : '';
}

export function kcidbReport(s: ReportSummary, origin = DEFAULT_ORIGIN): KcidbReport {
  const report: KcidbReport = { version: { ...KCIDB_VERSION }, checkouts: [], builds: [], tests: [], issues: [], incidents: [] };
  const id = (kind: string, key: string) => `${origin}:${kind}-${key}`;
  const seen = new Set<string>();
  const once = (list: Array<Record<string, unknown>>, obj: Record<string, unknown>) => {
    if (seen.has(obj.id as string)) return;
    seen.add(obj.id as string);
    list.push(obj);
  };
  for (const c of s.cells) {
    const r = c.results;
    if (!r.kernel && !c.meta) continue; // a cell with no results at all (missing): nothing to say about a build
    const k = r.kernel;
    const patches = (k?.patches ?? []).map((p) => p.sha256);
    const checkoutKey = sha256(JSON.stringify([k?.package ?? c.meta?.build.label, k?.version ?? '', patches])).slice(0, 20);
    const checkoutId = id('checkout', checkoutKey);
    const prepareCode = r.failure?.phase === 'prepare' ? r.failure.code : undefined;
    once(report.checkouts, {
      id: checkoutId, origin,
      tree_name: k ? k.package.split(' ')[0] : (c.meta?.build.label ?? r.lab).split(' ')[0],
      patchset_hash: patchsetHash(patches),
      ...(k?.patches?.length ? { misc: { patches: k.patches.map((p) => ({ name: p.name, sha256: p.sha256 })) } } : {}),
      valid: prepareCode !== 'patch-does-not-apply',
      start_time: r.startedAt,
    });
    const buildKey = c.meta?.build.key ?? sha256(JSON.stringify([checkoutKey, k?.configSha256 ?? '', k?.release ?? ''])).slice(0, 20);
    const buildId = id('build', buildKey);
    const buildStatus: Status = prepareCode === 'build-failed' ? 'FAIL' : r.failure?.phase === 'prepare' ? 'ERROR' : 'PASS';
    once(report.builds, {
      id: buildId, checkout_id: checkoutId, origin, architecture: 'x86_64',
      ...(c.meta ? { config_name: c.meta.build.label } : {}),
      ...(k?.buildSeconds !== undefined ? { duration: k.buildSeconds } : {}),
      start_time: r.startedAt,
      status: buildStatus,
      ...(buildStatus !== 'PASS' && r.failure ? { log_excerpt: excerpt(r.failure.message) } : {}),
      misc: { ...(k ? { kind: k.kind, version: k.version, release: k.release, config_sha256: k.configSha256 ?? null } : {}) },
    });
    const environment = {
      comment: `hwlab cell ${c.id}`,
      misc: { cell: c.id, lab: r.lab, axes: c.meta?.axes ?? {}, ...(r.machine ? { accel: r.machine.accel } : {}) },
    };
    const test = (path: string, key: string, status: Status, extra: Record<string, unknown> = {}) => {
      const t = { id: id('test', sha256(`${c.id}\0${r.startedAt}\0${key}`).slice(0, 24)), build_id: buildId, origin, path, status, start_time: r.startedAt, environment, ...extra };
      report.tests.push(t);
      return t.id;
    };
    if (buildStatus !== 'PASS') continue;
    const booted = r.timings.boot_to_ssh !== undefined;
    const bootStatus: Status = booted ? 'PASS' : r.outcome.class === 'kernel' ? 'FAIL' : r.outcome.class === 'error' ? 'ERROR' : 'ERROR';
    test('hwlab.boot', 'boot', bootStatus, {
      ...(r.timings.boot_to_ssh !== undefined ? { duration: r.timings.boot_to_ssh } : {}),
      ...(!booted && r.failure ? { log_excerpt: excerpt(r.failure.message) } : {}),
    });
    for (const row of c.probes) {
      const base = `hwlab.${pathSegment(row.name)}`;
      const p = row.result;
      const probeTestId = test(base, row.key, STATUS[row.class], {
        ...(p?.durationMs !== undefined ? { duration: p.durationMs / 1000 } : {}),
        ...(p?.kernelReports.length ? { log_excerpt: excerpt(p.kernelReports.map(reportText).join('\n\n')) } : {}),
        misc: { probe: row.key, ...(row.device ? { device: row.device } : {}), class: row.class, ...(p?.notRun ? { not_run: p.notRun } : {}) },
      });
      if (row.class === 'todo' && p?.todo) linkKnown(p.todo, probeTestId);
      for (const pt of p?.subtests ?? []) {
        const cls: ProbeClass = pt.skip !== undefined ? 'skip' : pt.todo !== undefined && !pt.ok ? 'todo' : pt.ok ? 'pass' : pt.harness !== undefined ? 'infra' : 'fail';
        const tid = test(`${base}.${pathSegment(`p${pt.id}_${pt.name}`)}`, `${row.key}\0${pt.id}`, STATUS[cls], {
          comment: pt.name,
          ...(cls === 'fail' && pt.diagnostics ? { log_excerpt: excerpt(JSON.stringify(pt.diagnostics, null, 2)) } : {}),
        });
        if (cls === 'todo') linkKnown(pt.todo!, tid);
      }
    }
    for (const rep of unattributedReports(r.kernelReports, testResults(r))) {
      test('hwlab.kernel_report', `report\0${rep.title}`, 'FAIL', { comment: rep.title, log_excerpt: reportText(rep) });
    }
  }
  return report;

  /** An expected failure: an issue carrying the reason, and the failing test as an incident of it. */
  function linkKnown(reason: string, testId: string): void {
    const issueId = `${origin}:known-${sha256(reason).slice(0, 20)}`;
    once(report.issues, { id: issueId, version: 1, origin, comment: excerpt(reason) });
    report.incidents.push({ id: `${origin}:incident-${sha256(`${issueId}\0${testId}`).slice(0, 24)}`, origin, issue_id: issueId, issue_version: 1, test_id: testId, present: true });
  }
}
