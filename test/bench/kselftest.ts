// Benchmark of the kernel's own selftests (issue G): the time to build them
// for a lab's kernel, cold (the selftests' cache entry removed first; the
// kernel itself comes from the cache or is built first, and that time is
// printed apart) and cached, then warm runs of the lab with the time of
// each phase and of each selftest. Prints figures; asserts nothing.
//   node --import tsx test/bench/kselftest.ts [--runs N] [--skip-cold] [lab.yaml]
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadLab } from '../../src/lab/load.ts';
import { loadPatchSeries } from '../../src/kernel/patches.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { runLab } from '../../src/run/run-lab.ts';
import { buildSelftests, RUN_ONE_SCRIPT, selftestsKey } from '../../src/selftests/build.ts';
import { collectionsOf } from '../../src/selftests/plan.ts';
import { resolveKernelTree } from '../../src/kernel/source.ts';
import { entryDir } from '../../src/util/cache.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { readFile } from 'node:fs/promises';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: 'string', default: '1' }, 'skip-cold': { type: 'boolean' } } });
const labFile = path.resolve(positionals[0] ?? path.join(import.meta.dirname ?? '.', '../../labs/kselftest.yaml'));
const lab = await loadLab(labFile);
if (!lab.selftests?.length || lab.kernel.kind !== 'source') throw new Error(`${labFile} has no selftests (or no kernel built from source)`);
const progress = silentProgress();
const fmt = (s: number) => `${s.toFixed(1)} s`;
const load = () => os.loadavg().map((x) => x.toFixed(1)).join(' ');

console.log(`lab ${lab.name} (${labFile}), ${os.cpus().length} cores, load average ${load()}`);
const logDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-kselftest-'));
let t = Date.now();
const prepared = await prepareLab(lab, { progress }, logDir);
console.log(`prepare (kernel ${prepared.kernel.kind === 'source' && prepared.kernel.built ? `built in ${fmt(prepared.kernel.buildSeconds ?? 0)}` : 'from cache'}, selftests ${prepared.selftests?.built.built ? 'built' : 'from cache'}, image): ${fmt((Date.now() - t) / 1000)}`);

if (!values['skip-cold'] && prepared.kernel.kind === 'source') {
  const step = { update: () => {}, done: () => 0, fail: () => 0 };
  const tree = await resolveKernelTree(lab.kernel.source, step);
  const patches = await loadPatchSeries(lab.kernel.patches);
  const selftestPatches = await loadPatchSeries(lab.selftestPatches ?? []);
  const collections = collectionsOf(lab.selftests);
  const req = { kernel: prepared.kernel, tree, patches, selftestPatches, collections, logFile: path.join(logDir, 'selftests-build.log'), step };
  // Cold: this kernel's selftests entry removed (only selftest builds use it), so make runs from a fresh tree copy.
  const dir = entryDir('kselftest', selftestsKey(prepared.kernel, collections, selftestPatches, await readFile(RUN_ONE_SCRIPT, 'utf8')));
  if (existsSync(dir)) await rm(dir, { recursive: true, force: true });
  t = Date.now();
  const cold = await buildSelftests(req);
  const coldS = (Date.now() - t) / 1000;
  t = Date.now();
  const warm = await buildSelftests(req);
  const warmS = (Date.now() - t) / 1000;
  console.log(`selftests build (${collections.join(' ')}), load average ${load()}:`);
  console.log(`  cold:   ${fmt(coldS)} (make ran: ${cold.built}; headers_install + kselftest install ${fmt(cold.buildSeconds ?? 0)})`);
  console.log(`  cached: ${warmS.toFixed(3)} s (make ran: ${warm.built})`);
}

const runsDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-kselftest-runs-'));
for (let i = 0; i < Number(values.runs); i++) {
  t = Date.now();
  const out = await runLab(lab, { progress, runsDir });
  const r = out.results;
  const tm = r.timings;
  console.log(`warm run ${i + 1}: ${r.outcome.class} (${r.outcome.code}) total ${fmt(tm.total ?? (Date.now() - t) / 1000)}, boot to SSH ${fmt(tm.boot_to_ssh ?? 0)}, setup ${fmt(tm.setup ?? 0)}, selftests ${fmt(tm.selftests ?? 0)}, teardown ${fmt(tm.teardown ?? 0)}; load average ${load()}`);
  for (const s of r.selftests ?? []) {
    const counted = s.subtests.filter((x) => x.skip === undefined);
    const status = s.notRun ? 'not run' : s.skip !== undefined ? `SKIP (${s.skip})` : s.todo !== undefined ? `TODO (${s.todo})` : s.ok ? 'PASS' : 'FAIL';
    console.log(`  ${s.name.padEnd(40)} ${(s.devices ?? []).join('+').padEnd(16)} ${counted.filter((x) => x.ok).length}/${counted.length} points  ${fmt((s.durationMs ?? 0) / 1000).padStart(8)}  ${status}`);
  }
}
await rm(runsDir, { recursive: true, force: true });
await rm(logDir, { recursive: true, force: true });
