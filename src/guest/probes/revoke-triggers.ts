// revoke-triggers: every user-visible revoke trigger of the contract's
// section 3 table that the device offers, each as its own group of TAP points
// named after it. Per trigger, with buffer A imported and mapped by the
// hwlab_importer (on behalf of the edu) and buffer B exported but not
// attached:
//   before   the data path works through A's mapping;
//   revoke   invalidate_mappings runs (WAIT), A's mapping is gone (edu DMA
//            ENODEV), map of A and a new attach of B fail ENODEV;
//   hold     actions the table does not list as un-revoking leave it revoked;
//   un-revoke invalidate_mappings runs again where the table says;
//   after    a fresh map of A works, the data path through it works, B attaches.
// Triggers that revoke and un-revoke inside one syscall (FLRs, resets) run on
// a syscall thread while the main thread watches the revoked window; a window
// too short to catch is a skip that says so, never a pass.
// Device close is permanent and runs last: reopening must not revive anything.
import { readFileSync, existsSync } from 'node:fs';
import type { GuestDevice } from '../../protocol/protocol.ts';
import { Importer } from '../lib/importer.ts';
import * as libc from '../lib/libc.ts';
import { SyscallThread, type TimedResult } from '../lib/systhread.ts';
import {
  CAP, capabilities, PCI_AF_CAP, PCI_AF_CAP_FLR, PCI_AF_CAP_TP, PCI_AF_CTRL, PCI_AF_CTRL_FLR, PCI_EXP_DEVCAP,
  PCI_EXP_DEVCAP_FLR, PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR, PCI_PM_CAP_D1, PCI_PM_CAP_D2, PCI_PM_CTRL, PCI_PM_PMC,
  powerStateOf, type ConfigReader,
} from '../lib/pci-config.ts';
import type { Subtest } from '../lib/tap.ts';
import {
  deviceFeature, encodeHotReset, encodeLowPower, encodeLowPowerEntryWithWakeup, hotResetInfo, PCI_COMMAND,
  PCI_COMMAND_MEMORY as MEM, VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP,
  VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, VFIO_DEVICE_FEATURE_PROBE, VFIO_DEVICE_FEATURE_SET, VFIO_DEVICE_FLAGS_RESET,
  VFIO_DEVICE_PCI_HOT_RESET, VFIO_DEVICE_RESET, VFIO_PCI_CONFIG_REGION_INDEX, VfioDevice, type RegionInfo,
} from '../lib/vfio.ts';
import { closeFd, hex, type ProbeContext } from './common.ts';
import {
  checkDataPath, checkDmaRead, checkNoDataPath, dataOffsets, ensureMemoryOn, exportBar, importDiag, importerDevice, importFor,
  prepareDataPath, result,
} from './importer-common.ts';

/** How long the main thread waits for a worker-run trigger to reach its revoke. */
const WORKER_REVOKE_TIMEOUT_MS = 30_000;

/** An action on the exporter that either succeeds or says why not. */
interface Action { name: string; run: () => { ok: boolean; diag?: Record<string, unknown> } }

interface SplitTrigger {
  kind: 'split';
  name: string;
  unavailable: string | null;
  /** Run with the buffer live: must not revoke. */
  noRevoke?: Action[];
  revoke: Action;
  /** Run while revoked: must not un-revoke. Entries with `skip` cannot run here, for that reason. */
  hold?: (Action | { name: string; skip: string })[];
  unrevoke: Action;
}
/** Started on a syscall thread (fds are process-wide) while the main thread watches the revoked window. */
interface AtomicTrigger {
  kind: 'atomic'; name: string; unavailable: string | null; what: string;
  start: (thread: SyscallThread) => Promise<TimedResult<number>>;
}
interface CloseTrigger { kind: 'close'; name: string; unavailable: null }
type Trigger = SplitTrigger | AtomicTrigger | CloseTrigger;

interface Probe {
  ctx: ProbeContext;
  t: Subtest;
  dev: VfioDevice;
  info: RegionInfo;
  imp: Importer;
  edu: GuestDevice;
  region: number;
  /**
   * Started with the first group when a trigger is atomic, awaited by the
   * first atomic one: a worker thread takes about 1 s to start under TCG,
   * and the groups before it mostly wait for edu's DMA timer meanwhile.
   */
  thread?: Promise<SyscallThread>;
  /** Why the data checks cannot run here, or null. */
  dataSkip: string | null;
  /** A group's `before` ran the full data check: later groups' `before` checks liveness only. */
  fullBeforeDone?: boolean;
}

