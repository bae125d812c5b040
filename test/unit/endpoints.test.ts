// The table of endpoint kinds (src/lab/endpoints.ts): its entries are well
// formed, and what derives from it (which endpoints each probe takes, the
// region default) is what the probes were written for.
import test from 'ava';
import { CAPABILITIES, ENDPOINT_KINDS, ENDPOINT_TYPES, endpointKind, idStringPattern, kindsWith } from '../../src/lab/endpoints.ts';
import { PROBES, resolveParams } from '../../src/guest/probes/catalog.ts';

test('every field is well formed: own key, a default that passes its own constraints', (t) => {
  for (const type of ENDPOINT_TYPES) {
    const keys = new Set(['id', 'type', 'port', 'function']);
    for (const [name, f] of Object.entries(endpointKind(type).fields)) {
      const where = `${type}.${name}`;
      t.false(keys.has(f.key), `${where}: key ${f.key} is taken`);
      keys.add(f.key);
      t.regex(f.key, /^[a-z][a-z0-9_]*$/, `${where}: lab keys are snake_case`);
      if (f.kind === 'mib') {
        t.true(Number.isSafeInteger(f.default) && f.default >= 1, where);
        if (f.powerOfTwo) t.is(f.default & (f.default - 1), 0, `${where}: default is a power of two`);
        if (f.max !== undefined) t.true(f.default <= f.max, `${where}: default within max`);
      } else if (f.kind === 'int') {
        t.true(f.min <= f.default && f.default <= f.max, `${where}: default within bounds`);
      } else {
        t.false(f.chars.includes(','), `${where}: no commas in a QEMU option value`);
        // The id is the default: every id character must be allowed (the length is checked per lab).
        t.true(idStringPattern(f).test('a0_-'.slice(0, Math.min(4, f.maxLength))), `${where}: id characters allowed`);
      }
    }
  }
});

test('guest facts: an exported BAR is a BAR, and capabilities are predicates of them', (t) => {
  for (const type of ENDPOINT_TYPES) {
    const g = ENDPOINT_KINDS[type].guest;
    if (g.exportBar !== null) t.true(Number.isInteger(g.exportBar) && g.exportBar >= 0 && g.exportBar <= 5, type);
    t.true(endpointKind(type).slot.functions >= 1, type);
  }
  t.deepEqual(Object.keys(CAPABILITIES), ['exports', 'exports-device-memory', 'exports-memory', 'dma-engine']);
  t.deepEqual(kindsWith('dma-engine'), ['edu']);
});

test('which endpoints each probe takes, derived from capabilities', (t) => {
  const takes = Object.fromEntries(Object.values(PROBES).map((p) => [p.name, [...p.endpoints]]));
  // secondary-vga: VRAM behind BAR0, so it goes wherever memory does.
  const deviceMemory = ['ivshmem-plain', 'edu', 'nvme', 'secondary-vga'];
  const memory = ['ivshmem-plain', 'nvme', 'secondary-vga'];
  t.deepEqual(takes, {
    'dmabuf-export': deviceMemory,
    'dmabuf-fd': deviceMemory,
    'dmabuf-bad-inputs': ['ivshmem-plain', 'edu', 'nvme', 'pci-testdev', 'secondary-vga'],
    'reset-and-mem-toggle': deviceMemory,
    'importer-refusals': deviceMemory,
    'revoke-triggers': deviceMemory,
    'map-type': deviceMemory,
    'importer-multirange': memory,
    'rdma-reg-dmabuf-mr': memory,
    'iommufd-map-file': memory,
    'export-ranges': deviceMemory,
    'lifetime': deviceMemory,
    'rough-edges': deviceMemory,
    'stress': deviceMemory,
    'surprise-removal': memory,
    'hot-reset-set': memory,
    // hwlab's own fault-suite probe does not touch its endpoint: any kind.
    'fault-inject': [...ENDPOINT_TYPES],
  });
  t.deepEqual(PROBES['importer-refusals'].params.find((p) => p.name === 'importer')?.endpoint, { types: ['edu'] });
});

test('region defaults to the BAR the kind exports', (t) => {
  for (const type of kindsWith('exports')) {
    const r = resolveParams('dmabuf-bad-inputs', {}, type);
    t.deepEqual(r, { ok: true, params: { region: ENDPOINT_KINDS[type].guest.exportBar, expect: {} } }, type);
  }
});
