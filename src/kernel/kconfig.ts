// A small Kconfig reader and expression evaluator, enough to say *why* a
// symbol a config fragment asked for did not keep its value after
// olddefconfig: the unmet `depends on` (own and inherited from enclosing
// `if`/`menu`/`choice` blocks), the `select`s that force a value, or that the
// symbol does not exist. It reads the tree the way kconfig does (following
// `source` from the top-level Kconfig for one architecture), so inherited
// dependencies across files (e.g. drivers/vfio/pci/Kconfig sourced inside
// `if VFIO`) are right. It does not compute configs: values always come from
// the .config that kconfig itself produced.
import { readFileSync, existsSync, readdirSync } from 'node:fs';
import path from 'node:path';

// ---------------------------------------------------------------- expressions

export type CmpOp = '=' | '!=' | '<' | '<=' | '>' | '>=';
export type Expr =
  | { k: 'sym'; name: string }
  | { k: 'const'; value: string }
  /** `$(...)` macro (toolchain probes): not evaluable here. */
  | { k: 'macro'; text: string }
  | { k: 'not'; e: Expr }
  | { k: 'and'; l: Expr; r: Expr }
  | { k: 'or'; l: Expr; r: Expr }
  | { k: 'cmp'; op: CmpOp; l: Expr; r: Expr };

type Tok = { t: 'word' | 'str' | 'op' | 'macro'; v: string };

function tokenize(src: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < src.length) {
    const c = src[i];
    if (c === ' ' || c === '\t') { i++; continue; }
    if (c === '$' && src[i + 1] === '(') {
      let depth = 0;
      let j = i + 1;
      for (; j < src.length; j++) {
        if (src[j] === '(') depth++;
        else if (src[j] === ')' && --depth === 0) break;
      }
      out.push({ t: 'macro', v: src.slice(i, j + 1) });
      i = j + 1;
      continue;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      let s = '';
      while (j < src.length && src[j] !== c) {
        if (src[j] === '\\' && j + 1 < src.length) j++;
        s += src[j++];
      }
      out.push({ t: 'str', v: s });
      i = j + 1;
      continue;
    }
    const two = src.slice(i, i + 2);
    if (['&&', '||', '!=', '<=', '>='].includes(two)) { out.push({ t: 'op', v: two }); i += 2; continue; }
    if ('()!=<>'.includes(c)) { out.push({ t: 'op', v: c }); i++; continue; }
    const m = /^[A-Za-z0-9_.\-+/]+/.exec(src.slice(i));
    if (!m) throw new Error(`Kconfig expression: unexpected '${c}' in: ${src}`);
    out.push({ t: 'word', v: m[0] });
    i += m[0].length;
  }
  return out;
}

function atomFromWord(w: string): Expr {
  // y/m/n and numbers are constants; every other word names a symbol.
  if (w === 'y' || w === 'm' || w === 'n' || /^-?(0x[0-9a-fA-F]+|\d+)$/.test(w)) return { k: 'const', value: w };
  return { k: 'sym', name: w };
}

/** Parses a Kconfig expression (`depends on` / `if` / `select ... if` text). */
export function parseExpr(src: string): Expr {
  const toks = tokenize(src);
  let p = 0;
  const peek = () => toks[p];
  const eat = (v: string) => {
    if (toks[p]?.t === 'op' && toks[p].v === v) { p++; return true; }
    return false;
  };
  // Precedence as in kconfig's parser.y: || < && < ! ; comparisons join two atoms only.
  const parseOr = (): Expr => {
    let l = parseAnd();
    while (eat('||')) l = { k: 'or', l, r: parseAnd() };
    return l;
  };
  const parseAnd = (): Expr => {
    let l = parseUnary();
    while (eat('&&')) l = { k: 'and', l, r: parseUnary() };
    return l;
  };
  const parseAtom = (): Expr => {
    const t = toks[p++];
    if (!t) throw new Error(`Kconfig expression: unexpected end in: ${src}`);
    if (t.t === 'word') return atomFromWord(t.v);
    if (t.t === 'str') return { k: 'const', value: t.v };
    if (t.t === 'macro') return { k: 'macro', text: t.v };
    throw new Error(`Kconfig expression: unexpected '${t.v}' in: ${src}`);
  };
  const parseUnary = (): Expr => {
    if (eat('!')) return { k: 'not', e: parseUnary() };
    if (eat('(')) {
      const e = parseOr();
      if (!eat(')')) throw new Error(`Kconfig expression: missing ')' in: ${src}`);
      return e;
    }
    const l = parseAtom();
    const t = peek();
    if (t?.t === 'op' && ['=', '!=', '<', '<=', '>', '>='].includes(t.v)) {
      p++;
      return { k: 'cmp', op: t.v as CmpOp, l, r: parseAtom() };
    }
    return l;
  };
  const e = parseOr();
  if (p !== toks.length) throw new Error(`Kconfig expression: trailing '${toks[p].v}' in: ${src}`);
  return e;
}

