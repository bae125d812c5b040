// hwlab_importer uAPI: TS encoders against hand-written byte images, and the
// TS layout table, ioctl numbers and constants against the C header itself,
// compiled with the host's gcc (skipped when there is none).
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as libc from '../../src/guest/lib/libc.ts';
import * as imp from '../../src/guest/lib/importer.ts';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const HEADER_DIR = fileURLToPath(new URL('../../src/guest/kmod/hwlab_importer', import.meta.url));
const hasGcc = spawnSync('gcc', ['--version'], { stdio: 'ignore' }).status === 0;

test('ioctl numbers are _IOWR(0xb9, n, struct) (RELEASE _IOW)', (t) => {
  t.is(imp.IOCTL_DMA, 0xc028b908);
  t.is(imp.IOCTL_IMPORT, 0xc048b901);
  t.is(imp.IOCTL_MAP, 0xc028b902);
  t.is(imp.IOCTL_UNMAP, 0xc028b903);
  t.is(imp.IOCTL_REMAP, 0xc028b904);
  t.is(imp.IOCTL_REPORT, 0xc080b905);
  t.is(imp.IOCTL_RELEASE, 0x4008b906);
  t.is(imp.IOCTL_WAIT, 0xc018b907);
});

test('import: 72 bytes, names NUL-padded at 8 and 24, outputs at 52..71', (t) => {
  const b = imp.encodeImport({ fd: 7, mode: 'pinned', importerBdf: '0000:00:03.0', exporterBdf: '01:00.0', exporterBar: 2, dmaMaskBits: 64 });
  t.deepEqual(b, hex(`
    07000000 01000000
    303030303a30303a30332e3000000000
    30313a30302e30000000000000000000
    02000000 40000000 00000000
    00000000 00000000 00000000 0000000000000000`));
  t.is(imp.encodeImport({ fd: -1, mode: 2, flags: 5 }).readInt32LE(0), -1);
  t.deepEqual(imp.encodeImport({ fd: -1, mode: 2, flags: 5 }).subarray(44, 52), hex('00000000 05000000'));
  t.deepEqual(imp.encodeImport({ fd: 3 }).subarray(4, 8), hex('00000000'), 'mode defaults to dynamic');
  t.throws(() => imp.encodeImport({ fd: 3, importerBdf: '0000:00:03.0.extra' }), { instanceOf: RangeError });

  // A failed attach: handle 0, error EOPNOTSUPP (95), stage attach (6), size 2 MiB.
  const out = Buffer.concat([Buffer.alloc(52), hex('00000000 5f000000 06000000 0000200000000000')]);
  t.deepEqual(imp.decodeImport(out), { handle: 0, error: 95, errorName: 'EOPNOTSUPP', stage: 'attach', dmabufSize: 0x200000 });
  const ok = Buffer.concat([Buffer.alloc(52), hex('03000000 00000000 00000000 0010000000000000')]);
  t.deepEqual(imp.decodeImport(ok), { handle: 3, error: 0, errorName: 'OK', stage: 'none', dmabufSize: 0x1000 });
  const odd = Buffer.concat([Buffer.alloc(52), hex('00000000 13000000 63000000 0000000000000000')]);
  t.is(imp.decodeImport(odd).stage, 'stage-99');
});

test('map/unmap/remap: 40 bytes', (t) => {
  t.deepEqual(imp.encodeMap(9), hex('09000000 00000000 00000000 00000000 0000000000000000 0000000000000000 00000000 00000000'));
  t.deepEqual(imp.encodeMap(9, 1).subarray(4, 8), hex('01000000'));
  const b = hex('09000000 00000000 01000000 00000000 0000400000000000 0200000000000000 01000000 00000000');
  t.deepEqual(imp.decodeMap(b), { nents: 1, error: 0, errorName: 'OK', totalLen: 0x400000, invalidateCount: 2, mapped: true, wasMapped: false });
  const revoked = hex('09000000 00000000 00000000 13000000 0000000000000000 0100000000000000 00000000 00000000');
  t.deepEqual(imp.decodeMap(revoked), { nents: 0, error: 19, errorName: 'ENODEV', totalLen: 0, invalidateCount: 1, mapped: false, wasMapped: false });
});

