import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { DEFAULT_CATALOG, type ProbeCatalog } from '../../src/lab/checks.ts';
import { STRESS_MIXES } from '../../src/guest/probes/catalog.ts';
import { loadLab, parseLab } from '../../src/lab/load.ts';
import { YamlError } from '../../src/util/yaml.ts';
import type { LabSpec } from '../../src/lab/types.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = path.join(repo, 'test', 'fixtures');
const fixtureImages = path.join(fixtures, 'images');
// Messages carry the file as given; give fixtures relative to the repo so expectations are stable.
const fx = (name: string) => path.relative(process.cwd(), path.join(fixtures, 'labs', name));

async function labError(p: Promise<unknown> | (() => unknown)): Promise<YamlError> {
  try {
    if (typeof p === 'function') p();
    else await p;
  } catch (e) {
    if (e instanceof YamlError) return e;
    throw e;
  }
  throw new Error('expected a YamlError, got a lab');
}

/** A catalog with one extra probe that only takes edu devices. */
const catalogWithEduOnly: ProbeCatalog = {
  probes: {
    ...DEFAULT_CATALOG.probes,
    'edu-only': { name: 'edu-only', description: 'test', endpoints: ['edu'], params: [] },
  },
  resolveParams: (name, params, ep) =>
    name === 'edu-only' ? { ok: true, params: { ...params } } : DEFAULT_CATALOG.resolveParams(name, params, ep),
};

const MINIMAL = 'kernel: { debian: linux-image-7.2 }\nimage: bookworm\n';
const inline = (text: string) => parseLab(text, path.join(fixtures, 'labs', 'inline.yaml'));

test('labs/default.yaml is the documented default lab', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs', 'default.yaml'));
  const region = { region: 2 };
  const expected: LabSpec = {
    file: path.join(repo, 'labs', 'default.yaml'),
    name: 'default',
    description: lab.description,
    kernel: {
      kind: 'source',
      source: { kind: 'debian-source', package: 'linux-source-7.2', suite: 'sid', mirror: 'http://deb.debian.org/debian' },
      patches: [],
      config: { base: 'tinyconfig', fragments: ['guest-base.config', 'vfio-dmabuf.config', 'debug.config'].map((f) => path.join(repo, 'labs/configs', f)) },
    },
    image: 'bookworm',
    machine: { cpu: 'EPYC', memoryMiB: 2048, smp: 2, accel: 'auto', cmdline: [], trace: [] },
    iommu: { kind: 'intel', cachingMode: true, strict: false, passthrough: false },
    topology: {
      rootPorts: [{ id: 'rp0' }, { id: 'rp1' }, { id: 'rp2' }, { id: 'rp3' }, { id: 'rp4' }],
      switches: [{ id: 'sw0', port: 'rp1', downstream: ['dp0', 'dp1', 'dp2'] }],
      endpoints: [
        { id: 'shm0', type: 'ivshmem-plain', port: 'rp0', memoryMiB: 64 },
        { id: 'shm1', type: 'ivshmem-plain', port: 'dp0', memoryMiB: 64 },
        { id: 'edu0', type: 'edu', port: 'dp1', dmaMaskBits: 64 },
        { id: 'nvme0', type: 'nvme', port: 'dp2', cmbSizeMiB: 64, serial: 'nvme0' },
        { id: 'shm2', type: 'ivshmem-plain', port: 'rp2', memoryMiB: 16 },
        { id: 'iotest0', type: 'pci-testdev', port: 'rp3', membarMiB: 4 },
        { id: 'shm3', type: 'ivshmem-plain', port: 'rp4', memoryMiB: 16 },
        { id: 'shm4', type: 'ivshmem-plain', port: 'rp4', memoryMiB: 16, function: 1 },
      ],
    },
    modules: ['vfio-pci'],
    dmabufAbi: 'ranges',
    // Probe params are the catalog's business (test/unit/guest-tap.test.ts): here, which probe runs where.
    probes: [
      ['dmabuf-export', 'shm0'], ['dmabuf-fd', 'shm0'], ['dmabuf-bad-inputs', 'shm0'], ['dmabuf-bad-inputs', 'iotest0'], ['reset-and-mem-toggle', 'shm0'],
      ['map-type', 'shm1'], ['map-type', 'nvme0'], ['map-type', 'shm0'], ['importer-refusals', 'shm1'],
      ['importer-multirange', 'shm1'], ['importer-multirange', 'shm0'],
      ['revoke-triggers', 'nvme0'], ['revoke-triggers', 'shm0'], ['rdma-reg-dmabuf-mr', 'shm0'], ['iommufd-map-file', 'shm0'], ['export-ranges', 'shm0'],
      ['lifetime', 'shm0'], ['rough-edges', 'nvme0'], ['stress', 'shm0'], ['hot-reset-set', 'shm3'], ['surprise-removal', 'shm2'],
    ].map(([name, device]) => ({ name, device })) as LabSpec['probes'],
    timeouts: { bootSec: 180, probesSec: 600, probeSec: 120, shutdownSec: 20, runnerExitSec: 30 },
  };
  t.deepEqual({ ...lab, probes: lab.probes.map((p) => ({ name: p.name, device: p.device })) }, expected);
  t.deepEqual(lab.probes[0].params, { ...region, offset: 0, length: 0, expect: 'OK' });
  t.deepEqual(lab.probes.find((p) => p.device === 'nvme0' && p.name === 'map-type')?.params.expect, 'bus-address');
  // A known 7.2.13 bug is expected to fail where it bites, with the reason.
  t.regex(lab.probes.find((p) => p.device === 'shm0' && p.name === 'importer-multirange')?.expectFail ?? '', /dma_iova_link\(\) with offset 0/);
  t.true(lab.description.length > 0);
});