export const N = 0, M = 1, Y = 2;
export type Tri = 0 | 1 | 2;
const triOf = (v: string | undefined): Tri => (v === 'y' ? Y : v === 'm' ? M : N);
export const triName = (t: Tri): 'n' | 'm' | 'y' => (['n', 'm', 'y'] as const)[t];

/** Values of a parsed .config: symbol name without CONFIG_ -> value ('n' for "is not set"). */
export type ConfigValues = ReadonlyMap<string, string>;

/** A symbol's value as kconfig shows it: unset bool/tristate is n, unset others are empty. */
export function symValue(index: KconfigIndex | undefined, config: ConfigValues, name: string): string {
  const v = config.get(name);
  if (v !== undefined) return v;
  const type = index?.symbols.get(name)?.type;
  return type === 'string' || type === 'int' || type === 'hex' ? '' : 'n';
}

function atomString(e: Expr, index: KconfigIndex | undefined, config: ConfigValues): string {
  if (e.k === 'sym') return symValue(index, config, e.name);
  if (e.k === 'const') return e.value;
  if (e.k === 'macro') return '';
  // `depends on X if Y` becomes X || (Y)=n: a whole expression compared as a tristate.
  return triName(evalExpr(e, config, index));
}

function toNumber(s: string): number | undefined {
  if (/^-?0x[0-9a-f]+$/i.test(s)) return parseInt(s, 16);
  if (/^-?\d+$/.test(s)) return parseInt(s, 10);
  return undefined;
}

/**
 * Tristate value of an expression against a .config. As in kconfig, a bare
 * `m` means `m && MODULES`, and unknown `$(...)` probes count as y (their
 * result is already baked into the .config this is checked against).
 */
export function evalExpr(e: Expr, config: ConfigValues, index?: KconfigIndex): Tri {
  switch (e.k) {
    case 'sym': return triOf(config.get(e.name));
    case 'const':
      if (e.value === 'm') return Math.min(M, triOf(config.get('MODULES'))) as Tri;
      return e.value === 'y' ? Y : N;
    case 'macro': return Y;
    case 'not': return (Y - evalExpr(e.e, config, index)) as Tri;
    case 'and': return Math.min(evalExpr(e.l, config, index), evalExpr(e.r, config, index)) as Tri;
    case 'or': return Math.max(evalExpr(e.l, config, index), evalExpr(e.r, config, index)) as Tri;
    case 'cmp': {
      const a = atomString(e.l, index, config);
      const b = atomString(e.r, index, config);
      const na = toNumber(a), nb = toNumber(b);
      const c = na !== undefined && nb !== undefined ? Math.sign(na - nb) : a < b ? -1 : a > b ? 1 : 0;
      const ok = { '=': c === 0, '!=': c !== 0, '<': c < 0, '<=': c <= 0, '>': c > 0, '>=': c >= 0 }[e.op];
      return ok ? Y : N;
    }
  }
}

const prec = (e: Expr) => (e.k === 'or' ? 1 : e.k === 'and' ? 2 : 3);

/** Expression text; with `config`, each symbol annotated with its value like menuconfig: `FOO [=y]`. */
export function formatExpr(e: Expr, config?: ConfigValues, index?: KconfigIndex): string {
  const sub = (x: Expr, min: number) => {
    const s = formatExpr(x, config, index);
    return prec(x) < min ? `(${s})` : s;
  };
  switch (e.k) {
    case 'sym': return config ? `${e.name} [=${symValue(index, config, e.name) || '""'}]` : e.name;
    case 'const': return /^[A-Za-z0-9_x-]+$/.test(e.value) ? e.value : JSON.stringify(e.value);
    case 'macro': return e.text;
    case 'not': return `!${sub(e.e, 3)}`;
    case 'and': return `${sub(e.l, 2)} && ${sub(e.r, 2)}`;
    case 'or': return `${sub(e.l, 1)} || ${sub(e.r, 1)}`;
    case 'cmp': return `${sub(e.l, 3)}${e.op}${sub(e.r, 3)}`;
  }
}

const andAll = (es: readonly Expr[]): Expr | undefined =>
  es.reduce<Expr | undefined>((acc, e) => (acc ? { k: 'and', l: acc, r: e } : e), undefined);

// ---------------------------------------------------------------- the index

export type KType = 'bool' | 'tristate' | 'string' | 'int' | 'hex';

