// map-type: which p2pdma mapping the exporter hands the importer
// (pci_p2pdma_map_type, contract section 4). The module reports the sg
// addresses and the BAR's bus and CPU ranges; this probe classifies them
// itself from those plus sysfs facts (topology, ACS, the importer's IOMMU
// domain type, the CPU) and also checks the module's own guess. On q35 a BAR's
// bus and CPU addresses coincide, so topology separates bus-address from direct.
import type { MapTypeExpectation } from './catalog.ts';
import { Importer, type ReportOut, type SgEntry } from '../lib/importer.ts';
import * as libc from '../lib/libc.ts';
import { describeDevice, sysfsConfig } from '../lib/pci-config.ts';
import type { Subtest } from '../lib/tap.ts';
import { closeFd, hex, withDevice, type ProbeContext } from './common.ts';
import {
  checkDataPath, cpuInfo, dataOffsets, ensureMemoryOn, exportBar, importDiag, importerDevice, importFor,
  iommuDomainType, isTranslatingDomain, pairTopology, prepareDataPath, result,
} from './importer-common.ts';

const PAGE = 4096;
/** dma_buf_phys_vec_to_sgt() caps each entry so sg lengths fit in 32 bits, page aligned. */
const MAX_SG_ENTRY = 0xfffff000;

const inRange = (e: SgEntry, start: bigint, len: number) => e.dmaAddr >= start && e.dmaAddr + BigInt(e.len) <= start + BigInt(len);

/** True if the entries, in order, tile [start, start + size) exactly. */
function tiles(entries: SgEntry[], start: bigint, size: number): boolean {
  let at = start;
  for (const e of entries) {
    if (e.dmaAddr !== at) return false;
    at += BigInt(e.len);
  }
  return at === start + BigInt(size);
}

export default async function mapType(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const expect = ctx.params.expect as MapTypeExpectation;
  const region = ctx.params.region as number;
  const edu = importerDevice(ctx);
  const topo = pairTopology(ctx.device.bdf, edu.bdf);
  const domain = iommuDomainType(edu.bdf);
  const cpu = cpuInfo();
  const facts = {
    exporter: `${ctx.device.id} ${ctx.device.bdf}`, importer: `${edu.id} ${edu.bdf}`, ...topo,
    importerDomain: domain ?? 'no IOMMU group', cpu: `${cpu.vendor} family ${hex(cpu.family)} (${cpu.model})`,
  };
  t.comment(`exporter path ${topo.exporterPath.join(' > ')}; importer path ${topo.importerPath.join(' > ')}`);
  t.comment(`common bridge ${topo.commonBridge ?? 'none (host bridge only)'}; ACS redirect on the walk: ${topo.acsRedirect.map((a) => `${a.bdf} ${a.ctrl.join('|')}`).join(', ') || 'none'}; importer IOMMU domain ${facts.importerDomain}; CPU ${facts.cpu}`);

  for (const d of [ctx.device, edu]) {
    const { read, size } = sysfsConfig(d.bdf);
    const c = describeDevice(read, size);
    t.comment(`${d.id} capabilities (raw config): ${[...c.caps, ...c.extCaps].join(', ') || 'none'}; PCIe FLR ${c.exp?.flr ?? 'n/a'}`);
  }

  const imp = Importer.open();
  try {
    await withDevice(ctx, (dev) => {
      ensureMemoryOn(dev);
      const info = dev.regionInfo(region);
      const fd = exportBar(t, ctx, dev, info, `export BAR ${region} of ${ctx.device.id} (${hex(info.size)} bytes)`);
      if (fd === null) return;
      try {
        const pass = (label: string, importerDomain: string | null, withData: boolean) => {
          const f = { ...facts, importerDomain: importerDomain ?? 'no IOMMU group' };
          const ir = importFor(imp, fd, edu, ctx.device, region);
          if (!t.ok(ir.ok, `${label}dynamic import for ${edu.id} is accepted (the map type is decided at map time)`, importDiag(ir))) return;
          const handle = ir.value.handle;
          try {
            const m = imp.map(handle);
            if (expect === 'not-supported') {
              const amd = cpu.vendor === 'AuthenticAMD' && cpu.family >= 0x17;
              t.ok((topo.commonBridge === null || topo.acsRedirect.length > 0) && !amd,
                `${label}precondition: no ACS-free common bridge and no AMD family >= 0x17 host bridge`, f);
              t.equal(result(m), 'EINVAL', `${label}map fails EINVAL: no common bridge and no host-bridge rule for this pair`,
                { mapError: m.value.errorName, ...f });
              const rep = imp.report(handle, 0);
              if (!t.ok(rep.ok, `${label}REPORT of the import`, rep.ok ? undefined : { errno: rep.name }) || !rep.ok) return;
              t.equal(rep.value.p2pDistance, -1, `${label}pci_p2pdma_distance() calls the pair not supported`, { facts: rep.value.facts });
              t.equal(rep.value.lastMapErrorName, 'EINVAL', `${label}REPORT records EINVAL as the last map error`);
              return;
            }
            if (!t.ok(m.ok, `${label}map succeeds (expected ${expect})`, { errno: result(m), mapError: m.value.errorName, ...f })) return;
            const rep = imp.report(handle, 4096);
            if (!t.ok(rep.ok, `${label}REPORT of the mapped import`, rep.ok ? undefined : { errno: rep.name }) || !rep.ok) return;
            judge(t, label, expect, rep.value, info.size, importerDomain, topo, cpu, f);
            if (withData) checkDataPath(t, `${label}data path through the ${expect} mapping`, imp, handle, { dev, region: info, offsets: dataOffsets(info.size) });
          } finally {
            const rel = imp.release(handle);
            t.ok(rel.ok, `${label}release the import`, rel.ok ? undefined : { errno: rel.name });
          }
        };

        if (expect === 'bus-address' && isTranslatingDomain(domain)) {
          // The decision must not depend on the importer's domain; the data path needs an untranslated one.
          pass(`${domain} domain: `, domain, false);
          const data = prepareDataPath(t, ctx.device, edu);
          try {
            if (data.skip) t.skip('identity domain: data path through the bus-address mapping', data.skip);
            else pass('identity domain: ', iommuDomainType(edu.bdf), true);
          } finally {
            data.restore();
          }
        } else pass('', domain, expect !== 'not-supported');
      } finally {
        closeFd(fd);
      }
    });
  } finally {
    imp.close();
  }
}

