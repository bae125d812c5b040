// reset-and-mem-toggle: revoke/un-revoke paths with a live dma-buf (device reset,
// PCI_COMMAND.MEM off and on), then close the device before the dma-buf so the
// cleanup path runs on a live buffer. No kernel report may appear, and after
// the last close the buffer must be gone from debugfs.
import { fstatSync } from 'node:fs';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import { PCI_COMMAND, PCI_COMMAND_MEMORY as MEM, VFIO_DEVICE_FLAGS_RESET, VfioDevice, type ExportRequest } from '../lib/vfio.ts';
import { closeFd, exportDiag, hex, readBufinfo, type ProbeContext } from './common.ts';
import { checkNoKernelReports } from './observe.ts';

const listed = (ino: number) => {
  const b = readBufinfo();
  return b.ok ? { ok: true as const, listed: b.entries.some((e) => e.ino === ino && e.expName === 'vfio_pci_core') } : b;
};

export default async function resetAndMemToggle(ctx: ProbeContext): Promise<void> {
  const { t, abi } = ctx;
  const region = ctx.params.region as number;
  const km = libc.trySyscall(() => Kmsg.mark());
  let dev: VfioDevice | undefined;
  let fd = -1;
  let ino = -1;
  try {
    dev = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
    const info = dev.regionInfo(region);
    const req: ExportRequest = { region, ranges: [{ offset: 0, length: info.size }] };
    const r = dev.exportDmabuf(abi, req);
    if (!t.ok(r.ok && r.value > 0, `export region ${region} as a dma-buf`, exportDiag(abi, req, r)) || !r.ok) return;
    fd = r.value;
    ino = fstatSync(fd).ino;
    const before = listed(ino);
    if (before.ok) t.ok(before.listed, `dma-buf (ino ${ino}) listed in bufinfo while open`);
    else t.skip('dma-buf listed in bufinfo while open', before.reason);

    const devFlags = dev.info().flags;
    const reset = libc.trySyscall(() => dev!.reset());
    if (reset.ok) t.pass('VFIO_DEVICE_RESET succeeds with a dma-buf alive');
    else if (!(devFlags & VFIO_DEVICE_FLAGS_RESET)) {
      t.skip('VFIO_DEVICE_RESET with a dma-buf alive', `device has no reset method (VFIO_DEVICE_FLAGS_RESET clear); ioctl gave ${reset.name}`);
    } else t.fail('VFIO_DEVICE_RESET succeeds with a dma-buf alive', { errno: reset.name, deviceFlags: hex(devFlags) });

    const cmd = dev.configRead(PCI_COMMAND, 2);
    dev.configWrite(PCI_COMMAND, 2, cmd & ~MEM);
    const off = dev.configRead(PCI_COMMAND, 2);
    t.equal(off & MEM, 0, 'PCI_COMMAND.MEM reads back 0 after clearing it', { before: hex(cmd), after: hex(off) });
    t.equal(libc.trySyscall(() => libc.lseek(fd, 0, libc.SEEK_END)), { ok: true, value: info.size }, 'revoked dma-buf fd still reports its size');
    if (ctx.params.closeWhileMemOff) {
      t.comment('closing the device fd with memory decoding off');
    } else {
      dev.configWrite(PCI_COMMAND, 2, off | MEM);
      const on = dev.configRead(PCI_COMMAND, 2);
      t.equal(on & MEM, MEM, 'PCI_COMMAND.MEM reads back 1 after setting it', { before: hex(off), after: hex(on) });
    }
  } finally {
    // Device first: vfio_pci_dma_buf_cleanup() then revokes a still-open buffer for good.
    dev?.close();
    if (fd > 0) {
      const c = closeFd(fd);
      t.ok(c.ok, 'close the dma-buf fd after the device fd', c.ok ? undefined : { errno: c.name });
    }
    checkNoKernelReports(t, km, 'during reset, MEM toggle and close');
    if (ino >= 0) {
      const after = listed(ino);
      if (after.ok) t.ok(!after.listed, `dma-buf (ino ${ino}) gone from bufinfo after closing`);
      else t.skip('dma-buf gone from bufinfo after closing', after.reason);
    }
  }
}
