// The frame every hwlab command sits in: a command is a name, its usage
// lines, its options and a handler, and this file turns argv into exactly
// one of help text, the version, a one-line usage error or a handler call.
// It exists so that `--help`/`-h`, unknown options, missing values and
// option counts behave the same on every command, and so that a new
// command is one file plus one entry in the table (src/cli/main.ts).
// node:util's parseArgs is not used for the table's commands: its errors
// are multi-line and do not name the command, and we need the option table
// anyway for help and shell completion.

/** One option of a command. `--name VALUE` for strings, `--name` for booleans. */
export interface OptionSpec {
  type: 'string' | 'boolean';
  /** May be given more than once (values collected in order). */
  multiple?: boolean;
  /** Name of the value in help, e.g. FILE. */
  value?: string;
  help: string;
}

export type OptionTable = Record<string, OptionSpec>;

/** What a handler gets: option values by name, and the positional arguments. */
export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
  /** Arguments after a `--` (kept apart, e.g. the command `hwlab ssh` runs in the guest). */
  rest: string[];
}

export interface CommandSpec {
  /** As typed: `run`, or `cache ls` for a subcommand. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Positional arguments as shown in usage, e.g. `<lab.yaml>`. */
  args: string;
  positionals: { min: number; max: number };
  options: OptionTable;
  /** Paragraphs shown after the options in `--help`. */
  details?: string;
  /** Accepts `-- args...` (otherwise `--` is a usage error). */
  takesRest?: boolean;
  /** The command parses its own arguments (node:util parseArgs); the frame only answers --help. */
  ownParser?: { usage: string };
  handler(args: ParsedArgs): Promise<number>;
}

/**
 * A command that parses its own arguments (node:util parseArgs): the frame
 * hands it every argument after its name and only answers --help, with `usage`.
 */
export function ownParserCommand(name: string, summary: string, args: string, usage: string, run: (argv: string[]) => Promise<number>): CommandSpec {
  return { name, summary, args, positionals: { min: 0, max: Infinity }, options: {}, ownParser: { usage }, handler: (a) => run(a.positionals) };
}

/** A command with subcommands (`cache ls`, `cache prune`): chosen by the next word. */
export interface CommandGroup {
  name: string;
  summary: string;
  subcommands: CommandSpec[];
}

export type CommandEntry = CommandSpec | CommandGroup;

export const isGroup = (e: CommandEntry): e is CommandGroup => 'subcommands' in e;

/** A command line that cannot mean anything: one line, then exit 2, never a stack trace. */
export class UsageError extends Error {
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

/** What a command line asks for. */
export type CliRequest =
  | { kind: 'help'; text: string }
  | { kind: 'version' }
  | { kind: 'command'; spec: CommandSpec; args: ParsedArgs };

const HELP_OPTION: OptionSpec = { type: 'boolean', help: 'this help' };

function optionUsage(name: string, o: OptionSpec): string {
  return `--${name}${o.type === 'string' ? ` ${o.value ?? 'VALUE'}` : ''}${o.multiple ? '...' : ''}`;
}

/** `hwlab run <lab.yaml> [--patch FILE]... [--json]` */
export function usageLine(spec: CommandSpec): string {
  const opts = Object.entries(spec.options).map(([n, o]) => `[${optionUsage(n, o)}]`);
  return ['hwlab', spec.name, spec.args, ...opts].filter(Boolean).join(' ');
}

/** The text of `hwlab <command> --help`. */
export function commandHelp(spec: CommandSpec): string {
  if (spec.ownParser) return `${spec.summary}\n\nusage:\n${spec.ownParser.usage}`;
  const rows = Object.entries({ ...spec.options, help: HELP_OPTION }).map(([n, o]) => [`${optionUsage(n, o)}${n === 'help' ? ', -h' : ''}`, o.help]);
  const w = Math.max(...rows.map((r) => r[0].length));
  const lines = [`usage: ${usageLine(spec)}`, '', spec.summary, '', 'options:', ...rows.map(([a, h]) => `  ${a.padEnd(w)}  ${h}`)];
  if (spec.details) lines.push('', spec.details.trimEnd());
  return `${lines.join('\n')}\n`;
}

/** The text of `hwlab --help`: every command with its summary. */
export function globalHelp(table: readonly CommandEntry[]): string {
  const rows: Array<[string, string]> = [];
  for (const e of table) {
    if (isGroup(e)) for (const s of e.subcommands) rows.push([`${s.name} ${s.args}`.trim(), s.summary]);
    else rows.push([`${e.name} ${e.args}`.trim(), e.summary]);
  }
  const w = Math.min(34, Math.max(...rows.map((r) => r[0].length)));
  const list = rows.map(([a, s]) => (a.length > w ? `  ${a}\n  ${''.padEnd(w)}  ${s}` : `  ${a.padEnd(w)}  ${s}`));
  return `usage: hwlab <command> [options]      hwlab <command> --help for its options

commands:
${list.join('\n')}

global options:
  --help, -h     this help
  --version      hwlab's version (package.json and git describe)

exit codes: 0 pass, 1 a probe failed or the kernel printed a report,
2 bad input (lab, patch, fragment, command line), 3 the host or emulator failed.
`;
}

/** Parses a command's arguments against its option table; throws UsageError naming the command. */
export function parseCommandArgs(spec: CommandSpec, argv: string[]): ParsedArgs | 'help' {
  const values: ParsedArgs['values'] = {};
  const positionals: string[] = [];
  let rest: string[] = [];
  const fail = (msg: string): never => { throw new UsageError(`hwlab ${spec.name}: ${msg}`, spec.name); };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') return 'help';
    if (a === '--') {
      if (!spec.takesRest) fail('does not take arguments after --');
      rest = argv.slice(i + 1);
      break;
    }
    if (a.startsWith('--')) {
      const eq = a.indexOf('=');
      const name = a.slice(2, eq < 0 ? undefined : eq);
      const o = spec.options[name];
      if (!o) fail(`unknown option --${name}${Object.keys(spec.options).length ? ` (options: ${Object.keys(spec.options).map((n) => `--${n}`).join(' ')})` : ''}`);
      let v: string | boolean;
      if (o.type === 'boolean') {
        if (eq >= 0) fail(`--${name} takes no value`);
        v = true;
      } else if (eq >= 0) v = a.slice(eq + 1);
      else {
        if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) fail(`--${name} needs a value (${o.value ?? 'VALUE'})`);
        v = argv[++i];
      }
      if (o.multiple) values[name] = [...((values[name] as string[] | undefined) ?? []), v as string];
      else if (values[name] !== undefined) fail(`--${name} given twice`);
      else values[name] = v;
      continue;
    }
    if (a.startsWith('-') && a !== '-') fail(`unknown option ${a}`);
    positionals.push(a);
  }
  const { min, max } = spec.positionals;
  if (positionals.length < min) fail(`missing ${spec.args || 'argument'}`);
  if (positionals.length > max) fail(max === 0 ? `takes no arguments (got ${positionals.join(' ')})` : `takes ${max === min ? 'exactly' : 'at most'} ${max} argument${max === 1 ? '' : 's'} ${spec.args} (got ${positionals.length}: ${positionals.join(' ')})`);
  return { values, positionals, rest };
}

