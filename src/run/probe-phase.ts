// The probe phase of a run: the guest run config and the bundle go up, the
// runner streams TAP back. While it runs the host serves the probes' requests
// (hot removal through QMP), keeps a per-probe time budget (a probe past it is
// hung: the host diagnoses what the guest is stuck on and ends the phase),
// and keeps every byte of TAP, so a hang, a lost connection or the phase's
// own timeout never loses the results of the probes before. A restored guest
// may hold a runner waiting since before its save (node and koffi loaded):
// it gets the run through prestart.sh go, and when it cannot take it (another
// bundle, none waiting) a cold runner runs as on a booted guest.
import { appendFileSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ChannelLostError, exitWithin, machineGoneError, type MachineInstance, type RunnerPrestart } from '../machine/instance.ts';
import { bundleProbes, type ProbeBundle } from '../probes/bundle.ts';
import {
  countPoints, GUEST_CONFIG_FILE, GUEST_DIR, GUEST_PRESTART_DIR, PRESTART_SCRIPT_NAME, RUNNER_EXIT, subtestName,
  type GuestDevice, type GuestRunConfig, type HostRequest,
} from '../protocol/protocol.ts';
import type { RunnerRecord } from '../results/report.ts';
import { failureFromError } from '../results/outcome.ts';
import type { LabSpec } from '../lab/types.ts';
import { HostRequestScanner } from '../session/host-requests.ts';
import type { GuestPciDevice } from '../session/pci.ts';
import { InfraError } from '../util/errors.ts';
import type { RunContext, RunState } from './context.ts';
import { ProbeWatchdog } from './probe-watchdog.ts';

/** What the in-guest runner is asked to do: every endpoint where the guest found it, and the probes in lab order. */
export function guestRunConfig(lab: LabSpec, devices: Record<string, GuestPciDevice>): GuestRunConfig {
  const guestDevices: Record<string, GuestDevice> = {};
  for (const ep of lab.topology.endpoints) {
    const d = devices[ep.id];
    if (d) guestDevices[ep.id] = { id: ep.id, type: ep.type, bdf: d.bdf, iommuGroup: d.iommuGroup };
  }
  return {
    abi: lab.dmabufAbi,
    devices: guestDevices,
    probes: lab.probes.map((p) => ({
      name: p.name,
      device: guestDevices[p.device],
      params: p.params,
      ...(p.expectFail ? { expectFail: p.expectFail } : {}),
      ...(p.expectFail && p.expectFailScope ? { expectFailScope: p.expectFailScope } : {}),
    })),
  };
}

/** Serves probe requests while the runner runs and logs each with its outcome (host-requests.log). */
class HostRequestServer {
  private readonly log: string[] = [];
  private readonly pending: Promise<void>[] = [];
  private readonly scanner: HostRequestScanner;
  constructor(private readonly m: MachineInstance, private readonly state: RunState, private readonly file: string, endpoints: string[]) {
    this.scanner = new HostRequestScanner(endpoints);
  }

  push(chunk: string): void {
    for (const req of this.scanner.push(chunk)) {
      if ('error' in req) this.pending.push(this.note(`refused: ${req.error}`));
      else this.pending.push(this.serve(req));
    }
  }

  private async note(line: string): Promise<void> {
    this.log.push(`${new Date().toISOString()} ${line}`);
    await writeFile(this.file, this.log.join('\n') + '\n');
  }

  private async serve(req: HostRequest): Promise<void> {
    await this.note(`${req.verb} ${req.id}`);
    const r = await this.m.hostRequest(req);
    if (r.ok) this.state.removed.add(req.id);
    await this.note(`${req.verb} ${req.id}: ${r.ok ? 'done' : r.error}`);
  }

  settled(): Promise<unknown> {
    return Promise.all(this.pending);
  }
}

/** The run's probe bundle, built once (the save of a snapshot needs it before the probe phase). */
const bundles = new WeakMap<RunContext, Promise<ProbeBundle>>();
function runBundle(ctx: RunContext): Promise<ProbeBundle> {
  let b = bundles.get(ctx);
  if (!b) bundles.set(ctx, b = bundleProbes(path.join(ctx.runDir, 'probe-bundle')));
  return b;
}

/** Seconds a waiting runner may take to start before a save (node's cold start took over 45 s here at load 19). */
const PRESTART_TIMEOUT_SEC = 120;