test('shorthands, units and defaults', async (t) => {
  const lab = await loadLab(fx('shorthand.yaml'));
  t.is(lab.name, 'shorthand');
  t.deepEqual(lab.kernel, { kind: 'debian-prebuilt', package: 'linux-image-7.2', flavour: 'cloud-amd64', suite: 'sid', mirror: 'http://deb.debian.org/debian', patches: [] });
  t.deepEqual(lab.machine, { cpu: 'EPYC', memoryMiB: 512, smp: 2, accel: 'auto', cmdline: ['quiet', 'loglevel=3'], trace: [] });
  t.deepEqual(lab.iommu, { kind: 'amd', cachingMode: false, strict: false, passthrough: false });
  t.deepEqual(lab.topology.rootPorts, [{ id: 'rp0' }, { id: 'rp1' }]);
  t.deepEqual(lab.topology.endpoints, [
    { id: 'nvme0', type: 'nvme', port: 'rp0', cmbSizeMiB: 64, serial: 'nvme0' },
    { id: 'edu0', type: 'edu', port: 'rp1', dmaMaskBits: 28 },
  ]);
  t.deepEqual(lab.probes, [
    // Bare name: the first endpoint the probe accepts.
    { name: 'dmabuf-export', device: 'nvme0', params: { region: 2, offset: 0, length: 0, expect: 'OK' }, timeoutSec: 120 },
    {
      name: 'dmabuf-bad-inputs', device: 'nvme0',
      params: { region: 2, expect: { zero_length: 'ENOENT' } },
      expectFail: 'zero length accepted before 7.2',
      timeoutSec: 45,
    },
  ]);
});

test('memory sizes: units, bare numbers are MiB', (t) => {
  for (const [written, mib] of [['2G', 2048], ['2048M', 2048], ['512M', 512], ['1g', 1024], ['3GiB', 3072], ['2048', 2048], [768, 768]] as const) {
    const lab = inline(`${MINIMAL}machine: { memory: ${JSON.stringify(written)} }\n`);
    t.is(lab.machine.memoryMiB, mib, String(written));
  }
});

test('machine.cmdline: a list is split into words too; empty sections take defaults', (t) => {
  const lab = inline(`${MINIMAL}machine:\n  cmdline: ["a=1 b", c]\niommu:\ntopology:\nprobes:\nname: other\n`);
  t.deepEqual(lab.machine.cmdline, ['a=1', 'b', 'c']);
  t.is(lab.name, 'other');
  t.deepEqual(lab.iommu, { kind: 'intel', cachingMode: true, strict: false, passthrough: false });
  t.deepEqual(lab.topology, { rootPorts: [], switches: [], endpoints: [] });
  t.deepEqual(lab.probes, []);
});

test('iommu object form: caching_mode off, strict, passthrough', (t) => {
  const lab = inline(`${MINIMAL}iommu: { caching_mode: false, strict: true, passthrough: true }\n`);
  t.deepEqual(lab.iommu, { kind: 'intel', cachingMode: false, strict: true, passthrough: true });
});