test('report: 128 bytes in, entries pointer at 8; decode of every output field', (t) => {
  t.deepEqual(imp.encodeReport(4, 16, 0x7f0012345000n), Buffer.concat([hex('04000000 10000000 00503412007f0000'), Buffer.alloc(112)]));
  const b = Buffer.alloc(128);
  b.write(`
    04000000 10000000 0050341200f70000
    02000000 01000000 0300000000000000 0000800000000000
    01000000 00000000 ffffffff 2b000000
    000000000080ffff 000000000080ffff 0000800000000000 0000800000000000
    0500000000000000 00000000 00000000 ffffffffffffffff
    303030303a30303a30332e3000000000`.replace(/\s+/g, ''), 'hex');
  const entries = imp.decodeEntries(hex('00000080ffff0000 0010000000000000 00100080ffff0000 0000700000000000'), 2);
  t.deepEqual(entries, [{ dmaAddr: 0xffff80000000n, len: 0x1000 }, { dmaAddr: 0xffff80001000n, len: 0x700000 }]);
  t.deepEqual(imp.decodeReport(b, entries), {
    nents: 2, mapped: true, invalidateCount: 3, totalLen: 0x800000, mapType: 'bus-address', mode: 0,
    p2pDistance: -1, factBits: 0x2b,
    facts: { hasExporter: true, inBarBus: true, inBarPhys: false, commonBridge: true, acsRedirect: false, iommuDma: true, hasDriver: false, pinned: false },
    barBusStart: 0xffff800000000000n, barPhysStart: 0xffff800000000000n, barLen: 0x800000, dmabufSize: 0x800000,
    mapCount: 5, lastMapError: 0, lastMapErrorName: 'OK', importerDmaMask: 0xffffffffffffffffn, importerBdf: '0000:00:03.0',
    entries,
  });
  b.writeUInt32LE(7, 40);
  t.is(imp.decodeReport(b).mapType, 'map-type-7');
});

test('release: 8 bytes; wait: 24 bytes', (t) => {
  t.deepEqual(imp.encodeRelease(0x11), hex('11000000 00000000'));
  t.deepEqual(imp.encodeWait(2, 5, 1500), hex('02000000 dc050000 0500000000000000 0000000000000000'));
  t.deepEqual(imp.decodeWait(hex('02000000 dc050000 0500000000000000 0600000000000000')), { invalidateCount: 6 });
});

test('dma: 40 bytes, u64 offset/len/buf at 8/16/24, error at 32', (t) => {
  const b = imp.encodeDma({ handle: 3, direction: 'toBuf', offset: 0x1ff8, len: 16, buf: 0x7f0012345000n });
  t.deepEqual(b, hex('03000000 01000000 f81f000000000000 1000000000000000 00503412007f0000 00000000 00000000'));
  t.deepEqual(imp.encodeDma({ handle: 3, direction: 'fromBuf', offset: 0n, len: 1, buf: 0n }).subarray(4, 8), hex('00000000'));
  const odd = imp.encodeDma({ handle: 1, direction: 7, offset: 0xffffffffffffffffn, len: 4097, buf: 1n, pad: 2 });
  t.deepEqual(odd, hex('01000000 07000000 ffffffffffffffff 0110000000000000 0100000000000000 00000000 02000000'));
  t.deepEqual(imp.decodeDma(Buffer.concat([b.subarray(0, 32), hex('13000000 00000000')])), { error: 19, errorName: 'ENODEV' });
  t.deepEqual(imp.decodeDma(Buffer.concat([b.subarray(0, 32), hex('6e000000 00000000')])), { error: 110, errorName: 'ETIMEDOUT' });
  t.deepEqual(imp.decodeDma(b), { error: 0, errorName: 'OK' });
});

test('Importer.open on a host without the module fails with an errno, not a crash', (t) => {
  const err = t.throws(() => imp.Importer.open('/nonexistent/hwlab_importer'), { instanceOf: libc.SyscallError });
  t.is(err?.code, 'ENOENT');
});

/** Width of each field from the offsets: next offset (or the struct size) minus this one. */
function widths(l: { size: number; fields: Record<string, number> }): Record<string, number> {
  const f = Object.entries(l.fields).sort((a, b) => a[1] - b[1]);
  return Object.fromEntries(f.map(([n, off], i) => [n, (i + 1 < f.length ? f[i + 1][1] : l.size) - off]));
}