/** argv (after `hwlab`) -> what to do. Throws UsageError for anything that cannot mean a command. */
export function parseCommandLine(table: readonly CommandEntry[], argv: string[]): CliRequest {
  const [first, ...more] = argv;
  if (first === undefined) throw new UsageError('no command given (hwlab --help lists them)');
  if (first === '--help' || first === '-h' || first === 'help') {
    if (first === 'help' && more.length) return parseCommandLine(table, [...more, '--help']);
    return { kind: 'help', text: globalHelp(table) };
  }
  if (first === '--version' || first === '-V') return { kind: 'version' };
  if (first.startsWith('-')) throw new UsageError(`unknown option ${first} (hwlab --help lists the commands and options)`);
  const entry = table.find((e) => e.name === first);
  if (!entry) throw new UsageError(`unknown command "${first}" (commands: ${table.map((e) => e.name).join(', ')})`);
  let spec: CommandSpec;
  let rest = more;
  if (isGroup(entry)) {
    const [sub, ...subRest] = more;
    if (sub === undefined || sub === '--help' || sub === '-h') {
      const text = `${entry.summary}\n\n${entry.subcommands.map((s) => `usage: ${usageLine(s)}\n    ${s.summary}`).join('\n')}\n`;
      if (sub === undefined) throw new UsageError(`hwlab ${entry.name}: needs one of ${entry.subcommands.map((s) => s.name.split(' ').pop()).join(', ')}`, entry.name);
      return { kind: 'help', text };
    }
    const found = entry.subcommands.find((s) => s.name === `${entry.name} ${sub}`);
    if (!found) throw new UsageError(`hwlab ${entry.name}: unknown subcommand "${sub}" (${entry.subcommands.map((s) => s.name.split(' ').pop()).join(', ')})`, entry.name);
    spec = found;
    rest = subRest;
  } else spec = entry;
  if (spec.ownParser) {
    if (rest.includes('--help') || rest.includes('-h')) return { kind: 'help', text: commandHelp(spec) };
    return { kind: 'command', spec, args: { values: {}, positionals: rest, rest: [] } };
  }
  const parsed = parseCommandArgs(spec, rest);
  if (parsed === 'help') return { kind: 'help', text: commandHelp(spec) };
  return { kind: 'command', spec, args: parsed };
}

/** Every command name and option, for shell completion. */
export function completionWords(table: readonly CommandEntry[]): Array<{ command: string; options: string[] }> {
  const out: Array<{ command: string; options: string[] }> = [];
  for (const e of table) {
    const specs = isGroup(e) ? e.subcommands : [e];
    for (const s of specs) out.push({ command: s.name, options: [...Object.keys(s.options).map((n) => `--${n}`), '--help'] });
  }
  return out;
}

/** Typed readers for handler code: the frame already checked names and types. */
export const str = (a: ParsedArgs, name: string): string | undefined => a.values[name] as string | undefined;
export const strs = (a: ParsedArgs, name: string): string[] => (a.values[name] as string[] | undefined) ?? [];
export const flag = (a: ParsedArgs, name: string): boolean => a.values[name] === true;