test('YAML syntax errors are located', async (t) => {
  const e = await labError(loadLab(fx('bad-syntax.yaml')));
  t.is(e.message, `${fx('bad-syntax.yaml')}:6:3: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]`);
});

test('duplicate YAML keys are errors', async (t) => {
  const e = await labError(() => parseLab(`${MINIMAL}image: other\n`, 'labs/dup.yaml'));
  t.is(e.message, 'labs/dup.yaml:3:1: image: duplicate key "image" (first at line 2, column 1)');
});

test('schema errors: all at once, each with file:line:col and field', async (t) => {
  const f = fx('bad-schema.yaml');
  const e = await labError(loadLab(f));
  t.is(e.message, [
    `${f}:2:3: kernel: needs exactly one of debian, path, tarball (got none)`,
    `${f}:5:11: machine.memory: expected a size such as 512M or 2G, at least 1M (got "2X")`,
    `${f}:6:8: machine.smp: expected a number (got "two")`,
    `${f}:7:10: machine.accel: must be one of auto, kvm, tcg (got "fast")`,
    `${f}:8:3: machine.cpus: unknown key "cpus" (allowed: cpu, memory, smp, accel, cmdline, trace)`,
    `${f}:11:17: iommu.caching_mode: only applies to iommu type intel (this lab uses amd)`,
    `${f}:13:21: topology.root_ports[1].id: must be a lowercase letter followed by a-z, 0-9, _ or - (it becomes a QEMU id) (got "Rp1")`,
    `${f}:15:7: topology.switches[0].port: is required`,
    `${f}:17:59: topology.endpoints[0].memory: must be a power of two (got 48M)`,
    `${f}:18:25: topology.endpoints[1].type: must be one of ivshmem-plain, edu, nvme, pci-testdev, secondary-vga (got "edux")`,
    `${f}:19:51: topology.endpoints[2].dma_mask: must be at least 28 (got 12)`,
    `${f}:20:13: dmabuf_abi: must be one of ranges, v0 (got "v1")`,
    `${f}:21:19: timeouts.boot: must be greater than 0 (got 0)`,
  ].join('\n'));
  t.deepEqual(e.issues[3], { file: f, line: 7, col: 10, path: 'machine.accel', message: 'must be one of auto, kvm, tcg (got "fast")' });
});

test('bare-string iommu with a bad value points at the value', (t) => {
  const e = t.throws(() => parseLab(`${MINIMAL}iommu: foo\n`, 'labs/x.yaml'), { instanceOf: YamlError });
  t.is(e.message, 'labs/x.yaml:3:8: iommu.type: must be one of intel, amd, virtio, none (got "foo")');
});

test('refinements: nvme serial default too long, passthrough without an IOMMU', async (t) => {
  const f = fx('bad-refine.yaml');
  const e = await labError(loadLab(f));
  t.is(e.message, [
    `${f}:3:50: iommu.passthrough: needs an IOMMU (type is none)`,
    `${f}:7:13: topology.endpoints[0].id: the nvme serial defaults to the id, which is longer than 20 characters; set serial`,
  ].join('\n'));
});

test('topology cross-references', async (t) => {
  const f = fx('bad-topology.yaml');
  const e = await labError(loadLab(f));
  t.is(e.message, [
    `${f}:7:24: topology.switches[1].port: no port "rp9" (ports: rp0, rp1, rp2, dp0, dp1, dp2, dp3, dp4)`,
    `${f}:8:24: topology.switches[2].port: switch "sw2" is not below any root port: its port "dp4" leads back into a loop of switches`,
    `${f}:9:24: topology.switches[3].port: switch "sw3" is not below any root port: its port "dp3" leads back into a loop of switches`,
    `${f}:12:46: topology.endpoints[1].port: port "dp0" is already used by endpoint "shm0" at 11:46 (one device per port; endpoints sharing a port need distinct function numbers, and function 0 is taken)`,
    `${f}:13:13: topology.endpoints[2].id: duplicate id "rp0" (already the root port at 4:16)`,
    `${f}:14:36: topology.endpoints[3].port: port "rp1" is already used by switch "sw0" at 6:24 (one device per port)`,
    `${f}:15:36: topology.endpoints[4].port: no port "nowhere" (ports: rp0, rp1, rp2, dp0, dp1, dp2, dp3, dp4)`,
    `${f}:16:36: topology.endpoints[5].port: "sw0" is a switch, not a root port or downstream port`,
  ].join('\n'));
});

