// Expected failures scoped to points: a lab's expect_fail may name the points
// (substrings of their names) or the errnos it covers. Those failures become
// TODO; any other failure of the same probe still fails the probe and the
// run. Checked from the lab file through the guest's TAP writer to the
// host's outcome class.
import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Tap } from '../../src/guest/lib/tap.ts';
import { parseLab } from '../../src/lab/load.ts';
import { expectedByScope, type ExpectFailScope } from '../../src/protocol/protocol.ts';
import { classifyRun } from '../../src/results/outcome.ts';
import { parseProbeTap } from '../../src/results/tap.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const file = path.join(repo, 'test/fixtures/labs/inline.yaml');
const lab = (probe: string) => parseLab(`kernel: { debian: linux-image-7.2 }
image: bookworm
topology:
  root_ports: [rp0]
  endpoints:
    - { id: shm0, type: ivshmem-plain, port: rp0 }
probes:
${probe}
`, file);

test('expect_fail: a reason alone covers the probe; reason with points/errno is scoped; bad scopes are refused with the place', (t) => {
  t.deepEqual(lab('  - { name: dmabuf-export, device: shm0, expect_fail: known }').probes[0].expectFailScope, undefined);
  const scoped = lab('  - name: dmabuf-export\n    device: shm0\n    expect_fail: { reason: known, points: [map the], errno: [EADDRINUSE] }').probes[0];
  t.is(scoped.expectFail, 'known');
  t.deepEqual(scoped.expectFailScope, { points: ['map the'], errno: ['EADDRINUSE'] });
  const err = t.throws(() => lab('  - name: dmabuf-export\n    device: shm0\n    expect_fail: { reason: known, errno: [addrinuse] }'));
  t.regex(err.message, /inline\.yaml:\d+:\d+: probes\[0\]\.expect_fail/);
  t.regex(err.message, /errno name like EADDRINUSE/);
});

test('scope matching: point name substrings, errno values in the diagnostics', (t) => {
  const scope: ExpectFailScope = { points: ['map the'], errno: ['EADDRINUSE'] };
  t.true(expectedByScope(undefined, 'anything', undefined));
  t.true(expectedByScope(scope, 'map the 2-range dma-buf', undefined));
  t.true(expectedByScope(scope, 'import', { error: { code: 'EADDRINUSE' } }));
  t.false(expectedByScope(scope, 'import', { error: { code: 'ENODEV' } }));
  t.false(expectedByScope(scope, 'EADDRINUSE in the name only', undefined));
});

async function probeTap(scope: ExpectFailScope | undefined, failures: Array<{ name: string; diag?: Record<string, unknown> }>): Promise<string> {
  const lines: string[] = [];
  const tap = new Tap((l) => lines.push(l));
  tap.header(1);
  await tap.subtest('importer-multirange', (t) => {
    t.pass('export 2 ranges');
    for (const f of failures) t.fail(f.name, f.diag);
  }, { todo: 'dma_iova_link offset 0', todoScope: scope });
  return lines.join('\n') + '\n';
}

test('the covered failure is TODO and the run passes; a second, unrelated failure of the same probe fails the run', async (t) => {
  const scope = { points: ['map the'] };
  const covered = parseProbeTap(await probeTap(scope, [{ name: 'map the 2-range dma-buf', diag: { errno: 'EADDRINUSE' } }]));
  t.is(covered[0].subtests[1].todo, 'dma_iova_link offset 0');
  t.is(classifyRun(covered, []).class, 'pass');

  const second = parseProbeTap(await probeTap(scope, [{ name: 'map the 2-range dma-buf' }, { name: 'range 1 bytes at offset 0x10000' }]));
  t.is(second[0].subtests[1].todo, 'dma_iova_link offset 0');
  t.is(second[0].subtests[2].todo, undefined);
  const o = classifyRun(second, []);
  t.is(o.class, 'fail');
  t.regex(o.title, /importer-multirange: range 1 bytes at offset 0x10000/);

  // Unscoped (today's labs): every failure is expected, as before.
  const whole = parseProbeTap(await probeTap(undefined, [{ name: 'map the 2-range dma-buf' }, { name: 'range 1 bytes at offset 0x10000' }]));
  t.is(classifyRun(whole, []).class, 'pass');
});
