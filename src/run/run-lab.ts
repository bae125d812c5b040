// One lab run, stage by stage: lab -> kernel -> image -> qemu -> guest ->
// probes -> results. Each run writes a folder with everything needed to
// judge it afterwards: console log, QEMU command line, lab as resolved, TAP,
// results.json.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootFailure, countPoints, GUEST_CONFIG_FILE, GUEST_DIR, GUEST_KMOD_DIR, READY_LINE, subtestName, type GuestRunConfig } from '../protocol/protocol.ts';
import { findPciDevices, type GuestPciDevice } from '../session/pci.ts';
import { ensureHwlabKey } from '../session/keys.ts';
import { GuestSession } from '../session/session.ts';
import { HostRequestScanner, type HostRequest } from '../session/host-requests.ts';
import { buildImage, type GuestImage } from '../image/build.ts';
import { buildInitramfs } from '../image/initramfs.ts';
import { loadImageRecipe } from '../image/recipe.ts';
import { fetchDebianKernel } from '../kernel/debian.ts';
import { buildKernel, type BuiltKernel } from '../kernel/build.ts';
import { loadPatchSeries } from '../kernel/patches.ts';
import { resolveKernelTree } from '../kernel/source.ts';
import { verifyLoadedModules } from '../session/modules.ts';
import { verifyReplacedModules } from '../session/modules-buildid.ts';
import { buildDriverOverlay, type DriverOverlay } from '../kernel/driver-build.ts';
import { buildHwlabModule, type HwlabModule, type ModuleTarget } from '../kernel/extmod.ts';
import { guestModuleBuildIds } from '../session/modules-buildid.ts';
import { requirementsOf, vfioEndpointsOf } from '../guest/probes/catalog.ts';
import type { KernelArtifact } from '../kernel/types.ts';
import type { LabSpec } from '../lab/types.ts';
import { bundleProbes } from '../probes/bundle.ts';
import { decideAccel } from '../machine/accel.ts';
import { buildQemuCommand } from '../machine/cmdline.ts';
import { QemuMachine, writeCommandLine } from '../machine/machine.ts';
import { formatResultTable, judge, writeRunResults, type RunResults } from '../results/report.ts';
import { attachSplatsToProbes } from '../results/report.ts';
import { findSplats, probeWindowsFromConsole } from '../results/splat.ts';
import { markHungProbe, parseProbeTap, type HungProbe, type ProbeResult } from '../results/tap.ts';
import { BLOCKED_TASKS_SCRIPT, ProbeWatchdog } from './probe-watchdog.ts';
import { HwlabError, onCleanup } from '../util/cleanup.ts';
import { ensureHostTools } from '../util/host-tools.ts';
import type { Progress } from '../util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface RunOptions {
  progress: Progress;
  /** Parent of run folders; default <repo>/runs. */
  runsDir?: string;
  /** Re-resolve the kernel version even if a recent resolution is cached. */
  refresh?: boolean;
  /** Patch files applied on top of the lab's series for this run (`--patch`). */
  extraPatches?: string[];
  /** Config fragments merged after the lab's for this run (`--fragment`), e.g. labs/configs/kasan.config. */
  extraFragments?: string[];
}

