// lifetime: what a dma-buf's life does to the kernel's bookkeeping.
// - The dma-buf fd outlives the device fd: still a valid fd with its size, but
//   revoked for good (MAP_FILE ENODEV), and gone once closed.
// - EMFILE: with RLIMIT_NOFILE so low the export cannot get an fd, the ioctl
//   fails EMFILE and nothing leaks (bufinfo, /proc/self/fd, module refcount).
// - The 7.1 regression: MEM off, then close the device fd with an importer
//   attached: no refcount_t warning, and the close returns (it runs on a
//   syscall thread so a hang is reported instead of hanging the runner).
// Leaks are judged on debugfs bufinfo and /sys/module/vfio_pci_core/refcnt:
// every live vfio dma-buf holds a module reference (dma_buf_export takes
// exp_info.owner), so the count returns to its baseline only if every buffer
// was released. (rmmod itself needs the devices unbound, which the host does
// only after the probes.)
import { existsSync, fstatSync } from 'node:fs';
import { Iommufd, IOMMU_DEV } from '../lib/iommufd.ts';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import { SyscallThread } from '../lib/systhread.ts';
import { VfioDevice, type ExportRequest } from '../lib/vfio.ts';
import { closeFd, exportDiag, fdinfo, outcome, type ProbeContext } from './common.ts';
import {
  baseline, checkBackToBaseline, checkNoKernelReports, commandDiag, moduleRefcnt, openFds, setMemoryDecoding, vfioDmabufInos, VFIO_PCI_CORE,
} from './observe.ts';

/** How long a device close may take before it counts as hung. */
const CLOSE_DEADLINE_MS = 30_000;

export default async function lifetime(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const km = libc.trySyscall(() => Kmsg.mark());
  // Taken (and, if not prestarted, started) before anything else: the EMFILE check below compares
  // /proc/self/fd and lowers RLIMIT_NOFILE, which a thread starting meanwhile would disturb.
  const thread = await SyscallThread.take(CLOSE_DEADLINE_MS);
  const base = baseline();
  t.comment(`baseline: ${base.inos ? `${base.inos.length} vfio dma-buf(s) in bufinfo` : base.bufinfoReason}, ${VFIO_PCI_CORE} refcnt ${base.refcnt ?? 'unreadable'}`);
  try {
    outlivesDevice(ctx);
    checkBackToBaseline(t, base, 'after the dma-buf outlived its device');
    emfile(ctx);
    checkBackToBaseline(t, base, 'after the EMFILE export');
    await memOffThenClose(ctx, thread);
    checkBackToBaseline(t, base, 'after MEM off and close');
  } finally {
    await thread.stop();
    checkNoKernelReports(t, km, 'during the lifetime checks');
  }
}

function wholeBar(ctx: ProbeContext, dev: VfioDevice): ExportRequest {
  const region = ctx.params.region as number;
  return { region, ranges: [{ offset: 0, length: dev.regionInfo(region).size }] };
}

const listed = (ino: number) => {
  const b = vfioDmabufInos();
  return b.ok ? b.inos.includes(ino) : null;
};

/** Export, import into iommufd, close the device fd first: the buffer lives on, revoked for good. */
function outlivesDevice(ctx: ProbeContext): void {
  const { t, abi } = ctx;
  let dev: VfioDevice | undefined = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  const iommufd = existsSync(IOMMU_DEV) ? Iommufd.open() : undefined;
  let fd = -1;
  try {
    const on = setMemoryDecoding(dev, true);
    if (!t.ok(on.ok, 'PCI_COMMAND.MEM is on before exporting', commandDiag(on))) return;
    const req = wholeBar(ctx, dev);
    const size = Number(req.ranges[0].length);
    const refBefore = moduleRefcnt();
    const r = dev.exportDmabuf(abi, req);
    if (!t.ok(r.ok && r.value > 0, 'export the BAR as a dma-buf', exportDiag(abi, req, r)) || !r.ok) return;
    fd = r.value;
    const refDuring = moduleRefcnt();
    if (refBefore !== null && refDuring !== null) {
      t.equal(refDuring, refBefore + 1, `a live dma-buf holds one ${VFIO_PCI_CORE} module reference (the leak checks rely on it)`);
    } else t.skip(`a live dma-buf holds one ${VFIO_PCI_CORE} module reference`, 'refcnt not readable');
    const ioasId = iommufd?.allocIoas();
    const map = () => {
      const m = iommufd!.mapFile({ ioasId: ioasId!, fd, start: 0, length: size });
      if (m.ok) iommufd!.unmap(ioasId!, m.value.iova, m.value.length);
      return outcome(m);
    };
    // An importer attached while the device closes: the close has to revoke it.
    const attached = iommufd?.mapFile({ ioasId: ioasId!, fd, start: 0, length: size });
    if (attached) t.ok(attached.ok, 'MAP_FILE before the device fd closes succeeds', attached.ok ? undefined : { errno: attached.name });

    dev.close();
    dev = undefined;
    const st = libc.trySyscall(() => fstatSync(fd));
    t.ok(st.ok, 'the dma-buf fd is still a valid fd after the device fd closed');
    t.equal(libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END)), { ok: true, value: size }, 'lseek(SEEK_END) still gives the size');
    t.ok(/^exp_name:\s*vfio_pci_core$/m.test(fdinfo(fd)), 'fdinfo still names vfio_pci_core as the exporter', { fdinfo: fdinfo(fd) });
    if (iommufd) t.equal(map(), 'ENODEV', 'MAP_FILE of the orphaned dma-buf fails ENODEV (revoked for good)');
    else t.skip('MAP_FILE of the orphaned dma-buf fails ENODEV', `no ${IOMMU_DEV}`);
    const ino = fstatSync(fd).ino;
    const during = listed(ino);
    if (during === null) t.skip('the orphaned dma-buf is still listed in bufinfo', 'bufinfo unreadable');
    else t.ok(during, `the orphaned dma-buf (ino ${ino}) is still listed in bufinfo while its fd is open`);
    iommufd?.close();
    const c = closeFd(fd);
    fd = -1;
    t.ok(c.ok, 'close the orphaned dma-buf fd', c.ok ? undefined : { errno: c.name });
    const after = listed(ino);
    if (after === null) t.skip('the orphaned dma-buf is gone from bufinfo', 'bufinfo unreadable');
    else t.ok(!after, `the orphaned dma-buf (ino ${ino}) is gone from bufinfo after its last close`);
  } finally {
    dev?.close();
    iommufd?.close();
    if (fd > 0) closeFd(fd);
  }
}

