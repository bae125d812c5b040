// Synthetic run folders' contents for the history's unit tests: a cell with
// the probes and points given as plain strings, shaped exactly as
// readRunFolder returns a real one (results.json + lab.resolved.json).
import type { KernelReport } from '../../../src/report/kernel-report.ts';
import { probeRows, type CellRecord } from '../../../src/reports/summary.ts';
import type { OutcomeClass } from '../../../src/results/outcome.ts';
import type { RunResults } from '../../../src/results/report.ts';
import type { ProbeResult, SubtestResult } from '../../../src/results/tap.ts';

/** A point as `name=pass|fail|todo|skip`. */
export type PointSpec = `${string}=${'pass' | 'fail' | 'todo' | 'skip'}`;

export interface ProbeSpecLite { name: string; device: string; points: PointSpec[]; reports?: KernelReport[] }

export function report(title: string, count = 1): KernelReport {
  return { kind: 'WARNING', title, count, line: 100, fatal: false, excerpt: `------------[ cut here ]------------\n${title}` };
}

export function cell(dir: string, startedAt: string, probes: ProbeSpecLite[], opts: { outcome?: OutcomeClass; release?: string; reports?: KernelReport[]; lab?: string } = {}): CellRecord {
  const results: ProbeResult[] = probes.map((p) => {
    const subtests: SubtestResult[] = p.points.map((spec, i) => {
      const [name, st] = spec.split('=') as [string, string];
      return { id: i + 1, name, ok: st === 'pass' || st === 'skip', ...(st === 'skip' ? { skip: 'not here' } : {}), ...(st === 'todo' ? { todo: 'known bug' } : {}) };
    });
    const anyFail = subtests.some((s) => !s.ok && s.todo === undefined);
    const anyTodo = subtests.some((s) => s.todo !== undefined);
    return { name: p.name, ok: !anyFail, ...(anyTodo ? { todo: 'known bug' } : {}), subtests, kernelReports: p.reports ?? [] };
  });
  const failing = results.some((r) => !r.ok);
  const reports = opts.reports ?? probes.flatMap((p) => p.reports ?? []);
  const cls: OutcomeClass = opts.outcome ?? (reports.length ? 'kernel' : failing ? 'fail' : 'pass');
  const release = opts.release ?? '7.2.13-hwlab';
  const r: RunResults = {
    lab: opts.lab ?? 'smoke', startedAt, runDir: dir,
    outcome: { class: cls, code: cls === 'pass' ? 'pass' : cls === 'fail' ? 'probe-failed' : cls, title: cls, detail: '' },
    kernel: { kind: 'source', package: 'linux-source-7.2', version: release.replace(/-hwlab$/, '-1'), release, patches: [], configSha256: 'c0ffee' },
    probes: results, kernelReports: reports, timings: { total: 20 },
  };
  return { id: r.lab, dir, results: r, probes: probeRows(r, { probes: probes.map((p) => ({ name: p.name, device: p.device })) }) };
}
