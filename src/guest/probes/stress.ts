// stress: several processes, each with several syscall threads, at once
// exporting dma-bufs, importing them with iommufd's MAP_FILE, unmapping,
// toggling PCI_COMMAND.MEM, resetting, closing buffers and closing and
// reopening the device, for a bounded time. Then: no kernel report, nothing
// stuck (every worker done within the bound plus a margin), the dma-bufs in
// bufinfo and the vfio_pci_core refcount back to the baseline, and the device
// still opens and exports.
//
// The probe opens the VFIO group and hands it to each worker process as fd 3
// (the bundle's stress-worker.cjs, src/guest/stress-worker.ts); each worker thread there
// gets its own device fd from it. The probe closes its own device fd first, so
// a worker's device close is sometimes the last one: vfio_pci_dma_buf_cleanup
// racing other processes' exports, revokes and imports, across fd tables and
// mms as real users (a VMM and an RDMA application) would.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import {
  decodeIoasMapFileIova, decodeIoasUnmapLength, encodeIoasMapFile, encodeIoasUnmap, Iommufd, IOMMU_DEV,
  IOMMU_IOAS_MAP_FILE, IOMMU_IOAS_UNMAP, type Area,
} from '../lib/iommufd.ts';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import { SyscallThread, type TimedResult } from '../lib/systhread.ts';
import {
  encodeExport, PCI_COMMAND, PCI_COMMAND_MEMORY, VFIO_DEVICE_FEATURE, VFIO_DEVICE_FLAGS_RESET, VFIO_DEVICE_RESET,
  VFIO_GROUP_GET_DEVICE_FD, VFIO_PCI_CONFIG_REGION_INDEX, VfioDevice, type DmaRange,
} from '../lib/vfio.ts';
import { STRESS_WORKER_ENTRY, type DmabufAbi } from '../../protocol/protocol.ts';
import { STRESS_MIXES, type StressWeights } from './catalog.ts';
import { exportDiag, type ProbeContext } from './common.ts';
import { baseline, checkBackToBaseline, checkNoKernelReports, commandDiag, setMemoryDecoding, sleepSync } from './observe.ts';

/** Past the run time, how long workers get to wind down before they count as stuck. */
const MARGIN_MS = 20_000;
/** One call longer than this is a hang. */
const CALL_DEADLINE_MS = 15_000;
const MAX_BUFS = 8, MAX_AREAS = 16;

type OpKind = 'open' | 'export' | 'map' | 'unmap' | 'closeBuf' | 'memOff' | 'memOn' | 'reset' | 'closeDev';

interface Env {
  abi: DmabufAbi; bdf: string; groupFd: number; region: number; configOffset: number;
  page: number; resetWorks: boolean; deadline: number; mix: string;
}
interface Buf { fd: number; ranges: DmaRange[]; size: number }
interface Unexpected { worker: number; op: OpKind; got: string; expected: string[]; detail?: string }
interface WorkerReport {
  worker: number; outcomes: Record<string, Record<string, number>>; maxMs: Record<string, number>;
  unexpected: Unexpected[]; finishedAt: number; stuck: boolean;
}

