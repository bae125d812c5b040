// Matrix files: mistakes in the file are located errors (file:line:col, the
// field, what is allowed), cells that cannot mean anything are refused with
// the reason before anything is built, expectations change exactly the
// probes they name, cells with the same kernel inputs share one build, and
// labs/matrix.yaml has the cells issue E lists.
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadMatrix, parseMatrix, selectCells } from '../../src/matrix/load.ts';
import { decideJobs, formatPlan, plannedBuilds, reproduceCommand } from '../../src/matrix/plan.ts';
import { YamlError } from '../../src/util/yaml.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const fixture = (f: string) => path.join('test/fixtures/matrix', f);
process.chdir(repo);

test('mistakes in the file itself are all reported at once, each at its place', async (t) => {
  const err = await t.throwsAsync(loadMatrix(fixture('bad-names.yaml')), { instanceOf: YamlError });
  const lines = err!.message.split('\n');
  t.deepEqual(lines, [
    `${fixture('bad-names.yaml')}:6:37: axes.iommu.amd.caching_mode: only applies to iommu type intel (this lab uses amd)`,
    `${fixture('bad-names.yaml')}:10:18: matrix.iommu[1]: no iommu value "amdd" (axes.iommu defines intel, amd)`,
    `${fixture('bad-names.yaml')}:12:17: matrix.include[0].config: no config value "kasan" (axes.config defines debug)`,
    `${fixture('bad-names.yaml')}:13:41: matrix.include[1].expect[0].probe: unknown probe "no-such-probe"`,
    `${fixture('bad-names.yaml')}:15:14: matrix.exclude[0].lab: no lab value "smoke": the file defines no axes.lab`,
  ]);
});

test('schema errors name the key and what is allowed', async (t) => {
  const text = 'base: ../../../labs/smoke.yaml\naxes:\n  iommu: { intel: intel }\nmatrix:\n  iommu: [intel]\n  include:\n    - { iommu: intel, colour: green }\n  exclude:\n    - {}\n';
  const err = await t.throwsAsync(parseMatrix(text, fixture('inline.yaml')), { instanceOf: YamlError });
  t.regex(err!.message, /inline\.yaml:7:23: matrix\.include\[0\]\.colour: unknown key "colour" \(allowed: lab, config, iommu, kernel, expect, probes, cmdline\)/);
  t.regex(err!.message, /inline\.yaml:9:7: matrix\.exclude\[0\]: must name at least one axis value/);
});

