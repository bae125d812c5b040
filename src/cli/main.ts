// hwlab command line: the table of commands and what happens around every
// one of them. Each command lives in its own file (src/cli/<name>-cmd.ts)
// as a CommandSpec (src/cli/command.ts: usage, options, handler); adding a
// command is that file plus one entry in COMMANDS. Exit codes follow the
// outcome classes (src/results/outcome.ts): 0 pass, 1 a probe failed or the
// kernel printed a report, 2 bad input (usage errors included) or a patch
// that does not build, 3 the host or the emulator failed. Errors print one
// message, never a stack trace, except for a bug in hwlab itself.
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { EXIT_CODE } from '../results/outcome.ts';
import { runCleanups } from '../util/cleanup.ts';
import { HwlabError } from '../util/errors.ts';
import { YamlError } from '../util/yaml.ts';
import { escapeForTerminal } from '../util/text.ts';
import { cacheCommands } from './cache-cmd.ts';
import { checkCommand } from './check-cmd.ts';
import { parseCommandLine, UsageError, type CommandEntry } from './command.ts';
import { completionCommand } from './completion-cmd.ts';
import { doctorCommand } from './doctor.ts';
import { imageCommands } from './image-cmd.ts';
import { matrixCommandSpec, mergeCommandSpec } from './matrix-cmd.ts';
import { mutantsCommand } from './mutants-cmd.ts';
import { nightlyCommandSpec } from './nightly-cmd.ts';
import { historyCommandSpec } from './history-cmd.ts';
import { bisectCommandSpec } from './bisect-cmd.ts';
import { rerunCommand } from './rerun-cmd.ts';
import { psCommand } from './ps-cmd.ts';
import { runCommand } from './run-cmd.ts';
import { shellCommand } from './shell-cmd.ts';
import { sshCommand } from './ssh-cmd.ts';
import { stopCommand } from './stop-cmd.ts';

/** Every command, in the order `hwlab --help` lists them. */
export const COMMANDS: CommandEntry[] = [
  runCommand,
  rerunCommand,
  shellCommand,
  sshCommand,
  stopCommand,
  psCommand,
  mutantsCommand,
  matrixCommandSpec,
  mergeCommandSpec,
  nightlyCommandSpec,
  historyCommandSpec,
  bisectCommandSpec,
  checkCommand,
  imageCommands,
  doctorCommand,
  cacheCommands,
  completionCommand(() => COMMANDS),
];

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** `hwlab 0.1.0 (e15d3cd-dirty)`: package.json's version and where the checkout is. */
export async function versionLine(): Promise<string> {
  const pkg = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string };
  const git = await execa('git', ['describe', '--always', '--dirty', '--tags'], { cwd: repoRoot, reject: false, timeout: 5000 });
  return `hwlab ${pkg.version} (${git.exitCode === 0 ? git.stdout.trim() : 'not a git checkout'})`;
}

/** node:util parseArgs errors (commands with their own parser): the user's, not hwlab's. */
const isParseArgsError = (err: unknown): err is Error & { code: string } =>
  err instanceof Error && typeof (err as { code?: unknown }).code === 'string' && (err as unknown as { code: string }).code.startsWith('ERR_PARSE_ARGS_');

async function main(argv: string[]): Promise<number> {
  const req = parseCommandLine(COMMANDS, argv);
  switch (req.kind) {
    case 'help':
      process.stdout.write(req.text);
      return 0;
    case 'version':
      process.stdout.write(`${await versionLine()}\n`);
      return 0;
    case 'command':
      return req.spec.handler(req.args);
  }
}

/** One message for each kind of error, and the exit code of its class. */
function report(err: unknown, argv: string[]): number {
  if (err instanceof UsageError) {
    process.stderr.write(`hwlab: ${err.message.replace(/^hwlab /, '')}\n${err.command ? `usage: see hwlab ${err.command} --help\n` : ''}`);
    return 2;
  }
  if (isParseArgsError(err)) {
    process.stderr.write(`hwlab ${argv[0] ?? ''}: ${err.message.split('\n')[0].replace(/\. To specify a positional.*/, '')}\nusage: see hwlab ${argv[0]} --help\n`);
    return 2;
  }
  if (err instanceof YamlError) {
    const files = [...new Set(err.issues.map((i) => i.file))].join(', ');
    process.stderr.write(`hwlab: ${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} in ${files}:\n${err.message}\n`);
    return 2;
  }
  if (err instanceof HwlabError) {
    process.stderr.write(escapeForTerminal(`hwlab: ${err.message}${err.hint ? `\n  hint: ${err.hint}` : ''}\n`));
    return EXIT_CODE[err.errorClass];
  }
  const e = err as Error | undefined;
  if (e?.name === 'ZodError' || /^\/.*\.yaml:/.test(e?.message ?? '')) {
    process.stderr.write(`hwlab: ${e!.message}\n`);
    return 2;
  }
  // Anything else is a bug in hwlab or a host failure it did not foresee: the stack helps whoever fixes it.
  process.stderr.write(`hwlab: ${e?.stack ?? String(err)}\n`);
  return 3;
}

export async function cliMain(argv: string[]): Promise<void> {
  let code: number;
  try {
    code = await main(argv);
  } catch (err) {
    code = report(err, argv);
  }
  await runCleanups();
  process.exitCode = code;
}
