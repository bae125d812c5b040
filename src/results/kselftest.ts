// The kernel's own selftests as results: kselftest's TAP 13 (what
// run_kselftest.sh prints: one top-level point per test program, headed by
// `# selftests: <collection>: <test>`, with the program's own TAP nested as
// `# `-prefixed comment lines) turned into the same model as probes. A
// collection is a suite, a program a test (a ProbeResult named
// `collection:test`), and each point of its own TAP a subtest. SKIP keeps
// kselftest's reason; XFAIL (an expected failure) is a TODO that does not
// fail the run; a program killed at its timeout or cut off fails.
import { Parser } from 'tap-parser';
import type { FinalResults, Result } from 'tap-parser';
import type { SubtestResult, ProbeResult } from './tap.ts';

/** One test program's result. `name` is `collection:test`, as kselftest-list.txt writes it. */
export interface SelftestResult extends ProbeResult {
  collection: string;
  test: string;
  /** 1-based position in the run (the kmsg markers' index). */
  index: number;
  /** Endpoint ids the test was given (their BDFs were its trailing arguments). */
  devices?: string[];
  /** The program's exit code as runner.sh reported it (`# exit=N`), when it failed with one. */
  exitCode?: number;
}

const HEADER = /^# selftests: (\S+): (\S+)\s*$/;
const RESULT = /^(not )?ok (\d+) selftests: (\S+): (\S+)(.*)$/;
const DIRECTIVE = /#\s*(SKIP|XFAIL|TIMEOUT|exit=)\s*(.*)$/i;
const NO_REASON = '(no reason)';

interface Inner {
  subtests: SubtestResult[];
  planSkip?: string;
  errors: string[];
  comments: string[];
}

const stripTime = (s: string) => s.replace(/\s+$/, '');