(hasGcc ? test : test.skip)('layout, ioctl numbers and constants agree with the C header (gcc)', (t) => {
  const structs = imp.LAYOUT as unknown as Record<string, { size: number; fields: Record<string, number> }>;
  const lines: string[] = [];
  const out = (key: string, expr: string) => lines.push(`  printf("%s %llu\\n", "${key}", (unsigned long long)(${expr}));`);
  for (const [name, l] of Object.entries(structs)) {
    out(`${name}.size`, `sizeof(struct ${name})`);
    for (const f of Object.keys(l.fields)) {
      out(`${name}.${f}`, `offsetof(struct ${name}, ${f})`);
      out(`${name}.${f}.width`, `sizeof(((struct ${name} *)0)->${f})`);
    }
  }
  const ioctls = ['IMPORT', 'MAP', 'UNMAP', 'REMAP', 'REPORT', 'RELEASE', 'WAIT', 'DMA'] as const;
  for (const n of ioctls) out(`IOCTL_${n}`, `(unsigned int)HWLAB_IMPORTER_IOCTL_${n}`);
  const consts: Record<string, number> = {
    HWLAB_IMPORTER_IOC_MAGIC: imp.IOC_MAGIC, HWLAB_IMPORTER_MAX_IMPORTS: imp.MAX_IMPORTS,
    HWLAB_IMPORTER_MAX_REPORT: imp.MAX_REPORT, HWLAB_IMPORTER_BDF_LEN: imp.BDF_LEN,
    HWLAB_IMPORTER_MODE_DYNAMIC: imp.MODE.dynamic, HWLAB_IMPORTER_MODE_PINNED: imp.MODE.pinned,
    HWLAB_IMPORTER_MODE_NO_P2P: imp.MODE.noP2p,
    HWLAB_IMPORTER_FACT_HAS_EXPORTER: imp.FACT.hasExporter, HWLAB_IMPORTER_FACT_IN_BAR_BUS: imp.FACT.inBarBus,
    HWLAB_IMPORTER_FACT_IN_BAR_PHYS: imp.FACT.inBarPhys, HWLAB_IMPORTER_FACT_COMMON_BRIDGE: imp.FACT.commonBridge,
    HWLAB_IMPORTER_FACT_ACS_REDIRECT: imp.FACT.acsRedirect, HWLAB_IMPORTER_FACT_IOMMU_DMA: imp.FACT.iommuDma,
    HWLAB_IMPORTER_FACT_HAS_DRIVER: imp.FACT.hasDriver, HWLAB_IMPORTER_FACT_PINNED: imp.FACT.pinned,
    HWLAB_IMPORTER_DMA_FROM_BUF: imp.DMA_DIRECTION.fromBuf, HWLAB_IMPORTER_DMA_TO_BUF: imp.DMA_DIRECTION.toBuf,
    HWLAB_IMPORTER_DMA_MAX: imp.DMA_MAX,
  };
  const stageC = ['NONE', 'ARGS', 'IMPORTER_DEV', 'EXPORTER_DEV', 'DMA_MASK', 'DMA_BUF_GET', 'ATTACH', 'PIN'];
  stageC.forEach((s, i) => { consts[`HWLAB_IMPORTER_STAGE_${s}`] = i; });
  t.is(stageC.length, imp.STAGES.length);
  const mapC = ['UNKNOWN', 'BUS_ADDR', 'HOST_BRIDGE_IOVA', 'HOST_BRIDGE_DIRECT'];
  mapC.forEach((m, i) => { consts[`HWLAB_IMPORTER_MAP_${m}`] = i; });
  t.is(mapC.length, imp.MAP_TYPES.length);
  for (const c of Object.keys(consts)) out(c, c);

  const src = `#include <stddef.h>\n#include <stdio.h>\n#include "hwlab_importer.h"\nint main(void)\n{\n${lines.join('\n')}\n  return 0;\n}\n`;
  const dir = mkdtempSync(join(tmpdir(), 'hwlab-importer-h-'));
  try {
    writeFileSync(join(dir, 'layout.c'), src);
    // -Wpadded: the header promises no implicit padding anywhere.
    const cc = spawnSync('gcc', ['-std=c11', '-Wall', '-Wextra', '-Wpadded', '-Werror', '-I', HEADER_DIR, '-o', join(dir, 'layout'), join(dir, 'layout.c')], { encoding: 'utf8' });
    if (cc.status !== 0) return t.fail(`gcc failed:\n${cc.stderr}`);
    const run = spawnSync(join(dir, 'layout'), { encoding: 'utf8' });
    t.is(run.status, 0);
    const c = new Map(run.stdout.trim().split('\n').map((l) => { const [k, v] = l.split(' '); return [k, Number(v)]; }));

    for (const [name, l] of Object.entries(structs)) {
      t.is(c.get(`${name}.size`), l.size, `sizeof(struct ${name})`);
      const w = widths(l);
      for (const [f, off] of Object.entries(l.fields)) {
        t.is(c.get(`${name}.${f}`), off, `offsetof(${name}, ${f})`);
        t.is(c.get(`${name}.${f}.width`), w[f], `sizeof(${name}.${f}) fills the gap to the next field`);
      }
    }
    const ts: Record<string, number> = {
      IMPORT: imp.IOCTL_IMPORT, MAP: imp.IOCTL_MAP, UNMAP: imp.IOCTL_UNMAP, REMAP: imp.IOCTL_REMAP,
      REPORT: imp.IOCTL_REPORT, RELEASE: imp.IOCTL_RELEASE, WAIT: imp.IOCTL_WAIT, DMA: imp.IOCTL_DMA,
    };
    for (const n of ioctls) t.is(c.get(`IOCTL_${n}`), ts[n], `HWLAB_IMPORTER_IOCTL_${n}`);
    for (const [k, v] of Object.entries(consts)) t.is(c.get(k), v, k);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
