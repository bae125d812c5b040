// A run folder keeps its lab in the lab-file schema so `hwlab rerun` can load
// it: the dump of every shipped lab must load back to the same LabSpec, and
// the command-line probe overrides (--only, --probe-param) go through the
// loader's checks.
import test from 'ava';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { dumpLab } from '../../src/lab/dump.ts';
import { loadLab, parseLab } from '../../src/lab/load.ts';
import { applyProbeParams, parseOnly, parseProbeParam } from '../../src/lab/overrides.ts';
import { selectProbes } from '../../src/lab/select.ts';
import { parseCommandLine } from '../../src/cli/command.ts';
import { COMMANDS } from '../../src/cli/main.ts';
import { withProbeOptions } from '../../src/cli/run-cmd.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const labFiles = readdirSync(path.join(repo, 'labs')).filter((f) => f.endsWith('.yaml') && f !== 'matrix.yaml').map((f) => path.join(repo, 'labs', f));

test('every shipped lab survives dump -> load unchanged (paths absolute, every default written out)', async (t) => {
  t.true(labFiles.length >= 8);
  for (const file of labFiles) {
    const lab = await loadLab(file);
    const text = dumpLab(lab, `dumped from ${file}`);
    // A selftest entry's `at` names its line in the file it was read from, which the dump renumbers.
    const withoutPlaces = (l: typeof lab) => ({ ...l, ...(l.selftests ? { selftests: l.selftests.map((s) => ({ ...s, at: '' })) } : {}) });
    t.deepEqual(withoutPlaces(parseLab(text, file)), withoutPlaces(lab), path.basename(file));
    const doc = parse(text);
    t.is(doc.name, lab.name);
    t.false(/[A-Z]\w*:/.test(Object.keys(doc).join(' ')), 'snake_case keys');
  }
});

test('paths are written where place() says, by kind', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/default.yaml'));
  const seen: string[] = [];
  const doc = parse(dumpLab(lab, 'x', (abs, kind) => { seen.push(kind); return `copies/${path.basename(abs)}`; }));
  t.deepEqual(doc.kernel.config.fragments, lab.kernel.kind === 'source' ? lab.kernel.config.fragments.map((f) => `copies/${path.basename(f)}`) : undefined);
  t.true(seen.includes('fragment'));
});

test('--only is read into the selectors of the one probe selection: the named probes in lab order; unknown names are refused with the lab\'s probes', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  t.deepEqual(parseOnly(['lifetime,dmabuf-fd', 'dmabuf-export']), ['lifetime', 'dmabuf-fd', 'dmabuf-export']);
  const only = selectProbes(lab, parseOnly(['lifetime,dmabuf-fd']));
  t.deepEqual(only.probes.map((p) => p.name), ['dmabuf-fd', 'lifetime']);
  t.is(only.file, lab.file);
  t.deepEqual(only.topology, lab.topology);
  t.throws(() => selectProbes(lab, ['lifetim']), { message: /smoke\.yaml: no probe matches "lifetim"/ });
  t.is(applyProbeParams(lab, [], ['lifetime']), lab, 'selection is not applied to the lab here: runLab does it');
});

test('--probe-param sets a (nested) param, typed as YAML, and the catalogue still checks it', async (t) => {
  t.deepEqual(parseProbeParam('dmabuf-bad-inputs.expect.zero_length=EINVAL'), { probe: 'dmabuf-bad-inputs', key: ['expect', 'zero_length'], value: 'EINVAL' });
  t.deepEqual(parseProbeParam('stress.workers=4'), { probe: 'stress', key: ['workers'], value: 4 });
  t.throws(() => parseProbeParam('no-equals-sign'), { message: /expected probe\.key=value/ });
  t.throws(() => parseProbeParam('probe.=1'), { message: /expected probe\.key=value/ });
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const changed = selectProbes(applyProbeParams(lab, [parseProbeParam('dmabuf-bad-inputs.expect.zero_length=ENOENT')], ['dmabuf-bad-inputs']), ['dmabuf-bad-inputs']);
  t.deepEqual(changed.probes.map((p) => p.name), ['dmabuf-bad-inputs']);
  t.is((changed.probes[0].params.expect as Record<string, unknown>).zero_length, 'ENOENT');
  // A param the catalogue does not know is refused, naming the option.
  const err = t.throws(() => applyProbeParams(lab, [parseProbeParam('dmabuf-export.no_such_param=1')]));
  t.regex(err!.message, /with --probe-param/);
  t.regex(err!.message, /no_such_param/);
  t.throws(() => applyProbeParams(lab, [parseProbeParam('dmabuf-fd.x=1')], ['lifetime']), { message: /dmabuf-fd is not a probe of this run \(probes: lifetime\)/ });
});

test('run --only reaches runLab as onlyProbes (the selection nightly and bisect use), with the lab itself unchanged; --probe-param still rewrites it', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const parsed = parseCommandLine(COMMANDS, ['run', 'labs/smoke.yaml', '--only', 'lifetime,dmabuf-fd', '--only', 'dmabuf-export']);
  if (parsed.kind !== 'command') return t.fail(parsed.kind);
  const only = withProbeOptions(lab, parsed.args);
  t.deepEqual(only.onlyProbes, ['lifetime', 'dmabuf-fd', 'dmabuf-export']);
  t.is(only.lab, lab);
  const both = parseCommandLine(COMMANDS, ['run', 'labs/smoke.yaml', '--only', 'dmabuf-bad-inputs', '--probe-param', 'dmabuf-bad-inputs.expect.zero_length=ENOENT']);
  if (both.kind !== 'command') return t.fail(both.kind);
  const changed = withProbeOptions(lab, both.args);
  t.deepEqual(changed.onlyProbes, ['dmabuf-bad-inputs']);
  t.is(changed.lab.probes.length, lab.probes.length, 'every probe still there: runLab selects');
  t.is((changed.lab.probes.find((p) => p.name === 'dmabuf-bad-inputs')!.params.expect as Record<string, unknown>).zero_length, 'ENOENT');
});