test('probe cross-references and params', async (t) => {
  const f = fx('bad-probes.yaml');
  const e = await labError(loadLab(f, { catalog: catalogWithEduOnly }));
  t.is(e.message, [
    `${f}:8:5: probes[0].name: unknown probe "dmabuf-exprot" (known: dmabuf-export, dmabuf-fd, dmabuf-bad-inputs, reset-and-mem-toggle, importer-refusals, revoke-triggers, map-type, importer-multirange, rdma-reg-dmabuf-mr, iommufd-map-file, export-ranges, lifetime, rough-edges, stress, surprise-removal, hot-reset-set, fault-inject, edu-only)`,
    `${f}:9:32: probes[1].device: "rp0" is a root port, not an endpoint`,
    `${f}:10:32: probes[2].device: no endpoint "shm9" (endpoints: shm0)`,
    `${f}:12:38: probes[3].params.expect.zero_length: expected an errno name like "EINVAL" or "OK"`,
    `${f}:12:46: probes[3].params.expect.bogus: unknown key "bogus" (known: set_without_probe, get_set_without_probe, probe, argsz_short, flags_nonzero, nr_ranges_zero, rom_region, config_region, unimplemented_bar, upper_half_bar, io_bar, zero_length, unaligned_offset, lengths_wrap, offset_wraps, range_past_end)`,
    `${f}:12:71: probes[3].params.region: expected a non-negative integer`,
    `${f}:14:33: probes[4].params.closeWhileMemOff: expected true or false (got "yes")`,
    `${f}:14:51: probes[4].params.colour: unknown param "colour" for probe reset-and-mem-toggle (params: region, closeWhileMemOff)`,
    `${f}:15:5: probes[5]: probe edu-only needs an endpoint of type edu and the topology has none`,
  ].join('\n'));
});

test('number params outside their range are refused with the range: fault-inject threshold 0 would turn the detector off', (t) => {
  const lab = (params: string) => `${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints:\n    - { id: shm0, type: ivshmem-plain, port: rp0 }\nprobes:\n  - { name: fault-inject, device: shm0, params: ${params} }\n`;
  const e = t.throws(() => parseLab(lab('{ kind: softlockup, threshold: 0 }'), 'labs/x.yaml', { imagesDir: fixtureImages }), { instanceOf: YamlError });
  t.is(e.message, 'labs/x.yaml:8:80: probes[0].params.threshold: must be from 1 to 60 (got 0)');
  const big = t.throws(() => parseLab(lab('{ threshold: 61 }'), 'labs/x.yaml', { imagesDir: fixtureImages }), { instanceOf: YamlError });
  t.regex(big.message, /threshold: must be from 1 to 60 \(got 61\)$/);
  t.notThrows(() => parseLab(lab('{ kind: hung, threshold: 60 }'), 'labs/x.yaml', { imagesDir: fixtureImages }));
});

test("stress's mix is one of the catalogue's mixes, each a set of the probe's operations", (t) => {
  const lab = (params: string) => `${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints:\n    - { id: shm0, type: ivshmem-plain, port: rp0 }\nprobes:\n  - { name: stress, device: shm0, params: ${params} }\n`;
  const e = t.throws(() => parseLab(lab('{ mix: map-vs-reset }'), 'labs/x.yaml', { imagesDir: fixtureImages }), { instanceOf: YamlError });
  t.regex(e.message, /probes\[0\]\.params\.mix: .*all.*map-vs-revoke.*close-vs-revoke/);
  for (const mix of Object.keys(STRESS_MIXES)) {
    t.notThrows(() => parseLab(lab(`{ mix: ${mix} }`), 'labs/x.yaml', { imagesDir: fixtureImages }));
    // Each pair mix races MEM toggles (revoke, un-revoke) against one other kind of operation.
    if (mix !== 'all') t.like(STRESS_MIXES[mix], { memOff: 10, memOn: 10 });
  }
  t.deepEqual(Object.keys(STRESS_MIXES.all).sort(), ['closeBuf', 'closeDev', 'export', 'map', 'memOff', 'memOn', 'reset', 'unmap']);
});