/** How a guest about to be saved starts the probe runner waiting: the bundle in GUEST_PRESTART_DIR and prestart.sh start. */
export async function runnerPrestart(ctx: RunContext): Promise<RunnerPrestart> {
  const bundle = await runBundle(ctx);
  return {
    files: bundle.files.map((f) => ({ local: f.local, remote: `${GUEST_PRESTART_DIR}/${f.relative}` })),
    start: ['sh', `${GUEST_PRESTART_DIR}/${PRESTART_SCRIPT_NAME}`, 'start', bundle.hash, String(PRESTART_TIMEOUT_SEC)],
    bundleHash: bundle.hash,
    timeoutMs: (PRESTART_TIMEOUT_SEC + 30) * 1000,
  };
}

/**
 * Starts copying the probe bundle into a booted guest while the setup runs:
 * the default lab's 2 MB took 1.3 s over SFTP after it. Only when the lab has
 * probes and no runner waits with this very bundle; uploadProbes awaits it
 * (and reports its failure), so a rejection here is never left unhandled.
 */
export function startBundleUpload(ctx: RunContext, m: MachineInstance, state: RunState): void {
  if (!ctx.lab.probes.length && ctx.runProbes !== false) return;
  const up = runBundle(ctx).then(async (bundle) => {
    if (m.waitingRunner?.bundleHash === bundle.hash) return;
    await m.upload(bundle.files.map((f) => ({ local: f.local, remote: `${GUEST_DIR}/${f.relative}` })));
  });
  up.catch(() => {});
  state.bundleUpload = up;
}

/**
 * Puts the probe bundle and the run config in the guest; returns the command
 * that runs them cold (also by hand, in a kept guest) and the bundle. When a
 * runner waits from this very bundle (same hash), its copy in
 * GUEST_PRESTART_DIR serves and only the config goes up.
 */
export async function uploadProbes(ctx: RunContext, m: MachineInstance, state: RunState): Promise<{ cold: string[]; bundle: ProbeBundle }> {
  const bundle = await runBundle(ctx);
  const configFile = path.join(ctx.runDir, 'guest-config.json');
  await writeFile(configFile, JSON.stringify(guestRunConfig(ctx.lab, state.devices ?? {}), null, 2));
  const dir = m.waitingRunner?.bundleHash === bundle.hash ? GUEST_PRESTART_DIR : GUEST_DIR;
  const config = { local: configFile, remote: GUEST_CONFIG_FILE };
  await ctx.progress.run(dir === GUEST_DIR ? 'upload probes' : 'upload the probe config (the waiting runner has this bundle)', async () => {
    if (dir === GUEST_DIR && state.bundleUpload) {
      await state.bundleUpload;
      await m.upload([config]);
    } else {
      await m.upload([...(dir === GUEST_DIR ? bundle.files.map((f) => ({ local: f.local, remote: `${GUEST_DIR}/${f.relative}` })) : []), config]);
    }
  });
  return { cold: ['node', `${dir}/${bundle.entry}`, GUEST_CONFIG_FILE], bundle };
}

/** The command that hands this run to the runner waiting in the guest. */
function goCommand(bundle: ProbeBundle): string[] {
  return ['sh', `${GUEST_PRESTART_DIR}/${PRESTART_SCRIPT_NAME}`, 'go', bundle.hash, GUEST_CONFIG_FILE];
}

