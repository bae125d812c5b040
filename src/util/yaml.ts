// Located YAML: hwlab's YAML files (labs, image recipes) are parsed with their
// node ranges kept, and validated with zod, so that every problem (syntax,
// schema, a later cross-check) is reported as `file:line:col: path: message`,
// all of them at once, in one YamlError. Shared by the lab stage (src/lab) and
// the image recipes (src/image/recipe.ts); it knows nothing of either.
import { LineCounter, parseDocument, isMap, isSeq, isScalar, isAlias, type Document } from 'yaml';
import { z } from 'zod';
import { InputError } from './errors.ts';

// ---------------------------------------------------------------------------
// Located issues

export interface YamlIssue {
  /** The file as given to the parser (messages use it as is). */
  file: string;
  /** 1-based. */
  line: number;
  /** 1-based. */
  col: number;
  /** Dotted path into the YAML as written, e.g. `topology.endpoints[1].dma_mask`; '' for the whole file. */
  path: string;
  message: string;
}

export function formatIssue(i: YamlIssue): string {
  return `${i.file}:${i.line}:${i.col}: ${i.path ? `${i.path}: ` : ''}${i.message}`;
}

/** Everything wrong with a YAML file (a lab, an image recipe); `message` has one `file:line:col: path: message` line per issue. */
export class YamlError extends InputError {
  readonly issues: YamlIssue[];
  constructor(issues: YamlIssue[]) {
    const sorted = [...issues].sort((a, b) => a.line - b.line || a.col - b.col);
    super(sorted.map(formatIssue).join('\n'), undefined, 'bad-yaml');
    this.issues = sorted;
  }
}

/** A path into the YAML as written: keys and list indexes. */
export type Path = (string | number)[];

function pathString(p: Path): string {
  let s = '';
  for (const seg of p) s += typeof seg === 'number' ? `[${seg}]` : s ? `.${seg}` : seg;
  return s;
}

/** A parsed YAML document plus what is needed to point at its nodes. */
export class YamlSource {
  readonly issues: YamlIssue[] = [];
  constructor(
    readonly file: string,
    readonly doc: Document,
    private readonly lines: LineCounter,
  ) {}

  /** Offset of the node at `p`, or of its deepest existing ancestor (shorthand forms, missing keys). */
  private offset(p: Path, atKey: boolean): number {
    let node: unknown = this.doc.contents;
    let best = rangeStart(node) ?? 0;
    for (let i = 0; i < p.length; i++) {
      const seg = p[i];
      if (isAlias(node)) break;
      if (isMap(node)) {
        const pair = node.items.find((it) => (isScalar(it.key) ? it.key.value : it.key) === seg);
        if (!pair) break;
        if (atKey && i === p.length - 1) return rangeStart(pair.key) ?? best;
        // `key:` with nothing after it: point at the key, not at the empty value after the colon.
        const value = pair.value;
        const empty = isScalar(value) && value.value === null && value.source === '';
        node = empty || value == null ? pair.key : value;
      } else if (isSeq(node) && typeof seg === 'number') {
        node = node.items[seg];
      } else break;
      best = rangeStart(node) ?? best;
    }
    return best;
  }

  where(p: Path, atKey = false): { line: number; col: number } {
    return this.lines.linePos(this.offset(p, atKey));
  }

  add(p: Path, message: string, atKey = false): void {
    this.issues.push({ file: this.file, ...this.where(p, atKey), path: pathString(p), message });
  }

  /** `12:5`, for messages that refer to another place in the same file. */
  at(p: Path): string {
    const { line, col } = this.where(p);
    return `${line}:${col}`;
  }

  fail(): never {
    throw new YamlError(this.issues);
  }
}

function rangeStart(node: unknown): number | undefined {
  const r = (node as { range?: [number, number, number] } | null | undefined)?.range;
  return r ? r[0] : undefined;
}

// ---------------------------------------------------------------------------
// Generic YAML + zod

/** A value as messages quote it: strings in JSON quotes, lists and maps by kind. */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a map';
  if (typeof v === 'string') return JSON.stringify(v);
  return String(v);
}

/** zod type names (and catalog param types) as messages say them. */
export const TYPE_WORDS: Record<string, string> = {
  string: 'a string', number: 'a number', integer: 'an integer', boolean: 'true or false',
  object: 'a map', array: 'a list', bigint: 'an integer',
};