export interface RunOutcome {
  results: RunResults;
  runDir: string;
  table: string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

function stamp(): string {
  return new Date().toISOString().replace(/[:.]/g, '-').replace(/Z$/, '');
}

/** The last kernel line of the console, for boot progress. */
async function consoleTail(file: string): Promise<string> {
  if (!existsSync(file)) return '';
  const text = await readFile(file, 'utf8');
  const lines = text.trimEnd().split('\n');
  return (lines[lines.length - 1] ?? '').replace(/^\[\s*[\d.]+\]\s*/, '').slice(0, 70);
}


async function waitForConsole(consoleLog: string, m: QemuMachine, deadline: number, update: (line: string) => void): Promise<void> {
  for (;;) {
    const text = existsSync(consoleLog) ? await readFile(consoleLog, 'utf8') : '';
    if (text.includes(READY_LINE)) return;
    const failed = text.split('\n').map((l) => bootFailure(l) ?? (/Kernel panic - not syncing.*/.exec(l)?.[0] ?? null)).find(Boolean);
    if (failed) throw new HwlabError(`boot failed: "${failed}" (see ${consoleLog})`);
    if (m.hasExited) throw new HwlabError(`QEMU exited during boot (${JSON.stringify(m.exit)}); see ${consoleLog} and qemu-stderr.log`);
    if (Date.now() > deadline) throw new HwlabError(`guest did not start sshd before the boot timeout; last console line: ${await consoleTail(consoleLog)}`);
    update(await consoleTail(consoleLog));
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface PreparedLab {
  kernel: KernelArtifact | BuiltKernel | DriverOverlay;
  /** hwlab's own modules the probes need (hwlab_importer), built for this kernel. */
  hwlabModules: HwlabModule[];
  image: GuestImage;
  initrd: string;
}

/** The host-side artifacts a boot needs; each is cached by content. */
/** The kernel a lab names: a prebuilt Debian package, or a tree + patches + fragments built here. */
async function prepareKernel(lab: LabSpec, opts: RunOptions, logDir: string): Promise<{ kernel: KernelArtifact | BuiltKernel | DriverOverlay; target: ModuleTarget }> {
  const { progress } = opts;
  const spec = lab.kernel;
  const extra = (opts.extraPatches ?? []).map((p) => ({ kind: 'file' as const, path: path.resolve(p) }));
  if (spec.kind === 'debian-prebuilt') {
    if (opts.extraFragments?.length) {
      throw new HwlabError(`--fragment needs a kernel built from source; ${lab.file} uses the prebuilt ${spec.package}`);
    }
    const stock = await progress.run(`kernel ${spec.package}`, (s) => fetchDebianKernel(spec, s, { refresh: opts.refresh }), (k) => `${k.package} ${k.version}`);
    if (!spec.driver) {
      if (extra.length) {
        throw new HwlabError(`--patch needs kernel.driver (the fast path) or a kernel built from source; ${lab.file} uses the prebuilt ${spec.package}`);
      }
      return { kernel: stock, target: { kind: 'prebuilt', kernel: stock, debian: spec } };
    }
    const dirs = spec.driver.dirs;
    const patches = await loadPatchSeries([...spec.patches, ...extra]);
    const overlay = await progress.run(`driver build (${dirs.join(' ')}, ${patches.length} patches)`,
      (step) => buildDriverOverlay({ kernel: stock, debian: spec, dirs, patches, logFile: path.join(logDir, 'driver-build.log'), step }),
      (k) => `${k.replaced.map((m) => m.module).join(' ')} ${k.built ? `built in ${k.buildSeconds?.toFixed(0)} s` : 'from cache, make not run'}`);
    // hwlab's modules build against the stock headers: the fast path only changes driver dirs.
    return { kernel: overlay, target: { kind: 'prebuilt', kernel: stock, debian: spec } };
  }
  const tree = await progress.run('kernel source', (s) => resolveKernelTree(spec.source, s), (t) => t.label);
  const patches = await loadPatchSeries([...spec.patches, ...extra]);
  const fragmentFiles = [...spec.config.fragments, ...(opts.extraFragments ?? []).map((f) => path.resolve(f))];
  const fragments = await Promise.all(fragmentFiles.map(async (file) => ({
    file,
    text: await readFile(file, 'utf8').catch((err: Error) => { throw new HwlabError(`config fragment ${file}: ${err.message}`); }),
  })));
  const built = await progress.run(`kernel build (${patches.length} patches, ${fragments.length} fragments)`,
    (step) => buildKernel({ tree, patches, base: spec.config.base, fragments, logFile: path.join(logDir, 'kernel-build.log'), step }),
    (k) => `${k.release} ${k.built ? `built in ${k.buildSeconds?.toFixed(0)} s${k.incrementalFrom ? ` (incremental from ${k.incrementalFrom})` : ''}` : 'from cache, make not run'}`);
  return { kernel: built, target: { kind: 'built', kernel: built, tree, patches } };
}

/** Modules of hwlab's that the lab's probes require (catalog `requires`). */
function hwlabModulesFor(lab: LabSpec): string[] {
  return requirementsOf(lab.probes.map((p) => p.name)).has('importer') ? ['hwlab_importer'] : [];
}

export async function prepareLab(lab: LabSpec, opts: RunOptions, logDir: string = os.tmpdir()): Promise<PreparedLab> {
  const { progress } = opts;
  const { kernel, target } = await prepareKernel(lab, opts, logDir);
  const hwlabModules: HwlabModule[] = [];
  for (const name of hwlabModulesFor(lab)) {
    hwlabModules.push(await progress.run(`module ${name}`, (step) => buildHwlabModule(name, target, path.join(logDir, `${name}-build.log`), step),
      (m) => `${m.built ? 'built' : 'from cache'}, build-id ${m.buildId.slice(0, 12)}`));
  }
  const recipe = await loadImageRecipe(lab.image, path.join(path.dirname(path.dirname(lab.file)), 'images'));
  const image = await progress.run(`image ${recipe.name}`, (s) => buildImage(recipe, s), (i) => `node ${i.nodeVersion}`);
  const initrd = await progress.run('initramfs', () => buildInitramfs(kernel, image));
  return { kernel, hwlabModules, image, initrd };
}

export async function runLab(lab: LabSpec, opts: RunOptions): Promise<RunOutcome> {
  const { progress } = opts;
  const t0 = Date.now();
  const timings: Record<string, number> = {};
  const mark = (name: string, since: number) => (timings[name] = (Date.now() - since) / 1000);

  const runDir = path.join(opts.runsDir ?? path.join(repoRoot, 'runs'), `${lab.name}-${stamp()}`);
  await mkdir(runDir, { recursive: true });
  progress.info(`run folder: ${runDir}`);
  await writeFile(path.join(runDir, 'lab.resolved.json'), JSON.stringify(lab, null, 2));

  await ensureHostTools((l) => progress.info(l));
  let t = Date.now();
  let prepared: PreparedLab;
  try {
    prepared = await prepareLab(lab, opts, runDir);
  } catch (err) {
    // Nothing booted, so there are no results; the folder still says why the run stopped.
    await writeFile(path.join(runDir, 'error.txt'), `${err instanceof Error ? err.message : String(err)}\n`);
    throw err;
  }
  const { kernel, image, initrd, hwlabModules } = prepared;
  mark('prepare', t);

  const accel = await decideAccel(lab.machine.accel, kernel.vmlinuz);
  progress.info(`accel: ${accel.note}`);

  const bundle = await bundleProbes(path.join(runDir, 'probe-bundle'));

  // Per-run scratch: the overlay and ivshmem backing files. /dev/shm keeps ivshmem RAM-backed.
  const scratch = await mkdtemp(path.join(existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'hwlab-'));
  const removeScratch = onCleanup(() => rm(scratch, { recursive: true, force: true }));
  const overlay = path.join(scratch, 'root.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', image.rootDisk, '-F', 'raw', overlay]);

  const consoleLog = path.join(runDir, 'console.log');
  const qmpSocket = path.join(scratch, 'qmp.sock');
  const sshPort = await freePort();
  const cmd = buildQemuCommand({
    lab,
    accel: accel.accel,
    kernelImage: kernel.vmlinuz,
    initrd,
    rootDisk: overlay,
    modulesDisk: kernel.modulesDisk,
    consoleLog,
    qmpSocket,
    sshPort,
    memoryBackendDir: scratch,
    append: ['console=ttyS0,115200', 'rdinit=/init', 'panic=-1', 'printk.time=1'],
  });
  await writeCommandLine(path.join(runDir, 'qemu-cmdline.sh'), cmd);

  let verified: Array<{ module: string; srcversion?: string; buildId?: string }> = [];
  /** Endpoints a probe had the host remove (device_del); nothing to unbind afterwards. */
  const removed = new Set<string>();
  let machine: QemuMachine | null = null;
  let session: GuestSession | null = null;
  let tap = '';
  let probeError: string | null = null;
  let blockedTasks: string | undefined;
  /** Endpoints the probes open through VFIO: bound to vfio-pci before, given back after. */
  const vfioIds = new Set(lab.probes.flatMap((p) => vfioEndpointsOf(p)));
  let hung: HungProbe | undefined;
  const key = await ensureHwlabKey();
  try {
    t = Date.now();
    machine = await QemuMachine.start(cmd, { stderrLog: path.join(runDir, 'qemu-stderr.log'), qmpSocket });
    const m = machine;
    session = await progress.run('boot and SSH', async (step) => {
      const deadline = Date.now() + lab.timeouts.bootSec * 1000;
      // Connecting before sshd listens stalls in slirp's SYN retries; the guest init says when it is up.
      await waitForConsole(consoleLog, m, deadline, (l) => step.update(l));
      step.update('sshd up, connecting');
      return GuestSession.connect({
        port: sshPort,
        privateKey: key.privateKey,
        hostKey: image.hostKey,
        timeoutMs: Math.max(5000, deadline - Date.now()),
        onRetry: () => {
          if (m.hasExited) {
            throw new HwlabError(`QEMU exited during boot (${JSON.stringify(m.exit)}); see ${consoleLog} and qemu-stderr.log`);
          }
        },
      });
    });
    mark('boot_to_ssh', t);
    const s = session;

    t = Date.now();
    const devices = await progress.run('load driver and bind devices', async (step) => {
      for (const mod of lab.modules) {
        step.update(`modprobe ${mod}`);
        await s.modprobe(mod);
      }
      if (kernel.source === 'built') {
        step.update('checking the loaded modules are the ones just built');
        verified = await verifyLoadedModules(s, kernel);
      } else if ('replaced' in kernel) {
        step.update('checking the loaded modules are the rebuilt ones');
        const r = await verifyReplacedModules(s, kernel.replaced, lab.modules);
        verified = kernel.replaced.filter((m) => r.verified.includes(m.module.replace(/-/g, '_'))).map((m) => ({ module: m.module, buildId: m.buildId }));
      }
      if (hwlabModules.length) {
        step.update(`insmod ${hwlabModules.map((m) => m.name).join(' ')}`);
        await s.upload(hwlabModules.map((m) => ({ local: m.ko, remote: `${GUEST_KMOD_DIR}/${m.name}.ko` })));
        for (const m of hwlabModules) await s.check(['insmod', `${GUEST_KMOD_DIR}/${m.name}.ko`], 60_000);
        // The same proof as for the driver under test: the guest runs the .ko just built.
        const ids = await guestModuleBuildIds(s, hwlabModules.map((m) => m.name));
        for (const m of hwlabModules) {
          if (ids.get(m.name) !== m.buildId) {
            throw new HwlabError(`${m.name} in the guest has build-id ${ids.get(m.name) ?? '(none: not loaded)'}, hwlab built ${m.buildId}`);
          }
          verified.push({ module: m.name, buildId: m.buildId });
        }
      }
      const found = await findPciDevices(s, cmd.pciPaths);
      for (const id of vfioIds) {
        step.update(`bind ${id} (${found[id].bdf}) to vfio-pci`);
        found[id].driver = await s.bindVfio(found[id].bdf);
      }
      await writeFile(path.join(runDir, 'devices.json'), JSON.stringify(found, null, 2));
      return found;
    }, (d) => Object.entries(d).map(([id, x]) => `${id}=${x.bdf}`).join(' '));
    mark('setup', t);

    t = Date.now();
    const guestDevices: GuestRunConfig['devices'] = {};
    for (const ep of lab.topology.endpoints) {
      const d = devices[ep.id];
      if (d) guestDevices[ep.id] = { id: ep.id, type: ep.type, bdf: d.bdf, iommuGroup: d.iommuGroup };
    }
    const config: GuestRunConfig = {
      abi: lab.dmabufAbi,
      devices: guestDevices,
      probes: lab.probes.map((p) => {
        const d: GuestPciDevice = devices[p.device];
        const ep = lab.topology.endpoints.find((e) => e.id === p.device)!;
        return {
          name: p.name,
          device: { id: p.device, type: ep.type, bdf: d.bdf, iommuGroup: d.iommuGroup },
          params: p.params,
          ...(p.expectFail ? { expectFail: p.expectFail } : {}),
        };
      }),
    };
    const configFile = path.join(runDir, 'guest-config.json');
    await writeFile(configFile, JSON.stringify(config, null, 2));
    await progress.run('upload probes', () =>
      s.upload([
        ...bundle.files.map((f) => ({ local: f.local, remote: `${GUEST_DIR}/${f.relative}` })),
        { local: configFile, remote: GUEST_CONFIG_FILE },
      ]));
    // Requests the probes make of the host (hot removal through QMP), served while they run.
    const hostLog: string[] = [];
    const logHostRequest = async (line: string) => {
      hostLog.push(`${new Date().toISOString()} ${line}`);
      await writeFile(path.join(runDir, 'host-requests.log'), hostLog.join('\n') + '\n');
    };
    const hostRequests: Promise<void>[] = [];
    const serveHostRequest = async (req: HostRequest) => {
      await logHostRequest(`${req.verb} ${req.id}`);
      try {
        const reply = await (await m.qmpClient()).execute(req.verb, { id: req.id });
        if (reply.error) await logHostRequest(`${req.verb} ${req.id}: QMP error ${JSON.stringify(reply.error)}`);
        else {
          removed.add(req.id);
          await logHostRequest(`${req.verb} ${req.id}: done`);
        }
      } catch (err) {
        await logHostRequest(`${req.verb} ${req.id}: ${(err as Error).message}`);
      }
    };
    // A probe past its budget is hung (typically in the kernel): record what the
    // guest's blocked tasks wait for, then end the probe phase with the TAP so far.
    const stopProbes = new AbortController();
    const watchdog = new ProbeWatchdog(lab.probes.map((p) => ({ name: p.name, timeoutSec: p.timeoutSec })), (to) => {
      progress.info(`probe ${to.name} did not finish in ${to.timeoutSec} s; collecting blocked tasks`);
      void s.sh(BLOCKED_TASKS_SCRIPT, [], { timeoutMs: 20_000 })
        .then((b) => { blockedTasks = b.stdout.trim() || '(no task in uninterruptible sleep)'; })
        .catch((err: Error) => { blockedTasks = `(could not list blocked tasks: ${err.message})`; })
        .finally(() => stopProbes.abort());
    });
    // Everything the runner printed, kept even when the whole probe phase times out.
    let streamed = '';
    const r = await progress.run(`probes (${lab.probes.length})`, (step) => {
      let points = 0;
      const scanner = new HostRequestScanner(lab.topology.endpoints.map((e) => e.id));
      return s.exec(['node', `${GUEST_DIR}/${bundle.entry}`, GUEST_CONFIG_FILE], {
        timeoutMs: lab.timeouts.probesSec * 1000,
        signal: stopProbes.signal,
        onStdout: (chunk) => {
          streamed += chunk;
          watchdog.push(chunk);
          points += countPoints(chunk);
          const sub = chunk.split('\n').map(subtestName).filter(Boolean).pop();
          step.update(`${sub ? `${sub}, ` : ''}${points} points`);
          for (const req of scanner.push(chunk)) {
            if ('error' in req) void logHostRequest(`refused: ${req.error}`);
            else hostRequests.push(serveHostRequest(req));
          }
        },
      });
    }).catch((err: Error) => {
      probeError = err.message;
      // The probes that finished keep their results; the one cut off fails as interrupted.
      tap = streamed;
      return null;
    }).finally(() => watchdog.stop());
    if (r?.aborted && watchdog.timedOut) {
      tap = r.stdout;
      hung = { ...watchdog.timedOut, blockedTasks: blockedTasks ?? '(not collected)' };
      probeError = `probe ${hung.name} did not finish in ${hung.timeoutSec} s; ${lab.probes.length - hung.index - 1} probe(s) after it not run`;
      // The runner may sit in the kernel for good: best effort, and no give-back of devices it may hold.
      await s.exec(['sh', '-c', 'kill -9 $(pidof node) 2>/dev/null; true'], { timeoutMs: 5000 }).catch(() => {});
    } else if (r) {
      tap = r.stdout;
      if (r.stderr.trim()) await writeFile(path.join(runDir, 'probes-stderr.log'), r.stderr);
      if (r.code !== 0) probeError = `probe runner exited ${r.code}: ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`;
    }
    mark('probes', t);

    await Promise.all(hostRequests);
    t = Date.now();
    for (const id of hung ? [] : Object.keys(devices)) {
      if (!vfioIds.has(id) || removed.has(id)) continue;
      await s.unbindVfio(devices[id].bdf).catch((err) => {
        probeError ??= `could not give ${id} back: ${(err as Error).message}`;
      });
    }
  } catch (err) {
    // Boot, SSH or setup failed: still judge the console (a panic during boot is the finding) and write results.
    probeError = err instanceof Error ? err.message : String(err);
    progress.info(`run failed: ${probeError}`);
  } finally {
    t = Date.now();
    if (session && machine && !machine.hasExited) {
      // A clean poweroff flushes the console; QMP quit / kill follow if it hangs.
      await session.exec(['busybox', 'poweroff', '-f'], { timeoutMs: 5000 }).catch(() => {});
    }
    session?.close();
    if (machine) {
      const exited = await machine.waitExit(lab.timeouts.shutdownSec * 1000);
      if (!exited) progress.info(`guest did not power off in ${lab.timeouts.shutdownSec} s; killing QEMU`);
      await machine.kill();
    }
    removeScratch();
    await rm(scratch, { recursive: true, force: true });
    mark('teardown', t);
  }

  await writeFile(path.join(runDir, 'probes.tap'), tap);
  const consoleText = existsSync(consoleLog) ? await readFile(consoleLog, 'utf8') : '';
  const splats = findSplats(consoleText);
  const probes: ProbeResult[] = parseProbeTap(tap);
  if (hung) markHungProbe(probes, hung, lab.probes.map((p) => p.name));
  attachSplatsToProbes(probes, splats, probeWindowsFromConsole(consoleText));
  const verdict = judge(probes, splats);
  if (probeError) verdict.reasons.unshift(probeError);
  const results: RunResults = {
    lab: lab.name,
    startedAt: new Date(t0).toISOString(),
    kernel: {
      package: kernel.package,
      version: kernel.version,
      release: kernel.release,
      source: kernel.source,
      ...('configSha256' in kernel ? { patches: kernel.patches, configSha256: kernel.configSha256, built: kernel.built, buildSeconds: kernel.buildSeconds } : {}),
      ...('replaced' in kernel ? { patches: kernel.patches, driverDirs: kernel.dirs, built: kernel.built, buildSeconds: kernel.buildSeconds, compilerNote: kernel.compiler.note } : {}),
      ...(verified.length ? { modulesVerified: verified } : {}),
    },
    accel: accel.accel,
    accelNote: accel.note,
    probes,
    splats,
    health: splats.length ? 'splat' : 'clean',
    verdict: probeError ? 'fail' : verdict.verdict,
    verdictReasons: verdict.reasons,
    timings: { ...timings, total: (Date.now() - t0) / 1000 },
    runDir,
  };
  await writeRunResults(runDir, results);
  return { results, runDir, table: formatResultTable(results) };
}
