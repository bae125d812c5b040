// The vIOMMU assertion after boot (src/session/viommu.ts), through the run's
// orchestration on the fake machine: a guest that shows the lab's vIOMMU runs
// its probes and results.json records what it showed; a guest behind another
// IOMMU, none, another domain type, another device at a slot or groups that
// cross root ports stops in setup as `error` (viommu-mismatch) naming the
// endpoint and what differs, with nothing bound and no probe run.
import test from 'ava';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import type { IommuSpec, LabSpec } from '../../src/lab/types.ts';
import { FakeBackend, type FakeInstance, type FakeScript } from '../../src/machine/fake.ts';
import { runOnMachine } from '../../src/run/on-machine.ts';
import type { PreparedLab } from '../../src/run/prepare.ts';
import { FAKE_PREPARED } from './helpers/fake-prepared.ts';
import type { RunResults } from '../../src/results/report.ts';
import { expectedViommu, viommuMismatches } from '../../src/session/viommu.ts';
import { parseDeviceInfo } from '../../src/session/pci.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const smoke = await loadLab(path.join(repo, 'labs/smoke.yaml'));
const deflt = await loadLab(path.join(repo, 'labs/default.yaml'));

const prepared: PreparedLab = FAKE_PREPARED;

const withIommu = (lab: LabSpec, iommu: Partial<IommuSpec>, cmdline: string[] = []): LabSpec =>
  ({ ...lab, iommu: { ...lab.iommu, ...iommu }, machine: { ...lab.machine, cmdline: [...lab.machine.cmdline, ...cmdline] } });

async function run(t: { teardown: (fn: () => Promise<void>) => void }, lab: LabSpec, script: FakeScript = {}): Promise<{ results: RunResults; m: FakeInstance; runDir: string }> {
  const runDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-viommu-'));
  t.teardown(() => rm(runDir, { recursive: true, force: true }));
  const backend = new FakeBackend(script);
  const results = await runOnMachine({ lab, prepared, runDir, progress: silentProgress(), privateKey: 'key', startedAt: Date.now(), timings: {} }, backend);
  return { results, m: backend.instances[0] as FakeInstance, runDir };
}

const bound = (m: FakeInstance) => m.calls.filter((c) => c.argv[0] === 'sh' && c.argv[2].includes('driver_override') && c.argv[2].includes('vfio-pci >'));
const ranRunner = (m: FakeInstance) => m.calls.some((c) => c.argv[0] === 'node');

test('the expected driver and domain type of every vIOMMU and mode', (t) => {
  const e = (i: Partial<IommuSpec>) => {
    const x = expectedViommu({ kind: 'intel', cachingMode: true, strict: false, passthrough: false, ...i });
    return [x.unit?.source ?? null, x.domainType];
  };
  // Caching mode (hwlab's default for intel) makes the Intel driver force strict: lazy is DMA there.
  t.deepEqual(e({}), ['^dmar\\d+$', 'DMA']);
  t.deepEqual(e({ cachingMode: false }), ['^dmar\\d+$', 'DMA-FQ']);
  t.deepEqual(e({ strict: true }), ['^dmar\\d+$', 'DMA']);
  t.deepEqual(e({ passthrough: true }), ['^dmar\\d+$', 'identity']);
  // The AMD driver forces strict under QEMU's amd-iommu (NpCache), whatever iommu.strict says.
  t.deepEqual(e({ kind: 'amd' }), ['^ivhd\\d+$', 'DMA']);
  t.deepEqual(e({ kind: 'amd', passthrough: true }), ['^ivhd\\d+$', 'identity']);
  // virtio-iommu's unit is named after its PCI function (hwlab puts it at 00:01.0).
  t.deepEqual(e({ kind: 'virtio' }), ['^0000:00:01\\.0$', 'DMA-FQ']);
  t.deepEqual(e({ kind: 'none' }), [null, null]);
});

test('sysfs info line: group, driver, PCI ID, IOMMU unit, domain type; empty fields are null', (t) => {
  t.deepEqual(parseDeviceInfo('0000:03:00.0', '7||0x1af4:0x1110|dmar0|DMA-FQ\n'),
    { bdf: '0000:03:00.0', iommuGroup: 7, driver: null, vendorDevice: '0x1af4:0x1110', iommu: 'dmar0', domainType: 'DMA-FQ' });
  t.deepEqual(parseDeviceInfo('0000:03:00.0', '|vfio-pci|0x1234:0x11e8||\n'),
    { bdf: '0000:03:00.0', iommuGroup: null, driver: 'vfio-pci', vendorDevice: '0x1234:0x11e8', iommu: null, domainType: null });
});

