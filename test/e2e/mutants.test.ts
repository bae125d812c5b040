// The catalogue of known-bad kernels against the default lab: every patch in
// labs/mutants must be caught. A patch that survives names a hole in the
// probes; one that does not apply or build is a broken catalogue entry. One to
// five minutes per patch under TCG (incremental build of drivers/vfio/pci, boot,
// probes).
// HWLAB_MUTANTS_ONLY=3,14 narrows the run while debugging a probe.
import test from 'ava';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_CATALOGUE_DIR, formatMutantsTable, loadCatalogue, type MutantsSummary } from '../../src/run/mutants.ts';
import { hwlab, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

// A cap, not an estimate: a run waits while another hwlab process builds the same tree.
const PER_RUN_MS = 10 * 60_000;

test('every patch of the known-bad catalogue is caught by the default lab', async (t) => {
  const only = (process.env.HWLAB_MUTANTS_ONLY ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const patches = await loadCatalogue(DEFAULT_CATALOGUE_DIR, only);
  // One baseline run plus one per patch; ava's own timeout would end the test first.
  const budget = (patches.length + 1) * PER_RUN_MS;
  t.timeout(budget + 60_000);
  const dir = runsDir();
  // --focus: each patch against the probes its Expected-catch names (the baseline runs all of
  // them). Half the time per patch, which keeps CI inside its budget, and a stricter claim:
  // the named probes catch it. `hwlab mutants` without --focus gives the whole-suite table.
  const r = await hwlab(['mutants', path.join(repoRoot, 'labs/default.yaml'), '--focus', '--runs-dir', dir, ...only.flatMap((o) => ['--only', o])], { timeoutMs: budget });
  const folders = await readdir(dir);
  t.is(folders.length, 1, r.all);
  const summary = JSON.parse(await readFile(path.join(dir, folders[0], 'summary.json'), 'utf8')) as MutantsSummary;
  t.log(`\n${formatMutantsTable(summary)}`);

  t.is(summary.baseline?.class, 'pass', 'the lab passes without an extra patch');
  t.deepEqual(summary.mutants.map((m) => m.patch), patches.map((p) => p.name), 'one run per patch');
  for (const m of summary.mutants) {
    t.is(m.verdict, 'caught', `${m.patch} (${m.subject}): ${m.verdict}${m.verdict === 'SURVIVED' ? `, expected catcher: ${m.expectedCatch.join(', ')}` : ''}`);
  }
  t.is(r.exitCode, summary.ok ? 0 : 1, r.all);
  t.true(summary.ok);
});
