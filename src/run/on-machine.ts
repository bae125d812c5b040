// One lab on one machine: start it, boot until the guest is ready, set the
// guest up (load the driver under test and prove it is the one just built,
// load hwlab's modules, find the endpoints, bind them to vfio-pci), run the
// probe phase, give the devices back, power off. Each phase is a function;
// the first failure is kept with the phase it happened in, the machine is
// ended on every path, and collect() turns whatever the run produced into
// results. The backend is an argument: QEMU in real runs, the fake in tests.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { vfioEndpointsOf } from '../guest/probes/catalog.ts';
import type { LabSpec } from '../lab/types.ts';
import { exitWithin, machineGoneError, type MachineBackend, type MachineInstance } from '../machine/instance.ts';
import { GUEST_KMOD_DIR } from '../protocol/protocol.ts';
import { failureFromError } from '../results/outcome.ts';
import type { RunResults } from '../results/report.ts';
import { bindVfio, modprobe, UNBIND_TIMEOUT_SEC, unbindVfio } from '../session/commands.ts';
import { verifyLoadedModules } from '../session/modules.ts';
import { guestModuleBuildIds, verifyReplacedModules } from '../session/modules-buildid.ts';
import { findPciDevices, type GuestPciDevice } from '../session/pci.ts';
import { assertViommu, viommuRecord } from '../session/viommu.ts';
import { InfraError, KernelFaultError } from '../util/errors.ts';
import { collect } from './collect.ts';
import type { RunContext, RunState } from './context.ts';
import { probePhase, runnerPrestart, startBundleUpload, uploadProbes } from './probe-phase.ts';
import { selftestPhase } from './selftest-phase.ts';

/**
 * hwlab's kernel command-line words (the IOMMU words and the lab's own follow).
 * no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check
 * can miss its ticks and panic at boot ("timer doesn't work through
 * Interrupt-remapped IO-APIC", seen here with two guests and a build on 2
 * cores); it is what virtual machines set, and nothing under test depends on it.
 * pty.legacy_count=0: no legacy BSD ptys (sshd uses /dev/pts). Creating the
 * 256 of them was the slowest initcall but one (pty_init, 0.6 to 1.0 s under
 * lockdep and kobject debugging); without them the kernel reached the
 * initramfs 0.7 to 2.4 s sooner in three paired boots (README, "Speed").
 */
export const KERNEL_WORDS = ['console=ttyS0,115200', 'rdinit=/init', 'panic=-1', 'printk.time=1', 'no_timer_check', 'pty.legacy_count=0'];

async function timed<T>(ctx: RunContext, name: string, fn: () => Promise<T>): Promise<T> {
  const t = Date.now();
  try {
    return await fn();
  } finally {
    ctx.timings[name] = (Date.now() - t) / 1000;
  }
}

async function boot(ctx: RunContext, m: MachineInstance): Promise<void> {
  await timed(ctx, 'boot_to_ssh', () => ctx.progress.run('boot and SSH', (step) =>
    m.waitReady({ timeoutMs: ctx.lab.timeouts.bootSec * 1000, onProgress: (l) => step.update(l) })));
}

/** Endpoints the probes open through VFIO and those the selftests are given: bound to vfio-pci before, given back after. */
function vfioEndpoints(lab: LabSpec): Set<string> {
  return new Set([...lab.probes.flatMap((p) => vfioEndpointsOf(p)), ...(lab.selftests ?? []).flatMap((s) => s.devices)]);
}

/** The driver under test, proven to be the build's: srcversion for source builds, build-id for the fast path. */
async function loadDriver(ctx: RunContext, m: MachineInstance, state: RunState, update: (s: string) => void): Promise<void> {
  const { kernel } = ctx.prepared;
  if (kernel.kind === 'source') {
    // One guest command: the loads and the check.
    update(`modprobe ${ctx.lab.modules.join(' ')}, checking the loaded modules are the ones just built`);
    state.verified.push(...(await verifyLoadedModules(m, kernel, ctx.lab.modules)));
    return;
  }
  for (const mod of ctx.lab.modules) {
    update(`modprobe ${mod}`);
    await modprobe(m, mod);
  }
  if (kernel.kind === 'overlay') {
    update('checking the loaded modules are the rebuilt ones');
    const r = await verifyReplacedModules(m, kernel.replaced, ctx.lab.modules);
    state.verified.push(...kernel.replaced.filter((x) => r.verified.includes(x.module.replace(/-/g, '_'))).map((x) => ({ module: x.module, buildId: x.buildId })));
  }
}

