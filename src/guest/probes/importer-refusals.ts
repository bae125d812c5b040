// importer-refusals: what the vfio exporter refuses an importer (contract
// section 4). Attach refuses, in this order: no allow_peer2peer (EOPNOTSUPP),
// a revoked buffer (ENODEV), no invalidate_mappings op (EOPNOTSUPP); map
// refuses a revoked buffer (ENODEV). A buffer exported with memory decoding
// off is born revoked (section 2). After MEM on everything works again.
import { Importer, type ImportMode } from '../lib/importer.ts';
import { PCI_COMMAND, PCI_COMMAND_MEMORY as MEM } from '../lib/vfio.ts';
import { closeFd, hex, withDevice, type ProbeContext } from './common.ts';
import {
  checkDataPath, dataOffsets, ensureMemoryOn, exportBar, importDiag, importerDevice, importFor, prepareDataPath, result,
} from './importer-common.ts';

export default async function importerRefusals(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const region = ctx.params.region as number;
  const edu = importerDevice(ctx);
  const imp = Importer.open();
  const handles: number[] = [];
  const fds: number[] = [];
  const data = prepareDataPath(t, ctx.device, edu);
  try {
    await withDevice(ctx, (dev) => {
      const mem = ensureMemoryOn(dev);
      t.ok((mem.after & MEM) !== 0, 'PCI_COMMAND.MEM is set before exporting', { before: hex(mem.before), after: hex(mem.after) });
      const info = dev.regionInfo(region);
      const fd = exportBar(t, ctx, dev, info, `export BAR ${region} (${hex(info.size)} bytes) with memory decoding on`);
      if (fd === null) return;
      fds.push(fd);

      /** IMPORT in a mode that must fail at the attach stage with errno. */
      const refused = (mode: ImportMode, errno: string, why: string) => {
        const r = importFor(imp, fd, edu, ctx.device, region, mode);
        if (r.ok) handles.push(r.value.handle);
        t.ok(!r.ok && r.name === errno && r.value.stage === 'attach', `${mode} import: attach fails ${errno} (${why})`, importDiag(r));
      };
      const accepted = (what: string): number | null => {
        const r = importFor(imp, fd, edu, ctx.device, region);
        if (r.ok) handles.push(r.value.handle);
        return t.ok(r.ok, what, importDiag(r)) && r.ok ? r.value.handle : null;
      };

      refused('noP2p', 'EOPNOTSUPP', 'the importer does not allow peer-to-peer');
      refused('pinned', 'EOPNOTSUPP', 'no invalidate_mappings op: pinned, not revocable');
      const live = accepted('dynamic import with invalidate_mappings and allow_peer2peer is accepted');
      if (live === null) return;
      const m0 = imp.map(live);
      t.ok(m0.ok && m0.value.mapped, 'map the dynamic import', { errno: result(m0), nents: m0.value.nents });
      const countBefore = m0.value.invalidateCount;

      // Revoke through COMMAND.MEM = 0.
      const cmd = dev.configRead(PCI_COMMAND, 2);
      dev.configWrite(PCI_COMMAND, 2, cmd & ~MEM);
      const w = imp.waitInvalidate(live, countBefore, 0);
      t.ok(w.ok && w.value.invalidateCount === countBefore + 1,
        'clearing MEM invalidated the mapping before the config write returned (one invalidate_mappings)',
        { before: countBefore, after: w.value.invalidateCount, errno: result(w) });
      const rep = imp.report(live, 0);
      t.ok(rep.ok && !rep.value.mapped, 'the importer dropped its mapping in invalidate_mappings', { mapped: rep.ok && rep.value.mapped });

      refused('dynamic', 'ENODEV', 'the buffer is revoked');
      refused('noP2p', 'EOPNOTSUPP', 'checked before revoked: the peer-to-peer refusal comes first');
      refused('pinned', 'ENODEV', 'checked before revocable: the revoked refusal comes first');
      const m1 = imp.map(live);
      t.equal(result(m1), 'ENODEV', 'map of the existing dynamic import fails ENODEV while revoked',
        { mapError: m1.value.errorName, mapped: m1.value.mapped });

      // A buffer exported now is born revoked.
      const born = exportBar(t, ctx, dev, info, 'export succeeds with memory decoding off');
      let bornHandle: number | null = null;
      if (born !== null) {
        fds.push(born);
        const r = importFor(imp, born, edu, ctx.device, region);
        if (r.ok) handles.push(r.value.handle);
        t.ok(!r.ok && r.name === 'ENODEV' && r.value.stage === 'attach', 'a buffer exported with MEM off is born revoked: attach fails ENODEV', importDiag(r));
      }

      // Un-revoke: MEM on.
      dev.configWrite(PCI_COMMAND, 2, cmd | MEM);
      const w2 = imp.waitInvalidate(live, countBefore + 1, 0);
      t.ok(w2.ok && w2.value.invalidateCount === countBefore + 2, 'setting MEM again calls invalidate_mappings once more (un-revoke)',
        { before: countBefore + 1, after: w2.value.invalidateCount, errno: result(w2) });
      const m2 = imp.map(live);
      t.ok(m2.ok && m2.value.mapped, 'map of the existing import works again after MEM on', { errno: result(m2), mapError: m2.value.errorName });
      accepted('a new dynamic attach works again after MEM on');
      if (born !== null) {
        const r = importFor(imp, born, edu, ctx.device, region);
        if (r.ok) bornHandle = r.value.handle;
        if (r.ok) handles.push(r.value.handle);
        t.ok(r.ok, 'the buffer born revoked is un-revoked by MEM on too: attach works', importDiag(r));
        if (bornHandle !== null) {
          const mb = imp.map(bornHandle);
          t.ok(mb.ok, 'and it maps', { errno: result(mb), mapError: mb.value.errorName });
        }
      }
      if (data.skip) t.skip('after MEM on: data path through the re-established mapping', data.skip);
      else if (m2.ok) checkDataPath(t, 'after MEM on', imp, live, { dev, region: info, offsets: dataOffsets(info.size).slice(0, 1) });
    });
  } finally {
    for (const h of handles) imp.release(h);
    imp.close();
    for (const fd of fds) closeFd(fd);
    data.restore();
  }
}