/** Returns the command that runs the probes (for a guest kept afterwards). */
export async function probePhase(ctx: RunContext, m: MachineInstance, state: RunState): Promise<string[]> {
  const { lab, runDir, progress } = ctx;
  const t0 = Date.now();
  const { cold: runner, bundle } = await uploadProbes(ctx, m, state);
  const waiting = m.waitingRunner;
  // The prestarted runner when one waits; the cold one otherwise, or when it turns this run down.
  const attempts: Array<{ argv: string[]; runner: RunnerRecord }> = [];
  if (waiting) attempts.push({ argv: goCommand(bundle), runner: { mode: 'prestarted', startupSavedSec: waiting.startupSec } });
  attempts.push({ argv: runner, runner: { mode: 'cold' } });

  const requests = new HostRequestServer(m, state, path.join(runDir, 'host-requests.log'), lab.topology.endpoints.map((e) => e.id));
  // A probe past its budget is hung (typically in the kernel): diagnose, then end the phase with the TAP so far.
  const stop = new AbortController();
  const watchdog = new ProbeWatchdog(lab.probes.map((p) => ({ name: p.name, timeoutSec: p.timeoutSec })), (to) => {
    progress.info(`probe ${to.name} did not finish in ${to.timeoutSec} s; collecting blocked tasks`);
    void m.diagnose()
      .then((d) => { state.hung = { ...to, blockedTasks: d.blockedTasks }; })
      .catch((err: Error) => { state.hung = { ...to, blockedTasks: `(could not diagnose: ${err.message})` }; })
      .finally(() => stop.abort());
  }, (afterSec) => {
    // Every probe closed and the runner did not exit: something in the guest (a CPU spinning in the kernel) holds it.
    progress.info(`the probe runner did not exit ${afterSec} s after its last probe; collecting blocked tasks`);
    void m.diagnose()
      .then((d) => d.blockedTasks, (err: Error) => `(could not diagnose: ${err.message})`)
      .then((tasks) => {
        state.failure ??= failureFromError('probes', new InfraError(
          `the probe runner did not exit within ${afterSec} s after its last probe (the guest may be spinning in the kernel; see console.log)${tasks.trim() ? `; blocked tasks:\n${tasks.trim().split('\n').slice(0, 40).join('\n')}` : ''}`,
          undefined, 'runner-did-not-exit'));
      })
      .finally(() => stop.abort());
  }, lab.timeouts.runnerExitSec);
  state.tap = '';
  const tapFile = path.join(runDir, 'probes.tap');
  writeFileSync(tapFile, '');
  // The runner's exit status is unknown when its channel closed under it: then QEMU may be gone.
  let statusKnown = true;
  const tExec = Date.now();
  try {
    let r;
    for (const [i, attempt] of attempts.entries()) {
      state.runner = attempt.runner;
      r = await progress.run(`probes (${lab.probes.length})${attempt.runner.mode === 'prestarted' ? ', prestarted runner' : ''}`, (step) => {
        let points = 0;
        return m.exec(attempt.argv, {
          // A cold runner after a turned-down go gets what is left of the phase's time.
          timeoutMs: i === 0 ? lab.timeouts.probesSec * 1000 : Math.max(10_000, lab.timeouts.probesSec * 1000 - (Date.now() - tExec)),
          signal: stop.signal,
          onStdout: (chunk) => {
            state.tap += chunk;
            // On disk as it comes: a SIGKILLed hwlab (no collect()) still leaves the TAP so far.
            try { appendFileSync(tapFile, chunk); } catch { /* collect() writes it whole */ }
            watchdog.push(chunk);
            requests.push(chunk);
            points += countPoints(chunk);
            const sub = chunk.split('\n').map(subtestName).filter(Boolean).pop();
            step.update(`${sub ? `${sub}, ` : ''}${points} points`);
          },
        });
      });
      // Turned down with nothing run (the bundle changed since the save, or no runner waits): the cold runner next.
      const last = i === attempts.length - 1;
      if (last || r.aborted || r.code !== RUNNER_EXIT.notPrestarted || state.tap !== '') break;
      const why = r.stderr.trim().split('\n').pop() ?? '';
      attempts[i + 1].runner = { mode: 'cold', prestartRefused: why };
      progress.info(`the prestarted probe runner did not take the run (${why}); starting a cold one`);
    }
    if (!r) throw new InfraError('no probe runner command', undefined, 'runner-exit');
    if (r.aborted) {
      // The runner may sit in the kernel for good: best effort, and no give-back of devices it may hold.
      await m.exec(['sh', '-c', 'kill -9 $(pidof node) 2>/dev/null; true'], { timeoutMs: 5000 }).catch(() => {});
    } else {
      if (r.stderr.trim()) await writeFile(path.join(runDir, 'probes-stderr.log'), r.stderr);
      statusKnown = r.code !== null && r.code !== undefined || !!r.signal;
      if (r.code !== RUNNER_EXIT.ok) {
        throw new InfraError(`probe runner exited ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`, undefined, 'runner-exit');
      }
    }
  } catch (err) {
    // Whatever ended the phase, the probes that finished keep their results; the one cut off fails as interrupted.
    if (err instanceof ChannelLostError && err.stdout.length > state.tap.length) state.tap = err.stdout;
    // A runner that ended with no exit status, or a lost channel, is often QEMU gone under it: say that instead.
    const gone = await exitWithin(m, statusKnown && !(err instanceof ChannelLostError) ? 0 : 3000);
    state.failure ??= failureFromError('probes', gone ? machineGoneError(gone, 'probes') : err);
  } finally {
    watchdog.stop();
    ctx.timings.probes = (Date.now() - t0) / 1000;
  }
  await requests.settled();
  return runner;
}