test('a probe on a device type it does not accept', (t) => {
  const text = `${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints:\n    - { id: shm0, type: ivshmem-plain, port: rp0 }\nprobes:\n  - { name: edu-only, device: shm0 }\n`;
  const e = t.throws(() => parseLab(text, 'labs/x.yaml', { imagesDir: fixtureImages, catalog: catalogWithEduOnly }), { instanceOf: YamlError });
  t.is(e.message, 'labs/x.yaml:8:31: probes[0].device: probe edu-only does not work on ivshmem-plain ("shm0"); it takes edu');
});

test('image recipe must exist; the path tried is named', async (t) => {
  const f = fx('bad-image.yaml');
  const e = await labError(loadLab(f));
  t.is(e.message, `${f}:2:8: image: no image recipe "trixie" (looked for ${path.join(fixtureImages, 'trixie.yaml')} and ${path.join(repo, 'images', 'trixie.yaml')})`);
});

test('empty file and wrong top-level type', (t) => {
  const empty = t.throws(() => parseLab('', 'labs/empty.yaml', { imagesDir: fixtureImages }), { instanceOf: YamlError });
  t.is(empty.message, 'labs/empty.yaml:1:1: kernel: is required\nlabs/empty.yaml:1:1: image: is required');
  const list = t.throws(() => parseLab('- a\n- b\n', 'labs/list.yaml'), { instanceOf: YamlError });
  t.is(list.message, 'labs/list.yaml:1:1: not a lab file: expected a map of keys (got a list)');
});

test('unreadable file is a YamlError too', async (t) => {
  const e = await labError(loadLab('labs/does-not-exist.yaml'));
  t.regex(e.message, /^labs\/does-not-exist\.yaml:1:1: cannot read lab file: no such file$/);
});

test('kernel sections: source builds, fast path, and what each refuses', (t) => {
  const base = 'image: bookworm\ntopology:\n  root_ports: [rp0]\n  endpoints:\n    - { id: shm0, type: ivshmem-plain, port: rp0 }\n';
  const file = path.join(repo, 'labs', 'kernel-test.yaml');
  const ok = parseLab(`kernel:\n  debian: linux-image-7.2\n  driver: {}\n  patches: [../test/fixtures/patches/vfio-zero-length-enoent.patch]\n${base}`, file);
  t.like(ok.kernel, { kind: 'debian-prebuilt', driver: { dirs: ['drivers/vfio/pci'] } });
  t.deepEqual((ok.kernel as { patches: unknown }).patches, [{ kind: 'file', path: path.join(repo, 'test/fixtures/patches/vfio-zero-length-enoent.patch') }]);
  const src = parseLab(`kernel:\n  tarball: ../package.json\n  config: { base: defconfig, fragments: [../labs/configs/debug.config] }\n${base}`, file);
  t.deepEqual(src.kernel, {
    kind: 'source', source: { kind: 'tarball', path: path.join(repo, 'package.json') }, patches: [],
    config: { base: 'defconfig', fragments: [path.join(repo, 'labs/configs/debug.config')] },
  });
  const err = (text: string) => t.throws(() => parseLab(text + base, file), { instanceOf: YamlError }).message;
  t.regex(err('kernel:\n  debian: linux-image-7.2\n  patches: [x.patch]\n'), /kernel-test\.yaml:3:\d+: kernel\.patches: a prebuilt kernel \(linux-image-7\.2\) takes patches only with driver:/);
  t.regex(err('kernel:\n  debian: linux-source-7.2\n  driver: {}\n'), /kernel\.driver: only applies to a prebuilt kernel/);
  t.regex(err('kernel:\n  debian: linux-source-7.2\n  path: /src/linux\n'), /kernel: needs exactly one of debian, path, tarball \(got debian, path\)/);
  t.regex(err('kernel:\n  debian: linux-source-7.2\n  patches: [nope.patch]\n'), /kernel\.patches\[0\]: .*nope\.patch does not exist/);
  t.regex(err('kernel:\n  debian: linux-headers-7.2\n'), /must be linux-image-<version> \(prebuilt\) or linux-source-<version>/);
});

