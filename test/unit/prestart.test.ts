// The prestarted probe runner's guest side, run for real on the host (sh,
// mkfifo, setsid and node are all here): the bundle hwlab uploads
// (src/probes/bundle.ts), prestart.sh start leaving `runner.cjs --wait`
// detached and ready, prestart.sh go handing it a config and streaming its
// TAP and exit code as a cold runner's, and the refusals the host falls back
// on (another bundle, no runner waiting) exiting RUNNER_EXIT.notPrestarted
// with nothing run. Without devices every probe fails its open of
// /dev/vfio/vfio, which is output enough to compare.
import test from 'ava';
import { execa } from 'execa';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { bundleProbes } from '../../src/probes/bundle.ts';
import { parsePrestartReady, PRESTART_FILES, PRESTART_SCRIPT_NAME, RUNNER_EXIT } from '../../src/protocol/protocol.ts';
import { parseProbeTap } from '../../src/results/tap.ts';
import { tempDir } from './helpers/temp.ts';

const DEV = { id: 'shm0', type: 'ivshmem-plain', bdf: '0000:7f:1f.7', iommuGroup: 42 };
const CONFIG = { abi: 'ranges', devices: { shm0: DEV }, probes: [{ name: 'dmabuf-export', device: DEV, params: {} }, { name: 'dmabuf-fd', device: DEV, params: {} }] };

async function prepared(t: import('ava').ExecutionContext) {
  const dir = tempDir('hwlab-prestart-');
  const bundle = await bundleProbes(dir);
  const config = path.join(dir, 'config.json');
  await writeFile(config, JSON.stringify(CONFIG));
  const script = path.join(dir, PRESTART_SCRIPT_NAME);
  const sh = (args: string[]) => execa('sh', [script, ...args], { reject: false, timeout: 90_000 });
  t.teardown(async () => {
    // The runner is detached from us on purpose: end it by the pid it wrote, if it still waits.
    const ready = parsePrestartReady(await readFile(path.join(dir, PRESTART_FILES.ready), 'utf8').catch(() => ''));
    if (ready) { try { process.kill(ready.pid, 'SIGKILL'); } catch { /* gone */ } }
    await rm(dir, { recursive: true, force: true });
  });
  return { dir, bundle, config, sh };
}

/** Running (a zombie is not: the detached runner is reparented, and here nobody may reap it). */
async function alive(pid: number): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return status !== '' && !/^State:\s*Z/m.test(status);
}

test('a waiting runner takes the run: its TAP and exit code come through prestart.sh go as a cold runner\'s do; then none waits', async (t) => {
  const { bundle, config, sh } = await prepared(t);
  const start = await sh(['start', bundle.hash, '60']);
  t.is(start.exitCode, 0, start.stderr);
  const ready = parsePrestartReady(start.stdout.trim());
  t.truthy(ready, start.stdout);
  t.true(await alive(ready!.pid), 'it waits, detached, after the start script returned');
  t.true(ready!.startupSec > 0);

  const go = await sh(['go', bundle.hash, config]);
  const cold = await execa('node', [path.join(path.dirname(config), bundle.entry), config], { reject: false });
  t.is(go.exitCode, RUNNER_EXIT.ok, go.stderr);
  const [viaGo, viaCold] = [parseProbeTap(go.stdout), parseProbeTap(cold.stdout)];
  t.deepEqual(viaGo.map((p) => [p.name, p.ok, p.subtests.map((s) => s.name)]), viaCold.map((p) => [p.name, p.ok, p.subtests.map((s) => s.name)]));
  t.deepEqual(viaGo.map((p) => p.name), ['dmabuf-export', 'dmabuf-fd']);
  t.false(await alive(ready!.pid), 'the runner exited after its run');

  const again = await sh(['go', bundle.hash, config]);
  t.is(again.exitCode, RUNNER_EXIT.notPrestarted);
  t.is(again.stdout, '');
  t.regex(again.stderr, /no waiting probe runner/);
});

test('a runner started from another bundle refuses the run and exits; a bad config is the runner\'s usual exit 2', async (t) => {
  const { bundle, config, sh, dir } = await prepared(t);
  const other = 'f'.repeat(64);
  t.is((await sh(['start', other, '60'])).exitCode, 0);
  const ready = parsePrestartReady(await readFile(path.join(dir, PRESTART_FILES.ready), 'utf8'));
  const go = await sh(['go', bundle.hash, config]);
  t.is(go.exitCode, RUNNER_EXIT.notPrestarted, go.stderr);
  t.is(go.stdout, '', 'nothing ran');
  t.regex(go.stderr, /started from bundle ffffffffffff, this run uploaded [0-9a-f]{12}: a cold runner must run it/);
  t.false(await alive(ready!.pid));

  t.is((await sh(['start', bundle.hash, '60'])).exitCode, 0);
  const bad = path.join(dir, 'bad.json');
  await writeFile(bad, '{"abi": "v1", "probes": []}');
  const r = await sh(['go', bundle.hash, bad]);
  t.is(r.exitCode, RUNNER_EXIT.badConfig);
  t.regex(r.stderr, /abi must be one of/);
});

test('prestart.sh refuses wrong usage with exit 2', async (t) => {
  const { sh } = await prepared(t);
  for (const args of [[], ['start'], ['go', 'x'], ['stop']]) {
    const r = await sh(args);
    t.is(r.exitCode, 2, args.join(' '));
    t.regex(r.stderr, /usage:/);
  }
});