/** mulberry32: a small seeded PRNG so a failing mix can be named by its seed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
}

async function runWorker(worker: number, env: Env, thread: SyscallThread, iommufd: Iommufd, rand: () => number): Promise<WorkerReport> {
  const weights = STRESS_MIXES[env.mix];
  const report: WorkerReport = { worker, outcomes: {}, maxMs: {}, unexpected: [], finishedAt: 0, stuck: false };
  const ioasId = iommufd.allocIoas();
  let devFd = -1;
  const bufs: Buf[] = [];
  const areas: Area[] = [];
  const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)];
  const note = (op: OpKind, r: TimedResult<unknown>, expected: string[], got = r.ok ? 'OK' : r.name, detail?: string) => {
    (report.outcomes[op] ??= {})[got] = (report.outcomes[op]?.[got] ?? 0) + 1;
    report.maxMs[op] = Math.max(report.maxMs[op] ?? 0, Math.round(r.ms));
    if (!expected.includes(got)) report.unexpected.push({ worker, op, got, expected, detail });
    if (!r.ok && r.name === 'HUNG') report.stuck = true;
  };
  const configWrite16 = async (op: OpKind, mem: boolean) => {
    const b = Buffer.alloc(2);
    const rd = await thread.pread(devFd, b, env.configOffset + PCI_COMMAND, CALL_DEADLINE_MS);
    if (!rd.ok) return note(op, rd, ['OK'], undefined, 'reading PCI_COMMAND');
    const cmd = b.readUInt16LE();
    b.writeUInt16LE(mem ? cmd | PCI_COMMAND_MEMORY : cmd & ~PCI_COMMAND_MEMORY);
    const wr = await thread.pwrite(devFd, b, env.configOffset + PCI_COMMAND, CALL_DEADLINE_MS);
    note(op, wr, ['OK'], wr.ok && wr.value !== 2 ? `short write ${wr.value}` : undefined);
  };
  const closeDevice = async () => {
    const fd = devFd;
    devFd = -1; // close(2) releases the number at once; never close it twice
    note('closeDev', await thread.close(fd, CALL_DEADLINE_MS), ['OK']);
  };

  while (Date.now() < env.deadline && !report.stuck) {
    if (devFd < 0) {
      const r = await thread.ioctl(env.groupFd, VFIO_GROUP_GET_DEVICE_FD, Buffer.from(`${env.bdf}\0`), CALL_DEADLINE_MS);
      note('open', r, ['OK']);
      if (r.ok) devFd = r.value;
      continue;
    }
    const allowed = (Object.keys(weights) as (keyof StressWeights)[]).filter((op) => {
      if (op === 'export') return bufs.length < MAX_BUFS;
      if (op === 'map') return bufs.length > 0 && areas.length < MAX_AREAS;
      if (op === 'unmap') return areas.length > 0;
      if (op === 'closeBuf') return bufs.length > 0;
      if (op === 'reset') return env.resetWorks;
      return true;
    });
    let roll = rand() * allowed.reduce((n, op) => n + weights[op]!, 0);
    const op = allowed.find((o) => (roll -= weights[o]!) < 0) ?? allowed[0];
    switch (op) {
      case 'export': {
        // One to four pages in the first eight; one in five buffers gets a second range (MAP_FILE refuses those).
        const range = () => ({ offset: Math.floor(rand() * 4) * env.page, length: (1 + Math.floor(rand() * 4)) * env.page });
        const ranges = env.abi === 'ranges' && rand() < 0.2 ? [range(), range()] : [range()];
        const req = { region: env.region, ranges };
        const r = await thread.ioctl(devFd, VFIO_DEVICE_FEATURE, encodeExport(env.abi, req), CALL_DEADLINE_MS);
        note('export', r, ['OK'], undefined, r.ok ? undefined : JSON.stringify(exportDiag(env.abi, req, r)));
        if (r.ok) bufs.push({ fd: r.value, ranges, size: ranges.reduce((n, x) => n + Number(x.length), 0) });
        break;
      }
      case 'map': {
        const b = pick(bufs);
        const arg = encodeIoasMapFile({ ioasId, fd: b.fd, start: 0, length: b.size });
        const r = await thread.ioctl(iommufd.fd, IOMMU_IOAS_MAP_FILE, arg, CALL_DEADLINE_MS);
        // Revoked by another worker's MEM off, reset or last close: ENODEV. iommufd takes one range only: EOPNOTSUPP.
        note('map', r, b.ranges.length === 1 ? ['OK', 'ENODEV'] : ['EOPNOTSUPP', 'ENODEV']);
        if (r.ok) areas.push({ ioasId, iova: decodeIoasMapFileIova(arg), length: b.size });
        break;
      }
      case 'unmap': {
        const a = areas.splice(Math.floor(rand() * areas.length), 1)[0];
        const arg = encodeIoasUnmap(ioasId, a.iova, a.length);
        const r = await thread.ioctl(iommufd.fd, IOMMU_IOAS_UNMAP, arg, CALL_DEADLINE_MS);
        const n = r.ok ? decodeIoasUnmapLength(arg) : 0;
        note('unmap', r, ['OK'], r.ok && n !== a.length ? `unmapped ${n} of ${a.length}` : undefined);
        break;
      }
      case 'closeBuf': {
        const b = bufs.splice(Math.floor(rand() * bufs.length), 1)[0];
        note('closeBuf', await thread.close(b.fd, CALL_DEADLINE_MS), ['OK']);
        break;
      }
      case 'memOff': await configWrite16('memOff', false); break;
      case 'memOn': await configWrite16('memOn', true); break;
      case 'reset': {
        // pci_try_reset_function gives EAGAIN when another thread holds the device lock.
        note('reset', await thread.ioctl(devFd, VFIO_DEVICE_RESET, undefined, CALL_DEADLINE_MS), ['OK', 'EAGAIN']);
        break;
      }
      case 'closeDev': await closeDevice(); break;
    }
  }
  // Wind down through the thread too, so the last closes still race the other workers.
  for (const b of bufs.splice(0)) if (!report.stuck) note('closeBuf', await thread.close(b.fd, CALL_DEADLINE_MS), ['OK']);
  if (devFd >= 0 && !report.stuck) await closeDevice();
  report.finishedAt = Date.now();
  return report;
}

/** The group fd as a worker process receives it (stdio slot 3). */
const INHERITED_GROUP_FD = 3;
/**
 * Node's cold start in a TCG guest, allowed on top of the run time. 20 s was
 * too little on a 2-core host at load 19 (three workers not ready after 45 s);
 * 60 s keeps start + run time + margin inside the lab's default 120 s probe
 * timeout. Workers not ready by then are a harness point (infra), not a fail:
 * at load 11 even 60 s was not enough once.
 */