export interface KDef {
  file: string; // relative to the tree
  line: number;
  type?: KType;
  /** Has a prompt, i.e. the user (a fragment) can set it at all. */
  prompt: boolean;
  promptIf?: Expr;
  /** Own `depends on` clauses. */
  depends: Expr[];
  /** Inherited from enclosing if / menu / choice blocks, outermost first. */
  inherited: Array<{ expr: Expr; from: string /* e.g. "if VFIO (drivers/vfio/Kconfig:21)" */ }>;
  defaults: Array<{ value: Expr; cond?: Expr }>;
  ranges: Array<{ lo: Expr; hi: Expr; cond?: Expr }>;
  /** Member of the choice with this id. */
  choice?: number;
}

export interface KReverse {
  by: string;
  /** Index into the selector's defs: its dependencies are part of the select's strength. */
  byDef: number;
  cond?: Expr;
  file: string;
  line: number;
}

export interface KSymbol {
  name: string;
  type?: KType;
  defs: KDef[];
  selectedBy: KReverse[];
  impliedBy: KReverse[];
}

export interface KChoice {
  id: number;
  file: string;
  line: number;
  prompt?: string;
  members: string[];
}

export interface KconfigIndex {
  srcDir: string;
  srcArch: string;
  symbols: Map<string, KSymbol>;
  choices: KChoice[];
  /** Symbols defined only in Kconfig files this architecture does not read (name -> file:line). */
  elsewhere: Map<string, string>;
  files: number;
}

interface Block { kind: 'if' | 'menu' | 'choice'; deps: Expr[]; from: string; choice?: KChoice }

const TYPES = new Set(['bool', 'boolean', 'tristate', 'string', 'int', 'hex']);

/** The arguments of a prompt-ish line: `"text" [if expr]`. */
function splitPrompt(rest: string): { text?: string; cond?: string } {
  const m = /^\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*(?:if\s+(.*))?$/.exec(rest);
  if (!m) return { cond: undefined };
  return { text: m[1].slice(1, -1), cond: m[2]?.trim() || undefined };
}

/** Splits `value [if cond]` at a top-level ` if ` (not inside quotes/parens/macros). */
function splitIf(rest: string): { value: string; cond?: string } {
  let depth = 0;
  let q = '';
  for (let i = 0; i < rest.length; i++) {
    const c = rest[i];
    if (q) { if (c === '\\') i++; else if (c === q) q = ''; continue; }
    if (c === '"' || c === "'") q = c;
    else if (c === '(') depth++;
    else if (c === ')') depth--;
    else if (depth === 0 && /\s/.test(c) && rest.slice(i + 1, i + 4) === 'if ' ) {
      return { value: rest.slice(0, i).trim(), cond: rest.slice(i + 4).trim() };
    }
  }
  return { value: rest.trim() };
}

function stripComment(line: string): string {
  let q = '';
  let depth = 0;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) { if (c === '\\') i++; else if (c === q) q = ''; continue; }
    if (c === '"' || c === "'") q = c;
    else if (c === '$' && line[i + 1] === '(') depth++;
    else if (c === ')' && depth > 0) depth--;
    else if (c === '#' && depth === 0) return line.slice(0, i);
  }
  return line;
}

const indentOf = (s: string) => {
  let n = 0;
  for (const c of s) {
    if (c === ' ') n++;
    else if (c === '\t') n = (Math.floor(n / 8) + 1) * 8;
    else break;
  }
  return n;
};

export interface IndexOptions {
  /** Kernel SRCARCH (default x86). */
  srcArch?: string;
  /** Kernel ARCH (default x86_64). */
  arch?: string;
  /** Also note symbols defined only in Kconfig files not read for this arch (costs a scan of all Kconfig* files). */
  scanElsewhere?: boolean;
}

/**
 * Indexes the Kconfig tree at srcDir as kconfig reads it for one
 * architecture: from the top-level Kconfig, following `source`.
 */
export function buildKconfigIndex(srcDir: string, opts: IndexOptions = {}): KconfigIndex {
  const srcArch = opts.srcArch ?? 'x86';
  const vars: Record<string, string> = { SRCARCH: srcArch, ARCH: opts.arch ?? 'x86_64', HEADER_ARCH: srcArch, srctree: srcDir };
  const index: KconfigIndex = { srcDir, srcArch, symbols: new Map(), choices: [], elsewhere: new Map(), files: 0 };
  const read = new Set<string>();
  parseKconfigFile(index, srcDir, 'Kconfig', [], vars, read);
  finishIndex(index);
  if (opts.scanElsewhere !== false) scanElsewhere(index, srcDir, read);
  return index;
}

