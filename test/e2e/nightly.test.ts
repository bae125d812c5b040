// hwlab nightly on real guests, each night through the real CLI into one
// history file: the smoke lab as a baseline; a catalogue patch added on the
// second night (the digest names exactly its new failures, rerun in a fresh
// guest); without it again (fixed); a night whose QEMU is killed (infra,
// retried, never a regression); and the default lab's stale expect_fail:
// importer-multirange(shm0) with the one-line dma-buf-mapping.c fix reads as
// "known failure now passes".
import test from 'ava';
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { NightDigest, UnitNight } from '../../src/nightly/nightly.ts';
import { hwlab, qemuProcessesMentioning, cleanUpRunsDirs, repoRoot, runsDir } from './helpers.ts';

cleanUpRunsDirs(test);

const smoke = path.join(repoRoot, 'labs/smoke.yaml');
const mutant = path.join(repoRoot, 'labs/mutants/03-attach-allows-no-p2p.patch');
const fix = path.join(repoRoot, 'test/fixtures/nightly/0001-dma-buf-link-each-range-at-its-offset.patch');

async function night(args: string[]): Promise<{ exitCode: number; digest: NightDigest; unit: UnitNight; text: string; all: string }> {
  const r = await hwlab(['nightly', ...args, '--json']);
  let digest: NightDigest;
  try {
    digest = JSON.parse(r.stdout) as NightDigest;
  } catch {
    throw new Error(`hwlab nightly printed no digest (exit ${r.exitCode}):\n${r.all}`);
  }
  const text = await readFile(path.join(digest.folder, 'digest.txt'), 'utf8');
  return { exitCode: r.exitCode ?? -1, digest, unit: digest.units[0], text, all: r.all ?? '' };
}

const pointsIn = (u: UnitNight, cat: string) => u.changes.filter((c) => c.category === cat).map((c) => `${c.probeKey} :: ${c.point}`).sort();

