// The fault suite of issue 16 on real guests: each scenario must end in the
// right outcome class with a message saying what happened, keep the run
// folder's artifacts, leave no QEMU or child process (checked by PID), and be
// followed by a run that passes. A fast subset runs in `npm test`; all of it
// with `npm run test:faults` (HWLAB_FAULTS=all). The guest boots of the
// isolation and SSH checks go through the machine interface directly, so the
// test can run its own commands in the guest.
import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadLab } from '../../src/lab/load.ts';
import type { MachineInstance } from '../../src/machine/instance.ts';
import { qemuBackend } from '../../src/machine/qemu.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { ensureHwlabKey } from '../../src/session/keys.ts';
import { cacheRoot } from '../../src/util/cache.ts';
import { Progress } from '../../src/util/progress.ts';
import { hwlab, readRun, removeRunsDirs, repoRoot, runsDir } from './helpers.ts';

// The lab every scenario runs: the smoke lab (same build as the default lab).
const LAB = process.env.HWLAB_FAULTS_LAB ?? path.join(repoRoot, 'labs/smoke.yaml');
const all = process.env.HWLAB_FAULTS === 'all';
/** In `npm test`: the scenarios that take a guest boot or less each. */
const fast = test.serial;
/** Only in `npm run test:faults`. */
const full = all ? test.serial : test.serial.skip;

test.after.always(removeRunsDirs);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every process below `pid` (children, grandchildren), from /proc. */
async function descendants(pid: number): Promise<number[]> {
  const r = await execa('ps', ['-e', '-o', 'pid=,ppid='], { reject: false });
  const kids = new Map<number, number[]>();
  for (const line of r.stdout.split('\n')) {
    const [p, pp] = line.trim().split(/\s+/).map(Number);
    if (p && pp !== undefined) kids.set(pp, [...(kids.get(pp) ?? []), p]);
  }
  const out: number[] = [];
  const walk = (p: number) => { for (const k of kids.get(p) ?? []) { out.push(k); walk(k); } };
  walk(pid);
  return out;
}

async function commOf(pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '')).trim();
}

/** The QEMUs below `pid` (by PID; other users' QEMUs on this host are not ours). */
async function qemusUnder(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const p of await descendants(pid)) if ((await commOf(p)).startsWith('qemu-system')) out.push(p);
  return out;
}

/**
 * Starts `hwlab run LAB --runs-dir dir`, returns when the run's probes.tap
 * (written as the TAP arrives) matches `marker`, with the QEMU's PID.
 */
async function runUntil(dir: string, marker: RegExp, timeoutMs = 25 * 60_000) {
  const child = hwlab(['run', LAB, '--runs-dir', dir]);
  let out = '';
  child.all?.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + timeoutMs;
  const tap = async () => {
    const [folder] = await readdir(dir).catch(() => [] as string[]);
    return folder ? readFile(path.join(dir, folder, 'probes.tap'), 'utf8').catch(() => '') : '';
  };
  while (!marker.test(await tap()) && Date.now() < deadline && child.exitCode === null) await sleep(100);
  if (!marker.test(await tap())) throw new Error(`never saw ${marker} in probes.tap:\n${out}`);
  const [qemu = 0] = await qemusUnder(child.pid!);
  return { child, out: () => out, qemu };
}

/** Nothing the run started is left: the QEMU by PID, and no cache temp directory. */
async function nothingLeft(t: import('ava').ExecutionContext, pids: number[], since: number): Promise<void> {
  for (let i = 0; i < 50 && pids.some(alive); i++) await sleep(100);
  t.deepEqual(pids.filter(alive), [], 'no process of the run is left');
  const tmp: string[] = [];
  for (const kind of existsSync(cacheRoot()) ? await readdir(cacheRoot()) : []) {
    const dir = path.join(cacheRoot(), kind);
    for (const n of await readdir(dir).catch(() => [] as string[])) {
      // Another user's build in progress has a live PID in its name; a dead one's is debris.
      const m = /^\.tmp-.*-(\d+)-[0-9a-f]{8}$/.exec(n);
      const made = (await stat(path.join(dir, n)).catch(() => null))?.mtimeMs ?? 0;
      if (m && !alive(Number(m[1])) && made >= since) tmp.push(path.join(dir, n));
    }
  }
  t.deepEqual(tmp, [], 'no half-written cache entry');
}

async function nextRunPasses(t: import('ava').ExecutionContext): Promise<void> {
  const dir = runsDir();
  const r = await hwlab(['run', LAB, '--runs-dir', dir]);
  t.is(r.exitCode, 0, `the next run passes:\n${r.all?.split('\n').slice(-15).join('\n')}`);
}

