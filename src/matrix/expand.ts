// GitHub Actions' matrix expansion, followed exactly, so a matrix file reads
// the way every CI user already reads `strategy.matrix` (GitHub's "Running
// variations of jobs in a workflow": the include and exclude rules):
//   - the product of the variables, the first variable outermost;
//   - exclude removes every combination an entry partially matches;
//   - include runs after exclude, entry by entry: its key:value pairs are
//     added to every ORIGINAL combination (after exclude) whose original
//     values none of them would overwrite; values added by an earlier include
//     entry may be overwritten; an entry that fits no original combination
//     becomes a combination of its own, which later entries never extend;
//   - with no variables, every include entry is a combination.
// Pure data: values are compared by deep equality, nothing here knows what a
// lab or a vIOMMU is.

export type Combination = Record<string, unknown>;

export interface MatrixInput {
  /** The variables, in the order written (the first is the outermost loop). */
  variables: Array<[string, readonly unknown[]]>;
  include: readonly Combination[];
  exclude: readonly Combination[];
}

/** Where each combination came from: the product (index into it) or an include entry that could not be added. */
export type Origin = { kind: 'product' } | { kind: 'include'; entry: number };

export interface Expanded {
  combination: Combination;
  origin: Origin;
  /** Include entries (by index) whose pairs were added to this combination. */
  extendedBy: number[];
}

export function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) return a.length === (b as unknown[]).length && a.every((x, i) => deepEqual(x, (b as unknown[])[i]));
  const ka = Object.keys(a as object);
  const kb = Object.keys(b as object);
  return ka.length === kb.length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

function product(variables: MatrixInput['variables']): Combination[] {
  if (variables.length === 0) return [];
  let out: Combination[] = [{}];
  for (const [key, values] of variables) {
    const next: Combination[] = [];
    for (const c of out) for (const v of values) next.push({ ...c, [key]: v });
    out = next;
  }
  return out;
}

/** Does `entry` partially match `c`: every pair of the entry is in the combination? */
export function partialMatch(entry: Combination, c: Combination): boolean {
  return Object.entries(entry).every(([k, v]) => Object.prototype.hasOwnProperty.call(c, k) && deepEqual(c[k], v));
}

export function expandMatrix(m: MatrixInput): Expanded[] {
  const keys = new Set(m.variables.map(([k]) => k));
  const original: Expanded[] = product(m.variables)
    .filter((c) => !m.exclude.some((e) => partialMatch(e, c)))
    .map((combination) => ({ combination, origin: { kind: 'product' }, extendedBy: [] }));
  const added: Expanded[] = [];
  m.include.forEach((entry, i) => {
    let fitted = false;
    for (const o of original) {
      // Only the original matrix values are protected; pairs added by earlier entries may be overwritten.
      const overwrites = Object.entries(entry).some(([k, v]) => keys.has(k) && !deepEqual(o.combination[k], v));
      if (overwrites) continue;
      Object.assign(o.combination, entry);
      o.extendedBy.push(i);
      fitted = true;
    }
    if (!fitted) added.push({ combination: { ...entry }, origin: { kind: 'include', entry: i }, extendedBy: [] });
  });
  return [...original, ...added];
}