const START_ALLOWANCE_MS = 60_000;

export interface StressWorkerArgs {
  process: number;
  threads: number;
  seeds: number[];
  seconds: number;
  env: Omit<Env, 'groupFd' | 'deadline'>;
}

interface ProcessReport { process: number; pid: number; reports: WorkerReport[]; startedAt: number }

/**
 * Entry of a worker process (`stress-worker.cjs <json>`): starts its
 * threads, says "ready", waits for "go" on stdin so every process runs in the
 * same window, runs its workers on the inherited group fd and prints one JSON
 * report line.
 */
export async function stressWorkerMain(args: StressWorkerArgs): Promise<number> {
  const threads: SyscallThread[] = [];
  const iommufds: Iommufd[] = [];
  try {
    for (let i = 0; i < args.threads; i++) {
      threads.push(await SyscallThread.start(CALL_DEADLINE_MS));
      iommufds.push(Iommufd.open());
    }
    process.stdout.write('ready\n');
    await new Promise<void>((resolve, reject) => {
      process.stdin.once('data', () => resolve());
      process.stdin.once('end', () => reject(new Error('stdin closed before go')));
    });
    process.stdin.destroy();
    const startedAt = Date.now();
    const env: Env = { ...args.env, groupFd: INHERITED_GROUP_FD, deadline: startedAt + args.seconds * 1000 };
    const reports = await Promise.all(threads.map((th, i) =>
      runWorker(args.process * args.threads + i, env, th, iommufds[i], prng(args.seeds[i]))));
    const out: ProcessReport = { process: args.process, pid: process.pid, reports, startedAt };
    process.stdout.write(`${JSON.stringify(out)}\n`);
    return reports.some((r) => r.stuck) ? 3 : 0;
  } finally {
    for (const th of threads) await th.stop();
    for (const i of iommufds) i.close();
  }
}

/** One worker process as the probe sees it. */
class WorkerProcess {
  private out = '';
  private err = '';
  private exited: string | null = null;
  private readonly child: ChildProcess;
  readonly closed: Promise<void>;

  constructor(readonly args: StressWorkerArgs, groupFd: number) {
    // Beside the runner's own file in the probe directory.
    this.child = spawn(process.execPath, [path.join(path.dirname(process.argv[1]), STRESS_WORKER_ENTRY), JSON.stringify(args)], {
      stdio: ['pipe', 'pipe', 'pipe', groupFd],
    });
    this.child.stdout!.on('data', (d: Buffer) => { this.out += d.toString(); });
    this.child.stderr!.on('data', (d: Buffer) => { this.err += d.toString(); });
    this.closed = new Promise((resolve) => {
      this.child.on('error', (e) => { this.exited ??= `could not start: ${e.message}`; resolve(); });
      this.child.on('close', (code, signal) => { this.exited ??= `exited ${code ?? signal}`; resolve(); });
    });
  }

  get ready(): boolean {
    return this.out.startsWith('ready\n');
  }

  go(): void {
    this.child.stdin!.end('go\n');
  }

  /** A thread blocked in the kernel keeps the process alive; SIGKILL ends what can be ended. */
  kill(): void {
    this.child.kill('SIGKILL');
  }