/** Per trigger: buffer A (imported, mapped) and B (exported only). */
interface Group { p: Probe; name: string; fdA: number; fdB: number; handle: number; count0: number; extraHandles: number[] }

export default async function revokeTriggers(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const region = ctx.params.region as number;
  const edu = importerDevice(ctx);
  const imp = Importer.open();
  let dev: VfioDevice;
  try {
    dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  } catch (e) {
    imp.close();
    throw e;
  }
  const p: Probe = { ctx, t, imp, edu, region, dataSkip: null, dev, info: undefined as unknown as RegionInfo };
  const data = prepareDataPath(t, ctx.device, edu);
  p.dataSkip = data.skip;
  try {
    ensureMemoryOn(p.dev);
    p.info = p.dev.regionInfo(region);
    const caps = capabilities(configReader(p.dev)).map((c) => c.name).join(', ') || 'none';
    t.comment(`exporter ${ctx.device.id} BAR ${region}: ${hex(p.info.size)} bytes; capabilities (vfio view) ${caps}; reset methods ${resetMethods(ctx.device.bdf)}; importer ${edu.id} ${edu.bdf}`);
    const all = triggers(p);
    if (all.some((x) => x.kind === 'atomic' && x.unavailable === null)) {
      p.thread = SyscallThread.take(WORKER_REVOKE_TIMEOUT_MS * 2);
      // Its failure is reported where an atomic trigger awaits it.
      p.thread.catch(() => {});
    }
    for (const trig of all) {
      t.comment(`--- ${trig.name} ---`);
      if (trig.unavailable !== null) {
        t.skip(`${trig.name}: revoke and un-revoke`, trig.unavailable);
        continue;
      }
      await runGroup(p, trig);
    }
  } finally {
    p.dev.close();
    imp.close();
    data.restore();
    await p.thread?.then((th) => th.stop(), () => {});
  }
}

function resetMethods(bdf: string): string {
  const f = `/sys/bus/pci/devices/${bdf}/reset_method`;
  return existsSync(f) ? readFileSync(f, 'utf8').trim() || 'none' : 'none';
}

// ---- the triggers ------------------------------------------------------------

function configReader(dev: VfioDevice): ConfigReader {
  return (offset, size) => dev.configRead(offset, size);
}

