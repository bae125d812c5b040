// The selftest phase of a run, after the probes: the kernel's own selftests
// (built for this kernel by src/selftests/build.ts) go up as kselftest's
// install tree, and each planned test runs alone through run_kselftest.sh
// (src/guest/kselftest/run-one.sh), given the BDFs of its lab endpoints.
// One test per SSH command lets the host keep each test's own time budget:
// a test past it is hung, so the host lists the guest's blocked tasks and
// the test's kernel stacks, kills the test and goes on with the next one.
// The outputs are joined into one kselftest TAP 13 stream, as
// run_kselftest.sh would print for the whole list (selftests.tap).
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ChannelLostError, type MachineInstance } from '../machine/instance.ts';
import {
  GUEST_DIR, GUEST_SELFTEST_DIR, GUEST_SELFTEST_RUNNER, kselftestArgsVar, SELFTEST_RUNNER_KILL, SELFTEST_RUNNER_STACKS,
} from '../protocol/protocol.ts';
import { failureFromError } from '../results/outcome.ts';
import type { PlannedSelftest } from '../selftests/plan.ts';
import type { RunContext, RunState, SelftestTimeout } from './context.ts';

/** kselftest's own timeout sits this far above hwlab's, so hwlab gets to list the stacks before anything is killed. */
export const KSELFTEST_BACKSTOP_SEC = 60;
/** How long the host waits for a killed test's command to end before leaving it behind. */
const AFTER_KILL_MS = 30_000;

/**
 * One test's run_kselftest.sh output as part of the joined stream: without
 * its own version line and `1..1` plan, its result renumbered to `index`.
 */
export function joinedPart(output: string, index: number): string {
  const lines = output.replace(/\r/g, '').split('\n');
  const out: string[] = [];
  let header = true;
  for (const l of lines) {
    if (header && (/^TAP version \d+\s*$/.test(l) || /^1\.\.1\s*$/.test(l))) continue;
    header = false;
    out.push(l.replace(/^(not )?ok 1 selftests: /, (_m, not: string | undefined) => `${not ?? ''}ok ${index} selftests: `));
  }
  while (out.length && out[out.length - 1] === '') out.pop();
  return out.length ? out.join('\n') + '\n' : '';
}

/** The argument vector of one test: the wrapper, its place, its name, kselftest's timeout, and the BDFs it is given. */
export function selftestArgv(t: PlannedSelftest, bdfs: string[]): string[] {
  return [GUEST_SELFTEST_RUNNER, String(t.index), t.collection, t.test, String(t.timeoutSec + KSELFTEST_BACKSTOP_SEC), kselftestArgsVar(t.test), ...bdfs];
}

/** run_kselftest.sh's result line for one test. */
const RESULT_LINE = /^(not )?ok \d+ selftests: .*$/m;

