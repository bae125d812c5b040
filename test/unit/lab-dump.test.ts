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
import { applyProbeOverrides, parseOnly, parseProbeParam } from '../../src/lab/overrides.ts';

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

test('--only keeps the named probes in lab order; unknown names are refused with the lab\'s probes', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  t.deepEqual(parseOnly(['lifetime,dmabuf-fd', 'dmabuf-export']), ['lifetime', 'dmabuf-fd', 'dmabuf-export']);
  const only = applyProbeOverrides(lab, ['lifetime', 'dmabuf-fd'], []);
  t.deepEqual(only.probes.map((p) => p.name), ['dmabuf-fd', 'lifetime']);
  t.is(only.file, lab.file);
  t.deepEqual(only.topology, lab.topology);
  t.throws(() => applyProbeOverrides(lab, ['lifetim'], []), { message: /smoke\.yaml: no probe matches "lifetim"/ });
  t.is(applyProbeOverrides(lab, [], []), lab);
});

test('--probe-param sets a (nested) param, typed as YAML, and the catalogue still checks it', async (t) => {
  t.deepEqual(parseProbeParam('dmabuf-bad-inputs.expect.zero_length=EINVAL'), { probe: 'dmabuf-bad-inputs', key: ['expect', 'zero_length'], value: 'EINVAL' });
  t.deepEqual(parseProbeParam('stress.workers=4'), { probe: 'stress', key: ['workers'], value: 4 });
  t.throws(() => parseProbeParam('no-equals-sign'), { message: /expected probe\.key=value/ });
  t.throws(() => parseProbeParam('probe.=1'), { message: /expected probe\.key=value/ });
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const changed = applyProbeOverrides(lab, ['dmabuf-bad-inputs'], [parseProbeParam('dmabuf-bad-inputs.expect.zero_length=ENOENT')]);
  t.deepEqual(changed.probes.map((p) => p.name), ['dmabuf-bad-inputs']);
  t.is((changed.probes[0].params.expect as Record<string, unknown>).zero_length, 'ENOENT');
  // A param the catalogue does not know is refused, naming the option.
  const err = t.throws(() => applyProbeOverrides(lab, [], [parseProbeParam('dmabuf-export.no_such_param=1')]));
  t.regex(err!.message, /with --probe-param/);
  t.regex(err!.message, /no_such_param/);
  t.throws(() => applyProbeOverrides(lab, ['lifetime'], [parseProbeParam('dmabuf-fd.x=1')]), { message: /dmabuf-fd is not a probe of this run/ });
});