function triggers(p: Probe): Trigger[] {
  const dev = () => p.dev;
  const caps = capabilities(configReader(p.dev));
  const at = (id: number) => caps.find((c) => c.id === id)?.offset ?? null;
  const capList = caps.map((c) => c.name).join(', ') || 'none';
  const cmd = () => dev().configRead(PCI_COMMAND, 2);
  const writeCmd = (name: string, value: (c: number) => number): Action => ({
    name, run: () => {
      const before = cmd();
      dev().configWrite(PCI_COMMAND, 2, value(before));
      const after = cmd();
      return { ok: (after & MEM) === (value(before) & MEM), diag: { before: hex(before), after: hex(after) } };
    },
  });

  // Power management: PMCSR state writes.
  const pm = at(CAP.PM);
  const pmc = pm === null ? 0 : dev().configRead(pm + PCI_PM_PMC, 2);
  const setState = (state: 0 | 1 | 2 | 3, label: string): Action => ({
    name: label, run: () => {
      const before = dev().configRead(pm! + PCI_PM_CTRL, 2);
      dev().configWrite(pm! + PCI_PM_CTRL, 2, (before & ~3) | state);
      const after = dev().configRead(pm! + PCI_PM_CTRL, 2);
      // D0 and D3hot every PM device has; D1/D2 are optional, so only vfio's reaction to them is judged.
      const reached = state === 1 || state === 2 || (after & 3) === state;
      return { ok: reached, diag: { before: powerStateOf(before), after: powerStateOf(after), pmcsr: hex(after) } };
    },
  });
  const supported = (bit: number) => (pmc & bit ? 'supported' : 'not supported by the device: vfio still decides on the state written');

  // PCIe DEVCTL initiate-FLR.
  const exp = at(CAP.EXP);
  const devcap = exp === null ? 0 : dev().configRead(exp + PCI_EXP_DEVCAP, 4);
  // AF initiate-FLR.
  const af = at(CAP.AF);
  const afcap = af === null ? 0 : dev().configRead(af + PCI_AF_CAP, 1);
  const cfgOffset = () => dev().regionInfo(VFIO_PCI_CONFIG_REGION_INDEX).offset;

  const devFlags = dev().info().flags;
  const hot = hotResetInfo(dev());
  const hotUnavailable = !hot.ok
    ? `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO fails ${hot.name}${hot.name === 'ENODEV' ? ': neither a slot nor a bus reset can reach the device' : ''}`
    : hot.value.devices.filter((d) => d.groupId !== p.ctx.device.iommuGroup).length
      ? `a hot reset also resets ${hot.value.devices.filter((d) => d.groupId !== p.ctx.device.iommuGroup).map((d) => `${d.bdf} (group ${d.groupId})`).join(', ')}, whose group this probe does not own`
      : null;

  const lowPowerProbe = (feature: number) => deviceFeature(dev(), encodeLowPower(feature, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_SET));
  const lpEntry = lowPowerProbe(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY);
  const lpWake = lowPowerProbe(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP);
  const lpExit: Action = { name: 'VFIO_DEVICE_FEATURE_LOW_POWER_EXIT', run: () => featureAction(dev(), encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_EXIT)) };
  const getInfo: Action = {
    name: 'VFIO_DEVICE_GET_INFO (its ioctl wrapper runtime-resumes the device)',
    run: () => {
      const r = libc.trySyscall(() => dev().info());
      return { ok: r.ok, diag: { errno: result(r), runtimeStatus: runtimeStatus(p.ctx.device.bdf) } };
    },
  };
  const bdf = p.ctx.device.bdf;
  let wakeFd = -1;

  return [
    {
      kind: 'split', name: 'COMMAND MEM off/on', unavailable: null,
      revoke: writeCmd('COMMAND write with MEM=0', (c) => c & ~MEM),
      hold: [writeCmd('COMMAND rewrite with MEM still 0', (c) => c & ~MEM)],
      unrevoke: writeCmd('COMMAND write with MEM=1', (c) => c | MEM),
    },
    {
      kind: 'split', name: 'PMCSR D3hot/D0',
      unavailable: pm === null ? `no PCI Power Management capability (capabilities: ${capList})` : null,
      noRevoke: [
        setState(1, `PMCSR write D1 (D1 ${supported(PCI_PM_CAP_D1)})`), setState(0, 'PMCSR write D0 from D1'),
        setState(2, `PMCSR write D2 (D2 ${supported(PCI_PM_CAP_D2)})`), setState(0, 'PMCSR write D0 from D2'),
      ],
      revoke: setState(3, 'PMCSR write D3hot'),
      hold: [
        writeCmd('COMMAND write with MEM=1 while in D3hot', (c) => c | MEM),
        setState(3, 'PMCSR rewrite of D3hot'),
      ],
      unrevoke: setState(0, 'PMCSR write D0'),
    },
    {
      kind: 'atomic', name: 'PCIe DEVCTL initiate-FLR',
      unavailable: exp === null ? `no PCI Express capability (capabilities: ${capList})`
        : !(devcap & PCI_EXP_DEVCAP_FLR) ? `DEVCAP has no FLR bit (DEVCAP ${hex(devcap)}): vfio ignores the initiate-FLR write` : null,
      what: 'config write of DEVCTL with BCR_FLR',
      start: (thread) => {
        const data = Buffer.alloc(2);
        data.writeUInt16LE(dev().configRead(exp! + PCI_EXP_DEVCTL, 2) | PCI_EXP_DEVCTL_BCR_FLR);
        return thread.pwrite(dev().deviceFd, data, cfgOffset() + exp! + PCI_EXP_DEVCTL);
      },
    },
    {
      kind: 'atomic', name: 'AF initiate-FLR',
      unavailable: af === null ? `no Advanced Features capability (cap id 0x13; capabilities: ${capList}); QEMU's nvme and ivshmem-plain do not implement it`
        : !(afcap & PCI_AF_CAP_FLR) || !(afcap & PCI_AF_CAP_TP) ? `AF capability without FLR and TP (AF_CAP ${hex(afcap)})` : null,
      what: 'config write of AF_CTRL with FLR',
      start: (thread) => thread.pwrite(dev().deviceFd, Buffer.from([PCI_AF_CTRL_FLR]), cfgOffset() + af! + PCI_AF_CTRL),
    },
    {
      kind: 'atomic', name: 'VFIO_DEVICE_RESET',
      unavailable: devFlags & VFIO_DEVICE_FLAGS_RESET ? null : `VFIO_DEVICE_FLAGS_RESET clear (device flags ${hex(devFlags)}): no reset method`,
      what: 'VFIO_DEVICE_RESET ioctl',
      start: (thread) => thread.ioctl(dev().deviceFd, VFIO_DEVICE_RESET),
    },
    {
      kind: 'atomic', name: 'VFIO_DEVICE_PCI_HOT_RESET', unavailable: hotUnavailable,
      what: `VFIO_DEVICE_PCI_HOT_RESET ioctl with our group fd (resets ${hot.ok ? hot.value.devices.map((d) => d.bdf).join(', ') : '?'})`,
      start: (thread) => thread.ioctl(dev().deviceFd, VFIO_DEVICE_PCI_HOT_RESET, encodeHotReset([dev().groupFd])),
    },
    {
      kind: 'split', name: 'LOW_POWER_ENTRY / LOW_POWER_EXIT',
      unavailable: lpEntry.ok ? null : `PROBE of VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY fails ${lpEntry.name}`,
      revoke: { name: 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY', run: () => featureAction(dev(), encodeLowPower(VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY)) },
      hold: [getInfo],
      unrevoke: lpExit,
    },
    {
      kind: 'split', name: 'LOW_POWER_ENTRY_WITH_WAKEUP / LOW_POWER_EXIT',
      unavailable: lpWake.ok ? null : `PROBE of VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP fails ${lpWake.name}`,
      revoke: {
        name: 'VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP (eventfd)',
        run: () => {
          wakeFd = libc.eventfd(0, libc.EFD_CLOEXEC | libc.EFD_NONBLOCK);
          return featureAction(dev(), encodeLowPowerEntryWithWakeup(wakeFd));
        },
      },
      hold: [wakeupAction(bdf, () => wakeFd, getInfo)],
      unrevoke: {
        name: lpExit.name, run: () => {
          const r = lpExit.run();
          if (wakeFd >= 0) closeFd(wakeFd);
          wakeFd = -1;
          return r;
        },
      },
    },
    { kind: 'close', name: 'device fd close (permanent)', unavailable: null },
  ];
}

