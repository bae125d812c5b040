// Guest entry point: `node runner.js <config.json>`. Prints TAP 14 on stdout,
// one subtest per probe in config order. Exit 0 whatever the probes found (the
// host judges the TAP), 2 for an unusable config, 1 only if the runner itself broke.
// `node runner.js --wait HASH DIR` (started by prestart.sh before a guest is
// saved) loads the probes and koffi, says it is ready, and waits for a go line
// naming the config to read and the bundle the run uploaded; a bundle other
// than its own (HASH) makes it exit RUNNER_EXIT.notPrestarted without running.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import {
  DMABUF_ABIS, ENDPOINT_TYPES, formatPrestartReady, formatProbeMarker, isEndpointType, parsePrestartGo, PRESTART_FILES, RUNNER_EXIT, RUNNER_WAIT_FLAG,
  type DmabufAbi, type EndpointType, type ExpectFailScope, type GuestDevice, type GuestProbeRequest, type GuestRunConfig, type ProbeMarker,
} from '../protocol/protocol.ts';
import { isProbeName, resolveParams, type ProbeName } from './probes/catalog.ts';
import type { Probe } from './probes/common.ts';
import { Tap } from './lib/tap.ts';

const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i;

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Validates the config and resolves each probe's params against the catalog. */
function parseConfig(raw: unknown): { ok: true; config: GuestRunConfig } | { ok: false; errors: string[] } {
  const errors: string[] = [];
  if (!isObj(raw)) return { ok: false, errors: ['config is not a JSON object'] };
  if (!DMABUF_ABIS.includes(raw.abi as DmabufAbi)) errors.push(`abi must be one of ${DMABUF_ABIS.join(', ')}`);
  if (!Array.isArray(raw.probes)) return { ok: false, errors: [...errors, 'probes must be an array'] };
  const probes: GuestProbeRequest[] = [];
  const devices: Record<string, GuestDevice> = {};
  if (raw.devices !== undefined && !isObj(raw.devices)) errors.push('devices must be an object');
  for (const [id, d] of Object.entries(isObj(raw.devices) ? raw.devices : {})) {
    const e = deviceErrors(`devices.${id}`, d);
    if (e.length) errors.push(...e);
    else devices[id] = d as unknown as GuestDevice;
  }
  raw.probes.forEach((p: unknown, i: number) => {
    const at = `probes[${i}]`;
    if (!isObj(p)) return void errors.push(`${at} is not an object`);
    const d = p.device;
    if (typeof p.name !== 'string' || !isProbeName(p.name)) errors.push(`${at}.name: unknown probe ${JSON.stringify(p.name)}`);
    if (!isObj(d)) return void errors.push(`${at}.device is not an object`);
    errors.push(...deviceErrors(`${at}.device`, d));
    if (p.params !== undefined && !isObj(p.params)) errors.push(`${at}.params must be an object`);
    if (p.expectFail !== undefined && typeof p.expectFail !== 'string') errors.push(`${at}.expectFail must be a string`);
    const scope = p.expectFailScope;
    const strings = (v: unknown) => v === undefined || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
    if (scope !== undefined && (!isObj(scope) || !strings(scope.points) || !strings(scope.errno))) errors.push(`${at}.expectFailScope must be { points?: string[], errno?: string[] }`);
    if (typeof p.name !== 'string' || !isProbeName(p.name)) return;
    const r = resolveParams(p.name, isObj(p.params) ? p.params : {}, d.type as EndpointType);
    if (!r.ok) return void errors.push(...r.errors.map((e) => `${at}: ${e}`));
    probes.push({ name: p.name, device: d as unknown as GuestDevice, params: r.params, expectFail: p.expectFail as string | undefined, ...(isObj(scope) ? { expectFailScope: scope as ExpectFailScope } : {}) });
  });
  for (const p of probes) devices[p.device.id] ??= p.device;
  return errors.length ? { ok: false, errors } : { ok: true, config: { abi: raw.abi as DmabufAbi, probes, devices } };
}

function deviceErrors(at: string, d: unknown): string[] {
  if (!isObj(d)) return [`${at} is not an object`];
  const errors: string[] = [];
  if (typeof d.id !== 'string') errors.push(`${at}.id must be a string`);
  if (!isEndpointType(d.type)) errors.push(`${at}.type must be one of ${ENDPOINT_TYPES.join(', ')}`);
  if (typeof d.bdf !== 'string' || !BDF.test(d.bdf)) errors.push(`${at}.bdf must look like 0000:02:00.0`);
  if (!(d.iommuGroup === null || (Number.isSafeInteger(d.iommuGroup) && (d.iommuGroup as number) >= 0))) {
    errors.push(`${at}.iommuGroup must be a non-negative integer or null`);
  }
  return errors;
}

type LoadedProbes = { impls: Record<ProbeName, Probe> } | { loadError: unknown };

