// `hwlab run <lab.yaml>`: build what the lab needs, boot it, run its probes
// and print the result table. The exit code is the outcome class's
// (src/results/outcome.ts). With --json, stdout is results.json alone and
// every human line goes to stderr, so `hwlab run --json | jq` works.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../lab/load.ts';
import { applyProbeParams, parseOnly, parseProbeParam } from '../lab/overrides.ts';
import type { LabSpec } from '../lab/types.ts';
import { rerunLine } from '../run/reproduce.ts';
import { EXIT_CODE, failureFromError } from '../results/outcome.ts';
import { runLab, type RunOutcome } from '../run/run-lab.ts';
import { HwlabError, InputError } from '../util/errors.ts';
import { Progress } from '../util/progress.ts';
import { DEFAULT_KEEP_MINUTES, keepGuest, shellInGuest } from './keep.ts';
import { flag, str, strs, type CommandSpec, type OptionTable, type ParsedArgs } from './command.ts';

/** What changes the kernel: --patch, --fragment (run and shell; a rerun has them in its lab already). */
export const BUILD_OPTIONS: OptionTable = {
  patch: { type: 'string', multiple: true, value: 'FILE', help: "apply FILE on top of the lab's series for this run" },
  fragment: { type: 'string', multiple: true, value: 'FILE', help: "merge a config fragment after the lab's (e.g. labs/configs/kasan.config)" },
};

/** Which probes run, with which params: a quick rerun of one probe. */
export const PROBE_OPTIONS: OptionTable = {
  only: { type: 'string', multiple: true, value: 'PROBE[,PROBE]', help: 'run only these probes of the lab (in the lab\'s order)' },
  'probe-param': { type: 'string', multiple: true, value: 'PROBE.KEY=VALUE', help: 'set a probe parameter (VALUE is YAML; KEY may be dotted), checked by the catalogue' },
};

/** A guest that stays up, and gdb. */
export const KEEP_OPTIONS: OptionTable = {
  keep: { type: 'boolean', help: 'after the probes the guest stays up: prints the ssh command, hwlab ssh/stop <run>; hwlab ps lists it' },
  'keep-minutes': { type: 'string', value: 'N', help: `power a kept guest off after N minutes at the latest (default ${DEFAULT_KEEP_MINUTES})` },
  gdb: { type: 'boolean', help: "QEMU's gdbstub on a free 127.0.0.1 port and a printed gdb line; builds the kernel with labs/configs/gdb.config (debug info: a separate, slower build)" },
};

/** The options of `run` that `rerun` shares: where results go, how the kernel is resolved, output. */
export const RUN_OPTIONS: OptionTable = {
  'runs-dir': { type: 'string', value: 'DIR', help: 'parent of the run folder (default runs/)' },
  refresh: { type: 'boolean', help: 'look the kernel version up again (otherwise reused for 6 h)' },
  json: { type: 'boolean', help: 'stdout: results.json only; everything else goes to stderr' },
  snapshot: { type: 'string', value: 'on|off|auto', help: 'restore a saved booted guest instead of booting (default: HWLAB_SNAPSHOT, else off); auto: where the machine can be saved' },
};

/** Prints what a finished run says to a person: the table, the failure, the folder, the class, the times. */
export function printRunOutcome(out: RunOutcome, json: boolean): void {
  const { outcome, failure, timings: t, machine } = out.results;
  const human = json ? process.stderr : process.stdout;
  if (json) process.stdout.write(JSON.stringify(out.results, null, 2) + '\n');
  else if (out.results.probes.length || out.results.selftests?.length) process.stdout.write(`\n${out.table}\n`);
  if (failure && failure.phase === 'prepare') {
    human.write(`\nhwlab: ${failure.message}${failure.hint ? `\n  hint: ${failure.hint}` : ''}\n`);
  }
  human.write(`\nresults: ${path.join(out.runDir, 'results.json')}\n`);
  human.write(`${outcome.class.toUpperCase()}${outcome.class === 'pass' ? '' : ` (${outcome.code}): ${outcome.title}`}\n`);
  human.write(`total ${t.total?.toFixed(1)} s, boot to SSH ${t.boot_to_ssh?.toFixed(1) ?? '-'} s, ${t.probes !== undefined || t.selftests === undefined ? `probes ${t.probes?.toFixed(1) ?? '-'} s` : 'no probes'}${t.selftests !== undefined ? `, selftests ${t.selftests.toFixed(1)} s` : ''}${machine ? `, ${machine.accelNote}` : ''}\n`);
  // The last line of a run that did not pass: the one command that runs it again.
  if (outcome.class !== 'pass') human.write(`to run it again: ${rerunLine(out.runDir)}\n`);
}