/** hwlab's own modules (the importer): copied in, insmod'ed, build-id checked like the driver. */
async function loadHwlabModules(ctx: RunContext, m: MachineInstance, state: RunState, update: (s: string) => void): Promise<void> {
  const mods = ctx.prepared.hwlabModules;
  if (!mods.length) return;
  update(`insmod ${mods.map((x) => x.name).join(' ')}`);
  await m.upload(mods.map((x) => ({ local: x.ko, remote: `${GUEST_KMOD_DIR}/${x.name}.ko` })));
  const ids = await guestModuleBuildIds(m, mods.map((x) => x.name), mods.map((x) => `${GUEST_KMOD_DIR}/${x.name}.ko`));
  for (const x of mods) {
    if (ids.get(x.name) !== x.buildId) {
      throw new InfraError(`${x.name} in the guest has build-id ${ids.get(x.name) ?? '(none: not loaded)'}, hwlab built ${x.buildId}`, undefined, 'module-mismatch');
    }
    state.verified.push({ module: x.name, buildId: x.buildId });
  }
}

async function setup(ctx: RunContext, m: MachineInstance, state: RunState): Promise<Record<string, GuestPciDevice>> {
  return timed(ctx, 'setup', () => ctx.progress.run('load driver and bind devices', async (step) => {
    await loadDriver(ctx, m, state, (s) => step.update(s));
    await loadHwlabModules(ctx, m, state, (s) => step.update(s));
    const found = await findPciDevices(m, m.pciPaths);
    state.devices = found;
    // Before anything is bound: the guest's vIOMMU and endpoints must be the lab's (devices.json
    // and results.json keep what it showed, also when they are not).
    step.update('checking the vIOMMU and the endpoints against the lab');
    state.viommu = viommuRecord(ctx.lab, found);
    await writeFile(path.join(ctx.runDir, 'devices.json'), JSON.stringify(found, null, 2));
    assertViommu(ctx.lab, found);
    const ids = [...vfioEndpoints(ctx.lab)];
    step.update(`bind ${ids.join(' ')} to vfio-pci`);
    const previous = ids.length ? await bindVfio(m, ids.map((id) => found[id].bdf)) : new Map<string, string | null>();
    for (const id of ids) found[id].driver = previous.get(found[id].bdf) ?? null;
    await writeFile(path.join(ctx.runDir, 'devices.json'), JSON.stringify(found, null, 2));
    return found;
  }, (d) => Object.entries(d).map(([id, x]) => `${id}=${x.bdf}`).join(' ')));
}

/**
 * Unbinds the endpoints the probes used, except those removed, in one guest
 * command; skipped after a hang (the runner may still hold them). The first
 * unbind that does not return (vfio waits for a device registration the kernel leaked) ends the
 * give-back: waiting for each device in turn took minutes. What blocked is
 * said: the guest's blocked tasks and vfio's "blocked until released" line.
 * Classed `kernel` (KernelFaultError) unless the runner may still be alive.
 */