/**
 * Indexes a set of Kconfig texts (fixtures, excerpts): each parsed as if
 * sourced in order at top level, `source` lines resolved among them.
 */
export function indexFromTexts(files: Array<{ file: string; text: string }>): KconfigIndex {
  // Excerpts: a `source` of a file not given is skipped (as `osource` would be).
  const index: KconfigIndex = { srcDir: '', srcArch: 'x86', symbols: new Map(), choices: [], elsewhere: new Map(), files: 0 };
  const texts = new Map(files.map((f) => [f.file, f.text]));
  const read = new Set<string>();
  for (const f of files) {
    if (read.has(f.file)) continue;
    parseKconfigText(index, f.file, f.text, [], {}, read, (rel) => texts.get(rel) ?? '');
  }
  finishIndex(index);
  return index;
}

function parseKconfigFile(
  index: KconfigIndex, srcDir: string, rel: string, stack: Block[], vars: Record<string, string>, read: Set<string>,
): void {
  const abs = path.join(srcDir, rel);
  parseKconfigText(index, rel, readFileSync(abs, 'utf8'), stack, vars, read, (r) => {
    const a = path.join(srcDir, r);
    return existsSync(a) ? readFileSync(a, 'utf8') : undefined;
  });
}

function parseKconfigText(
  index: KconfigIndex,
  rel: string,
  text: string,
  stack: Block[],
  vars: Record<string, string>,
  read: Set<string>,
  load: (rel: string) => string | undefined,
): void {
  read.add(rel);
  index.files++;
  const raw = text.split('\n');
  // Current entry receiving attribute lines (a config, or a menu/choice/comment header).
  let cur: { def?: KDef; name?: string; block?: Block } | undefined;
  let helpIndent = -1; // >= 0 while inside help text
  let inHelp = false;
  const depth = stack.length;

  const expand = (s: string) => s.replace(/\$\((\w+)\)/g, (m, v) => vars[v] ?? m);
  const inherited = () => stack.flatMap((b) => b.deps.map((expr) => ({ expr, from: b.from })));
  const currentChoice = () => [...stack].reverse().find((b) => b.kind === 'choice')?.choice;
  const where = (n: number) => `${rel}:${n}`;

  for (let i = 0; i < raw.length; i++) {
    const lineNo = i + 1;
    let line = raw[i];
    if (inHelp) {
      if (line.trim() === '') continue;
      const ind = indentOf(line);
      if (helpIndent < 0) { helpIndent = ind; continue; }
      if (ind >= helpIndent) continue;
      inHelp = false;
    }
    while (line.endsWith('\\') && i + 1 < raw.length) line = line.slice(0, -1) + ' ' + raw[++i];
    const s = stripComment(line).trim();
    if (!s) continue;
    const kw = /^(\S+)\s*(.*)$/.exec(s)!;
    const word = kw[1];
    const rest = kw[2];

    try {
      switch (word) {
        case 'config':
        case 'menuconfig': {
          const name = rest.trim();
          const def: KDef = {
            file: rel, line: lineNo, prompt: false, depends: [], inherited: inherited(), defaults: [], ranges: [],
          };
          const ch = currentChoice();
          if (ch) { def.choice = ch.id; ch.members.push(name); }
          let sym = index.symbols.get(name);
          if (!sym) index.symbols.set(name, (sym = { name, defs: [], selectedBy: [], impliedBy: [] }));
          sym.defs.push(def);
          cur = { def, name };
          continue;
        }
        case 'menu': {
          const b: Block = { kind: 'menu', deps: [], from: `menu ${rest} (${where(lineNo)})` };
          stack.push(b);
          cur = { block: b };
          continue;
        }
        case 'choice': {
          const choice: KChoice = { id: index.choices.length, file: rel, line: lineNo, members: [] };
          index.choices.push(choice);
          const b: Block = { kind: 'choice', deps: [], from: `choice (${where(lineNo)})`, choice };
          stack.push(b);
          cur = { block: b };
          continue;
        }
        case 'if': {
          stack.push({ kind: 'if', deps: [parseExpr(rest)], from: `if ${rest} (${where(lineNo)})` });
          cur = undefined;
          continue;
        }
        case 'endif': case 'endmenu': case 'endchoice': {
          const want = word === 'endif' ? 'if' : word === 'endmenu' ? 'menu' : 'choice';
          const b = stack.pop();
          if (!b || b.kind !== want || stack.length < depth) {
            throw new Error(`${word} without matching ${want}`);
          }
          cur = undefined;
          continue;
        }
        case 'comment': {
          // A comment may carry its own `depends on`: swallow it, it binds nothing.
          cur = { block: { kind: 'menu', deps: [], from: '' } };
          continue;
        }
        case 'mainmenu': cur = undefined; continue;
        case 'source': case 'osource': case 'rsource': case 'orsource': {
          const p = expand(splitPrompt(rest).text ?? rest.trim());
          const target = word.startsWith('r') || word.startsWith('or') ? path.join(path.dirname(rel), p) : p;
          const text = load(target);
          if (text === undefined) {
            if (word.startsWith('o')) continue;
            throw new Error(`cannot read sourced file ${target}`);
          }
          if (!read.has(target)) parseKconfigText(index, target, text, stack, vars, read, load);
          cur = undefined;
          continue;
        }
      }

      // Macro assignments (scripts/Kconfig.include, top-level Kconfig).
      const assign = /^([A-Za-z0-9_-]+)\s*(:=|\+=|=)\s*(.*)$/.exec(s);
      if (assign) {
        if (assign[2] !== '+=' && !/\$\(/.test(assign[3])) vars[assign[1]] = assign[3];
        cur = undefined;
        continue;
      }

      // Attribute lines.
      if (!cur) continue;
      const d = cur.def;
      if (word === 'depends' && rest.startsWith('on')) {
        // `depends on X if Y` (kconfig >= 6.19): X || (Y)=n, as menu_add_dep() builds it.
        const { value, cond } = splitIf(rest.slice(2));
        const x = parseExpr(value);
        const e: Expr = cond ? { k: 'or', l: x, r: { k: 'cmp', op: '=', l: parseExpr(cond), r: { k: 'const', value: 'n' } } } : x;
        if (d) d.depends.push(e);
        else cur.block?.deps.push(e);
        continue;
      }
      if (word === 'visible') continue; // menu visibility: hides prompts, not a dependency
      if (word === 'help' || word === '---help---') { inHelp = true; helpIndent = -1; continue; }
      if (TYPES.has(word) || word === 'def_bool' || word === 'def_tristate') {
        if (!d) continue; // choice type line
        const t = word.startsWith('def_') ? word.slice(4) : word;
        d.type = (t === 'boolean' ? 'bool' : t) as KType;
        if (word.startsWith('def_')) {
          const { value, cond } = splitIf(rest);
          d.defaults.push({ value: parseExpr(value), cond: cond ? parseExpr(cond) : undefined });
        } else if (rest) {
          const pr = splitPrompt(rest);
          d.prompt = true;
          if (pr.cond) d.promptIf = parseExpr(pr.cond);
        }
        continue;
      }
      if (word === 'prompt') {
        if (d) {
          const pr = splitPrompt(rest);
          d.prompt = true;
          if (pr.cond) d.promptIf = parseExpr(pr.cond);
        } else if (cur.block?.choice) {
          cur.block.choice.prompt = splitPrompt(rest).text;
        }
        continue;
      }
      if (!d) continue;
      if (word === 'default') {
        const { value, cond } = splitIf(rest);
        d.defaults.push({ value: parseExpr(value), cond: cond ? parseExpr(cond) : undefined });
        continue;
      }
      if (word === 'select' || word === 'imply') {
        const { value, cond } = splitIf(rest);
        const target = value.trim();
        let sym = index.symbols.get(target);
        if (!sym) index.symbols.set(target, (sym = { name: target, defs: [], selectedBy: [], impliedBy: [] }));
        const owner = index.symbols.get(cur.name!)!;
        const r: KReverse = {
          by: cur.name!, byDef: owner.defs.indexOf(d), cond: cond ? parseExpr(cond) : undefined, file: rel, line: lineNo,
        };
        (word === 'select' ? sym.selectedBy : sym.impliedBy).push(r);
        continue;
      }
      if (word === 'range') {
        const { value, cond } = splitIf(rest);
        const [lo, hi] = value.split(/\s+/);
        if (lo && hi) d.ranges.push({ lo: parseExpr(lo), hi: parseExpr(hi), cond: cond ? parseExpr(cond) : undefined });
        continue;
      }
      // option, modules, transitional, ...: not needed to explain dependencies.
    } catch (err) {
      throw new Error(`${where(lineNo)}: ${(err as Error).message}`);
    }
  }
  if (stack.length !== depth) {
    throw new Error(`${rel}: ${stack[stack.length - 1].kind} block not closed at end of file`);
  }
}

function finishIndex(index: KconfigIndex): void {
  // Symbols only named by a select (never defined) are not symbols of the tree.
  // Symbols only named by a select keep an entry without defs: explainers report them as not defined.
  for (const sym of index.symbols.values()) sym.type = sym.defs.find((d) => d.type)?.type;
}

function scanElsewhere(index: KconfigIndex, srcDir: string, read: Set<string>): void {
  const walk = (dir: string) => {
    let ents;
    try { ents = readdirSync(path.join(srcDir, dir), { withFileTypes: true }); } catch { return; }
    for (const e of ents) {
      const rel = dir ? `${dir}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (e.name.startsWith('.') || rel === 'Documentation' || rel === 'tools' || rel === 'include') continue;
        walk(rel);
      } else if (e.name.startsWith('Kconfig') && !read.has(rel)) {
        const lines = readFileSync(path.join(srcDir, rel), 'utf8').split('\n');
        lines.forEach((l, i) => {
          const m = /^\s*(?:menu)?config\s+([A-Za-z0-9_]+)\s*$/.exec(l);
          if (m && !index.symbols.get(m[1])?.defs.length && !index.elsewhere.has(m[1])) index.elsewhere.set(m[1], `${rel}:${i + 1}`);
        });
      }
    }
  };
  walk('');
}

// ---------------------------------------------------------------- explaining

/** Value kconfig could at most give a definition from its dependencies (own and inherited). */
function depValue(def: KDef, config: ConfigValues, index: KconfigIndex): Tri {
  let v: Tri = Y;
  for (const e of [...def.inherited.map((x) => x.expr), ...def.depends]) v = Math.min(v, evalExpr(e, config, index)) as Tri;
  return v;
}

/** Strength of one select/imply: selector && its dependencies && the `if`. */
function reverseValue(r: KReverse, config: ConfigValues, index: KconfigIndex): Tri {
  let v = triOf(config.get(r.by));
  const def = index.symbols.get(r.by)?.defs[r.byDef];
  if (def) v = Math.min(v, depValue(def, config, index)) as Tri;
  if (r.cond) v = Math.min(v, evalExpr(r.cond, config, index)) as Tri;
  return v;
}

/** Symbols in `e` whose value keeps `e` below `need` (positive occurrences only). */
function blockers(e: Expr, need: Tri, config: ConfigValues, index: KconfigIndex): string[] {
  if (evalExpr(e, config, index) >= need) return [];
  switch (e.k) {
    case 'sym': return [e.name];
    case 'and': return [...blockers(e.l, need, config, index), ...blockers(e.r, need, config, index)];
    case 'or': return [...blockers(e.l, need, config, index), ...blockers(e.r, need, config, index)];
    default: return []; // negations and comparisons: shown with values, not recursed into
  }
}

const cfg = (name: string) => `CONFIG_${name}`;

function levenshtein(a: string, b: string): number {
  if (Math.abs(a.length - b.length) > 3) return 99;
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const t = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = t;
    }
  }
  return prev[b.length];
}

/** Defined symbols whose names are close to `name` (typos, renames that kept most of the name). */
export function similarSymbols(index: KconfigIndex, name: string, max = 3): string[] {
  const scored: Array<[string, number]> = [];
  const parts = name.split('_').filter((p) => p.length > 2);
  for (const [other, sym] of index.symbols) {
    if (!sym.defs.length || other === name) continue;
    let d = levenshtein(name, other);
    // Same words in another order or with one word added/dropped (renames often do that).
    if (d > 3 && parts.length >= 2) {
      const op = new Set(other.split('_'));
      const common = parts.filter((p) => op.has(p)).length;
      if (common === parts.length && op.size <= parts.length + 1) d = 3;
    }
    if (d <= Math.max(2, Math.floor(name.length / 5))) scored.push([other, d]);
  }
  return scored.sort((a, b) => a[1] - b[1] || a[0].localeCompare(b[0])).slice(0, max).map(([s]) => s);
}

export interface ExplainOptions {
  /** How deep to follow unmet dependencies (default 4). */
  depth?: number;
}

/**
 * Why `symbol` is not `wanted` in the final config: a one-paragraph
 * explanation (without the leading "CONFIG_X=v was requested" part, which
 * the caller knows). `wanted` is the .config value text: y, m, n, a number,
 * or a string without quotes.
 */
export function explainMismatch(
  index: KconfigIndex, config: ConfigValues, symbol: string, wanted: string, opts: ExplainOptions = {},
): string {
  const sym = index.symbols.get(symbol);
  const actual = symValue(index, config, symbol);
  if (!sym || sym.defs.length === 0) {
    const parts = [`${cfg(symbol)} does not exist in this tree (no \`config ${symbol}\` in the Kconfig files read for ${index.srcArch})`];
    const other = index.elsewhere.get(symbol);
    if (other) parts.push(`it is defined in ${other}, which ${index.srcArch} does not use`);
    if (sym?.selectedBy.length) parts.push(`it is only named by select in ${sym.selectedBy.map((r) => `${r.file}:${r.line}`).join(', ')}`);
    const near = similarSymbols(index, symbol);
    if (near.length) parts.push(`did you mean ${near.map(cfg).join(' or ')}?`);
    return parts.join('; ');
  }

  const out: string[] = [];
  const seen = new Set<string>([symbol]);
  const maxDepth = opts.depth ?? 4;
  const wantTri = triOf(wanted);
  const isTristateLike = sym.type === 'bool' || sym.type === 'tristate';

  if (isTristateLike && wanted !== 'y' && wanted !== 'm' && wanted !== 'n') {
    return `${cfg(symbol)} is a ${sym.type}: "${wanted}" is not a value it can take (y${sym.type === 'tristate' ? ', m' : ''} or n)`;
  }

  if (isTristateLike && wantTri > triOf(actual)) {
    explainTooLow(index, config, symbol, wantTri, out, seen, 0, maxDepth);
  } else if (isTristateLike && wantTri < triOf(actual)) {
    explainTooHigh(index, config, sym, wantTri, out);
  } else if (!isTristateLike) {
    // string/int/hex: either it is not visible at all, or the value was rejected.
    const dv = Math.max(...sym.defs.map((d) => depValue(d, config, index)));
    if (dv === N) explainTooLow(index, config, symbol, Y, out, seen, 0, maxDepth);
    else {
      const ranges = sym.defs.flatMap((d) => d.ranges.filter((r) => !r.cond || evalExpr(r.cond, config, index) > N));
      if (ranges.length) {
        out.push(`the allowed range is ${ranges.map((r) => `${atomString(r.lo, index, config)}..${atomString(r.hi, index, config)}`).join(' or ')} (${loc(sym.defs[0])})`);
      } else if (!sym.defs.some((d) => d.prompt)) {
        out.push(`${symbol} has no prompt (${loc(sym.defs[0])}), so a fragment cannot set it: its value comes from its default`);
      } else {
        out.push(`kconfig replaced the value (${loc(sym.defs[0])}); for ${sym.type} the format must be valid`);
      }
    }
  } else {
    out.push(`${symbol} is ${actual} as asked`);
  }
  return out.join('; ');
}

const loc = (d: KDef) => `${d.file}:${d.line}`;

function explainTooLow(
  index: KconfigIndex, config: ConfigValues, name: string, need: Tri,
  out: string[], seen: Set<string>, depth: number, maxDepth: number,
): void {
  const sym = index.symbols.get(name);
  const val = symValue(index, config, name);
  const me = depth === 0 ? 'it' : name;
  if (!sym || sym.defs.length === 0) {
    out.push(`${name} is not defined in any Kconfig file read for ${index.srcArch}`);
    return;
  }
  // The best definition (kconfig ORs them); explain the one that gets closest.
  const scored = sym.defs.map((d) => ({ d, v: depValue(d, config, index) }));
  scored.sort((a, b) => b.v - a.v);
  const { d, v } = scored[0];
  const promptOk = d.promptIf ? evalExpr(d.promptIf, config, index) : Y;
  // A bool whose dependencies are m can still be y (kconfig promotes it).
  const needDep: Tri = sym.type === 'bool' && need === Y ? M : need;

  if (v < needDep) {
    const bad: Array<{ expr: Expr; from?: string }> = [];
    for (const x of d.inherited) if (evalExpr(x.expr, config, index) < needDep) bad.push({ expr: x.expr, from: x.from });
    for (const e of d.depends) {
      // `menuconfig X` + `if X` + `depends on X` repeats a clause: show it once.
      if (evalExpr(e, config, index) < needDep && !bad.some((b) => formatExpr(b.expr) === formatExpr(e))) bad.push({ expr: e });
    }
    const text = bad.map((b) => formatExpr(b.expr, config, index) + (b.from ? ` (inherited from ${b.from})` : '')).join(' && ');
    const limit = v === M && need === Y && sym.type === 'tristate'
      ? ' (a tristate cannot be built in while a dependency is only m)' : '';
    out.push(`${me} depends on ${text} (${loc(d)})${limit}`);
    if (depth + 1 >= maxDepth) return;
    for (const b of bad) {
      for (const dep of blockers(b.expr, needDep, config, index)) {
        if (seen.has(dep)) continue;
        seen.add(dep);
        explainTooLow(index, config, dep, needDep, out, seen, depth + 1, maxDepth);
      }
    }
    return;
  }
  // Dependencies are met: then it was not turned on, or could not be by a fragment.
  if (depth > 0) {
    if (!d.prompt || promptOk === N) {
      const sel = sym.selectedBy.map((r) => `${r.by} [=${symValue(index, config, r.by)}]`);
      out.push(`${name} [=${val}] has no${d.prompt ? ' visible' : ''} prompt (${loc(d)}), so only a select can turn it on${sel.length ? `: selected by ${sel.slice(0, 8).join(', ')}${sel.length > 8 ? ', ...' : ''}` : ''}`);
    } else {
      const ask = sym.type === 'tristate' && need === M ? 'm (or y)' : 'y';
      const state = val === 'n' || val === '' ? 'not enabled' : `only ${val}`;
      out.push(`${name} [=${val}] has its dependencies met but is ${state}: add ${cfg(name)}=${ask} (${loc(d)})`);
    }
    return;
  }
  if (!d.prompt || promptOk === N) {
    const why = d.prompt ? `its prompt is only shown if ${formatExpr(d.promptIf!, config, index)}` : 'it has no prompt';
    const sel = sym.selectedBy.map((r) => `${r.by} [=${symValue(index, config, r.by)}] (${r.file}:${r.line})`);
    const defs = d.defaults.map((x) => `${formatExpr(x.value, config, index)}${x.cond ? ` if ${formatExpr(x.cond, config, index)}` : ''}`);
    out.push(
      `${why} (${loc(d)}), so a fragment cannot set it: only its default${defs.length ? ` (${defs.join(', ')})` : ' (none)'} or a select can` +
        (sel.length ? `; selected by ${sel.slice(0, 8).join(', ')}${sel.length > 8 ? ', ...' : ''}` : '; nothing selects it'),
    );
    // A def_bool like VFIO_PCI_DMABUF: say which part of its default is off.
    for (const x of d.defaults) {
      for (const e of [x.value, x.cond].filter((e): e is Expr => !!e)) {
        for (const dep of blockers(e, needDep, config, index)) {
          if (seen.has(dep) || !index.symbols.get(dep)?.defs.length) continue;
          seen.add(dep);
          explainTooLow(index, config, dep, needDep, out, seen, depth + 1, maxDepth);
        }
      }
    }
    return;
  }
  if (d.choice !== undefined) {
    const ch = index.choices[d.choice];
    const chosen = ch.members.filter((m) => config.get(m) === 'y' && m !== name);
    if (chosen.length) {
      out.push(`it is a member of the choice "${ch.prompt ?? ''}" (${ch.file}:${ch.line}), where ${chosen.map(cfg).join(', ')} is selected; a later fragment line or a select may have picked it`);
      return;
    }
  }
  out.push(`its dependencies are met (${loc(d)}) but kconfig did not keep the value; is a later fragment line setting it?`);
}

function explainTooHigh(index: KconfigIndex, config: ConfigValues, sym: KSymbol, want: Tri, out: string[]): void {
  const d = sym.defs[0];
  const forcing = sym.selectedBy.filter((r) => reverseValue(r, config, index) > want);
  if (want === M && sym.type === 'bool') {
    out.push(`it is a bool (${loc(d)}): it cannot be a module`);
  }
  if (want === M && triOf(config.get('MODULES')) === N) {
    out.push('CONFIG_MODULES is not set, so every tristate is built in or off');
  }
  if (forcing.length) {
    const what = want === N ? 'off' : 'a module';
    out.push(
      `it is selected by ${forcing.map((r) => `${r.by} [=${symValue(index, config, r.by)}] (${r.file}:${r.line}${r.cond ? `, if ${formatExpr(r.cond, config, index)}` : ''})`).join(', ')}` +
        `, which forces it to at least ${triName(Math.max(...forcing.map((r) => reverseValue(r, config, index))) as Tri)}, so it cannot be ${what}`,
    );
  }
  if (!forcing.length && !(want === M && sym.type === 'bool')) {
    if (!sym.defs.some((x) => x.prompt)) {
      const defs = d.defaults.map((x) => `${formatExpr(x.value, config, index)}${x.cond ? ` if ${formatExpr(x.cond, config, index)}` : ''}`);
      out.push(`it has no prompt (${loc(d)}), so its value comes from its default: ${defs.join(', ') || 'none'}`);
    } else if (want === N && d.choice !== undefined) {
      out.push(`it is the selected member of the choice "${index.choices[d.choice].prompt ?? ''}" (${index.choices[d.choice].file}:${index.choices[d.choice].line}); set another member to y instead`);
    } else {
      out.push(`nothing selects it and it has a prompt (${loc(d)}); check the fragments for a later line setting it`);
    }
  }
}

export function formatAsked(symbol: string, wanted: string): string {
  return wanted === 'n' ? `# ${cfg(symbol)} is not set` : `${cfg(symbol)}=${wanted}`;
}