function judge(
  t: Subtest, label: string, expect: Exclude<MapTypeExpectation, 'not-supported'>, r: ReportOut, size: number,
  domain: string | null, topo: ReturnType<typeof pairTopology>, cpu: ReturnType<typeof cpuInfo>, facts: Record<string, unknown>,
): void {
  const entries = r.entries;
  const sg = entries.slice(0, 8).map((e) => ({ dmaAddr: hex(e.dmaAddr), len: hex(e.len) }));
  const bar = { bus: hex(r.barBusStart), cpu: hex(r.barPhysStart), len: hex(r.barLen) };
  const diag = { sg, nents: r.nents, bar, moduleFacts: r.facts, ...facts };

  t.ok(entries.length === r.nents && r.nents > 0, `${label}REPORT returned all ${r.nents} sg entries`, { copied: entries.length, nents: r.nents });
  t.equal(r.totalLen, size, `${label}the sg entries add up to the dma-buf size`, { totalLen: hex(r.totalLen), size: hex(size) });
  const misaligned = entries.filter((e) => e.dmaAddr % BigInt(PAGE) !== 0n || e.len % PAGE !== 0);
  t.ok(misaligned.length === 0, `${label}every sg entry is page aligned (address and length)`,
    { misaligned: misaligned.slice(0, 4).map((e) => ({ dmaAddr: hex(e.dmaAddr), len: hex(e.len) })) });
  const big = entries.filter((e) => e.len > MAX_SG_ENTRY);
  t.ok(big.length === 0, `${label}no sg entry is longer than ${hex(MAX_SG_ENTRY)} bytes`, { tooLong: big.map((e) => hex(e.len)) });

  // The module's facts must agree with what sysfs says, or its guess means nothing.
  t.equal(r.facts.commonBridge, topo.commonBridge !== null, `${label}module and sysfs agree on a common upstream bridge`, diag);
  t.equal(r.facts.acsRedirect, topo.acsRedirect.length > 0, `${label}module and sysfs agree on ACS redirection along the path`, diag);
  t.equal(r.facts.iommuDma, isTranslatingDomain(domain), `${label}module and sysfs agree on the importer's DMA translation (domain ${domain ?? 'none'})`, diag);

  const inBus = entries.every((e) => inRange(e, r.barBusStart, r.barLen));
  const inCpu = entries.every((e) => inRange(e, r.barPhysStart, r.barLen));
  const direct = topo.commonBridge !== null && topo.acsRedirect.length === 0;
  const amdHostBridge = cpu.vendor === 'AuthenticAMD' && cpu.family >= 0x17;
  switch (expect) {
    case 'bus-address':
      t.ok(direct, `${label}precondition: exporter and importer share a bridge with no ACS redirect on the path`, diag);
      t.ok(tiles(entries, r.barBusStart, size), `${label}the sg entries are the BAR's bus addresses, in order from its start`, diag);
      t.ok(r.p2pDistance >= 0, `${label}pci_p2pdma_distance() supports the pair`, { p2pDistance: r.p2pDistance });
      break;
    case 'host-bridge-iova':
      t.ok(!direct && amdHostBridge && isTranslatingDomain(domain),
        `${label}precondition: no ACS-free common bridge, an AMD family >= 0x17 host bridge, importer in an IOMMU DMA domain`, diag);
      t.ok(!entries.some((e) => inRange(e, r.barBusStart, r.barLen) || inRange(e, r.barPhysStart, r.barLen)),
        `${label}no sg entry points into the BAR: the addresses are IOVAs`, diag);
      t.ok(entries.length === 1, `${label}dma_iova_link() gives one contiguous IOVA range`, diag);
      break;
    case 'host-bridge-direct':
      t.ok(!direct && amdHostBridge && !isTranslatingDomain(domain),
        `${label}precondition: no ACS-free common bridge, an AMD family >= 0x17 host bridge, importer without DMA translation`, diag);
      t.ok(inCpu && tiles(entries, r.barPhysStart, size), `${label}the sg entries are the BAR's CPU physical addresses, in order from its start`, diag);
      break;
  }
  if (expect !== 'host-bridge-iova') t.ok(inBus || inCpu, `${label}every sg entry lies inside the BAR`, diag);
  t.equal(r.mapType, expect, `${label}the module's map type guess is ${expect}`, diag);
  t.equal(r.lastMapErrorName, 'OK', `${label}REPORT records no map error`, { lastMapError: r.lastMapErrorName, errno: libc.errnoName(r.lastMapError) });
}