/** The test program's own TAP (the `# `-prefixed lines, prefix removed). */
function parseInner(lines: string[]): Inner {
  const subtests: SubtestResult[] = [];
  let final: FinalResults | undefined;
  const parser = new Parser({}, (r: FinalResults) => { final = r; });
  parser.on('assert', (r: Result) => {
    const s: SubtestResult = { id: r.id, name: r.name, ok: r.ok };
    // tap-parser knows SKIP and TODO; kselftest's XFAIL stays in the name.
    const xfail = /\s*#\s*XFAIL\b\s*(.*)$/i.exec(s.name);
    if (xfail) {
      s.name = s.name.slice(0, xfail.index);
      s.todo = `XFAIL: ${xfail[1].trim() || NO_REASON}`;
    }
    if (r.skip !== false) s.skip = r.skip === true || r.skip === '' ? NO_REASON : stripTime(String(r.skip));
    if (r.todo !== false) s.todo = r.todo === true || r.todo === '' ? NO_REASON : String(r.todo);
    if (r.diag && typeof r.diag === 'object' && Object.keys(r.diag).length) s.diagnostics = r.diag as Record<string, unknown>;
    subtests.push(s);
  });
  const text = lines.join('\n') + '\n';
  parser.end(text);
  const errors: string[] = [];
  let planSkip: string | undefined;
  if (final) {
    const f = final as FinalResults;
    // tap-parser also calls a stream without a plan or points "skip all" ("no tests found"): only a written 1..0 is one.
    if (f.plan.skipAll && /^\s*1\.\.0\b/m.test(text)) planSkip = f.plan.skipReason?.replace(/^SKIP\b\s*/i, '') || NO_REASON;
    for (const x of f.failures) {
      const e = (x as { tapError?: string | null }).tapError;
      if (e && !(e === 'no plan' && subtests.length === 0)) errors.push(e);
    }
    if (f.bailout !== false) errors.push(`bail out: ${f.bailout === true ? NO_REASON : f.bailout}`);
  }
  // What the program said besides TAP syntax: its comments and plain lines (ksft_exit_skip() messages, assertion output).
  const comments = lines
    .filter((l) => l.trim() && !/^\s*(TAP version \d|\d+\.\.\d|(not )?ok\b|Bail out!)/.test(l))
    .map((l) => l.replace(/^#\s*/, '').trim())
    .filter(Boolean);
  return { subtests, ...(planSkip ? { planSkip } : {}), errors, comments };
}

/** Why a program skipped: its plan's reason, its skipped points' reasons, or its last message. */
function skipReason(inner: Inner): string {
  if (inner.planSkip && inner.planSkip !== NO_REASON) return inner.planSkip;
  const reasons = [...new Set(inner.subtests.map((s) => s.skip).filter((r): r is string => r !== undefined && r !== NO_REASON))];
  if (reasons.length) return reasons.join('; ');
  const said = inner.comments.filter((c) => !/^(Totals|PASSED|FAILED|Starting|timeout set|overriding timeout)/i.test(c));
  return said.at(-1) ?? NO_REASON;
}

/** Why a program failed as expected: its XFAIL points' reasons, or its last message. */
function xfailReason(inner: Inner): string {
  const reasons = [...new Set(inner.subtests.map((s) => s.todo?.replace(/^XFAIL: /, '')).filter((r): r is string => r !== undefined && r !== NO_REASON))];
  return reasons.length ? reasons.join('; ') : skipReason(inner);
}

/** A program's block: header, nested lines, and its top-level point (undefined: cut off). */
interface Block {
  collection: string;
  test: string;
  nested: string[];
  result?: { ok: boolean; number: number; rest: string };
}

function blocksOf(tap: string): { blocks: Block[]; version: boolean; plan?: number } {
  const blocks: Block[] = [];
  let open: Block | undefined;
  let version = false;
  let plan: number | undefined;
  for (const line of tap.split('\n')) {
    const h = HEADER.exec(line);
    if (h) {
      if (open) blocks.push(open);
      open = { collection: h[1], test: h[2], nested: [] };
      continue;
    }
    const r = RESULT.exec(line);
    if (r) {
      const b: Block = open && open.collection === r[3] && open.test === r[4] ? open : { collection: r[3], test: r[4], nested: [] };
      if (open && b !== open) blocks.push(open);
      b.result = { ok: !r[1], number: Number(r[2]), rest: r[5] };
      blocks.push(b);
      open = undefined;
      continue;
    }
    if (!open) {
      if (/^TAP version \d+/.test(line)) version = true;
      const p = /^1\.\.(\d+)/.exec(line);
      if (p && plan === undefined) plan = Number(p[1]);
      continue;
    }
    if (line.startsWith('# ')) open.nested.push(line.slice(2));
    else if (line === '#') open.nested.push('');
    else if (line.trim()) open.nested.push(line);
  }
  if (open) blocks.push(open);
  return { blocks, version, ...(plan !== undefined ? { plan } : {}) };
}

/** Stream-level trouble of a whole kselftest run (no version line, fewer results than planned). */
export interface KselftestStream {
  results: SelftestResult[];
  problems: string[];
}

/**
 * Parses run_kselftest.sh output (any number of programs, one top-level
 * point each). A program whose point never came (the stream was cut off, or
 * hwlab killed it) fails as interrupted with the points it got through.
 */
export function parseKselftestTap(tap: string): KselftestStream {
  const { blocks, version, plan } = blocksOf(tap);
  const problems: string[] = [];
  if (!version) problems.push("no 'TAP version' line: kselftest output missing or garbled");
  const results = blocks.map((b, i): SelftestResult => {
    const inner = parseInner(b.nested);
    const base = { name: `${b.collection}:${b.test}`, collection: b.collection, test: b.test, index: i + 1, subtests: inner.subtests, kernelReports: [] };
    if (!b.result) {
      problems.push(`stream ended inside ${b.collection}:${b.test}`);
      return { ...base, ok: false, diagnostics: { error: 'interrupted: no result line from run_kselftest.sh', ...(inner.errors.length ? { tapErrors: inner.errors } : {}) } };
    }
    const d = DIRECTIVE.exec(b.result.rest);
    const kind = d?.[1].toUpperCase();
    if (b.result.ok && kind === 'SKIP') return { ...base, ok: true, skip: skipReason(inner) };
    if (b.result.ok && kind === 'XFAIL') return { ...base, ok: true, todo: `XFAIL: ${d![2].trim() || xfailReason(inner)}` };
    if (b.result.ok) {
      // A program that exits 0 after a broken TAP of its own has not shown what it claims.
      return inner.errors.length ? { ...base, ok: false, diagnostics: { tapErrors: inner.errors } } : { ...base, ok: true };
    }
    const diagnostics: Record<string, unknown> = {};
    if (kind === 'TIMEOUT') diagnostics.error = `timed out: kselftest's timeout of ${d![2].trim()}`;
    else if (kind === 'EXIT=') diagnostics.exit = Number(d![2].trim());
    if (inner.errors.length) diagnostics.tapErrors = inner.errors;
    const r: SelftestResult = { ...base, ok: false, ...(Object.keys(diagnostics).length ? { diagnostics } : {}) };
    if (kind === 'EXIT=') r.exitCode = Number(d![2].trim());
    // A program can fail without a failing point of its own (an assertion in its setup, a crash, its
    // timeout): the failure is then a point of hwlab's, so it counts as one like any failed subtest.
    if (!r.subtests.some((x) => !x.ok && x.todo === undefined && x.skip === undefined)) {
      const what = kind === 'TIMEOUT' ? `finishes within kselftest's timeout (${d![2].trim()})`
        : kind === 'EXIT=' ? `exits with success or skip (exited ${d![2].trim()})` : 'runs (run_kselftest.sh reported it not ok)';
      const last = inner.comments.filter((c) => c.trim()).slice(-5);
      r.subtests.push({ id: r.subtests.length + 1, name: what, ok: false, ...(last.length ? { diagnostics: { output: last.join('\n') } } : {}) });
    }
    return r;
  });
  const done = blocks.filter((b) => b.result).length;
  if (plan !== undefined && done < plan && !problems.some((p) => p.startsWith('stream ended'))) problems.push(`incorrect number of tests: planned ${plan}, got ${done}`);
  return { results, problems };
}

/**
 * A failing program the lab expects to fail (`expect_fail`): a TODO with the
 * lab's reason, as for probes; its failing points become TODO too.
 */
export function markExpectedFailure(r: SelftestResult, reason: string): void {
  if (r.ok || r.skip !== undefined) return;
  r.ok = true;
  r.todo = reason;
  for (const s of r.subtests) if (!s.ok && s.todo === undefined && s.skip === undefined) s.todo = reason;
}