/** Probes (and koffi with them) load lazily so a broken native module fails probes, not the runner. */
async function loadProbes(waitForThread = false): Promise<LoadedProbes> {
  try {
    const impls = (await import('./probes/index.ts')).PROBE_IMPLS;
    // koffi binds libc on first use: a waiting runner pays that before the save too.
    (await import('./lib/libc.ts')).pageSize();
    // A syscall thread for the first probe that needs one, starting beside the first probes
    // (a waiting runner waits for it: the save then holds it ready).
    const thread = (await import('./lib/systhread.ts')).SyscallThread.prestart();
    if (waitForThread) await thread;
    return { impls };
  } catch (loadError) {
    return { loadError };
  }
}

async function run(config: GuestRunConfig, probes: LoadedProbes, tap = new Tap()): Promise<void> {
  const impls = 'impls' in probes ? probes.impls : undefined;
  const loadError = 'loadError' in probes ? probes.loadError : undefined;
  tap.header(config.probes.length);
  for (const [i, p] of config.probes.entries()) {
    const d = p.device;
    kmsgMarker({ edge: 'begin', index: i + 1, probe: p.name });
    await tap.subtest(p.name, async (t) => {
      t.comment(`device ${d.id} (${d.type}) at ${d.bdf}, iommu group ${d.iommuGroup ?? 'none (noiommu)'}, ${config.abi} ABI`);
      if (!impls) throw new Error(`cannot load probes: ${loadError instanceof Error ? loadError.message : String(loadError)}`);
      await impls[p.name as ProbeName]({ device: d, devices: config.devices, abi: config.abi, params: p.params, t });
    }, { todo: p.expectFail, todoScope: p.expectFailScope });
    kmsgMarker({ edge: 'end', index: i + 1, probe: p.name });
  }
}

/**
 * Probe boundaries in the kernel log: the host reads them from the serial
 * console and attaches each kernel report to the probe that was running.
 */
function kmsgMarker(m: ProbeMarker): void {
  try {
    writeFileSync('/dev/kmsg', `${formatProbeMarker(m)}\n`);
  } catch {
    // No /dev/kmsg (not the guest): kernel reports then stay unattributed, still failing the run.
  }
}

async function main(argv: string[]): Promise<number> {
  if (argv[0] === RUNNER_WAIT_FLAG && argv.length === 3) return waitThenRun(argv[1], argv[2]);
  if (argv.length !== 1) {
    process.stderr.write('usage: node runner.js <config.json> | --wait HASH DIR\n');
    return RUNNER_EXIT.badConfig;
  }
  return runConfigFile(argv[0], await loadProbes());
}

async function runConfigFile(file: string, probes: LoadedProbes): Promise<number> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    process.stderr.write(`runner: cannot read config ${file}: ${(e as Error).message}\n`);
    return RUNNER_EXIT.badConfig;
  }
  const parsed = parseConfig(raw);
  if (!parsed.ok) {
    process.stderr.write(`runner: bad config ${file}:\n${parsed.errors.map((e) => `  ${e}\n`).join('')}`);
    return RUNNER_EXIT.badConfig;
  }
  await run(parsed.config, probes);
  return RUNNER_EXIT.ok;
}

/** The prestarted runner: everything a cold start costs now, then the go line (blocking: nothing else runs meanwhile). */
async function waitThenRun(ownHash: string, dir: string): Promise<number> {
  // prestart.sh go reads the exit code from here once our stdout and stderr close.
  process.on('exit', (code) => {
    try { writeFileSync(path.join(dir, PRESTART_FILES.status), `${process.exitCode ?? code}\n`); } catch { /* the script says it got no status */ }
  });
  const probes = await loadProbes(true);
  writeFileSync(path.join(dir, PRESTART_FILES.ready), `${formatPrestartReady(process.pid, process.uptime())}\n`);
  // Opening the FIFO blocks until prestart.sh go writes to it (after a restore, typically).
  const line = readFileSync(path.join(dir, PRESTART_FILES.control), 'utf8');
  const go = parsePrestartGo(line);
  if (!go) {
    process.stderr.write(`runner: not a go line: ${JSON.stringify(line)}\n`);
    return RUNNER_EXIT.notPrestarted;
  }
  if (go.bundleHash !== ownHash) {
    process.stderr.write(`runner: started from bundle ${ownHash.slice(0, 12)}, this run uploaded ${go.bundleHash.slice(0, 12)}: a cold runner must run it\n`);
    return RUNNER_EXIT.notPrestarted;
  }
  return runConfigFile(go.configFile, probes);
}

// exitCode rather than exit(): stdout is a pipe over ssh and must drain first.
main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (e) => {
    process.stdout.write(`Bail out! runner crashed: ${String(e instanceof Error ? e.message : e).replace(/\n/g, ' ')}\n`);
    process.stderr.write(`${e instanceof Error ? e.stack : String(e)}\n`);
    process.exitCode = RUNNER_EXIT.crashed;
  },
);