for (const [name, iommu, cmdline, unit, domain] of [
  ['intel lazy (caching mode: strict after all)', {}, [], 'dmar0', 'DMA'],
  ['intel lazy without caching mode', { cachingMode: false }, [], 'dmar0', 'DMA-FQ'],
  ['intel strict', { strict: true }, [], 'dmar0', 'DMA'],
  ['intel passthrough', { passthrough: true }, [], 'dmar0', 'identity'],
  ['amd', { kind: 'amd' }, [], 'ivhd0', 'DMA'],
  ['virtio', { kind: 'virtio' }, ['vfio_iommu_type1.allow_unsafe_interrupts=1'], '0000:00:01.0', 'DMA-FQ'],
] as const) {
  test(`${name}: the guest matches, the probes run, results.json records the vIOMMU per endpoint`, async (t) => {
    const lab = withIommu(smoke, iommu as Partial<IommuSpec>, [...cmdline]);
    const { results, m, runDir } = await run(t, lab);
    t.not(results.outcome.class, 'error', results.outcome.detail);
    t.true(ranRunner(m));
    t.is(results.viommu?.type, lab.iommu.kind);
    t.deepEqual(results.viommu?.cmdline, lab.machine.cmdline);
    t.deepEqual(Object.values(results.viommu!.endpoints).map((x) => [x.iommu, x.domainType]), [[unit, domain], [unit, domain]]);
    t.deepEqual(results.viommu!.endpoints.shm0.pciId, '1af4:1110');
    t.deepEqual(results.viommu!.endpoints.edu0.pciId, '1234:11e8');
    // devices.json keeps the same, with the group and domain of each endpoint.
    const devices = JSON.parse(await readFile(path.join(runDir, 'devices.json'), 'utf8'));
    t.is(devices.shm0.domainType, domain);
    t.is(devices.shm0.iommu, unit);
  });
}

test('no IOMMU in front of an endpoint (the driver is missing): error in setup, nothing bound, no probe', async (t) => {
  const lab = withIommu(smoke, { kind: 'amd' });
  const { results, m } = await run(t, lab, { guestDevices: { shm0: { iommu: null, group: null, domainType: null }, edu0: { iommu: null, group: null, domainType: null } } });
  t.is(results.outcome.class, 'error');
  t.is(results.outcome.code, 'viommu-mismatch');
  t.is(results.failure?.phase, 'setup');
  t.regex(results.failure!.message, /shm0 \(0000:01:00\.0\): no IOMMU in front of it, but the lab's vIOMMU is amd: the guest kernel did not bind amd-iommu \(units ivhdN\)/);
  t.regex(results.failure!.message, /edu0 \(0000:02:00\.0\): in no IOMMU group/);
  t.is(bound(m).length, 0, 'nothing bound to vfio-pci');
  t.false(ranRunner(m));
  t.truthy(m.exited, 'the machine was ended');
  // The evidence stays: what the guest showed is in the results.
  t.is(results.viommu?.endpoints.shm0.iommu, null);
});

test('another IOMMU than the lab\'s, another domain type, another device at a slot: each named', async (t) => {
  const lab = withIommu(smoke, {});
  const { results, m } = await run(t, lab, {
    guestDevices: { shm0: { iommu: 'ivhd0' }, edu0: { domainType: 'DMA-FQ', pciId: '1b36:0010' } },
  });
  t.is(results.outcome.class, 'error');
  const msg = results.failure!.message;
  t.regex(msg, /shm0 \(0000:01:00\.0\): behind IOMMU unit ivhd0, but the lab's vIOMMU is intel-iommu \(units dmarN\)/);
  t.regex(msg, /edu0 \(0000:02:00\.0\): IOMMU group 2 has a DMA-FQ domain, but the lab asks for DMA \(the Intel driver forces strict mode under caching mode/);
  t.regex(msg, /edu0 \(0000:02:00\.0\): PCI ID 1b36:0010, but a edu is 1234:11e8 \(src\/lab\/endpoints\.ts\): another device sits at its slot/);
  t.regex(results.failure!.hint ?? '', /devices\.json/);
  t.false(ranRunner(m));
});

test('endpoints on different root ports in one group: the guest does not see the lab\'s topology', (t) => {
  const devices = Object.fromEntries(deflt.topology.endpoints.map((ep, i) => [ep.id, {
    bdf: `0000:0${i + 1}:00.0`, iommuGroup: ep.id === 'shm2' ? 1 : i + 1, driver: null,
    vendorDevice: { 'ivshmem-plain': '0x1af4:0x1110', edu: '0x1234:0x11e8', nvme: '0x1b36:0x0010', 'pci-testdev': '0x1b36:0x0005', 'secondary-vga': '0x1234:0x1111' }[ep.type],
    iommu: 'dmar0', domainType: 'DMA',
  }]));
  t.deepEqual(viommuMismatches(deflt, devices), ['shm2 and shm0 share IOMMU group 1, but sit under different root ports (rp2, rp0)']);
  // Endpoints behind one switch, or functions of one device, may share a group (no ACS between them).
  devices.shm2.iommuGroup = 9;
  devices.edu0.iommuGroup = devices.shm1.iommuGroup;
  devices.shm4.iommuGroup = devices.shm3.iommuGroup;
  t.deepEqual(viommuMismatches(deflt, devices), []);
});

test('no vIOMMU: no unit and no group expected before vfio-pci binds in no-IOMMU mode', async (t) => {
  const lab = withIommu(smoke, { kind: 'none' });
  const ok = await run(t, lab);
  t.not(ok.results.outcome.class, 'error', ok.results.outcome.detail);
  const bad = await run(t, lab, { guestDevices: { shm0: { iommu: 'dmar0' } } });
  t.is(bad.results.outcome.class, 'error');
  t.regex(bad.results.failure!.message, /shm0 \(0000:01:00\.0\): behind IOMMU unit dmar0, but the lab has no vIOMMU/);
});