fast('QEMU SIGKILLed in the middle of the probes: infra, the signal named, the TAP so far kept', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  t.true(qemu > 0, 'QEMU found as a child of hwlab');
  process.kill(qemu, 'SIGKILL');
  const r = await child;
  t.is(r.exitCode, 3, r.all);
  const { runDir, results } = await readRun(dir);
  t.deepEqual([results.outcome.class, results.outcome.code], ['infra', 'qemu-died']);
  t.regex(results.outcome.title, /^QEMU was killed by SIGKILL during the probes/);
  t.is(results.probes[0].name, 'dmabuf-export');
  t.true(results.probes[0].ok, 'the probe that finished keeps its result');
  const tap = await readFile(path.join(runDir, 'probes.tap'), 'utf8');
  t.regex(tap, /ok 1 - dmabuf-export/);
  for (const f of ['console.log', 'qemu-cmdline.sh', 'results.json', 'junit.xml']) t.true(existsSync(path.join(runDir, f)), f);
  t.log(`${results.outcome.class} (${results.outcome.code}): ${results.outcome.title}`);
  await nothingLeft(t, [qemu, ...(await descendants(child.pid!))], started);
  await nextRunPasses(t);
});

fast('hwlab SIGKILLed during the probes: its QEMU dies with it (setpriv --pdeathsig), the TAP so far is on disk', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  t.true(qemu > 0);
  const kids = await descendants(child.pid!);
  child.kill('SIGKILL');
  await child;
  const start = Date.now();
  await nothingLeft(t, [qemu, ...kids], started);
  t.log(`QEMU ${qemu} gone ${Date.now() - start} ms after hwlab was SIGKILLed`);
  const runDir = path.join(dir, (await readdir(dir))[0]);
  t.true(existsSync(path.join(runDir, 'console.log')));
  await nextRunPasses(t);
});

