// Kernel config assembly: a base (tinyconfig or another make target) plus the
// lab's fragments, merged with the tree's own scripts/kconfig/merge_config.sh
// and settled with olddefconfig. Then proven: kconfig silently drops a value
// whose dependencies are unmet (PCI_P2PDMA without ZONE_DEVICE), so every
// value a fragment asked for is checked in the final .config, and a mismatch
// stops the run before a build starts, saying why.
import { mkdir, readFile, writeFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';

import type { Step } from '../util/progress.ts';
import { parseDotConfig, readConfigLine } from './dotconfig.ts';
import { buildKconfigIndex, explainMismatch, type KconfigIndex } from './kconfig.ts';
import { InputError } from '../util/errors.ts';

export interface Requested {
  /** As parseDotConfig gives it: y, m, n, a number, or a string without its quotes. */
  value: string;
  /** The value as written in the fragment (strings keep their quotes). */
  raw: string;
  file: string;
  line: number;
}

export interface ConfigMismatch {
  symbol: string;
  asked: Requested;
  /** Final value, 'n' when not set; undefined when the .config has no line at all (invisible non-bool symbol). */
  actual: string | undefined;
  explanation: string;
}

export class ConfigError extends InputError {
  constructor(message: string, readonly mismatches: ConfigMismatch[] = [], hint?: string) {
    super(message, hint, 'config-does-not-hold');
  }
}

/**
 * What the fragments ask for, in merge order: a later fragment (or a later
 * line of the same fragment) overrides an earlier one for the same symbol,
 * as merge_config.sh and kconfig do, and that last request is the one checked.
 */
export function requestedValues(fragments: Array<{ file: string; text: string }>): Map<string, Requested> {
  const out = new Map<string, Requested>();
  const bad: string[] = [];
  for (const f of fragments) {
    f.text.split('\n').forEach((line, i) => {
      const l = line.trim();
      const c = readConfigLine(l, i + 1);
      if (c) {
        out.delete(c.symbol); // re-insert so iteration order follows the winning line
        out.set(c.symbol, { value: c.value, raw: c.raw, file: f.file, line: c.line });
        return;
      }
      // merge_config.sh would silently ignore anything else: a typo would be a request that is never checked.
      if (l && !l.startsWith('#')) bad.push(`${f.file}:${i + 1}: not a config line: ${l}`);
      else if (/^#\s*CONFIG_[A-Za-z0-9_]+\s*=/.test(l)) bad.push(`${f.file}:${i + 1}: commented-out assignment (use "# CONFIG_X is not set" to ask for n): ${l}`);
    });
  }
  if (bad.length) throw new ConfigError(`kernel config fragments have lines kconfig would ignore:\n  ${bad.join('\n  ')}`);
  return out;
}

const NUM = /^-?(0x[0-9a-f]+|\d+)$/i;

function holds(asked: string, actual: string | undefined): boolean {
  const a = actual ?? 'n';
  if (asked === 'n') return a === 'n' || a === '';
  if (asked === a) return true;
  // kconfig may normalise a number's spelling (0x0010 vs 0x10).
  if (NUM.test(asked) && NUM.test(a)) return Number(asked) === Number(a);
  return false;
}

/**
 * Checks each requested value against the final config. The Kconfig index is
 * only built (it takes seconds on a full tree) when something did not hold.
 */
export function verifyConfig(
  requested: ReadonlyMap<string, Requested>,
  config: ReadonlyMap<string, string>,
  index: KconfigIndex | (() => KconfigIndex),
): ConfigMismatch[] {
  const bad = [...requested].filter(([sym, r]) => !holds(r.value, config.get(sym)));
  // An `n` request holds trivially for a name kconfig never wrote, but that may
  // be a typo or a removed symbol (the option meant to be off may be on):
  // those are checked against the Kconfig tree too.
  const absent = [...requested].filter(([sym, r]) => r.value === 'n' && !config.has(sym));
  if (!bad.length && !absent.length) return [];
  const idx = typeof index === 'function' ? index() : index;
  for (const a of absent) if (!idx.symbols.get(a[0])?.defs.length) bad.push(a);
  return bad.map(([symbol, asked]) => ({
    symbol,
    asked,
    actual: config.get(symbol),
    explanation: explainMismatch(idx, config, symbol, asked.value),
  }));
}

export function formatMismatch(m: ConfigMismatch, index?: KconfigIndex): string {
  const isString = index?.symbols.get(m.symbol)?.type === 'string';
  const actual = m.actual === undefined ? 'not set' : isString ? JSON.stringify(m.actual) : m.actual;
  // "became" makes no sense for a name kconfig does not know.
  const became = index && !index.symbols.get(m.symbol)?.defs.length ? '' : ` became ${actual}`;
  return `${m.asked.file}:${m.asked.line}: CONFIG_${m.symbol}=${m.asked.raw}${became}: ${m.explanation}`;
}

export interface AssembleOptions {
  srcDir: string;
  objDir: string;
  /** A make target producing the starting .config: tinyconfig, defconfig, allnoconfig, ... */
  base: 'tinyconfig' | 'defconfig' | string;
  fragments: Array<{ file: string; text: string }>;
  step?: Step;
  arch?: 'x86_64';
  /** Reuse a Kconfig index (tests, repeated runs) instead of reading the tree on a mismatch. */
  index?: KconfigIndex;
}

async function run(step: Step | undefined, what: string, file: string, args: string[], cwd: string): Promise<void> {
  step?.update(what);
  const r = await execa(file, args, { cwd, all: true, reject: false, env: { LC_ALL: 'C' } });
  if (r.exitCode !== 0) {
    const tail = (r.all ?? '').split('\n').slice(-25).join('\n');
    throw new ConfigError(`kernel config: ${what} failed (exit ${r.exitCode}):\n${tail}`);
  }
}

export async function assembleConfig(opts: AssembleOptions): Promise<{
  configText: string;
  requested: Map<string, Requested>;
}> {
  const arch = opts.arch ?? 'x86_64';
  const srcDir = path.resolve(opts.srcDir);
  const objDir = path.resolve(opts.objDir);
  if (!/^[A-Za-z0-9_.-]+$/.test(opts.base)) throw new ConfigError(`kernel config: base must be a make target, got "${opts.base}"`);
  // Parse first: a malformed fragment should fail before minutes of make.
  const requested = requestedValues(opts.fragments);
  await mkdir(objDir, { recursive: true });
  const make = (target: string) => ['-C', srcDir, `O=${objDir}`, `ARCH=${arch}`, target];

  await run(opts.step, `make ${opts.base}`, 'make', make(opts.base), objDir);

  // merge_config.sh reads fragments from files; write them where the build lives.
  const fragDir = path.join(objDir, 'hwlab-fragments');
  await rm(fragDir, { recursive: true, force: true });
  await mkdir(fragDir);
  const paths: string[] = [];
  for (const [i, f] of opts.fragments.entries()) {
    const p = path.join(fragDir, `${String(i).padStart(2, '0')}-${path.basename(f.file).replace(/[^A-Za-z0-9_.-]/g, '_')}`);
    await writeFile(p, f.text.endsWith('\n') ? f.text : `${f.text}\n`);
    paths.push(p);
  }
  if (paths.length) {
    // -m: merge only (olddefconfig follows); cwd objDir because the script makes its temp file in ./
    await run(opts.step, 'merge_config.sh', path.join(srcDir, 'scripts/kconfig/merge_config.sh'),
      ['-m', '-O', objDir, path.join(objDir, '.config'), ...paths], objDir);
  }
  await run(opts.step, 'make olddefconfig', 'make', make('olddefconfig'), objDir);

  const configText = await readFile(path.join(objDir, '.config'), 'utf8');
  opts.step?.update('verifying requested values');
  let index = opts.index;
  const getIndex = () => (index ??= buildKconfigIndex(srcDir, { srcArch: 'x86', arch }));
  const mismatches = verifyConfig(requested, parseDotConfig(configText), getIndex);
  if (mismatches.length) {
    const lines = mismatches.map((m) => `  ${formatMismatch(m, index)}`);
    throw new ConfigError(
      `kernel config: ${mismatches.length} requested value(s) did not hold after olddefconfig (${path.join(objDir, '.config')}):\n${lines.join('\n')}`,
      mismatches,
      'fix the fragment(s) above; nothing was built',
    );
  }
  return { configText, requested };
}