function featureAction(dev: VfioDevice, arg: Buffer): { ok: boolean; diag?: Record<string, unknown> } {
  const r = deviceFeature(dev, arg);
  return { ok: r.ok, diag: r.ok ? undefined : { errno: r.name } };
}

/** The eventfd's counter (reading resets it), 0 when it was never signalled. */
function eventfdCount(fd: number): number {
  const b = Buffer.alloc(8);
  const r = libc.trySyscall(() => libc.read(fd, b));
  return r.ok ? Number(b.readBigUInt64LE(0)) : 0;
}

function runtimeStatus(bdf: string): string {
  const f = `/sys/bus/pci/devices/${bdf}/power/runtime_status`;
  return existsSync(f) ? readFileSync(f, 'utf8').trim() : 'n/a (no CONFIG_PM)';
}

/**
 * The wakeup of LOW_POWER_ENTRY_WITH_WAKEUP: once the device has runtime-
 * suspended, any ioctl resumes it, which signals the eventfd and leaves low
 * power but (contract rough edge) does not un-revoke.
 */
function wakeupAction(bdf: string, fd: () => number, getInfo: Action): Action | { name: string; skip: string } {
  const name = 'a wakeup (VFIO_DEVICE_GET_INFO on the runtime-suspended device; eventfd signalled once)';
  if (!existsSync(`/sys/bus/pci/devices/${bdf}/power/runtime_status`)) {
    return { name, skip: 'kernel without CONFIG_PM: the device never runtime-suspends, so no wakeup can happen' };
  }
  return {
    name, run: () => {
      const deadline = Date.now() + 5000;
      while (runtimeStatus(bdf) !== 'suspended' && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 50);
      const before = runtimeStatus(bdf);
      const r = getInfo.run();
      const count = eventfdCount(fd());
      return { ok: before === 'suspended' && r.ok && count === 1, diag: { runtimeStatusBefore: before, eventfdCount: count, ...r.diag } };
    },
  };
}

