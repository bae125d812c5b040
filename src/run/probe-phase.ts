// The probe phase of a run: the guest run config and the bundle go up, the
// runner streams TAP back. While it runs the host serves the probes' requests
// (hot removal through QMP), keeps a per-probe time budget (a probe past it is
// hung: the host diagnoses what the guest is stuck on and ends the phase),
// and keeps every byte of TAP, so a hang, a lost connection or the phase's
// own timeout never loses the results of the probes before.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ChannelLostError, type MachineInstance } from '../machine/instance.ts';
import { bundleProbes } from '../probes/bundle.ts';
import {
  countPoints, GUEST_CONFIG_FILE, GUEST_DIR, RUNNER_EXIT, subtestName, type GuestDevice, type GuestRunConfig, type HostRequest,
} from '../protocol/protocol.ts';
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
      ...(p.expectFailPoints ? { expectFailPoints: p.expectFailPoints } : {}),
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

/** Runs the probes; what goes wrong is recorded in `state` (failure, hung), never thrown, so the TAP so far is always kept. */
export async function probePhase(ctx: RunContext, m: MachineInstance, state: RunState): Promise<void> {
  const { lab, runDir, progress } = ctx;
  const t0 = Date.now();
  const bundle = await bundleProbes(path.join(runDir, 'probe-bundle'));
  const configFile = path.join(runDir, 'guest-config.json');
  await writeFile(configFile, JSON.stringify(guestRunConfig(lab, state.devices ?? {}), null, 2));
  await progress.run('upload probes', () => m.upload([
    ...bundle.files.map((f) => ({ local: f.local, remote: `${GUEST_DIR}/${f.relative}` })),
    { local: configFile, remote: GUEST_CONFIG_FILE },
  ]));

  const requests = new HostRequestServer(m, state, path.join(runDir, 'host-requests.log'), lab.topology.endpoints.map((e) => e.id));
  // A probe past its budget is hung (typically in the kernel): diagnose, then end the phase with the TAP so far.
  const stop = new AbortController();
  const watchdog = new ProbeWatchdog(lab.probes.map((p) => ({ name: p.name, timeoutSec: p.timeoutSec })), (to) => {
    progress.info(`probe ${to.name} did not finish in ${to.timeoutSec} s; collecting blocked tasks`);
    void m.diagnose()
      .then((d) => { state.hung = { ...to, blockedTasks: d.blockedTasks }; })
      .catch((err: Error) => { state.hung = { ...to, blockedTasks: `(could not diagnose: ${err.message})` }; })
      .finally(() => stop.abort());
  });
  state.tap = '';
  try {
    const r = await progress.run(`probes (${lab.probes.length})`, (step) => {
      let points = 0;
      return m.exec(['node', `${GUEST_DIR}/${bundle.entry}`, GUEST_CONFIG_FILE], {
        timeoutMs: lab.timeouts.probesSec * 1000,
        signal: stop.signal,
        onStdout: (chunk) => {
          state.tap += chunk;
          watchdog.push(chunk);
          requests.push(chunk);
          points += countPoints(chunk);
          const sub = chunk.split('\n').map(subtestName).filter(Boolean).pop();
          step.update(`${sub ? `${sub}, ` : ''}${points} points`);
        },
      });
    });
    if (r.aborted) {
      // The runner may sit in the kernel for good: best effort, and no give-back of devices it may hold.
      await m.exec(['sh', '-c', 'kill -9 $(pidof node) 2>/dev/null; true'], { timeoutMs: 5000 }).catch(() => {});
    } else {
      if (r.stderr.trim()) await writeFile(path.join(runDir, 'probes-stderr.log'), r.stderr);
      if (r.code !== RUNNER_EXIT.ok) {
        throw new InfraError(`probe runner exited ${r.code ?? r.signal}: ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`, undefined, 'runner-exit');
      }
    }
  } catch (err) {
    // Whatever ended the phase, the probes that finished keep their results; the one cut off fails as interrupted.
    if (err instanceof ChannelLostError && err.stdout.length > state.tap.length) state.tap = err.stdout;
    state.failure ??= failureFromError('probes', err);
  } finally {
    watchdog.stop();
    ctx.timings.probes = (Date.now() - t0) / 1000;
  }
  await requests.settled();
}