/** --only as runLab's onlyProbes (src/lab/select.ts) and the lab with --probe-param applied (checked like a lab file). */
export function withProbeOptions(lab: LabSpec, a: ParsedArgs): { lab: LabSpec; onlyProbes: string[] } {
  const onlyProbes = parseOnly(strs(a, 'only'));
  return { lab: applyProbeParams(lab, strs(a, 'probe-param').map(parseProbeParam), onlyProbes), onlyProbes };
}

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const GDB_FRAGMENT = path.join(repoRoot, 'labs/configs/gdb.config');

/** --gdb's fragment, unless the lab has it already (a rerun of a --gdb run: one build, not two). */
export function gdbFragments(lab: LabSpec): string[] {
  if (lab.kernel.kind !== 'source') {
    throw new InputError(`--gdb needs a kernel built from source (a vmlinux with debug info); ${lab.file} uses the prebuilt ${lab.kernel.package}`);
  }
  const text = readFileSync(GDB_FRAGMENT, 'utf8');
  const has = lab.kernel.config.fragments.some((f) => { try { return readFileSync(f, 'utf8') === text; } catch { return false; } });
  return has ? [] : [GDB_FRAGMENT];
}

export function keepMinutes(a: ParsedArgs, kept: boolean): number {
  const v = str(a, 'keep-minutes');
  if (v === undefined) return DEFAULT_KEEP_MINUTES;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new InputError(`--keep-minutes must be a positive number of minutes (got ${v})`);
  if (!kept) throw new InputError('--keep-minutes only applies with --keep');
  return n;
}

/** run, rerun and shell: the lab with the command line's changes, run; `mode` shell opens a shell instead of running the probes. */
export async function runFromArgs(labFile: string, a: ParsedArgs, defaults: { runsDir?: string; mode?: 'run' | 'shell' } = {}): Promise<number> {
  try {
    return await runOrShell(labFile, a, defaults);
  } catch (err) {
    // Refused before a run folder existed (the lab file, --patch/--fragment
    // inputs): with --json, stdout still holds one JSON document, shaped as
    // results.json's outcome and failure; the message goes to stderr as usual.
    if (flag(a, 'json') && err instanceof HwlabError) {
      const failure = failureFromError('prepare', err);
      process.stdout.write(JSON.stringify({ outcome: { class: failure.class, code: failure.code, title: failure.message.split('\n')[0] }, failure }, null, 2) + '\n');
    }
    throw err;
  }
}

async function runOrShell(labFile: string, a: ParsedArgs, defaults: { runsDir?: string; mode?: 'run' | 'shell' }): Promise<number> {
  const { lab, onlyProbes } = withProbeOptions(await loadLab(path.resolve(labFile)), a);
  const json = flag(a, 'json');
  const human = json ? process.stderr : process.stdout;
  const shell = defaults.mode === 'shell';
  const minutes = keepMinutes(a, shell || flag(a, 'keep'));
  const gdb = flag(a, 'gdb');
  let held = false;
  let shellCode: number | undefined;
  const out = await runLab(lab, {
    progress: new Progress(), runsDir: str(a, 'runs-dir') ?? defaults.runsDir, refresh: flag(a, 'refresh'),
    extraPatches: strs(a, 'patch'), extraFragments: [...strs(a, 'fragment'), ...(gdb ? gdbFragments(lab) : [])],
    gdb, runProbes: !shell, onlyProbes, snapshot: str(a, 'snapshot'),
    ...(shell || flag(a, 'keep') ? {
      hold: async (g) => {
        held = true;
        if (shell) shellCode = await shellInGuest(g, { minutes, out: human });
        else {
          printRunOutcome(g.outcome, json);
          await keepGuest(g, { minutes, out: human });
        }
      },
    } : {}),
  });
  // A kept guest had its results printed before it was kept; a shell's are the boot's, shown only when it failed.
  if (shell && held) return shellCode ?? 0;
  if (!held) printRunOutcome(out, json);
  return EXIT_CODE[out.results.outcome.class];
}

export const runCommand: CommandSpec = {
  name: 'run',
  summary: 'build what the lab needs, boot it, run its probes; prints a result table and the run folder',
  args: '<lab.yaml>',
  positionals: { min: 1, max: 1 },
  options: { ...BUILD_OPTIONS, ...PROBE_OPTIONS, ...KEEP_OPTIONS, ...RUN_OPTIONS },
  details: `The run folder keeps the lab as run (lab/lab.yaml, with copies of its patches and fragments),
the kernel's .config and the QEMU command; hwlab rerun <run-dir> runs it again.
exit: 0 pass, 1 fail or kernel report, 2 bad input or a patch that does not build, 3 infra.`,
  handler: (a) => runFromArgs(a.positionals[0], a),
};