test('impossible and meaningless cells are refused with the reason; the rest are runnable', async (t) => {
  const m = await loadMatrix(fixture('refusals.yaml'));
  const why = (id: string) => m.refused.filter((r) => r.id === id).flatMap((r) => r.reasons).join('\n');
  t.deepEqual(m.cells.map((c) => c.id), ['smoke']);
  t.regex(why('smoke.none'), /refusals\.yaml:16:11: iommu none needs CONFIG_VFIO_NOIOMMU, which the cell's config \(tinyconfig \+ guest-base\.config, vfio-dmabuf\.config, debug\.config\) never sets/);
  t.regex(why('prebuilt.kasan'), /config kasan changes the kernel config, but lab prebuilt uses the prebuilt linux-image-7\.2, whose config is fixed/);
  t.regex(why('smoke.missing'), /config missing \(.*refusals\.yaml:14:14\): fragment .*no-such\.config does not exist/);
  t.regex(why('iova.intel-pt'), /map-type on shm0 expects host-bridge-iova, which needs a DMA domain, but the vIOMMU is intel passthrough/);
  t.regex(why('smoke.kasan-kcsan'), /sets both CONFIG_KASAN and CONFIG_KCSAN; KCSAN depends on !KASAN/);
  t.regex(why('smoke.strict-pt'), /strict and passthrough together mean nothing/);
  t.regex(why('smoke.intel'), /probes map-type not in lab smoke/);
  t.regex(why('smoke.debug.intel'), /refusals\.yaml:32:16: dmabuf-export: unknown parameter "bogus"/);
  t.regex(why('smoke.kasan.intel'), /refusals\.yaml:36:16: expects something of map-type, but lab smoke runs no such probe/);
  t.regex(why('smoke'), /refusals\.yaml:38:7: the same axis values as the cell made at .*refusals\.yaml:37:7/);
  // The plan says all of it, and `--cell` can still pick the runnable cell.
  const plan = formatPlan(m, m.cells, m.refused, plannedBuilds(m.cells));
  t.regex(plan, /1 cell, 1 kernel build, 10 refused/);
  t.regex(plan, /refused \(nothing is built for them\):\n {2}smoke\.none\n/);
  const sel = selectCells(m, ['smoke', 'nope']);
  t.deepEqual(sel.unknown, ['nope']);
});

test('labs/matrix.yaml: the cells issue E lists, with their expectations, on the builds they share', async (t) => {
  const m = await loadMatrix('labs/matrix.yaml');
  const all = [...m.cells.map((c) => c.id), ...m.refused.map((r) => r.id)];
  for (const id of [
    'smoke.debug.intel-lazy', 'smoke.debug.intel-strict', 'smoke.debug.intel-pt', 'smoke.debug.amd', 'smoke.debug.virtio',
    'maptype-iova.debug.intel-pt', 'default.debug.intel-lazy', 'maptype-unsupported.debug.intel-lazy',
    'default.kasan.intel-lazy', 'kcsan.debug.intel-lazy', 'smoke.no-dmabuf.intel-lazy',
  ]) t.true(all.includes(id), `${id} is a cell`);
  // Every cell runs: the kcsan and no-dmabuf fragments exist and dmabuf-export takes expect: ENOTTY.
  t.deepEqual(m.refused.map((r) => `${r.id}: ${r.reasons.join('; ')}`), []);
  const cell = (id: string) => m.cells.find((c) => c.id === id)!;
  t.deepEqual(cell('smoke.no-dmabuf.intel-lazy').lab.probes.map((p) => [p.name, p.params.expect]), [['dmabuf-export', 'ENOTTY']]);
  const kcsan = cell('kcsan.debug.intel-lazy');
  t.deepEqual(kcsan.lab.probes.map((p) => [p.name, p.params.seconds, p.params.mix]), [['stress', 30, 'all'], ['stress', 30, 'close-vs-revoke'], ['stress', 30, 'map-vs-revoke']]);
  t.deepEqual(kcsan.lab.machine.cmdline, ['kcsan.skip_watch=10']);
  // KCSAN from the lab's own fragments, instrumenting only the subsystem (its harness patch).
  t.true(kcsan.lab.kernel.kind === 'source' && kcsan.lab.kernel.config.fragments.some((f) => f.endsWith('configs/kcsan.config')));
  t.deepEqual(kcsan.lab.kernel.patches.map((p) => (p.kind === 'quilt' ? p.dir : path.basename(p.path))), ['0001-kbuild-KCSAN-instruments-only-vfio-dma-buf-iommufd.patch']);

  // Every p2p map type on the default debug config with intel lazy: bus address, host-bridge IOVA, not supported.
  const lazyTypes = new Set(m.cells.filter((c) => c.axes.iommu === 'intel-lazy' && c.axes.config === 'debug')
    .flatMap((c) => c.lab.probes.filter((p) => p.name === 'map-type').map((p) => p.params.expect)));
  t.deepEqual([...lazyTypes].sort(), ['bus-address', 'host-bridge-iova', 'not-supported']);
  t.is(cell('maptype-unsupported.debug.intel-lazy').lab.machine.cpu, 'Skylake-Server');

  // Passthrough: the host-bridge pairs become direct, and only those.
  t.deepEqual(cell('maptype-iova.debug.intel-pt').lab.probes.map((p) => p.params.expect), ['host-bridge-direct', 'host-bridge-direct']);
  t.deepEqual(cell('maptype-iova.debug.intel-lazy').lab.probes.map((p) => p.params.expect), ['host-bridge-iova', 'host-bridge-iova']);
  t.true(cell('maptype-iova.debug.intel-pt').lab.iommu.passthrough);
  t.true(cell('smoke.debug.intel-strict').lab.iommu.strict);
  // amd: importer-refusals expected to fail, with its reason; nothing else changes.
  const amd = cell('smoke.debug.amd');
  t.is(amd.lab.iommu.kind, 'amd');
  t.deepEqual(amd.lab.probes.filter((p) => p.expectFail).map((p) => p.name), ['importer-refusals']);
  t.regex(amd.lab.probes.find((p) => p.expectFail)!.expectFail!, /points 21 and 22.*QEMU 7.2 amd-iommu bug.*buses != 0/);
  t.deepEqual(cell('smoke.debug.virtio').lab.machine.cmdline, ['vfio_iommu_type1.allow_unsafe_interrupts=1']);
  t.deepEqual(cell('smoke.debug.intel-lazy').lab.machine.cmdline, []);

  // The vIOMMU cells of the smoke lab (the e2e subset) share one kernel build; KASAN is another.
  const viommu = m.cells.filter((c) => c.axes.lab === 'smoke' && c.axes.config === 'debug');
  t.is(viommu.length, 6);
  t.false(cell('smoke.debug.intel-fq').lab.iommu.cachingMode, 'intel-fq: lazy for real, without caching mode');
  t.true(cell('smoke.debug.intel-lazy').lab.iommu.cachingMode);
  t.is(new Set(viommu.map((c) => c.build.key)).size, 1);
  t.not(cell('default.kasan.intel-lazy').build.key, viommu[0].build.key);
  t.regex(cell('default.kasan.intel-lazy').build.label, /guest-base vfio-dmabuf debug kasan$/);
  t.is(reproduceCommand('labs/matrix.yaml', 'smoke.debug.amd'), './hwlab matrix run labs/matrix.yaml --cell smoke.debug.amd');
});

test('jobs: bounded by cores (two per TCG guest) and by memory; asking for more than memory allows is lowered', async (t) => {
  const m = await loadMatrix('labs/matrix.yaml');
  const cells = m.cells.filter((c) => c.axes.lab === 'smoke');
  const per = decideJobs(undefined, cells, { cpus: 2, availMiB: 24000 }).perGuestMiB;
  t.is(per, 2048 + 64 + 512, 'guest RAM, the ivshmem BAR file, QEMU');
  t.is(decideJobs(undefined, cells, { cpus: 2, availMiB: 24000 }).jobs, 1);
  t.is(decideJobs(undefined, cells, { cpus: 8, availMiB: 24000 }).jobs, 4);
  const two = decideJobs(2, cells, { cpus: 2, availMiB: 24000 });
  t.is(two.jobs, 2);
  t.regex(two.notes.join('\n'), /2 guests on 2 cores/);
  const low = decideJobs(4, cells, { cpus: 8, availMiB: 2048 + 2 * per });
  t.is(low.jobs, 2);
  t.regex(low.notes.join('\n'), /--jobs 4 lowered to 2/);
  t.is(decideJobs(8, cells.slice(0, 3), { cpus: 64, availMiB: 1 << 20 }).jobs, 3, 'never more workers than cells');
});
