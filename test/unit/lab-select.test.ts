// Selecting probes of a lab (nightly reruns, bisect steps): by name or by
// name(device), in the lab's order, and a selector naming nothing is refused
// with the lab's probe keys, before a run folder exists.
import test from 'ava';
import { mkdtempSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import { probeKey, selectProbes } from '../../src/lab/select.ts';
import { runLab } from '../../src/run/run-lab.ts';
import { InputError } from '../../src/util/errors.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { tempDir } from './helpers/temp.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('by name every device, by name(device) one; the lab order is kept', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/default.yaml'));
  const multi = selectProbes(lab, ['importer-multirange']);
  t.deepEqual(multi.probes.map(probeKey), ['importer-multirange(shm1)', 'importer-multirange(shm0)']);
  const one = selectProbes(lab, ['importer-multirange(shm0)', 'dmabuf-export(shm0)']);
  t.deepEqual(one.probes.map(probeKey), ['dmabuf-export(shm0)', 'importer-multirange(shm0)']);
  t.truthy(one.probes[1].expectFail);
  t.is(lab.probes.length > one.probes.length, true);
});

test('a selector that names no probe is bad input naming what exists, and runLab refuses before making a folder', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const err = t.throws(() => selectProbes(lab, ['dmabuf-export(shm9)', 'nope']), { instanceOf: InputError });
  t.regex(err.message, /smoke\.yaml: no probe matches "dmabuf-export\(shm9\)", "nope"/);
  t.regex(err.hint!, /dmabuf-export\(shm0\)/);
  const runsDir = tempDir('hwlab-select-');
  await t.throwsAsync(runLab(lab, { progress: silentProgress(), runsDir, onlyProbes: ['nope'] }), { instanceOf: InputError });
  t.deepEqual(readdirSync(runsDir), []);
});