/** RLIMIT_NOFILE set to the lowest free fd: dma_buf_fd() finds no slot, the export must fail EMFILE and release the buffer. */
function emfile(ctx: ProbeContext): void {
  const { t, abi } = ctx;
  const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  try {
    const req = wholeBar(ctx, dev);
    const fdsBefore = openFds();
    const bufBefore = vfioDmabufInos();
    const refBefore = moduleRefcnt();
    // Every fd below the lowest free one is taken, so a limit there leaves no slot at all.
    const probeFd = libc.open('/dev/null', libc.O_RDONLY | libc.O_CLOEXEC);
    libc.close(probeFd);
    const saved = libc.getrlimit(libc.RLIMIT_NOFILE);
    let r: libc.SysResult<number>;
    libc.setrlimit(libc.RLIMIT_NOFILE, BigInt(probeFd), saved.max);
    try {
      r = dev.exportDmabuf(abi, req);
    } finally {
      libc.setrlimit(libc.RLIMIT_NOFILE, saved.cur, saved.max);
    }
    if (r.ok && r.value > 0) closeFd(r.value);
    t.equal(outcome(r), 'EMFILE', `export with RLIMIT_NOFILE at ${probeFd} (no free fd slot) fails EMFILE`, exportDiag(abi, req, r));
    t.equal(openFds(), fdsBefore, 'the failed export leaves /proc/self/fd as it was');
    const bufAfter = vfioDmabufInos();
    if (bufBefore.ok && bufAfter.ok) t.equal(bufAfter.inos, bufBefore.inos, 'the failed export leaves no dma-buf in bufinfo');
    else t.skip('the failed export leaves no dma-buf in bufinfo', bufBefore.ok ? (bufAfter as { reason: string }).reason : bufBefore.reason);
    const refAfter = moduleRefcnt();
    if (refBefore !== null && refAfter !== null) t.equal(refAfter, refBefore, `the failed export leaves the ${VFIO_PCI_CORE} refcnt as it was`);
    else t.skip(`the failed export leaves the ${VFIO_PCI_CORE} refcnt as it was`, 'refcnt not readable');
    const again = dev.exportDmabuf(abi, req);
    if (again.ok && again.value > 0) closeFd(again.value);
    t.equal(outcome(again), 'OK', 'with the limit restored the same export succeeds', exportDiag(abi, req, again));
  } finally {
    dev.close();
  }
}

/**
 * The 7.1 regression: revoke by clearing MEM, then close the device fd, whose
 * cleanup revokes again (an already revoked buffer). 7.1 dropped the revoke
 * reference twice there (refcount_t: underflow) and could wait forever.
 */
async function memOffThenClose(ctx: ProbeContext, thread: SyscallThread): Promise<void> {
  const { t, abi } = ctx;
  const km = libc.trySyscall(() => Kmsg.mark());
  const dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
  const iommufd = existsSync(IOMMU_DEV) ? Iommufd.open() : undefined;
  let deviceFdOpen = true;
  let fd = -1;
  try {
    const req = wholeBar(ctx, dev);
    const r = dev.exportDmabuf(abi, req);
    if (!t.ok(r.ok && r.value > 0, 'export the BAR as a dma-buf', exportDiag(abi, req, r)) || !r.ok) return;
    fd = r.value;
    if (iommufd) {
      const ioasId = iommufd.allocIoas();
      const m = iommufd.mapFile({ ioasId, fd, start: 0, length: req.ranges[0].length });
      t.ok(m.ok, 'MAP_FILE imports the buffer before the revoke', m.ok ? undefined : { errno: m.name });
    }
    const off = setMemoryDecoding(dev, false);
    t.ok(off.ok, 'PCI_COMMAND.MEM reads back 0 after clearing it', commandDiag(off));
    // close(2) gives up the fd number at once, even if the release behind it hangs: never close it twice.
    deviceFdOpen = false;
    const c = await thread.close(dev.deviceFd, CLOSE_DEADLINE_MS);
    t.ok(c.ok, `closing the device fd with MEM off returns within ${CLOSE_DEADLINE_MS / 1000} s`, { result: c.ok ? 'OK' : c.name, ms: Math.round(c.ms) });
    checkNoKernelReports(t, km, '(no refcount_t underflow) when closing the device fd with MEM off');
  } finally {
    // The device fd went through the thread; the group and container are closed here.
    if (deviceFdOpen) libc.trySyscall(() => libc.close(dev.deviceFd));
    for (const x of [dev.groupFd, dev.containerFd]) libc.trySyscall(() => libc.close(x));
    iommufd?.close();
    if (fd > 0) closeFd(fd);
  }
}
