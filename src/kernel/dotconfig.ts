// The one reader of kconfig's line format, for .config files, fragments and
// auto.conf alike: `CONFIG_X=value` sets a symbol, `# CONFIG_X is not set`
// sets it to n, anything else is not a setting. Every place that reads a
// config (fragment checks, the final config check, the fast path's toolchain
// adaptation) reads it through here, so they agree on what a line means.

/** One setting line. */
export interface ConfigLine {
  /** Symbol without the CONFIG_ prefix. */
  symbol: string;
  /** y, m, n, a number, or a string without its quotes ('n' for "is not set"). */
  value: string;
  /** The value as written after '=' (strings keep their quotes); 'n' for "is not set". */
  raw: string;
  /** True for a `# CONFIG_X is not set` line. */
  notSet: boolean;
  /** 1-based line number. */
  line: number;
}

const SET = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/;
const NOT_SET = /^# CONFIG_([A-Za-z0-9_]+) is not set$/;

const unquote = (v: string) =>
  v.length >= 2 && v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1).replace(/\\(["\\])/g, '$1') : v;

/** Classifies one line: a setting, or null (a comment, a blank line, or something that is not kconfig syntax). */
export function readConfigLine(text: string, line: number): ConfigLine | null {
  const l = text.trim();
  let m = SET.exec(l);
  if (m) return { symbol: m[1], value: unquote(m[2]), raw: m[2], notSet: false, line };
  m = NOT_SET.exec(l);
  if (m) return { symbol: m[1], value: 'n', raw: 'n', notSet: true, line };
  return null;
}

/** Every setting line, in order. */
export function readConfigLines(text: string): ConfigLine[] {
  const out: ConfigLine[] = [];
  text.split('\n').forEach((l, i) => {
    const c = readConfigLine(l, i + 1);
    if (c) out.push(c);
  });
  return out;
}

/** A config as symbol -> value ('n' for "is not set", strings unquoted); the last line for a symbol wins. */
export function parseDotConfig(text: string): Map<string, string> {
  return new Map(readConfigLines(text).map((c) => [c.symbol, c.value]));
}

/** The symbols that are set (not "is not set"), as CONFIG_X -> value as written: what auto.conf and autoconf.h are made of. */
export function configSettings(text: string): Map<string, string> {
  return new Map(readConfigLines(text).filter((c) => !c.notSet).map((c) => [`CONFIG_${c.symbol}`, c.raw]));
}
