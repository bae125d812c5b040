// The command line behaves the same on every command: --help and -h print
// the command's usage and exit 0, an unknown option or a missing value is a
// one-line usage error with exit 2 and no stack trace, --version names the
// package version and the checkout, and --json leaves stdout holding JSON
// alone. The table is read from src/cli/main.ts, so a command added there is
// covered here without touching this file.
import test from 'ava';
import { execa } from 'execa';
import { mkdtempSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commandHelp, isGroup, parseCommandLine, UsageError, type CommandSpec } from '../../src/cli/command.ts';
import { bashCompletion } from '../../src/cli/completion-cmd.ts';
import { COMMANDS } from '../../src/cli/main.ts';
import { remoteCommand } from '../../src/cli/ssh-cmd.ts';
import { tempDir } from './helpers/temp.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const specs: CommandSpec[] = COMMANDS.flatMap((e) => (isGroup(e) ? e.subcommands : [e]));

function cli(args: string[], env: Record<string, string> = {}) {
  return execa('node', [path.join(repo, 'src/cli/hwlab.js'), ...args], { cwd: repo, reject: false, env: { ...process.env, CI: 'true', ...env }, timeout: 60_000 });
}

const words = (spec: CommandSpec) => spec.name.split(' ');

test('every command answers --help and -h with its usage and options', (t) => {
  for (const spec of specs) {
    for (const h of ['--help', '-h']) {
      const r = parseCommandLine(COMMANDS, [...words(spec), h]);
      t.is(r.kind, 'help', `${spec.name} ${h}`);
      if (r.kind !== 'help') continue;
      t.is(r.text, commandHelp(spec));
      if (!spec.ownParser) {
        t.true(r.text.startsWith(`usage: hwlab ${spec.name}`), r.text);
        for (const o of Object.keys(spec.options)) t.true(r.text.includes(`--${o}`), `${spec.name} --help lists --${o}`);
      } else t.true(r.text.includes('usage:'), r.text);
    }
  }
  // `help run` is `run --help`.
  t.deepEqual(parseCommandLine(COMMANDS, ['help', 'run']), parseCommandLine(COMMANDS, ['run', '--help']));
});

test('an unknown option is a one-line usage error naming the command, on every command', (t) => {
  for (const spec of specs.filter((s) => !s.ownParser)) {
    const args = [...words(spec), ...Array(spec.positionals.min).fill('x'), '--no-such-option'];
    const err = t.throws(() => parseCommandLine(COMMANDS, args), { instanceOf: UsageError }, spec.name);
    t.regex(err!.message, new RegExp(`^hwlab ${spec.name}: unknown option --no-such-option`));
    t.false(err!.message.includes('\n'), 'one line');
  }
});

test('a string option without its value, too many or too few arguments, and an unknown command are usage errors', (t) => {
  for (const spec of specs.filter((s) => !s.ownParser)) {
    for (const [name, o] of Object.entries(spec.options)) {
      if (o.type !== 'string') continue;
      const err = t.throws(() => parseCommandLine(COMMANDS, [...words(spec), ...Array(spec.positionals.min).fill('x'), `--${name}`]), { instanceOf: UsageError });
      t.regex(err!.message, new RegExp(`--${name} needs a value`));
    }
    if (spec.positionals.min > 0) t.throws(() => parseCommandLine(COMMANDS, words(spec)), { instanceOf: UsageError, message: /missing/ });
    if (Number.isFinite(spec.positionals.max)) {
      t.throws(() => parseCommandLine(COMMANDS, [...words(spec), ...Array(spec.positionals.max + 1).fill('x')]), { instanceOf: UsageError, message: /takes/ });
    }
    const bools = Object.entries(spec.options).filter(([, o]) => o.type === 'boolean');
    for (const [name] of bools) {
      t.throws(() => parseCommandLine(COMMANDS, [...words(spec), ...Array(spec.positionals.min).fill('x'), `--${name}=yes`]), { instanceOf: UsageError, message: /takes no value/ });
    }
  }
  t.throws(() => parseCommandLine(COMMANDS, ['frobnicate']), { instanceOf: UsageError, message: /unknown command "frobnicate"/ });
  t.throws(() => parseCommandLine(COMMANDS, []), { instanceOf: UsageError, message: /no command given/ });
  t.throws(() => parseCommandLine(COMMANDS, ['cache', 'frob']), { instanceOf: UsageError, message: /unknown subcommand "frob"/ });
});

test('options parse into values: repeated, --opt=value, and arguments after --', (t) => {
  const r = parseCommandLine(COMMANDS, ['run', 'lab.yaml', '--patch', 'a.patch', '--patch=b.patch', '--json']);
  t.is(r.kind, 'command');
  if (r.kind !== 'command') return;
  t.is(r.spec.name, 'run');
  t.deepEqual(r.args.positionals, ['lab.yaml']);
  t.deepEqual(r.args.values, { patch: ['a.patch', 'b.patch'], json: true });
  t.throws(() => parseCommandLine(COMMANDS, ['run', 'lab.yaml', '--runs-dir', 'a', '--runs-dir', 'b']), { message: /given twice/ });
});