async function giveBack(ctx: RunContext, m: MachineInstance, state: RunState): Promise<void> {
  if (state.hung || !state.devices) return;
  const vfio = vfioEndpoints(ctx.lab);
  const todo = Object.entries(state.devices).filter(([id]) => vfio.has(id) && !state.removed.has(id));
  const { blocked, notTried } = await unbindVfio(m, todo.map(([, d]) => d.bdf));
  if (blocked === undefined) return;
  const id = todo.find(([, d]) => d.bdf === blocked)?.[0] ?? blocked;
  const tasks = await m.diagnose().then((x) => x.blockedTasks.trim(), () => '');
  const said = (await m.console().catch(() => '')).split('\n').filter((l) => /blocked until .*released/i.test(l)).pop();
  const rest = todo.filter(([, d]) => notTried.includes(d.bdf)).map(([x]) => x);
  // The kernel's fault once the runner has exited: its fds (devices, dma-bufs, importer
  // sessions) are closed, so only a reference the kernel never dropped holds the device.
  // A runner that did not exit may still hold it itself: then it is not evidence.
  const Blocked = state.failure?.code === 'runner-did-not-exit' ? InfraError : KernelFaultError;
  throw new Blocked(
    `giving ${id} (${blocked}) back to its driver blocked in the guest kernel: the unbind did not return in ${UNBIND_TIMEOUT_SEC} s` +
    `${said ? `; the kernel says: ${said.replace(/^\[[^\]]*\]\s*/, '').trim()}` : ''}` +
    `${rest.length ? `; not tried: ${rest.join(', ')}` : ''}${tasks ? `\nblocked tasks:\n${tasks.split('\n').slice(0, 40).join('\n')}` : ''}`,
    'a device registration the driver never dropped keeps vfio-pci from unbinding; see console.log', 'teardown-blocked');
}

async function shutDown(ctx: RunContext, m: MachineInstance): Promise<void> {
  await timed(ctx, 'teardown', async () => {
    const { clean } = await m.powerOff(ctx.lab.timeouts.shutdownSec * 1000);
    if (!clean) ctx.progress.info(`guest did not power off in ${ctx.lab.timeouts.shutdownSec} s; killed it`);
  });
}

/** Runs the lab on a machine from `backend` and returns its results (never throws for what happens in the guest). */
export async function runOnMachine(ctx: RunContext, backend: MachineBackend): Promise<RunResults> {
  const state: RunState = { phase: 'boot', verified: [], removed: new Set(), selftestTimeouts: [], selftestDurationsMs: {} };
  const { kernel, image, initrd } = ctx.prepared;
  let m: MachineInstance | undefined;
  try {
    m = await backend.start({
      lab: ctx.lab, kernelImage: kernel.vmlinuz, modulesDisk: kernel.modulesDisk, modulesRoot: kernel.modulesRoot, initrd, rootImage: image.rootDisk,
      privateKey: ctx.privateKey, hostKey: image.hostKey, runDir: ctx.runDir,
      // gdb resolves symbols at their link addresses: no KASLR under --gdb.
      append: ctx.gdb ? [...KERNEL_WORDS, 'nokaslr'] : KERNEL_WORDS, gdb: ctx.gdb,
      prestartRunner: () => runnerPrestart(ctx),
    });
    ctx.progress.info(`accel: ${m.accel.note}`);
    await boot(ctx, m);
    state.phase = 'setup';
    // The bundle's SFTP and the setup's guest commands overlap (different work, both mostly waiting on the guest).
    startBundleUpload(ctx, m, state);
    await setup(ctx, m, state);
    state.phase = 'probes';
    let runner: string[] = [];
    if (ctx.runProbes === false) runner = (await uploadProbes(ctx, m, state)).cold;
    else {
      // A lab of selftests alone has no probe runner to start.
      if (ctx.lab.probes.length || !ctx.lab.selftests?.length) runner = await probePhase(ctx, m, state);
      // After a hung probe the guest may be stuck in the kernel: the selftests would say nothing more.
      if (!state.hung && !state.failure) {
        state.phase = 'selftests';
        await selftestPhase(ctx, m, state);
      }
    }
    state.phase = 'teardown';
    if (ctx.hold) {
      // Kept as the probes left it (devices bound, bundle in place) for a person to look at.
      await ctx.hold(m, await collect(ctx, m, backend.name, state), runner);
    } else await giveBack(ctx, m, state);
  } catch (err) {
    const gone = m && state.phase !== 'boot' ? await exitWithin(m, 3000) : null;
    state.failure ??= failureFromError(state.phase, gone ? machineGoneError(gone, state.phase) : err);
    ctx.progress.info(`run stopped (${state.phase}): ${state.failure.message.split('\n')[0]}`);
  } finally {
    if (m) await shutDown(ctx, m).catch((err) => { state.failure ??= failureFromError('teardown', err); });
  }
  return collect(ctx, m, backend.name, state);
}