/** The value at `p` in parsed YAML data (the scalar itself when a shorthand stops the path early). */
export function valueAt(data: unknown, p: Path): unknown {
  let v = data;
  for (const seg of p) {
    // A scalar with segments left is a shorthand (`iommu: foo` checked as
    // `iommu.type`): the scalar is the value in question.
    if (v === null || typeof v !== 'object') return v;
    v = (v as Record<string | number, unknown>)[seg];
  }
  return v;
}

/** zod issue -> one or more located issues with our wording. */
function reportZodIssue(src: YamlSource, data: unknown, issue: z.ZodIssue): void {
  const p = issue.path;
  const got = valueAt(data, p);
  switch (issue.code) {
    case 'unrecognized_keys':
      // strictObject() puts the allowed keys in the message; a plain .strict() leaves zod's wording.
      for (const k of issue.keys) {
        src.add([...p, k], `unknown key "${k}"${issue.message.startsWith('allowed: ') ? ` (${issue.message})` : ''}`, true);
      }
      return;
    case 'invalid_type':
      if (issue.received === 'undefined') src.add(p, 'is required');
      else src.add(p, `expected ${TYPE_WORDS[issue.expected] ?? issue.expected} (got ${describe(got)})`);
      return;
    case 'invalid_enum_value':
      src.add(p, `must be one of ${issue.options.join(', ')} (got ${describe(issue.received)})`);
      return;
    case 'invalid_union_discriminator':
      src.add(p, got === undefined
        ? `is required (one of ${issue.options.join(', ')})`
        : `must be one of ${issue.options.join(', ')} (got ${describe(got)})`);
      return;
    case 'too_small':
      if (issue.type === 'array') src.add(p, `must have at least ${issue.minimum} ${issue.minimum === 1 ? 'entry' : 'entries'}`);
      else if (issue.type === 'string') src.add(p, 'must not be empty');
      else src.add(p, `must be ${issue.inclusive ? 'at least' : 'greater than'} ${issue.minimum} (got ${describe(got)})`);
      return;
    case 'too_big':
      if (issue.type === 'array') src.add(p, `must have at most ${issue.maximum} entries`);
      else src.add(p, `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum} (got ${describe(got)})`);
      return;
    case 'invalid_string':
      src.add(p, `${issue.message} (got ${describe(got)})`);
      return;
    default:
      src.add(p, issue.message);
  }
}

/** Parse YAML keeping ranges; syntax errors are thrown as a YamlError. */
export function readYaml(text: string, file: string): { src: YamlSource; data: unknown } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const src = new YamlSource(file, doc, lines);
  for (const e of doc.errors) {
    src.issues.push({ file, ...lines.linePos(e.pos[0]), path: '', message: e.message.split('\n')[0] });
  }
  if (src.issues.length) src.fail();
  return { src, data: doc.toJS() };
}

/** Validate already-read YAML with a zod schema; schema issues are added to src (not thrown). */
export function validate<S extends z.ZodTypeAny>(src: YamlSource, data: unknown, schema: S): z.output<S> | undefined {
  const r = schema.safeParse(data);
  if (r.success) return r.data;
  for (const issue of r.error.issues) reportZodIssue(src, data, issue);
  return undefined;
}

/** Parse + validate any hwlab YAML file (labs, image recipes); throws YamlError with located issues. */
export function parseYamlWith<S extends z.ZodTypeAny>(text: string, file: string, schema: S): z.output<S> {
  const { src, data } = readYaml(text, file);
  const out = validate(src, data ?? {}, schema);
  if (out === undefined || src.issues.length) src.fail();
  return out;
}

/** z.object(...).strict() whose unknown-key issue carries the allowed keys. */
export function strictObject<S extends z.ZodRawShape>(shape: S) {
  return z.object(shape).strict(`allowed: ${Object.keys(shape).join(', ')}`);
}

/** `key:` with no value means "use the defaults" for optional sections and lists. */
export function orEmpty<T extends z.ZodTypeAny>(empty: unknown, schema: T) {
  return z.preprocess((v) => (v === null || v === undefined ? empty : v), schema);
}
