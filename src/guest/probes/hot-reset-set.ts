// hot-reset-set: VFIO_DEVICE_PCI_HOT_RESET resets every device of the reset
// set (here the functions of one multifunction device), so it must revoke the
// dma-bufs of all of them, not only of the device whose fd made the call, and
// un-revoke each opened one afterwards (contract section 3, core.c:2579-2580
// and 2607-2612). Each device exports its BAR; hwlab_importer imports and maps
// both on behalf of the edu; the hot reset goes through the first device's fd
// with the group fd(s) as proof of ownership. Then, for each importer:
// invalidated, the mapping gone, and a remap works again (un-revoked).
import { Importer } from '../lib/importer.ts';
import { Kmsg } from '../lib/kmsg.ts';
import * as libc from '../lib/libc.ts';
import { hotReset, hotResetInfo, PCI_COMMAND, PCI_COMMAND_MEMORY as MEM, VfioDevice } from '../lib/vfio.ts';
import type { GuestDevice } from '../../protocol/protocol.ts';
import { closeFd, deviceById, hex, type ProbeContext } from './common.ts';
import { ensureMemoryOn, exportBar, importDiag, importerDevice, importFor, result } from './importer-common.ts';
import { baseline, checkBackToBaseline, checkNoKernelReports } from './observe.ts';

interface Side { label: string; dev: VfioDevice; d: GuestDevice; handle: number | null; invalidatesBefore: number }

export default async function hotResetSet(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const region = ctx.params.region as number;
  const partner = deviceById(ctx, ctx.params.partner as string);
  const edu = importerDevice(ctx);
  const km = libc.trySyscall(() => Kmsg.mark());
  const base = baseline();
  const imp = Importer.open();
  const fds: number[] = [];
  const sides: Side[] = [];
  try {
    const first = VfioDevice.open(ctx.device.bdf, ctx.device.iommuGroup);
    sides.push({ label: ctx.device.id, dev: first, d: ctx.device, handle: null, invalidatesBefore: 0 });
    // Functions without ACS share an IOMMU group: the second comes from the same group fd.
    const second = partner.iommuGroup === ctx.device.iommuGroup
      ? VfioDevice.sibling(first, partner.bdf)
      : VfioDevice.open(partner.bdf, partner.iommuGroup);
    sides.push({ label: partner.id, dev: second, d: partner, handle: null, invalidatesBefore: 0 });

    const info = hotResetInfo(first);
    const set = info.ok ? info.value.devices.map((d) => d.bdf) : [];
    if (!info.ok || !set.includes(partner.bdf)) {
      t.skip(`a hot reset of ${ctx.device.id} revokes ${partner.id}'s dma-buf too`,
        info.ok ? `a hot reset of ${ctx.device.bdf} resets only ${set.join(', ')}, not ${partner.bdf}: put both on one port as functions of one device`
          : `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO fails ${info.name}`);
      return;
    }
    t.comment(`hot reset set of ${ctx.device.bdf}: ${info.value.devices.map((d) => `${d.bdf} (group ${d.groupId})`).join(', ')}`);

    for (const s of sides) {
      const mem = ensureMemoryOn(s.dev);
      const r = s.dev.regionInfo(region);
      const fd = exportBar(t, ctx, s.dev, r, `${s.label}: export BAR ${region} (${hex(r.size)} bytes), MEM ${(mem.after & MEM) ? 'on' : 'off'}`);
      if (fd === null) return;
      fds.push(fd);
      const im = importFor(imp, fd, edu, s.d, region);
      if (!t.ok(im.ok, `${s.label}: dynamic import for ${edu.id}`, importDiag(im)) || !im.ok) return;
      s.handle = im.value.handle;
      const m = imp.map(s.handle);
      if (!t.ok(m.ok && m.value.mapped, `${s.label}: map`, m.ok ? { nents: m.value.nents, error: m.value.errorName } : { errno: m.name })) return;
      s.invalidatesBefore = m.value.invalidateCount;
    }

    const groupFds = [...new Set(sides.map((s) => s.dev.groupFd))];
    const r = hotReset(first, groupFds);
    if (!t.ok(r.ok, `VFIO_DEVICE_PCI_HOT_RESET through ${ctx.device.id}'s fd with ${groupFds.length} group fd(s)`, { result: result(r) })) return;

    for (const s of sides) {
      const rep = imp.report(s.handle!, 0);
      const got = rep.ok ? rep.value.invalidateCount - s.invalidatesBefore : -1;
      // Revoke and un-revoke each call invalidate_mappings: one at least, two when MEM came back on.
      t.ok(rep.ok && got >= 1, `${s.label}: its importer was invalidated by the hot reset${s.dev === first ? '' : ' of the other device'}`,
        rep.ok ? { invalidates: got, mapped: rep.value.mapped } : { errno: rep.name });
      t.ok(rep.ok && !rep.value.mapped, `${s.label}: the mapping from before the reset is gone`, rep.ok ? { mapped: rep.value.mapped } : { errno: rep.name });
      const cmd = s.dev.configRead(PCI_COMMAND, 2);
      const remap = imp.remap(s.handle!);
      // Un-revoke happens only where memory decoding is on after the reset (config restored).
      if (cmd & MEM) {
        t.ok(remap.ok && remap.value.mapped, `${s.label}: remap works after the reset (un-revoked, MEM restored)`,
          remap.ok ? { nents: remap.value.nents, error: remap.value.errorName, command: hex(cmd) } : { errno: remap.name, command: hex(cmd) });
      } else {
        t.ok(!remap.ok || !remap.value.mapped, `${s.label}: remap refused while MEM is off after the reset`, { command: hex(cmd) });
      }
    }
  } finally {
    for (const s of sides) if (s.handle !== null) imp.release(s.handle);
    imp.close();
    for (const fd of fds) closeFd(fd);
    // The sibling first: it borrows the first device's group and container fds.
    for (const s of [...sides].reverse()) s.dev.close();
  }
  checkBackToBaseline(t, base, 'after the hot reset set');
  checkNoKernelReports(t, km, 'during the hot reset of the set');
}