// ---- one group ---------------------------------------------------------------

function report(p: Probe, handle: number): { mapped: boolean; count: number; errno: string } {
  const r = p.imp.report(handle, 0);
  return { mapped: r.value.mapped, count: r.value.invalidateCount, errno: result(r) };
}

async function runGroup(p: Probe, trig: Trigger): Promise<void> {
  const { t, imp } = p;
  const name = trig.name;
  const fdA = exportBar(t, p.ctx, p.dev, p.info, `${name}: export buffer A (to be imported and mapped)`);
  const fdB = exportBar(t, p.ctx, p.dev, p.info, `${name}: export buffer B (attached only while revoked and after)`);
  const extraHandles: number[] = [];
  let handle = 0;
  try {
    if (fdA === null || fdB === null) return;
    const ir = importFor(imp, fdA, p.edu, p.ctx.device, p.region);
    if (!t.ok(ir.ok, `${name}: dynamic import of buffer A for ${p.edu.id}`, importDiag(ir)) || !ir.ok) return;
    handle = ir.value.handle;
    const m = imp.map(handle);
    if (!t.ok(m.ok && m.value.mapped, `${name}: map buffer A`, { errno: result(m), mapError: m.value.errorName })) return;
    const g: Group = { p, name, fdA, fdB, handle, count0: m.value.invalidateCount, extraHandles };
    beforeCheck(g);

    if (trig.kind === 'split') await runSplit(g, trig);
    else if (trig.kind === 'atomic') await runAtomic(g, trig);
    else runClose(g);
  } finally {
    if (handle) imp.release(handle);
    for (const h of extraHandles) imp.release(h);
    if (fdA !== null) closeFd(fdA);
    if (fdB !== null) closeFd(fdB);
  }
}

/** The exporter's BAR as the data checks see it: written and read through VFIO at the first and last page. */
function dataTarget(p: Probe, dev = p.dev) {
  return { dev, region: p.info, offsets: dataOffsets(p.info.size) };
}

function dataCheck(g: Group, when: string, dev = g.p.dev, handle = g.handle): void {
  const { p } = g;
  if (p.dataSkip) return void p.t.skip(`${g.name}: ${when}: data path through the mapping`, p.dataSkip);
  checkDataPath(p.t, `${g.name}: ${when}`, p.imp, handle, dataTarget(p, dev));
}

/**
 * A's mapping works before the trigger, so a failure while revoked is the
 * revoke's. The first group checks the whole data path (both directions, first
 * and last page); later groups, whose fresh maps the previous group's `after`
 * already checked in full, check one edu DMA read at the last page: each edu
 * transfer costs 100 ms, and this saves three per group (about 7 s a run).
 */
function beforeCheck(g: Group): void {
  const { p } = g;
  if (!p.fullBeforeDone || p.dataSkip) {
    dataCheck(g, 'before');
    p.fullBeforeDone = true;
    return;
  }
  const target = dataTarget(p);
  checkDmaRead(p.t, `${g.name}: before`, p.imp, g.handle, target, target.offsets[target.offsets.length - 1]);
}