  result(): { report: ProcessReport | null; problem?: string } {
    const line = this.out.trim().split('\n').pop() ?? '';
    const tail = this.err.trim().slice(-400);
    if (line.startsWith('{')) {
      try {
        return { report: JSON.parse(line) as ProcessReport };
      } catch {
        return { report: null, problem: `process ${this.args.process}: unreadable report ${line.slice(0, 200)}` };
      }
    }
    return { report: null, problem: `process ${this.args.process} (pid ${this.child.pid}) ${this.exited ?? 'still running'} without a report${tail ? `: ${tail}` : ''}` };
  }
}

/** Resolves when `cond` holds or `ms` passed; false on timeout. */
async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

export default async function stress(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const seconds = ctx.params.seconds as number;
  const nProcesses = ctx.params.processes as number;
  const nThreads = ctx.params.threads as number;
  const nWorkers = nProcesses * nThreads;
  const seed = (ctx.params.seed as number) || (Date.now() % 2 ** 31);
  const mix = ctx.params.mix as string;
  const page = libc.pageSize();
  const km = libc.trySyscall(() => Kmsg.mark());
  if (!t.ok(nWorkers >= 1 && seconds >= 1, 'at least one worker for at least one second', { processes: nProcesses, threads: nThreads, seconds })) return;
  if (!existsSync(IOMMU_DEV)) {
    t.skip('concurrent export, MAP_FILE, revoke and close', `no ${IOMMU_DEV} (kernel without CONFIG_IOMMUFD)`);
    return;
  }
  const base = baseline();
  const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  let deviceFdOpen = true;
  try {
    const size = dev.regionInfo(region).size;
    if (!t.ok(size >= 8 * page, `region ${region} has at least eight pages`, { size, page })) return;
    const on = setMemoryDecoding(dev, true);
    if (!t.ok(on.ok, 'PCI_COMMAND.MEM is on before the stress', commandDiag(on))) return;
    const env: StressWorkerArgs['env'] = {
      abi, bdf: ctx.device.bdf, region, page,
      configOffset: dev.regionInfo(VFIO_PCI_CONFIG_REGION_INDEX).offset,
      resetWorks: Boolean(dev.info().flags & VFIO_DEVICE_FLAGS_RESET), mix,
    };
    // Only the workers' device fds from here on, so their closes can be the last one.
    libc.close(dev.deviceFd);
    deviceFdOpen = false;
    t.comment(`${nProcesses} processes x ${nThreads} threads for ${seconds} s, mix ${mix}, seed ${seed}, ${abi} ABI, region ${region} (${size} bytes), reset ${env.resetWorks ? 'available' : 'not offered'}`);

    const rand = prng(seed);
    const workers = Array.from({ length: nProcesses }, (_, p) => new WorkerProcess({
      process: p, threads: nThreads, seconds, env, seeds: Array.from({ length: nThreads }, () => Math.floor(rand() * 2 ** 31)),
    }, dev.groupFd));
    const allReady = await until(() => workers.every((w) => w.ready), START_ALLOWANCE_MS);
    if (!allReady) {
      // Node did not even start in time: the guest is starved (an overloaded
      // TCG host), which says nothing about the kernel. Nothing below can be
      // judged without every worker, so the probe stops here.
      for (const w of workers) w.kill();
      await Promise.race([Promise.all(workers.map((w) => w.closed)), new Promise((r) => setTimeout(r, 10_000).unref())]);
      t.harness(`every worker process started its threads within ${START_ALLOWANCE_MS / 1000} s`,
        `the guest did not start ${nProcesses} node worker processes in ${START_ALLOWANCE_MS / 1000} s (a starved guest: is the host overloaded?); the stress was not run`,
        { ready: workers.map((w) => w.ready) });
      return;
    }
    t.pass(`every worker process started its threads within ${START_ALLOWANCE_MS / 1000} s`);
    // Everyone goes at once.
    const start = Date.now();
    for (const w of workers) w.go();
    const bound = seconds * 1000 + MARGIN_MS;
    const closedInTime = await Promise.race([
      Promise.all(workers.map((w) => w.closed)).then(() => true),
      new Promise<boolean>((r) => setTimeout(() => r(false), bound).unref()),
    ]);
    if (!closedInTime) for (const w of workers) w.kill();
    const procs = workers.map((w) => w.result());

    const reports = procs.flatMap((x) => x.report?.reports ?? []);
    const problems = procs.flatMap((x) => (x.problem ? [x.problem] : []));
    const finished = reports.filter((r) => !r.stuck);
    const pids = new Set(procs.flatMap((x) => (x.report ? [x.report.pid] : [])));
    t.ok(pids.size === nProcesses && !pids.has(process.pid), `${nProcesses} separate worker processes reported`, { pids: [...pids], problems });
    t.ok(finished.length === nWorkers && problems.length === 0,
      `every worker finished within ${bound / 1000} s (run time plus ${MARGIN_MS / 1000} s), no call stuck in the kernel`, {
        finished: finished.map((r) => ({ worker: r.worker, afterMs: r.finishedAt - start })),
        stuck: reports.filter((r) => r.stuck).map((r) => ({ worker: r.worker, maxMs: r.maxMs })),
        problems,
      });
    // The processes must really have overlapped, or this was a sequential test.
    const starts = procs.flatMap((x) => (x.report ? [x.report.startedAt] : []));
    const spread = starts.length ? Math.max(...starts) - Math.min(...starts) : 0;
    t.ok(spread < seconds * 1000, `the worker processes ran at the same time (starts within ${spread} ms, run time ${seconds} s)`, { starts: starts.map((x) => x - start) });
    const totals: Record<string, Record<string, number>> = {};
    for (const r of reports) for (const [op, o] of Object.entries(r.outcomes)) for (const [k, n] of Object.entries(o)) (totals[op] ??= {})[k] = (totals[op][k] ?? 0) + n;
    const maxMs: Record<string, number> = {};
    for (const r of reports) for (const [op, ms] of Object.entries(r.maxMs)) maxMs[op] = Math.max(maxMs[op] ?? 0, ms);
    t.comment(`outcomes: ${JSON.stringify(totals)}`);
    t.comment(`slowest call per kind (ms): ${JSON.stringify(maxMs)}`);
    // The mix's operations (a device open comes first in every mix).
    const wanted = (['open', ...Object.keys(STRESS_MIXES[mix])] as OpKind[]).filter((op) => op !== 'reset' || env.resetWorks);
    const missing = wanted.filter((op) => !totals[op]);
    t.ok(missing.length === 0, 'every kind of operation ran at least once', { missing, outcomes: totals });
    const unexpected = reports.flatMap((r) => r.unexpected);
    t.ok(unexpected.length === 0, 'no operation gave an unexpected result', { count: unexpected.length, first: unexpected.slice(0, 20), seed });
  } finally {
    if (deviceFdOpen) libc.trySyscall(() => libc.close(dev.deviceFd));
    for (const x of [dev.groupFd, dev.containerFd]) libc.trySyscall(() => libc.close(x));
  }
  afterStress(ctx, base);
  checkNoKernelReports(t, km, 'during the stress');
}