test('endpoints sharing a port as the functions of one device; function 0 is required', (t) => {
  const topo = (fns: number[]) => `${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints:\n${fns.map((f, i) => `    - { id: s${i}, type: ivshmem-plain, port: rp0, memory: 16M, function: ${f} }\n`).join('')}`;
  const lab = inline(topo([0, 1]));
  t.deepEqual(lab.topology.endpoints.map((e) => [e.id, e.function]), [['s0', undefined], ['s1', 1]]);
  const noZero = t.throws(() => inline(topo([1, 2])), { instanceOf: YamlError });
  t.regex(noZero.message, /inline\.yaml:\d+:\d+: topology\.endpoints\[0\]\.function: port "rp0" has functions 1, 2 but no function 0/);
  const twice = t.throws(() => inline(topo([0, 0])), { instanceOf: YamlError });
  t.regex(twice.message, /endpoints sharing a port need distinct function numbers, and function 0 is taken/);
});

test('the importer param (default edu0) must name an edu endpoint of the lab, caught at parse time', (t) => {
  const lab = (endpoints: string, params = '') =>
    `${MINIMAL}topology:\n  root_ports: [rp0, rp1]\n  endpoints:\n    - { id: shm0, type: ivshmem-plain, port: rp0, memory: 16M }\n${endpoints}probes:\n  - { name: importer-refusals, device: shm0${params} }\n`;
  t.is(inline(lab('    - { id: edu0, type: edu, port: rp1 }\n')).probes[0].params.importer, 'edu0');
  const none = t.throws(() => inline(lab('')), { instanceOf: YamlError }).message;
  t.regex(none, /inline\.yaml:\d+:\d+: probes\[0\]: importer-refusals\.importer: no endpoint "edu0" \(the default; set params\.importer\); it names the edu endpoint the probe uses \(edu endpoints in this lab: none\)/);
  const other = lab('    - { id: dma1, type: edu, port: rp1 }\n', ', params: { importer: shm0 }');
  t.regex(t.throws(() => inline(other), { instanceOf: YamlError }).message, /probes\[0\]\.params\.importer: importer-refusals\.importer: "shm0" is ivshmem-plain; it must be edu/);
  t.is(inline(lab('    - { id: dma1, type: edu, port: rp1 }\n', ', params: { importer: dma1 }')).probes[0].params.importer, 'dma1');
});