/** Revoked state: A's mapping dropped and unusable, map and attach refused. Window-aware for atomic triggers. */
function checkRevoked(g: Group, atomic: boolean): { mapAtMs: number } {
  const { p, name, handle } = g;
  const { t, imp } = p;
  // The refusals first: for a reset the revoked window is as long as the reset itself.
  const t0 = performance.now();
  const m = imp.map(handle);
  const mapAtMs = performance.now() - t0;
  const ib = importFor(imp, g.fdB, p.edu, p.ctx.device, p.region);
  if (ib.ok) g.extraHandles.push(ib.value.handle);
  const afterImport = report(p, handle);
  if (m.ok) imp.unmap(handle);

  const missed = (count: number) => atomic && count >= g.count0 + 2;
  const why = (count: number, when: string) =>
    `the trigger un-revoked (invalidate count ${count}) ${when}: revoked window missed (reset methods ${resetMethods(p.ctx.device.bdf)})`;
  if (m.ok && missed(m.value.invalidateCount)) t.skip(`${name}: revoked: map of A fails ENODEV`, why(m.value.invalidateCount, 'before the map ran'));
  else t.equal(result(m), 'ENODEV', `${name}: revoked: map of A fails ENODEV`, { mapError: m.value.errorName, invalidateCount: m.value.invalidateCount });
  if (ib.ok && missed(afterImport.count)) t.skip(`${name}: revoked: a new attach of B fails ENODEV`, why(afterImport.count, 'around the attach'));
  else {
    t.ok(!ib.ok && ib.name === 'ENODEV' && ib.value.stage === 'attach', `${name}: revoked: a new attach of B fails ENODEV`,
      { ...importDiag(ib), invalidateCount: afterImport.count });
  }

  const rep = report(p, handle);
  t.ok(!rep.mapped, `${name}: revoked: the importer dropped A's mapping in invalidate_mappings`, rep);
  checkNoDataPath(t, `${name}: revoked`, imp, handle, 0);
  return { mapAtMs };
}

function checkAfter(g: Group): void {
  const { p, name, handle } = g;
  const { t, imp } = p;
  const m = imp.map(handle);
  if (t.ok(m.ok && m.value.mapped, `${name}: after: a fresh map of A works`, { errno: result(m), mapError: m.value.errorName })) dataCheck(g, 'after');
  const ib = importFor(imp, g.fdB, p.edu, p.ctx.device, p.region);
  t.ok(ib.ok, `${name}: after: a new attach of B works`, importDiag(ib));
  if (ib.ok) imp.release(ib.value.handle);
}

async function runSplit(g: Group, trig: SplitTrigger): Promise<void> {
  const { p, name, handle, count0 } = g;
  const { t, imp } = p;
  for (const a of trig.noRevoke ?? []) {
    const r = a.run();
    const w = imp.waitInvalidate(handle, count0, 0);
    const rep = report(p, handle);
    t.ok(r.ok && result(w) === 'ETIMEDOUT' && rep.mapped, `${name}: ${a.name} does not revoke (no invalidate, mapping kept)`,
      { ...r.diag, waitResult: result(w), invalidateCount: rep.count, mapped: rep.mapped });
  }

  const r = trig.revoke.run();
  if (!t.ok(r.ok, `${name}: ${trig.revoke.name} succeeds`, r.diag)) return;
  const w = imp.waitInvalidate(handle, count0, 0);
  t.ok(w.ok && w.value.invalidateCount === count0 + 1, `${name}: revoke: invalidate_mappings ran once before the call returned`,
    { before: count0, after: w.value.invalidateCount, waitResult: result(w) });
  checkRevoked(g, false);

  for (const a of trig.hold ?? []) {
    if ('skip' in a) {
      t.skip(`${name}: ${a.name}`, a.skip);
      continue;
    }
    const hr = a.run();
    const hw = imp.waitInvalidate(handle, count0 + 1, 0);
    const m = imp.map(handle);
    t.ok(hr.ok && result(hw) === 'ETIMEDOUT' && result(m) === 'ENODEV', `${name}: ${a.name} does not un-revoke (no invalidate, map still ENODEV)`,
      { ...hr.diag, waitResult: result(hw), invalidateCount: hw.value.invalidateCount, map: result(m) });
    if (m.ok) imp.unmap(handle);
  }

  const u = trig.unrevoke.run();
  t.ok(u.ok, `${name}: ${trig.unrevoke.name} succeeds`, u.diag);
  const uw = imp.waitInvalidate(handle, count0 + 1, 0);
  t.ok(uw.ok && uw.value.invalidateCount === count0 + 2, `${name}: un-revoke at ${trig.unrevoke.name}: invalidate_mappings ran again before the call returned`,
    { before: count0 + 1, after: uw.value.invalidateCount, waitResult: result(uw) });
  checkAfter(g);
}