test('the real CLI: usage errors exit 2 with one message and no stack trace; --version; --help exits 0', async (t) => {
  for (const args of [['run', 'labs/smoke.yaml', '--bogus'], ['mutants'], ['nope'], ['matrix', 'plan', 'labs/matrix.yaml', '--bogus'], ['run', 'labs/smoke.yaml', '--patch']]) {
    const r = await cli(args);
    t.is(r.exitCode, 2, `${args.join(' ')}: ${r.stderr}`);
    t.is(r.stdout, '', 'usage errors go to stderr');
    t.notRegex(r.stderr, /^\s+at /m, 'no stack trace');
    t.regex(r.stderr, /^hwlab/);
    t.true(r.stderr.trim().split('\n').length <= 2, r.stderr);
  }
  const v = await cli(['--version']);
  t.is(v.exitCode, 0);
  t.regex(v.stdout, /^hwlab \d+\.\d+\.\d+ \([^)\s]+\)$/);
  const h = await cli(['--help']);
  t.is(h.exitCode, 0);
  for (const e of COMMANDS) t.true(h.stdout.includes(`  ${e.name}`), `--help lists ${e.name}`);
});

test('--json: stdout is one JSON document and nothing else (cache ls, check, a run refused in prepare)', async (t) => {
  const cache = tempDir('hwlab-cli-cache-');
  const ls = await cli(['cache', 'ls', '--json'], { HWLAB_CACHE: cache });
  t.is(ls.exitCode, 0, ls.stderr);
  t.deepEqual(JSON.parse(ls.stdout), { root: cache, entries: [] });

  const ok = await cli(['check', 'labs/smoke.yaml', '--json']);
  t.is(ok.exitCode, 0, ok.stderr);
  t.like(JSON.parse(ok.stdout), { kind: 'lab', ok: true, problems: [] });
  const bad = await cli(['check', 'test/fixtures/labs/bad-schema.yaml', '--json']);
  t.is(bad.exitCode, 2);
  const report = JSON.parse(bad.stdout);
  t.false(report.ok);
  t.true(report.problems.length >= 5 && report.problems.every((p: { line?: number }) => typeof p.line === 'number'));

  // --fragment on a prebuilt kernel is refused before the run folder and any download: still one JSON document on stdout (outcome and failure), the message on stderr.
  const runs = tempDir('hwlab-cli-runs-');
  const run = await cli(['run', 'labs/prebuilt.yaml', '--fragment', 'labs/configs/kasan.config', '--runs-dir', runs, '--json'], { HWLAB_CACHE: cache });
  t.is(run.exitCode, 2, run.stderr);
  const results = JSON.parse(run.stdout);
  t.like(results.outcome, { class: 'error', code: 'bad-input' });
  t.like(results.failure, { phase: 'prepare', class: 'error' });
  t.regex(run.stderr, /--fragment needs a kernel built from source/);
  t.deepEqual(readdirSync(runs), [], 'no run folder for input refused up front');
});

test('bash completion lists every command and its options, and is valid bash', async (t) => {
  const script = bashCompletion(COMMANDS);
  for (const s of specs) {
    t.true(script.includes(`"${s.name}")`), s.name);
    for (const o of Object.keys(s.options)) t.true(script.includes(`--${o}`), `${s.name} --${o}`);
  }
  const r = await execa('bash', ['-n'], { input: script, reject: false });
  t.is(r.exitCode, 0, r.stderr);
  // Completing `hwlab run --pa` offers --patch.
  const complete = await execa('bash', ['-c', `${script}\nCOMP_WORDS=(hwlab run --pa); COMP_CWORD=2; _hwlab; echo "\${COMPREPLY[@]}"`], { reject: false });
  t.is(complete.stdout.trim(), '--patch');
});

test('hwlab ssh -- CMD is an argument vector: each argument reaches the command unchanged through a POSIX shell; --help shows sh -c for shell syntax', async (t) => {
  const argv = ['printf', '%s\\n', 'a b;c', '$(id -u)', '|', "it's", '*', '\\', ''];
  // The guest's sshd hands the joined string to the login shell (sh -c): the same here, with the host's sh.
  const r = await execa('sh', ['-c', remoteCommand(argv)]);
  t.deepEqual(r.stdout.split('\n'), ['a b;c', '$(id -u)', '|', "it's", '*', '\\', '']);
  const help = parseCommandLine(COMMANDS, ['ssh', '--help']);
  t.is(help.kind, 'help');
  if (help.kind === 'help') {
    t.regex(help.text, /argument vector/);
    t.regex(help.text, /hwlab ssh <run> -- sh -c 'lspci \| wc -l; dmesg \| tail'/);
  }
});