test('a param naming another VFIO endpoint must name one, not the probe\'s own device', (t) => {
  const lab = (partner: string) => `${MINIMAL}topology:\n  root_ports: [rp0, rp1]\n  endpoints:\n    - { id: a, type: ivshmem-plain, port: rp0, memory: 16M }\n    - { id: b, type: ivshmem-plain, port: rp0, memory: 16M, function: 1 }\n    - { id: edu0, type: edu, port: rp1 }\nprobes:\n  - { name: hot-reset-set, device: a, params: { partner: ${partner} } }\n`;
  t.is(inline(lab('b')).probes[0].params.partner, 'b');
  t.regex(t.throws(() => inline(lab('zz')), { instanceOf: YamlError }).message, /probes\[0\]\.params\.partner: hot-reset-set\.partner: no endpoint "zz" \(endpoints: a, b, edu0\)/);
  t.regex(t.throws(() => inline(lab('a')), { instanceOf: YamlError }).message, /hot-reset-set\.partner: must be another endpoint than the probe's device "a"/);
  t.regex(t.throws(() => inline(lab('edu0')), { instanceOf: YamlError }).message, /"edu0" is edu; it takes ivshmem-plain, nvme/);
});

test('slot plan limits: root ports, downstream ports, ports in all (src/lab/slots.ts)', (t) => {
  const ids = (p: string, n: number) => `[${Array.from({ length: n }, (_, i) => `${p}${i}`).join(', ')}]`;
  const err = (topo: string) => t.throws(() => inline(`${MINIMAL}topology:\n${topo}`), { instanceOf: YamlError }).message;
  t.regex(err(`  root_ports: ${ids('r', 16)}\n`), /inline\.yaml:4:81: topology\.root_ports\[15\]: at most 15 root ports fit on pcie\.0 \(slots 0x10-0x1e\)$/);
  t.regex(err(`  root_ports: [rp0]\n  switches:\n    - { id: sw0, port: rp0, downstream: ${ids('d', 33)} }\n`),
    /topology\.switches\[0\]\.downstream\[32\]: a switch has at most 32 downstream ports$/);
  const switches = Array.from({ length: 8 }, (_, i) => `    - { id: s${i}, port: r${i}, downstream: ${ids(`d${i}x`, 32)} }\n`).join('');
  t.regex(err(`  root_ports: ${ids('r', 15)}\n  switches:\n${switches}`), /inline\.yaml:4:3: topology: at most 255 root and downstream ports in all \(got 271\)$/);
  t.regex(err('  root_ports: [rp0]\n  endpoints:\n    - { id: e0, type: edu, port: rp0, function: 8 }\n'), /topology\.endpoints\[0\]\.function: must be at most 7 \(got 8\)$/);
});

test('secondary-vga: VRAM size in MiB, a power of two, at most 512; region defaults to BAR0', (t) => {
  const lab = (ep: string) => inline(`${MINIMAL}topology:\n  root_ports: [rp0]\n  endpoints:\n    - { id: vga0, type: secondary-vga, port: rp0${ep} }\nprobes: [dmabuf-export, export-ranges]\n`);
  const ok = lab('');
  t.deepEqual(ok.topology.endpoints, [{ id: 'vga0', type: 'secondary-vga', port: 'rp0', vgamemMiB: 16 }]);
  t.deepEqual(ok.probes.map((p) => [p.name, p.device, p.params.region]), [['dmabuf-export', 'vga0', 0], ['export-ranges', 'vga0', 0]]);
  t.like(lab(', vgamem: 512M').topology.endpoints[0], { vgamemMiB: 512 });
  const err = (ep: string) => t.throws(() => lab(ep), { instanceOf: YamlError }).message;
  t.regex(err(', vgamem: 24M'), /inline\.yaml:6:59: topology\.endpoints\[0\]\.vgamem: must be a power of two \(got 24M\)$/);
  t.regex(err(', vgamem: 1G'), /topology\.endpoints\[0\]\.vgamem: must be at most 512M \(got 1024M\)$/);
  t.regex(err(', memory: 16M'), /topology\.endpoints\[0\]\.memory: unknown key "memory" \(allowed: id, type, port, function, vgamem\)$/);
});

test('labs/vga.yaml: the quick checks on a secondary-vga, exporting its VRAM (BAR0)', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs', 'vga.yaml'));
  t.deepEqual(lab.topology.endpoints, [
    { id: 'vga0', type: 'secondary-vga', port: 'dp0', vgamemMiB: 16 },
    { id: 'edu0', type: 'edu', port: 'dp1', dmaMaskBits: 64 },
  ]);
  t.deepEqual(lab.probes.map((p) => [p.name, p.device, p.params.region]), [
    'dmabuf-export', 'dmabuf-fd', 'dmabuf-bad-inputs', 'export-ranges', 'reset-and-mem-toggle', 'importer-refusals', 'importer-multirange', 'lifetime',
  ].map((name) => [name, 'vga0', 0]));
});

test('machine.trace: QEMU event names or patterns, located when not', (t) => {
  t.deepEqual(parseLab(`${MINIMAL}machine:\n  trace: [amdvi_*, vtd_iotlb_page_hit]\n`, 'labs/x.yaml').machine.trace, ['amdvi_*', 'vtd_iotlb_page_hit']);
  t.deepEqual(parseLab(MINIMAL, 'labs/x.yaml').machine.trace, []);
  const e = t.throws(() => parseLab(`${MINIMAL}machine:\n  trace: ["amdvi_*,file=/etc/x"]\n`, 'labs/x.yaml'), { instanceOf: YamlError });
  t.regex(e.message, /labs\/x\.yaml:\d+:\d+: machine\.trace\[0\]: must be a QEMU trace event name or pattern \(letters, digits, _ and \*\), e\.g\. amdvi_\*/);
});


test('fault-inject (hwlab\'s own fault-suite probe) is only in labs/faults/, and each of those loads', async (t) => {
  const { readdir, readFile } = await import('node:fs/promises');
  const labsDir = path.join(repo, 'labs');
  for (const e of await readdir(labsDir, { recursive: true })) {
    if (!e.endsWith('.yaml')) continue;
    const text = await readFile(path.join(labsDir, e), 'utf8');
    if (e.startsWith('faults/')) {
      const lab = await loadLab(path.join(labsDir, e));
      t.deepEqual(lab.probes.map((p) => p.name), ['dmabuf-export', 'fault-inject', 'dmabuf-fd'], e);
    } else t.false(/\bfault-inject\b/.test(text), `${e} must not run fault-inject`);
  }
});