test.serial('smoke lab: baseline, a catalogue patch (exactly its new failures), without it (fixed), QEMU killed (infra, retried, no regression)', async (t) => {
  const dir = runsDir();
  const history = path.join(dir, 'history.sqlite');
  const common = ['--history', history, '--runs-dir', dir];

  const n1 = await night([smoke, ...common]);
  t.log(n1.text);
  t.is(n1.exitCode, 0, n1.all);
  t.is(n1.unit.final?.outcome.class, 'pass');
  t.is(n1.unit.baseline, undefined);
  t.true(n1.unit.counts['new-point'] > 20);
  t.is(n1.unit.kernel.changed, undefined, 'first night: nothing to compare the kernel with');

  const n2 = await night([smoke, ...common, '--patch', mutant, '--reruns', '1']);
  t.log(n2.text);
  t.is(n2.exitCode, 1, n2.all);
  t.is(n2.digest.verdict, 'news');
  t.is(n2.unit.kernel.changed, true, 'the patch makes another kernel');
  t.is(n2.unit.baseline?.nightId, n1.unit.nightId);
  // Exactly the points that fail tonight, all of which passed on night 1.
  const failing = JSON.parse(await readFile(path.join(n2.unit.final!.runDir, 'results.json'), 'utf8')) as { probes: Array<{ name: string; subtests: Array<{ name: string; ok: boolean; todo?: string }> }> };
  const failingNow = failing.probes.flatMap((p) => p.subtests.filter((s) => !s.ok && s.todo === undefined).map((s) => `${p.name}(shm0) :: ${s.name}`)).sort();
  t.true(failingNow.length >= 1);
  t.deepEqual(pointsIn(n2.unit, 'new-failure'), failingNow);
  t.true(failingNow.every((p) => p.startsWith('importer-refusals(shm0)')), 'the patch breaks only the no-p2p refusal');
  t.deepEqual(n2.unit.reruns.map((r) => r.probes), [['importer-refusals(shm0)']], 'one rerun, with only the affected probe');
  t.true(n2.unit.changes.filter((c) => c.category === 'new-failure').every((c) => c.reruns?.[0] === 'fail'));
  for (const p of failingNow) t.true(n2.text.includes(p.split(' :: ')[1]), `the digest names ${p}`);
  t.regex(n2.text, /^NEW FAILURES \(\d+\)$/m);

  const n3 = await night([smoke, ...common]);
  t.log(n3.text);
  t.is(n3.exitCode, 0, n3.all);
  t.deepEqual(pointsIn(n3.unit, 'fixed'), failingNow);
  t.deepEqual(pointsIn(n3.unit, 'new-failure'), []);
  t.is(n3.unit.kernel.changed, true);
  t.regex(n3.text, /^FIXED \(\d+\)$/m);

  // Night 4: the first attempt's QEMU is killed once it runs; the retry (after 1 s) is judged.
  const killer = (async () => {
    for (let i = 0; i < 600; i++) {
      const procs = await qemuProcessesMentioning(dir);
      if (procs.length) {
        await sleep(3000);
        const pid = Number(procs[0].trim().split(/\s+/)[0]);
        await execa('kill', ['-KILL', String(pid)], { reject: false });
        return pid;
      }
      await sleep(500);
    }
    return undefined;
  })();
  const n4 = await night([smoke, ...common, '--backoff', '1']);
  const killed = await killer;
  t.log(n4.text);
  t.truthy(killed, 'a QEMU was found and killed');
  t.is(n4.exitCode, 0, n4.all);
  t.deepEqual(n4.unit.attempts.map((a) => [a.purpose, a.outcome.class]), [['nightly', 'infra'], ['infra-retry', 'pass']]);
  t.deepEqual(n4.unit.changes.filter((c) => c.category !== 'new-point'), [], 'the infra attempt is not compared: nothing changed');
  t.is(n4.unit.baseline?.nightId, n3.unit.nightId);
  t.regex(n4.text, /infra retries: 1 \(infra [a-z-]+ -> pass\)/);

  // The history saw all of it.
  const h = await hwlab(['history', '--history', history, '--json']);
  const runs = JSON.parse(h.stdout) as Array<{ purpose: string; outcomeClass: string }>;
  t.deepEqual(runs.map((r) => `${r.purpose}:${r.outcomeClass}`).reverse(), ['nightly:pass', 'nightly:fail', 'rerun:fail', 'nightly:pass', 'nightly:infra', 'infra-retry:pass']);
  const p = await hwlab(['history', '--history', history, '--probe', 'importer-refusals', '--point', failingNow[0].split(' :: ')[1]]);
  t.is(p.exitCode, 0, p.all);
  t.regex(p.stdout, /new-failure/);
  t.regex(p.stdout, /fixed/);
  t.deepEqual(await qemuProcessesMentioning(dir), [], 'no QEMU left running');
});

test.serial('default lab: with the dma-buf-mapping.c fix, the multirange expect_fail reads as "known failure now passes"', async (t) => {
  const dir = runsDir();
  const common = [path.join(repoRoot, 'labs/default.yaml'), '--history', path.join(dir, 'history.sqlite'), '--runs-dir', dir, '--only', 'importer-multirange(shm0)'];
  const before = await night(common);
  t.log(before.text);
  t.is(before.exitCode, 0, before.all);
  t.true(before.unit.changes.some((c) => c.now === 'todo'), 'the 7.2.13 bug shows as an expected failure');
  t.deepEqual(before.unit.stale, []);

  const after = await night([...common, '--patch', fix]);
  t.log(after.text);
  t.is(after.exitCode, 0, after.all);
  t.is(after.unit.final?.outcome.class, 'pass');
  const nowPasses = after.unit.changes.filter((c) => c.category === 'known-now-passes');
  t.true(nowPasses.length >= 1, 'a TODO point now passes');
  t.true(nowPasses.every((c) => c.before === 'todo' && c.now === 'pass'));
  t.deepEqual(after.unit.stale.map((s) => s.probeKey), ['importer-multirange(shm0)']);
  t.deepEqual(after.unit.changes.filter((c) => c.now === 'fail' || c.now === 'todo'), [], 'no point fails, expected or not');
  t.regex(after.text, /^KNOWN FAILURE NOW PASSES \(STALE EXPECT_FAIL\)/m);
  t.regex(after.text, /^STALE EXPECT_FAIL/m);
  t.deepEqual(await qemuProcessesMentioning(dir), []);
});