async function runAtomic(g: Group, trig: AtomicTrigger): Promise<void> {
  const { p, name, handle, count0 } = g;
  const { t, imp } = p;
  p.thread ??= SyscallThread.take(WORKER_REVOKE_TIMEOUT_MS * 2);
  const thread = await p.thread;
  const started = Date.now();
  const done = trig.start(thread);
  // Blocks the main thread; the syscall thread runs the trigger meanwhile.
  const w = imp.waitInvalidate(handle, count0, WORKER_REVOKE_TIMEOUT_MS);
  const seenMs = Date.now() - started;
  t.ok(w.ok && w.value.invalidateCount >= count0 + 1, `${name}: revoke: invalidate_mappings ran while the ${trig.what} was in progress`,
    { before: count0, after: w.value.invalidateCount, waitResult: result(w), waitedMs: seenMs });
  const window = w.ok ? checkRevoked(g, true) : undefined;
  const res = await done;
  t.comment(`${name}: the ${trig.what} took ${Math.round(res.ms)} ms on the syscall thread; the revoke was seen ${seenMs} ms after starting it, the map ran ${window ? window.mapAtMs.toFixed(1) : '-'} ms after that`);
  // A pwrite returns the byte count, an ioctl 0.
  if (!t.ok(res.ok, `${name}: ${trig.what} succeeds`, { result: res.ok ? res.value : res.name, ms: Math.round(res.ms) })) return;
  const uw = imp.waitInvalidate(handle, count0 + 1, 0);
  t.ok(uw.ok && uw.value.invalidateCount === count0 + 2, `${name}: un-revoke after the reset: invalidate_mappings ran a second time before the call returned`,
    { before: count0 + 1, after: uw.value.invalidateCount, waitResult: result(uw), triggerMs: Math.round(res.ms) });
  checkAfter(g);
}

function runClose(g: Group): void {
  const { p, name, handle, count0 } = g;
  const { t, imp } = p;
  const bdf = p.ctx.device.bdf;
  p.dev.close();
  const w = imp.waitInvalidate(handle, count0, 0);
  t.ok(w.ok && w.value.invalidateCount === count0 + 1, `${name}: revoke: closing the device fd ran invalidate_mappings before close() returned`,
    { before: count0, after: w.value.invalidateCount, waitResult: result(w) });
  checkRevoked(g, false);

  p.dev = VfioDevice.open(bdf, p.ctx.device.iommuGroup);
  t.pass(`${name}: reopen ${bdf} through ${p.dev.groupPath}`);
  const c = p.dev.configRead(PCI_COMMAND, 2);
  p.dev.configWrite(PCI_COMMAND, 2, c & ~MEM);
  p.dev.configWrite(PCI_COMMAND, 2, c | MEM);
  const hw = imp.waitInvalidate(handle, count0 + 1, 0);
  const m = imp.map(handle);
  t.ok(result(hw) === 'ETIMEDOUT' && result(m) === 'ENODEV', `${name}: reopening and a MEM off/on cycle do not revive A (no invalidate, map ENODEV)`,
    { waitResult: result(hw), invalidateCount: hw.value.invalidateCount, map: result(m), mapError: m.value.errorName });
  if (m.ok) imp.unmap(handle);
  const ib = importFor(imp, g.fdB, p.edu, p.ctx.device, p.region);
  if (ib.ok) g.extraHandles.push(ib.value.handle);
  t.ok(!ib.ok && ib.name === 'ENODEV', `${name}: nor B: a new attach of a buffer exported before the close fails ENODEV`, importDiag(ib));

  // The reopened device exports live buffers again.
  p.info = p.dev.regionInfo(p.region);
  const fdC = exportBar(t, p.ctx, p.dev, p.info, `${name}: export buffer C from the reopened device`);
  if (fdC === null) return;
  try {
    const ic = importFor(imp, fdC, p.edu, p.ctx.device, p.region);
    if (!t.ok(ic.ok, `${name}: import buffer C`, importDiag(ic)) || !ic.ok) return;
    g.extraHandles.push(ic.value.handle);
    const mc = imp.map(ic.value.handle);
    if (t.ok(mc.ok, `${name}: map buffer C`, { errno: result(mc), mapError: mc.value.errorName })) {
      dataCheck(g, 'buffer C from the reopened device', p.dev, ic.value.handle);
    }
  } finally {
    closeFd(fdC);
  }
}
