// Kept guests: a guest that stays up after its run (`hwlab run --keep`,
// `hwlab shell`) is recorded in a state file per guest under the cache
// (kept/<run>.json: QEMU's pid, the hwlab process that owns it, the SSH and
// gdb ports, the key and the pinned host key), so that `hwlab ssh`, `hwlab
// stop` and `hwlab ps` work from any shell. The owner ends QEMU when it
// exits; if the owner is killed (kill -9), QEMU dies with it (setpriv
// --pdeathsig: no guest outlives hwlab unattended), `ps` shows the entry with
// the dead owner and `stop` clears it. `stop` ends a live QEMU by its pid,
// after checking the pid is still that run's QEMU (its command line names the
// run folder).
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheRoot } from '../util/cache.ts';
import { InputError } from '../util/errors.ts';
import { processAlive } from '../util/lock.ts';

export interface KeptGuest {
  /** The run folder's name: what `hwlab ssh/stop` take. */
  name: string;
  runDir: string;
  lab: string;
  qemuPid: number;
  /** The hwlab process holding the guest (it powers it off when it ends). */
  ownerPid: number;
  sshPort: number;
  gdbPort?: number;
  /** hwlab's SSH identity (never the user's). */
  keyFile: string;
  /** known_hosts with the image's host key for [127.0.0.1]:sshPort: the host key is pinned. */
  knownHosts: string;
  scratch: string;
  startedAt: string;
  /** When the owner powers the guest off by itself (the keep timeout). */
  until: string;
}

export function keptDir(): string {
  return path.join(cacheRoot(), 'kept');
}

const fileOf = (name: string) => path.join(keptDir(), `${name}.json`);

export async function registerKept(g: KeptGuest): Promise<void> {
  await mkdir(keptDir(), { recursive: true });
  const tmp = `${fileOf(g.name)}.tmp-${process.pid}`;
  await writeFile(tmp, JSON.stringify(g, null, 2));
  await rename(tmp, fileOf(g.name));
}

export async function removeKept(name: string): Promise<void> {
  await rm(fileOf(name), { force: true });
}

export async function listKept(): Promise<KeptGuest[]> {
  if (!existsSync(keptDir())) return [];
  const out: KeptGuest[] = [];
  for (const f of (await readdir(keptDir())).filter((x) => x.endsWith('.json')).sort()) {
    try {
      out.push(JSON.parse(await readFile(path.join(keptDir(), f), 'utf8')) as KeptGuest);
    } catch { /* a state file being written: not listed */ }
  }
  return out;
}

/** A kept guest by run name or run folder path; with no reference, the only one there is. */
export async function findKept(ref: string | undefined): Promise<KeptGuest> {
  const all = await listKept();
  if (ref === undefined) {
    // Entries whose QEMU is gone (an owner killed before it could forget them) do not count: stop --all clears them.
    const live: KeptGuest[] = [];
    for (const g of all) if (await isQemuOf(g.qemuPid, g.runDir)) live.push(g);
    if (live.length === 1) return live[0];
    throw new InputError(live.length ? `${live.length} guests are kept (${live.map((g) => g.name).join(', ')}): name one` : 'no guest is kept (hwlab run --keep keeps one)');
  }
  const name = path.basename(path.resolve(ref));
  const g = all.find((x) => x.name === name || x.name === ref);
  if (!g) throw new InputError(`no kept guest "${ref}" (kept: ${all.map((x) => x.name).join(', ') || 'none'}; hwlab ps lists them)`);
  return g;
}

// The one liveness check hwlab has (util/lock.ts); ps and the tests take it from here.
export { processAlive };

/** Is pid still this run's QEMU? Its command line names the run folder (the console log); a reused pid does not. */
export async function isQemuOf(pid: number, runDir: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.startsWith('qemu-system') && cmdline.includes(runDir);
}

/** ssh's arguments for a kept guest: 127.0.0.1, its port, hwlab's key only, the host key pinned. */
export function sshArgs(g: Pick<KeptGuest, 'sshPort' | 'keyFile' | 'knownHosts'>, opts: { tty: boolean }): string[] {
  return [
    '-i', g.keyFile, '-p', String(g.sshPort),
    '-o', 'IdentitiesOnly=yes', '-o', `UserKnownHostsFile=${g.knownHosts}`, '-o', 'StrictHostKeyChecking=yes',
    '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=6', '-o', 'LogLevel=ERROR',
    opts.tty ? '-t' : '-T', 'root@127.0.0.1',
  ];
}

/** The known_hosts line that pins the guest's host key on its forwarded port. */
export function knownHostsLine(sshPort: number, hostKey: string): string {
  return `[127.0.0.1]:${sshPort} ${hostKey.split(/\s+/).slice(0, 2).join(' ')}\n`;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitGone(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (processAlive(pid) && Date.now() < deadline) await sleep(100);
  return !processAlive(pid);
}

export interface StopOutcome {
  /** QEMU was running and was ended (SIGTERM, then SIGKILL). */
  ended: boolean;
  /** The owning hwlab process was gone already. */
  ownerGone: boolean;
}

/** Ends a kept guest's QEMU by pid, waits for its owner to finish, removes what a dead owner left. */
export async function stopKept(g: KeptGuest): Promise<StopOutcome> {
  const ownerGone = !processAlive(g.ownerPid);
  let ended = false;
  if (await isQemuOf(g.qemuPid, g.runDir)) {
    process.kill(g.qemuPid, 'SIGTERM');
    if (!(await waitGone(g.qemuPid, 5000))) {
      process.kill(g.qemuPid, 'SIGKILL');
      await waitGone(g.qemuPid, 5000);
    }
    ended = true;
  }
  // The owner sees QEMU go, writes its last files and exits; give it the time to.
  if (!ownerGone) await waitGone(g.ownerPid, 30_000);
  if (ownerGone || !processAlive(g.ownerPid)) await rm(g.scratch, { recursive: true, force: true });
  await removeKept(g.name);
  return { ended, ownerGone };
}
