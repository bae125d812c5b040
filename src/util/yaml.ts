// Located YAML: hwlab's YAML files (labs, image recipes) are parsed with their
// node ranges kept, and validated with zod, so that every problem (syntax,
// schema, a later cross-check) is reported as `file:line:col: path: message`,
// all of them at once, in one YamlError. Shared by the lab stage (src/lab) and
// the image recipes (src/image/recipe.ts); it knows nothing of either.
import { readFile, stat } from 'node:fs/promises';
import { LineCounter, parseDocument, isMap, isSeq, isScalar, isAlias, isPair, type Document } from 'yaml';
import { z } from 'zod';
import { InputError } from './errors.ts';
import { quoteForTerminal, escapeForTerminal } from './text.ts';

/**
 * Limits on any hwlab YAML file (labs, image recipes, matrix files): the
 * biggest lab shipped is about 5 KB, so 128 KiB is generous, and a file past it
 * is refused before the parser spends seconds on it. Aliases are expanded at
 * most this many times (an "alias bomb" multiplies them).
 */
export const MAX_YAML_BYTES = 128 << 10;
export const MAX_YAML_ALIASES = 100;

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

/** One issue as a line; control and bidi characters (in the file name, the path or the message) are escaped, so a line reads as it is. */
export function formatIssue(i: YamlIssue): string {
  return escapeForTerminal(`${i.file}:${i.line}:${i.col}: ${i.path ? `${i.path}: ` : ''}${i.message}`);
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
  if (typeof v === 'string') return quoteForTerminal(v);
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
      if (issue.type === 'array') src.add(p, `must have at most ${issue.maximum} entries${Array.isArray(got) ? ` (got ${got.length})` : ''}`);
      else if (issue.type === 'string') src.add(p, `must be at most ${issue.maximum} characters (got ${typeof got === 'string' ? `${got.length}: ${describe(got)}` : describe(got)})`);
      else src.add(p, `must be ${issue.inclusive ? 'at most' : 'less than'} ${issue.maximum} (got ${describe(got)})`);
      return;
    case 'invalid_string':
      src.add(p, `${issue.message} (got ${describe(got)})`);
      return;
    default:
      src.add(p, issue.message);
  }
}

/**
 * Parse YAML keeping ranges; syntax errors, duplicate keys (naming the key and
 * its first occurrence) and alias bombs are thrown as a YamlError. `what`
 * names the kind of file for "not a ... file" messages.
 */
export function readYaml(text: string, file: string, what = 'YAML'): { src: YamlSource; data: unknown } {
  const lines = new LineCounter();
  // uniqueKeys off: duplicates are found below, with both places named.
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const src = new YamlSource(file, doc, lines);
  const at = (pos: number) => lines.linePos(Math.min(pos, text.length));
  for (const e of doc.errors) {
    src.issues.push({ file, ...at(e.pos[0]), path: '', message: `not valid YAML: ${e.message.split('\n')[0].replace(/ at line \d+, column \d+.*$/, '')}` });
    break; // after the first syntax error the rest are its echoes
  }
  if (src.issues.length) src.fail();
  let aliases = 0;
  const walk = (node: unknown, p: Path): void => {
    if (isAlias(node)) {
      aliases++;
      return;
    }
    if (isMap(node)) {
      const first = new Map<string, number>();
      for (const pair of node.items) {
        if (!isPair(pair)) continue;
        const keyNode = pair.key;
        const key = isScalar(keyNode) ? String(keyNode.value) : String(keyNode);
        const pos = rangeStart(keyNode) ?? 0;
        const seen = first.get(key);
        if (seen !== undefined) {
          const f = lines.linePos(seen);
          src.issues.push({ file, ...at(pos), path: pathString([...p, key]), message: `duplicate key ${quoteForTerminal(key)} (first at line ${f.line}, column ${f.col})` });
        } else first.set(key, pos);
        walk(pair.value, [...p, key]);
      }
    } else if (isSeq(node)) node.items.forEach((item, i) => walk(item, [...p, i]));
  };
  walk(doc.contents, []);
  if (src.issues.length) src.fail();
  let data: unknown;
  try {
    data = doc.toJS({ maxAliasCount: MAX_YAML_ALIASES });
  } catch (err) {
    // yaml's ReferenceError for an alias expanded past maxAliasCount (or an alias to nothing).
    const why = (err as Error).message.split('\n')[0];
    src.issues.push({ file, line: 1, col: 1, path: '', message: /excessive alias count/i.test(why)
      ? `aliases expand too far (${aliases} aliases; at most ${MAX_YAML_ALIASES} expansions): not a lab-sized document`
      : `bad alias: ${why}` });
    src.fail();
  }
  if (data !== null && data !== undefined && (typeof data !== 'object' || Array.isArray(data))) {
    src.issues.push({ file, line: 1, col: 1, path: '', message: `${article(what)} file: expected a map of keys (got ${describe(data).slice(0, 60)})` });
    src.fail();
  }
  return { src, data };
}

/** "not a lab", "not an image recipe". */
function article(what: string): string {
  return `not ${/^[aeiou]/i.test(what) ? 'an' : 'a'} ${what}`;
}

/**
 * The text of a YAML file hwlab reads (a lab, a recipe, a matrix file), after
 * the checks that need no parser: a regular file, at most MAX_YAML_BYTES,
 * UTF-8 text without NUL bytes. Any problem is a YamlError at 1:1.
 */
export async function readYamlFile(file: string, what: string): Promise<string> {
  const refuse = (message: string): never => {
    throw new YamlError([{ file, line: 1, col: 1, path: '', message }]);
  };
  const st = await stat(file).catch((e: NodeJS.ErrnoException) => refuse(`cannot read ${what} file: ${e.code === 'ENOENT' ? 'no such file' : e.message}`));
  if (st.isDirectory()) refuse(`${article(what)} file: it is a directory`);
  if (!st.isFile()) refuse(`${article(what)} file: not a regular file`);
  if (st.size > MAX_YAML_BYTES) refuse(`${article(what)} file: ${st.size} bytes, more than the ${MAX_YAML_BYTES} a file may have`);
  const bytes = await readFile(file).catch((e: Error) => refuse(`cannot read ${what} file: ${e.message}`));
  const nul = bytes.indexOf(0);
  if (nul >= 0) refuse(`${article(what)} file: binary content (a NUL byte at offset ${nul})`);
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return refuse(`${article(what)} file: not UTF-8 text`);
  }
}

/** Validate already-read YAML with a zod schema; schema issues are added to src (not thrown). */
export function validate<S extends z.ZodTypeAny>(src: YamlSource, data: unknown, schema: S): z.output<S> | undefined {
  const r = schema.safeParse(data);
  if (r.success) return r.data;
  for (const issue of r.error.issues) reportZodIssue(src, data, issue);
  return undefined;
}

/** Parse + validate any hwlab YAML file (labs, image recipes); throws YamlError with located issues. */
export function parseYamlWith<S extends z.ZodTypeAny>(text: string, file: string, schema: S, what = 'YAML'): z.output<S> {
  const { src, data } = readYaml(text, file, what);
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
