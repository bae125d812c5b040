// Minimal TAP 14 producer: one subtest per probe, streamed line by line so a
// hung probe still leaves everything before it on the host's side.
//
//   TAP version 14
//   1..2
//   # Subtest: dmabuf-export
//       ok 1 - region 2 size > 0
//       not ok 2 - export whole BAR returns an fd
//         ---
//         errno: EINVAL
//         ...
//       1..2
//   not ok 1 - dmabuf-export # time=12.3ms
import { isDeepStrictEqual } from 'node:util';
import { stringify } from 'yaml';
import { expectedByScope, HARNESS_DIAG_KEY, SUBTEST_PREFIX, TAP_VERSION_LINE, type ExpectFailScope } from '../../protocol/protocol.ts';

export type Writer = (line: string) => void;
export type Diag = Record<string, unknown>;

/** TAP descriptions must not carry '#' (directive start) or newlines; backslash escapes. */
export function escapeName(s: string): string {
  return s.replace(/[\r\n]+/g, ' ').replace(/\\/g, '\\\\').replace(/#/g, '\\#');
}
const oneLine = (s: string) => s.replace(/[\r\n]+/g, ' ').trim();

/** Makes diagnostics YAML-safe: bigints as strings, errors as message+stack, buffers as hex. */
function plain(v: unknown): unknown {
  if (typeof v === 'bigint') return v.toString();
  if (v instanceof Error) {
    const e = v as Error & { code?: unknown; errno?: unknown };
    return { name: e.name, message: e.message, code: e.code, errno: e.errno, stack: e.stack };
  }
  if (Buffer.isBuffer(v)) return v.toString('hex');
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== undefined).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}

function yamlBlock(diag: Diag, indent: string): string[] {
  const body = stringify(plain(diag), { lineWidth: 0 }).replace(/\n$/, '');
  return [`${indent}  ---`, ...body.split('\n').map((l) => `${indent}  ${l}`), `${indent}  ...`];
}

export interface PointOpts { diag?: Diag; skip?: string; todo?: string }

function pointLines(ok: boolean, id: number, name: string, o: PointOpts, indent: string): string[] {
  let line = `${indent}${ok ? 'ok' : 'not ok'} ${id} - ${escapeName(name)}`;
  if (o.skip !== undefined) line += ` # SKIP ${oneLine(o.skip)}`;
  else if (o.todo !== undefined) line += ` # TODO ${oneLine(o.todo)}`;
  return o.diag && Object.keys(o.diag).length ? [line, ...yamlBlock(o.diag, indent)] : [line];
}

export interface SubtestSummary { name: string; ok: boolean; pass: number; fail: number; skip: number; todo: number }

/** Handle a probe asserts through. Every method writes one test point immediately. */
export class Subtest {
  private n = 0;
  readonly counts = { pass: 0, fail: 0, skip: 0, todo: 0, harness: 0 };
  constructor(private readonly out: Writer, readonly todoReason?: string, private readonly indent = '    ', private readonly todoScope?: ExpectFailScope) {}

  /** Records a point; returns cond so callers can branch on it. Failures the subtest's TODO covers (its scope) inherit it. */
  ok(cond: boolean, name: string, diag?: Diag, opts: { todo?: string } = {}): boolean {
    const todo = opts.todo ?? (cond || !expectedByScope(this.todoScope, name, diag) ? undefined : this.todoReason);
    if (todo !== undefined && !cond) this.counts.todo++;
    else this.counts[cond ? 'pass' : 'fail']++;
    for (const l of pointLines(cond, ++this.n, name, { diag: cond ? undefined : diag, todo }, this.indent)) this.out(l);
    return cond;
  }

  equal<T>(actual: T, expected: T, name: string, diag: Diag = {}): boolean {
    const cond = isDeepStrictEqual(actual, expected);
    return this.ok(cond, name, { expected, actual, ...diag });
  }

  pass(name: string): boolean { return this.ok(true, name); }
  fail(name: string, diag?: Diag): boolean { return this.ok(false, name, diag); }

  /**
   * A point the probe could not judge: the harness in the guest failed its
   * part (reason says how), so the host classes the run infra. The probe
   * should stop judging what depends on it.
   */
  harness(name: string, reason: string, diag?: Diag): void {
    this.counts.harness++;
    for (const l of pointLines(false, ++this.n, name, { diag: { [HARNESS_DIAG_KEY]: oneLine(reason), ...diag } }, this.indent)) this.out(l);
  }

  skip(name: string, reason: string, diag?: Diag): void {
    this.counts.skip++;
    for (const l of pointLines(true, ++this.n, name, { skip: reason, diag }, this.indent)) this.out(l);
  }

  comment(text: string): void {
    for (const l of text.split('\n')) this.out(`${this.indent}# ${l}`);
  }

  get count(): number { return this.n; }

  /** Writes the trailing plan. */
  end(): void {
    this.out(`${this.indent}1..${this.n}`);
  }
}

export class Tap {
  private n = 0;
  constructor(private readonly out: Writer = (l) => process.stdout.write(`${l}\n`)) {}

  header(plan: number): void {
    this.out(TAP_VERSION_LINE);
    this.out(`1..${plan}`);
  }

  comment(text: string): void {
    for (const l of text.split('\n')) this.out(`# ${l}`);
  }

  /**
   * Runs fn as a subtest. An exception becomes a failing point carrying the error;
   * a probe that asserted nothing fails too (a silent probe proves nothing).
   * With todo set, failures (and the parent line) carry `# TODO todo`; with
   * todoPoints too, only the failures of those points do, and the parent fails
   * on any other failure like a probe without todo.
   */
  async subtest(name: string, fn: (t: Subtest) => void | Promise<void>, opts: { todo?: string; todoScope?: ExpectFailScope } = {}): Promise<SubtestSummary> {
    const id = ++this.n;
    const t = new Subtest(this.out, opts.todo, '    ', opts.todoScope);
    this.out(`${SUBTEST_PREFIX}${escapeName(name)}`);
    const start = performance.now();
    try {
      await fn(t);
      if (t.count === 0) t.fail('probe made no assertions');
    } catch (e) {
      t.fail(`probe threw: ${e instanceof Error ? e.message : String(e)}`, { error: e });
    }
    t.end();
    // TODO points are known imperfections of the kernel: they do not fail the
    // probe. Under a lab's expected-fail (opts.todo) every failure became a TODO,
    // so the parent is then "not ok # TODO" exactly when one happened.
    // Point-scoped, a failure outside the expected points is a real one: the parent
    // is then a plain not ok, without the TODO that would hide it.
    const ok = t.counts.fail === 0 && t.counts.harness === 0 && (opts.todo === undefined || t.counts.todo === 0);
    const time = (performance.now() - start).toFixed(1);
    let line = `${ok ? 'ok' : 'not ok'} ${id} - ${escapeName(name)}`;
    // A failure outside the expectation's scope fails the probe: no TODO on the parent then.
    line += opts.todo !== undefined && t.counts.fail === 0 ? ` # TODO ${oneLine(opts.todo)}` : ` # time=${time}ms`;
    this.out(line);
    return { name, ok, ...t.counts };
  }
}