async function runOne(ctx: RunContext, m: MachineInstance, state: RunState, t: PlannedSelftest, update: (s: string) => void): Promise<string> {
  const bdfs = t.devices.map((id) => {
    const d = state.devices?.[id];
    if (!d) throw new Error(`endpoint ${id} of selftest ${t.collection}:${t.test} was not found in the guest`);
    return d.bdf;
  });
  const stop = new AbortController();
  const t0 = Date.now();
  let hung: SelftestTimeout | undefined;
  let lastLine = '';
  const timer = setTimeout(() => {
    ctx.progress.info(`selftest ${t.collection}:${t.test} did not finish in ${t.timeoutSec} s; listing blocked tasks and its stacks, then killing it`);
    void (async () => {
      const d = await m.diagnose().catch((err: Error) => ({ blockedTasks: `(could not list blocked tasks: ${err.message})` }));
      const stacks = await m.exec([GUEST_SELFTEST_RUNNER, SELFTEST_RUNNER_STACKS], { timeoutMs: 60_000 })
        .then((r) => r.stdout.trim()).catch((err: Error) => `(could not list its stacks: ${err.message})`);
      hung = { index: t.index, test: `${t.collection}:${t.test}`, timeoutSec: t.timeoutSec, blockedTasks: d.blockedTasks, testStacks: stacks };
      await m.exec([GUEST_SELFTEST_RUNNER, SELFTEST_RUNNER_KILL], { timeoutMs: 60_000 }).catch(() => undefined);
      // A test stuck in the kernel cannot die: leave its command behind after a while.
      setTimeout(() => stop.abort(), AFTER_KILL_MS).unref();
    })();
  }, t.timeoutSec * 1000);
  timer.unref();
  try {
    const r = await m.exec(selftestArgv(t, bdfs), {
      timeoutMs: (t.timeoutSec + KSELFTEST_BACKSTOP_SEC) * 1000 + 2 * AFTER_KILL_MS,
      signal: stop.signal,
      onStdout: (chunk) => {
        const l = chunk.trimEnd().split('\n').pop();
        if (l) lastLine = l;
        update(`${t.index}/${state.selftestPlanLength ?? '?'} ${t.collection}:${t.test}: ${lastLine.slice(0, 80)}`);
      },
    });
    let part = joinedPart(r.stdout, t.index);
    if (hung) {
      // Wait for the diagnosis to be recorded before the phase moves on (it is set before the kill).
      state.selftestTimeouts.push(hung);
      // run_kselftest.sh may outlive its killed child and report it (`# exit=137`): that is
      // hwlab's kill, not the test's result, which is the timeout. Its line stays as a comment.
      const reported = RESULT_LINE.exec(part)?.[0];
      if (reported) part = part.replace(reported, `# hwlab: after the kill, ${path.basename(GUEST_SELFTEST_RUNNER)} reported: ${reported}`);
      part += `# hwlab: killed at its timeout of ${t.timeoutSec} s\n`;
      part += `not ok ${t.index} selftests: ${t.collection}: ${t.test} # TIMEOUT ${t.timeoutSec} seconds\n`;
    } else if (!RESULT_LINE.test(part)) {
      part += `# hwlab: ${path.basename(GUEST_SELFTEST_RUNNER)} ended (${r.code ?? r.signal}) without a result line${r.stderr.trim() ? `: ${r.stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}\n`;
    }
    return part;
  } catch (err) {
    // The guest went away mid-test (a panic): keep what the test printed; the stream stays open there.
    if (err instanceof ChannelLostError && err.stdout) state.selftestTap += joinedPart(err.stdout, t.index);
    throw err;
  } finally {
    clearTimeout(timer);
    state.selftestDurationsMs[t.index] = Date.now() - t0;
  }
}

/** Runs the planned selftests; like the probe phase, what goes wrong is recorded in `state`, never thrown. */
export async function selftestPhase(ctx: RunContext, m: MachineInstance, state: RunState): Promise<void> {
  const prepared = ctx.prepared.selftests;
  if (!prepared?.plan.length) return;
  const { built, plan } = prepared;
  const t0 = Date.now();
  state.selftestPlanLength = plan.length;
  state.selftestTap = `TAP version 13\n1..${plan.length}\n`;
  try {
    await ctx.progress.run('upload selftests', async () => {
      const remote = `${GUEST_DIR}/kselftest.tar.gz`;
      await m.upload([{ local: built.tarball, remote }]);
      const r = await m.exec(['sh', '-c', 'mkdir -p "$1" && tar -C "$1" -xzf "$2" && rm -f "$2"', 'sh', GUEST_SELFTEST_DIR, remote], { timeoutMs: 120_000 });
      if (r.code !== 0) throw new Error(`unpacking the selftests in the guest failed (${r.code}): ${r.stderr.trim()}`);
    });
    await ctx.progress.run(`selftests (${plan.length})`, async (step) => {
      for (const t of plan) {
        state.selftestTap += await runOne(ctx, m, state, t, (s) => step.update(s));
      }
    });
  } catch (err) {
    // The guest went away (a panic) or the host broke: the tests so far keep their results.
    state.failure ??= failureFromError('selftests', err);
  } finally {
    ctx.timings.selftests = (Date.now() - t0) / 1000;
    await writeFile(path.join(ctx.runDir, 'selftests.tap'), state.selftestTap ?? '');
  }
}
