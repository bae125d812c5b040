// hwlab command line. Subcommands map one-to-one onto stages; exit codes
// follow the outcome classes (src/results/outcome.ts): 0 pass, 1 a probe
// failed or the kernel printed a report, 2 bad input or a patch that does
// not build, 3 the host or the emulator failed.
import { parseArgs } from 'node:util';
import path from 'node:path';
import { loadLab } from '../lab/load.ts';
import { YamlError } from '../util/yaml.ts';
import { loadImageRecipe } from '../image/recipe.ts';
import { buildImage } from '../image/build.ts';
import { runLab } from '../run/run-lab.ts';
import { EXIT_CODE } from '../results/outcome.ts';
import { formatMutantsTable, runMutants } from '../run/mutants.ts';
import { runDoctor } from './doctor.ts';
import { MATRIX_USAGE, matrixCommand, mergeCommand } from './matrix-cmd.ts';
import { cacheRoot } from '../util/cache.ts';
import { entriesBySize, formatSize, parseSize, pruneCache } from './cache-cmd.ts';
import { runCleanups } from '../util/cleanup.ts';
import { Progress } from '../util/progress.ts';
import { HwlabError } from '../util/errors.ts';

const USAGE = `usage: hwlab <command> [options]

  run <lab.yaml> [--patch FILE]... [--fragment FILE]... [--runs-dir DIR] [--refresh] [--json]
                        build what the lab needs, boot it, run its probes, print results;
                        --patch applies FILE on top of the lab's series for this run;
                        --fragment merges a config fragment after the lab's (labs/configs/kasan.config)
  mutants <lab.yaml> [--dir DIR] [--only NN]... [--runs-dir DIR] [--no-baseline] [--focus]
                        run the lab once per known-bad patch in DIR (default labs/mutants),
                        on top of the lab's series; exit 0 only if every patch was caught;
                        --focus runs only the probes each patch's Expected-catch names
${MATRIX_USAGE}  image build <recipe>  build (or reuse) the guest image images/<recipe>.yaml
  doctor [--install]    check host tools, a KVM that really works, disk space;
                        --install apt-installs the missing Debian packages
  cache ls              list cache entries (${cacheRoot()})
  cache prune [--all | --max-size SIZE]
                        remove unfinished entries (--all: everything; --max-size 20G:
                        then least recently used entries until the cache fits)
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  const progress = new Progress();
  switch (cmd) {
    case 'run': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: {
          'runs-dir': { type: 'string' }, refresh: { type: 'boolean' }, json: { type: 'boolean' },
          patch: { type: 'string', multiple: true }, fragment: { type: 'string', multiple: true },
        },
      });
      if (positionals.length !== 1) throw new UsageError('hwlab run takes exactly one lab file');
      const lab = await loadLab(path.resolve(positionals[0]));
      const out = await runLab(lab, { progress, runsDir: values['runs-dir'], refresh: values.refresh, extraPatches: values.patch, extraFragments: values.fragment });
      const { outcome, failure, timings: t, machine } = out.results;
      // With --json, stdout is the JSON alone (for jq); the human lines go to stderr.
      const human = values.json ? process.stderr : process.stdout;
      if (values.json) process.stdout.write(JSON.stringify(out.results, null, 2) + '\n');
      else if (out.results.probes.length || out.results.selftests?.length) process.stdout.write(`\n${out.table}\n`);
      if (failure && failure.phase === 'prepare') {
        human.write(`\nhwlab: ${failure.message}${failure.hint ? `\n  hint: ${failure.hint}` : ''}\n`);
      }
      human.write(`\nresults: ${path.join(out.runDir, 'results.json')}\n`);
      human.write(`${outcome.class.toUpperCase()}${outcome.class === 'pass' ? '' : ` (${outcome.code}): ${outcome.title}`}\n`);
      human.write(`total ${t.total?.toFixed(1)} s, boot to SSH ${t.boot_to_ssh?.toFixed(1) ?? '-'} s, probes ${t.probes?.toFixed(1) ?? '-'} s${t.selftests !== undefined ? `, selftests ${t.selftests.toFixed(1)} s` : ''}${machine ? `, ${machine.accelNote}` : ''}\n`);
      return EXIT_CODE[outcome.class];
    }
    case 'mutants': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: { dir: { type: 'string' }, only: { type: 'string', multiple: true }, 'runs-dir': { type: 'string' }, 'no-baseline': { type: 'boolean' }, focus: { type: 'boolean' } },
      });
      if (positionals.length !== 1) throw new UsageError('hwlab mutants takes exactly one lab file');
      const lab = await loadLab(path.resolve(positionals[0]));
      const summary = await runMutants(lab, {
        progress, dir: values.dir, only: values.only, runsDir: values['runs-dir'], noBaseline: values['no-baseline'], focus: values.focus,
      });
      process.stdout.write(`\n${formatMutantsTable(summary)}\n\nsummary: ${path.join(summary.dir, 'summary.json')}\n`);
      return summary.ok ? 0 : 1;
    }
    case 'matrix':
      return matrixCommand(rest, progress);
    case 'merge':
      return mergeCommand(rest, progress);
    case 'image': {
      if (rest[0] !== 'build' || rest.length !== 2) throw new UsageError('usage: hwlab image build <recipe>');
      const recipe = await loadImageRecipe(rest[1]);
      const img = await progress.run(`image ${recipe.name}`, (s) => buildImage(recipe, s));
      process.stdout.write(`${img.rootDisk}\n`);
      return 0;
    }
    case 'doctor': {
      const { values } = parseArgs({ args: rest, options: { install: { type: 'boolean' } } });
      return runDoctor({ install: values.install ?? false });
    }
    case 'cache': {
      if (rest[0] === 'ls') {
        const entries = await entriesBySize();
        for (const e of entries) {
          process.stdout.write(`${e.kind.padEnd(13)} ${e.key}  ${formatSize(e.bytes).padStart(6)}  used ${(e.lastUsed ?? e.createdAt).slice(0, 19)}  ${e.label}\n`);
        }
        process.stdout.write(`${entries.length} entries, ${formatSize(entries.reduce((n, e) => n + e.bytes, 0))} in ${cacheRoot()} (least recently used first)\n`);
        return 0;
      }
      if (rest[0] === 'prune') {
        const { values } = parseArgs({ args: rest.slice(1), options: { all: { type: 'boolean' }, 'max-size': { type: 'string' } } });
        if (values.all && values['max-size'] !== undefined) throw new UsageError('cache prune: --all and --max-size exclude each other');
        const maxBytes = values['max-size'] === undefined ? undefined : parseSize(values['max-size']);
        const removed = await pruneCache({ all: values.all ?? false, maxBytes });
        for (const r of removed) process.stdout.write(`removed ${r}\n`);
        process.stdout.write(`removed ${removed.length} entries\n`);
        return 0;
      }
      throw new UsageError('usage: hwlab cache ls | hwlab cache prune [--all | --max-size SIZE]');
    }
    case undefined:
    case '-h':
    case '--help':
    case 'help':
      process.stdout.write(USAGE);
      return cmd ? 0 : 2;
    default:
      throw new UsageError(`unknown command "${cmd}"`);
  }
}

class UsageError extends Error {}

main(process.argv.slice(2))
  .then(async (code) => {
    await runCleanups();
    process.exitCode = code;
  })
  .catch(async (err) => {
    await runCleanups();
    if (err instanceof YamlError) {
      const files = [...new Set(err.issues.map((i) => i.file))].join(', ');
      process.stderr.write(`hwlab: ${err.issues.length} problem${err.issues.length === 1 ? '' : 's'} in ${files}:\n${err.message}\n`);
    }
    else if (err instanceof UsageError) process.stderr.write(`hwlab: ${err.message}\n\n${USAGE}`);
    else if (err instanceof HwlabError) process.stderr.write(`hwlab: ${err.message}${err.hint ? `\n  hint: ${err.hint}` : ''}\n`);
    else if (err?.name === 'ZodError' || /^\/.*\.yaml:/.test(err?.message ?? '')) process.stderr.write(`hwlab: ${err.message}\n`);
    else process.stderr.write(`hwlab: ${err?.stack ?? err}\n`);
    // Bad input is 2; the host failing (a tool missing, a download, the disk) is 3, as for runs.
    process.exitCode = err instanceof HwlabError ? EXIT_CODE[err.errorClass] : err instanceof UsageError ? 2 : 3;
  });