/** How long the group may stay busy after the workers exited. */
const GROUP_RELEASE_MS = 10_000;

/**
 * The device opened again once the workers' last references are gone. The
 * group's release can come after the worker processes were reaped: seen
 * under KCSAN with kcsan.udelay_task=2000, where the reopen got EBUSY at
 * once and succeeded a minute later with no process holding it. So EBUSY is
 * retried for a bounded time and the wait is printed; past the bound the
 * EBUSY stands and fails the probe.
 */
function openOnceReleased(ctx: ProbeContext): VfioDevice {
  const start = Date.now();
  for (let busy = 0; ; busy++) {
    try {
      const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
      if (busy > 0) ctx.t.comment(`the group opened again ${Date.now() - start} ms after the workers exited (EBUSY ${busy} times until then)`);
      return dev;
    } catch (e) {
      if (!(e instanceof libc.SyscallError && e.code === 'EBUSY') || Date.now() - start >= GROUP_RELEASE_MS) throw e;
      sleepSync(100);
    }
  }
}

/** The device still works, and nothing the workers made is left behind. */
function afterStress(ctx: ProbeContext, base: ReturnType<typeof baseline>): void {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const dev = openOnceReleased(ctx);
  try {
    const on = setMemoryDecoding(dev, true);
    const req = { region, ranges: [{ offset: 0, length: libc.pageSize() }] };
    const r = dev.exportDmabuf(abi, req);
    if (r.ok && r.value > 0) libc.trySyscall(() => libc.close(r.value));
    t.ok(on.ok && r.ok && r.value > 0, 'after the stress the device opens, decodes memory and exports', { command: commandDiag(on), ...exportDiag(abi, req, r) });
  } finally {
    dev.close();
  }
  checkBackToBaseline(t, base, 'after the stress');
}