fast('a lab asking for more memory than the host has is refused before boot, with the numbers', async (t) => {
  const dir = runsDir();
  const text = (await readFile(LAB, 'utf8')).replace(/memory: 2G/, 'memory: 64G');
  const file = path.join(dir, 'huge.yaml');
  await writeFile(file, text);
  const r = await hwlab(['run', file, '--runs-dir', dir]);
  t.is(r.exitCode, 2, r.all);
  t.regex(r.all ?? '', /machine\.memory: 65536M plus \d+M of endpoint memory does not fit in this host's \d+M of RAM less 1024M for the host/);
  t.deepEqual(await readdir(dir), ['huge.yaml'], 'no run folder');
});

full('a corrupt cache entry (a flipped byte in hwlab_importer.ko, a truncated initramfs) is found on use and built again', async (t) => {
  // A private cache: the kernel, image, key and sources are the shared ones (symlinked, never damaged);
  // the module and initramfs entries are built here by this hwlab, with their content lists, and damaged here.
  const shared = cacheRoot();
  const cache = runsDir();
  for (const kind of await readdir(shared)) {
    if (kind === 'kmod' || kind === 'initramfs' || kind.startsWith('.')) continue;
    await symlink(path.join(shared, kind), path.join(cache, kind));
  }
  const env = { HWLAB_CACHE: cache };
  const first = await hwlab(['run', LAB, '--runs-dir', runsDir()], { env });
  t.is(first.exitCode, 0, first.all);
  const only = async (kind: string) => {
    const names = (await readdir(path.join(cache, kind))).filter((n) => !n.startsWith('.'));
    t.is(names.length, 1, kind);
    return path.join(cache, kind, names[0]);
  };
  const ko = path.join(await only('kmod'), 'hwlab_importer.ko');
  const bytes = await readFile(ko);
  bytes[bytes.length >> 1] ^= 0xff;
  await writeFile(ko, bytes);
  const cpio = path.join(await only('initramfs'), 'initramfs.cpio');
  await writeFile(cpio, (await readFile(cpio)).subarray(0, 1000));
  const r = await hwlab(['run', LAB, '--runs-dir', runsDir()], { env });
  t.is(r.exitCode, 0, r.all);
  t.regex(r.all ?? '', /cache entry .*kmod.* is corrupt \(hwlab_importer\.ko does not have the sha256 it had when built\); removed, building it again/);
  t.regex(r.all ?? '', /cache entry .*initramfs.* is corrupt \(initramfs\.cpio is 1000 bytes, \d+ when built\); removed, building it again/);
});

/** Boots the lab's machine through the machine interface, for checks that need their own commands in the guest. */
async function bootMachine(opts: { privateKey?: string; hostKey?: string; bootSec?: number } = {}): Promise<{ m: MachineInstance; runDir: string }> {
  const lab = await loadLab(LAB);
  const runDir = runsDir();
  const progress = new Progress();
  const prepared = await prepareLab(lab, { progress }, runDir);
  const key = await ensureHwlabKey();
  const m = await qemuBackend.start({
    lab, kernelImage: prepared.kernel.vmlinuz, modulesDisk: prepared.kernel.modulesDisk, initrd: prepared.initrd,
    rootImage: prepared.image.rootDisk, privateKey: opts.privateKey ?? key.privateKey, hostKey: opts.hostKey ?? prepared.image.hostKey,
    runDir, append: KERNEL_WORDS,
  });
  try {
    await m.waitReady({ timeoutMs: (opts.bootSec ?? lab.timeouts.bootSec) * 1000 });
  } catch (err) {
    await m.kill();
    throw err;
  }
  return { m, runDir };
}

fast('isolation: the guest reaches neither host loopback ports nor the outside; SSH listens on 127.0.0.1 only; the host key is pinned', async (t) => {
  // A listener on the host's loopback that the guest must not reach (restrict=on has no route to the host).
  const server = net.createServer((s) => s.end('reached\n'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const hostPort = (server.address() as net.AddressInfo).port;
  const { m } = await bootMachine();
  try {
    const [qemuPid] = await qemusUnder(process.pid);
    // The slirp gateway (10.0.2.2) is where a guest would reach host services; the outside by address and by name.
    const probe = `const net = require('net'); const dns = require('dns');
const tryConnect = (host, port) => new Promise((res) => { const s = net.connect({ host, port, timeout: 3000 }, () => { s.destroy(); res('connected'); });
  s.on('error', (e) => res(e.code)); s.on('timeout', () => { s.destroy(); res('timeout'); }); });
(async () => {
  const out = {
    hostLoopback: await tryConnect('10.0.2.2', ${hostPort}),
    hostSsh: await tryConnect('10.0.2.2', 22),
    outside: await tryConnect('1.1.1.1', 80),
    dns: await new Promise((res) => dns.lookup('deb.debian.org', (e) => res(e ? e.code : 'resolved'))),
  };
  console.log(JSON.stringify(out));
})();`;
    const r = await m.exec(['node', '-e', probe], { timeoutMs: 60_000 });
    const seen = JSON.parse(r.stdout.trim()) as Record<string, string>;
    t.log(JSON.stringify(seen));
    for (const k of ['hostLoopback', 'hostSsh', 'outside']) t.not(seen[k], 'connected', `${k} must be unreachable`);
    t.not(seen.dns, 'resolved', 'no DNS');
    // The SSH forward in the host's socket table: QEMU's listening sockets are all on 127.0.0.1.
    const ss = await execa('ss', ['-Hltnp'], { reject: false });
    const qemuLines = ss.stdout.split('\n').filter((l) => l.includes(`pid=${qemuPid},`));
    t.true(qemuLines.length >= 1, `QEMU listens (pid ${qemuPid}):\n${ss.stdout}`);
    for (const l of qemuLines) t.regex(l.trim().split(/\s+/)[3] ?? '', /^127\.0\.0\.1:\d+$/, l);
  } finally {
    await m.kill();
    server.close();
  }
});

fast('SSH: a changed guest host key and a refused hwlab key both end the boot at once, no retry loop to the timeout', async (t) => {
  const keyDir = runsDir();
  const other = await execa('ssh-keygen', ['-t', 'ed25519', '-N', '', '-q', '-f', path.join(keyDir, 'k')], { reject: false });
  t.is(other.exitCode, 0);
  const otherPub = (await readFile(path.join(keyDir, 'k.pub'), 'utf8')).trim();
  const otherPriv = await readFile(path.join(keyDir, 'k'), 'utf8');
  for (const [what, opts, code] of [
    ['changed host key', { hostKey: otherPub }, /host key does not match/],
    ['refused client key', { privateKey: otherPriv }, /sshd refused hwlab's key/],
  ] as const) {
    const start = Date.now();
    const err = await t.throwsAsync(bootMachine({ ...opts, bootSec: 300 }));
    const s = (Date.now() - start) / 1000;
    t.regex(err?.message ?? '', code, what);
    t.true(s < 120, `${what}: ended after ${s.toFixed(0)} s of a 300 s boot budget`);
    t.log(`${what}: ${err?.message} (${s.toFixed(1)} s)`);
  }
  t.deepEqual(await qemusUnder(process.pid), [], 'no QEMU left');
});

full('the guest never reaches sshd (a boot budget it cannot meet): infra within the timeout, console tail quoted', async (t) => {
  const dir = runsDir();
  const text = (await readFile(LAB, 'utf8')).replace(/\nprobes:/, '\ntimeouts: { boot: 3 }\nprobes:');
  const file = path.join(dir, 'no-sshd.yaml');
  await writeFile(file, text);
  const r = await hwlab(['run', file, '--runs-dir', dir]);
  t.is(r.exitCode, 3, r.all);
  const folder = (await readdir(dir)).find((n) => n !== 'no-sshd.yaml')!;
  const results = JSON.parse(await readFile(path.join(dir, folder, 'results.json'), 'utf8'));
  t.is(results.outcome.class, 'infra');
  t.regex(results.outcome.title, /did not start sshd in 3 s; last console line: /);
  await rm(file);
});

full('Ctrl-C during the probes: exit 130, no QEMU left, artifacts kept', async (t) => {
  const dir = runsDir();
  const started = Date.now();
  const { child, qemu } = await runUntil(dir, /^ok 1 - dmabuf-export/m);
  child.kill('SIGINT');
  const r = await child;
  t.is(r.exitCode, 130, r.all);
  await nothingLeft(t, [qemu], started);
  const runDir = path.join(dir, (await readdir(dir))[0]);
  t.true(existsSync(path.join(runDir, 'console.log')));
});
