// Restore instead of boot (issue 12). The driver under test is a module, so
// the local loop never changes the kernel image: the first run of a machine
// saves the booted guest (sshd up, before any SSH session) to a migration
// file with the root overlay, modules disk and console as they were, keyed by
// everything that decides what booted (kernel image, initramfs contents,
// image, QEMU, accelerator and the whole command line: machine, vIOMMU,
// topology, kernel words). Later runs load it instead of booting, then bring
// the guest up to date: the clock (the saved guest wakes up in the past) and
// /lib/modules, replaced by this run's modules tree on a tmpfs, so modprobe
// loads the modules just built and the srcversion check runs as after a boot.
// Before the save the probe runner is started and left waiting (node and
// koffi loaded; src/guest/prestart.sh), so a restored run skips its cold
// start; its bundle hash decides whether a run may use it.
// A machine QEMU cannot migrate (amd-iommu, nvme) boots as before.
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { copyFile, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { EndpointType } from '../lab/endpoints.ts';
import type { LabSpec } from '../lab/types.ts';
import { findConsoleReports } from '../report/scan.ts';
import { cacheKey, ensureEntry, entryDir, isComplete, markUsed } from '../util/cache.ts';
import { InfraError, InputError } from '../util/errors.ts';
import { decideAccel } from './accel.ts';
import { buildQemuCommand } from './cmdline.ts';
import type { MachineBackend, MachineConfig, MachineInstance, WaitingRunner } from './instance.ts';
import { resumeGuest, saveStoppedGuest, type GuestSnapshotFiles } from './migration.ts';
import { qemuBackend, startQemu, type SaveAccess } from './qemu.ts';
import { parsePrestartReady } from '../protocol/protocol.ts';

/** Devices QEMU 7.2 refuses to migrate (test/bench/migration-blockers.ts); ivshmem-plain migrates as master. */
const UNMIGRATABLE_ENDPOINTS: readonly EndpointType[] = ['nvme'];
const UNMIGRATABLE_IOMMUS: readonly string[] = ['amd'];
/**
 * Devices QEMU 7.2 migrates without any state (no vmstate: `-dump-vmstate`
 * has no entry for them): they come back at reset, config space included, so
 * their BARs are unassigned and bus mastering is off while the guest kernel
 * believes otherwise (seen: edu's DMA failing EIO after a restore). The guest
 * removes and rescans them, and its kernel sets them up again.
 */
const STATELESS_ENDPOINTS: readonly EndpointType[] = ['edu', 'pci-testdev'];

/**
 * Shell glob for an endpoint's sysfs directory from its devfn path (the bus
 * numbers are the guest's business): /sys/devices/pci0000:00/0000:00:10.0/<any>:00.0/...
 */
export function sysfsGlob(devfns: string[]): string {
  for (const d of devfns) if (!/^[0-9a-f]{2}\.[0-7]$/.test(d)) throw new InfraError(`bad devfn ${JSON.stringify(d)} in a PCI path`);
  const [first, ...rest] = devfns;
  return ['/sys/devices/pci0000:00', `0000:00:${first}`, ...rest.map((d) => `*:${d}`)].join('/');
}

/** Removes and rescans the endpoints whose device state QEMU does not migrate, and checks that each came back. */
async function reenumerateStateless(m: MachineInstance, lab: LabSpec, timeoutMs: number): Promise<void> {
  const globs = lab.topology.endpoints.filter((e) => STATELESS_ENDPOINTS.includes(e.type)).map((e) => sysfsGlob(m.pciPaths[e.id]));
  if (!globs.length) return;
  // Fixed script; the globs (checked hex, dots and colons) come as arguments and are expanded unquoted on purpose.
  const script = 'for p in "$@"; do for d in $p; do echo 1 > "$d/remove"; done; done; echo 1 > /sys/bus/pci/rescan; ' +
    'for p in "$@"; do set -- $p; [ -e "$1" ] || { echo "not back after rescan: $p" >&2; exit 1; }; done';
  const r = await m.exec(['sh', '-c', script, 'sh', ...globs], { timeoutMs });
  if (r.code !== 0) throw new InfraError(`after restoring the guest: re-enumerating ${globs.join(' ')} failed: ${r.stderr.trim()}`, undefined, 'snapshot');
}

/** Why a lab's machine cannot be saved, or null when it can. */
export function whyNotMigratable(lab: LabSpec): string | null {
  if (UNMIGRATABLE_IOMMUS.includes(lab.iommu.kind)) return `the ${lab.iommu.kind} vIOMMU is not migratable in QEMU 7.2`;
  const ep = lab.topology.endpoints.find((e) => UNMIGRATABLE_ENDPOINTS.includes(e.type));
  return ep ? `endpoint ${ep.id} (${ep.type}) is not migratable in QEMU 7.2` : null;
}

/**
 * Hash of a newc cpio archive's names, modes and contents, not its mtimes:
 * the initramfs is rebuilt for every kernel build entry with the same files.
 */
export function cpioContentHash(archive: Buffer): string {
  const h = createHash('sha256');
  let off = 0;
  const field = (i: number) => parseInt(archive.toString('ascii', off + 6 + i * 8, off + 14 + i * 8), 16);
  const pad4 = (n: number) => (n + 3) & ~3;
  while (off + 110 <= archive.length) {
    const magic = archive.toString('ascii', off, off + 6);
    if (magic !== '070701' && magic !== '070702') throw new InfraError(`initramfs: not a newc cpio archive at byte ${off}`);
    const mode = field(1);
    const size = field(6);
    const nameSize = field(11);
    const name = archive.toString('utf8', off + 110, off + 110 + nameSize - 1);
    const dataStart = pad4(off + 110 + nameSize);
    if (name === 'TRAILER!!!') break;
    h.update(`${name}\0${mode.toString(8)}\0${size}\0`);
    h.update(archive.subarray(dataStart, dataStart + size));
    off = pad4(dataStart + size);
  }
  return h.digest('hex');
}

async function fileSha(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

/** The key of a saved guest: everything that decides the booted state (the waiting runner's bundle too), none of the per-run paths. */
export async function snapshotKey(config: MachineConfig): Promise<string> {
  const accel = await decideAccel(config.lab.machine.accel, config.kernelImage);
  // The command line with placeholders for the per-run paths: machine, vIOMMU, topology and kernel words.
  const cmd = buildQemuCommand({
    lab: config.lab, accel: accel.accel, kernelImage: 'KERNEL', initrd: 'INITRD', rootDisk: 'ROOT', modulesDisk: 'MODULES',
    consoleLog: 'CONSOLE', qmpSocket: 'QMP', sshPort: 0, memoryBackendDir: 'SCRATCH', append: config.append, migration: 'save',
  });
  const qemu = (await execa('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0];
  return cacheKey({
    // v2: the saved guest holds a waiting probe runner (runner.json).
    v: 2,
    qemu,
    args: cmd.args,
    kernel: await fileSha(config.kernelImage),
    initramfs: cpioContentHash(await readFile(config.initrd)),
    image: config.rootImage,
    hostKey: config.hostKey,
    // The saved guest's waiting runner serves only runs of its own bundle: a changed bundle saves a new guest.
    runner: config.prestartRunner ? (await config.prestartRunner()).bundleHash : null,
  });
}

function snapshotFiles(dir: string): GuestSnapshotFiles {
  return { state: path.join(dir, 'state'), rootOverlay: path.join(dir, 'root.qcow2'), modulesDisk: path.join(dir, 'modules.ext4'), console: path.join(dir, 'console.log') };
}

/** The waiting runner's record in a snapshot entry. */
const RUNNER_FILE = 'runner.json';
/** The hash of the modules tree the saved guest's modules disk holds (modulesTreeHash). */
const MODULES_HASH_FILE = 'modules.sha256';

/** What happened to the snapshot in this run, written to the run folder as snapshot.json (runner: the probe runner waiting in it). */
export type SnapshotRecord =
  | { action: 'restored'; key: string; seconds: number; runner?: WaitingRunner; modules: 'as-saved' | 'copied' }
  | { action: 'saved'; key: string; seconds: number; bytes: number; runner?: WaitingRunner }
  | { action: 'not-saved'; key?: string; reason: string };

async function record(runDir: string, r: SnapshotRecord): Promise<void> {
  await writeFile(path.join(runDir, 'snapshot.json'), JSON.stringify(r, null, 2));
}

/** Every file under dir (recursively), relative to it; symlinks are not followed. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(path.relative(dir, path.join(e.parentPath ?? e.path, e.name)));
  }
  return out.sort();
}

/** sha256 over a modules tree: each file's relative path and contents, in order. */
async function modulesTreeHash(modulesRoot: string): Promise<string> {
  const tree = path.join(modulesRoot, 'lib/modules');
  const h = createHash('sha256');
  for (const rel of await filesUnder(tree)) h.update(`${rel}\0`).update(await readFile(path.join(tree, rel))).update('\0');
  return h.digest('hex');
}

/**
 * Brings a restored guest up to date: the wall clock, /lib/modules as this
 * run's build has it, devices without migrated state. Returns whether the
 * modules tree was copied in: not when it is the tree the guest was saved
 * with (`savedModules`, its hash), which the saved modules disk still holds.
 */
async function refreshRestoredGuest(m: MachineInstance, lab: LabSpec, modulesRoot: string, savedModules: string | undefined, timeoutMs: number): Promise<boolean> {
  const run = async (argv: string[]) => {
    const r = await m.exec(argv, { timeoutMs });
    if (r.code !== 0) throw new InfraError(`after restoring the guest: ${argv.join(' ')} exited ${r.code}: ${r.stderr.trim()}`, undefined, 'snapshot');
  };
  const now = `@${Math.floor(Date.now() / 1000)}`;
  const copy = savedModules !== await modulesTreeHash(modulesRoot);
  // The saved guest's clock stopped at the save; anything comparing times (certificates, make, logs) wants today's.
  // The saved modules disk stays attached (the guest's page cache refers to it); a tmpfs over it carries this build's tree.
  // One exec for both: each costs about 0.25 s under TCG.
  if (!copy) await run(['date', '-u', '-s', now]);
  else {
    await run(['sh', '-c', 'date -u -s "$1" > /dev/null && mount -t tmpfs -o mode=0755 hwlab-modules /lib/modules', 'sh', now]);
    const tree = path.join(modulesRoot, 'lib/modules');
    await m.upload((await filesUnder(tree)).map((rel) => ({ local: path.join(tree, rel), remote: `/lib/modules/${rel}` })), timeoutMs);
  }
  await reenumerateStateless(m, lab, timeoutMs);
  return copy;
}

/** A QEMU instance whose waitReady also refreshes a restored guest and records what happened. */
class SnapshotInstance implements MachineInstance {
  /** Set by the save or the restore once the guest is ready. */
  waitingRunner?: WaitingRunner;
  constructor(private readonly inner: MachineInstance, private readonly afterReady: (deadline: number) => Promise<void>) {}
  get accel() { return this.inner.accel; }
  get pciPaths() { return this.inner.pciPaths; }
  get exited() { return this.inner.exited; }
  get access() { return this.inner.access; }
  whenExited: MachineInstance['whenExited'] = (t) => this.inner.whenExited(t);
  async waitReady(opts: Parameters<MachineInstance['waitReady']>[0]): Promise<void> {
    const deadline = Date.now() + opts.timeoutMs;
    await this.inner.waitReady(opts);
    await this.afterReady(deadline);
  }
  exec: MachineInstance['exec'] = (argv, opts) => this.inner.exec(argv, opts);
  upload: MachineInstance['upload'] = (files, t) => this.inner.upload(files, t);
  console: MachineInstance['console'] = () => this.inner.console();
  hostRequest: MachineInstance['hostRequest'] = (r) => this.inner.hostRequest(r);
  diagnose: MachineInstance['diagnose'] = () => this.inner.diagnose();
  powerOff: MachineInstance['powerOff'] = (t) => this.inner.powerOff(t);
  kill: MachineInstance['kill'] = () => this.inner.kill();
}

/** Most files of a modules tree a restored guest gets copied in (hwlab's lean kernels have about 15). */
const MAX_MODULE_FILES = 300;

/** Seconds a save or restore may take (the stream is mostly zero pages of the guest's RAM). */
const MIGRATION_TIMEOUT_MS = 180_000;

async function startWithSnapshot(config: MachineConfig): Promise<MachineInstance> {
  const why = whyNotMigratable(config.lab);
  if (why) {
    await record(config.runDir, { action: 'not-saved', reason: why });
    return qemuBackend.start(config);
  }
  const modulesRoot = config.modulesRoot;
  if (!modulesRoot) throw new InfraError('snapshot restore needs the kernel\'s modules tree (MachineConfig.modulesRoot)');
  // A restored guest gets the whole modules tree copied in over SFTP: a few files for hwlab's lean
  // kernels, thousands for a Debian kernel (the fast path), where booting is the cheaper way.
  const moduleFiles = (await filesUnder(path.join(modulesRoot, 'lib/modules'))).length;
  if (moduleFiles > MAX_MODULE_FILES) {
    await record(config.runDir, { action: 'not-saved', reason: `${moduleFiles} files in the modules tree (more than ${MAX_MODULE_FILES} to copy into a restored guest)` });
    return qemuBackend.start(config);
  }
  const key = await snapshotKey(config);
  const dir = entryDir('guest-snapshot', key);
  if (isComplete(dir)) {
    await markUsed(dir);
    const started = Date.now();
    const runner = await readFile(path.join(dir, RUNNER_FILE), 'utf8').then((t) => JSON.parse(t) as WaitingRunner, () => undefined);
    const savedModules = await readFile(path.join(dir, MODULES_HASH_FILE), 'utf8').then((t) => t.trim(), () => undefined);
    const inner = await startQemu(config, { kind: 'restore', from: snapshotFiles(dir) });
    const instance: SnapshotInstance = new SnapshotInstance(inner, async (deadline) => {
      const copied = await refreshRestoredGuest(inner, config.lab, modulesRoot, savedModules, Math.max(10_000, deadline - Date.now()));
      instance.waitingRunner = runner;
      // Seconds from QEMU's start to a ready, refreshed guest.
      await record(config.runDir, { action: 'restored', key, seconds: (Date.now() - started) / 1000, ...(runner ? { runner } : {}), modules: copied ? 'copied' : 'as-saved' });
    });
    return instance;
  }
  let saved: WaitingRunner | undefined;
  const inner = await startQemu(config, {
    kind: 'save',
    save: async (access) => {
      const { qmp, rootOverlay, modulesDisk, consoleLog } = access;
      const started = Date.now();
      try {
        const text = await readFile(consoleLog, 'utf8');
        // A boot that printed a kernel report is no state to start other runs from (the run itself still reports it).
        const reports = findConsoleReports(text);
        if (reports.length) {
          await record(config.runDir, { action: 'not-saved', key, reason: `the boot printed a kernel report: ${reports[0].title}` });
          return;
        }
        const runner = await startWaitingRunner(config, access);
        let bytes = 0;
        await ensureEntry('guest-snapshot', key, `booted guest ${config.lab.name} (${path.basename(config.kernelImage)})`, async (tmp) => {
          const files = snapshotFiles(tmp);
          if (runner) await writeFile(path.join(tmp, RUNNER_FILE), JSON.stringify(runner));
          await writeFile(path.join(tmp, MODULES_HASH_FILE), `${await modulesTreeHash(modulesRoot)}\n`);
          try {
            await saveStoppedGuest(qmp, files.state, MIGRATION_TIMEOUT_MS);
            // The guest is stopped and QEMU flushed its disks: the overlay is exactly what the saved RAM expects.
            await execa('cp', ['--sparse=always', rootOverlay, files.rootOverlay]);
            await execa('cp', ['--sparse=always', modulesDisk, files.modulesDisk]);
            await copyFile(consoleLog, files.console);
          } finally {
            await resumeGuest(qmp);
          }
          for (const f of Object.values(files)) bytes += (await execa('du', ['-b', f])).stdout.split('\t').map(Number)[0];
        });
        saved = runner;
        await record(config.runDir, { action: 'saved', key, seconds: (Date.now() - started) / 1000, bytes, ...(runner ? { runner } : {}) });
      } catch (err) {
        // The run goes on booted as usual; the next run tries again.
        await record(config.runDir, { action: 'not-saved', key, reason: (err as Error).message });
      }
    },
  });
  const instance: SnapshotInstance = new SnapshotInstance(inner, async () => { instance.waitingRunner = saved; });
  return instance;
}

/**
 * Starts the probe runner waiting in the guest (none without
 * MachineConfig.prestartRunner: the benchmark's restored-cold baseline), then
 * closes SSH so the save holds no connection; throws when it does not get ready.
 */
async function startWaitingRunner(config: MachineConfig, access: SaveAccess): Promise<WaitingRunner | undefined> {
  if (!config.prestartRunner) {
    access.disconnect();
    return undefined;
  }
  const p = await config.prestartRunner();
  await access.guest.upload(p.files);
  const r = await access.guest.exec(p.start, { timeoutMs: p.timeoutMs });
  const ready = parsePrestartReady(r.stdout.trim());
  if (r.code !== 0 || !ready) {
    throw new InfraError(`the probe runner did not start waiting (exit ${r.code ?? r.signal}): ${(r.stderr || r.stdout).trim().split('\n').slice(-5).join(' | ')}`, undefined, 'snapshot');
  }
  access.disconnect();
  return { bundleHash: p.bundleHash, startupSec: ready.startupSec };
}

/** QEMU, restoring a saved booted guest when one fits the run and saving one when none does. */
export const snapshotQemuBackend: MachineBackend = {
  name: 'qemu+snapshot',
  start: startWithSnapshot,
};

/**
 * Whether a run restores a saved booted guest:
 *   on    the snapshot backend for every lab (a lab it cannot save boots, and snapshot.json says why)
 *   off   boot as always
 *   auto  the snapshot backend where it applies (a machine QEMU can migrate, no --gdb), booting otherwise
 */
export const SNAPSHOT_SETTINGS = ['on', 'off', 'auto'] as const;
export type SnapshotSetting = (typeof SNAPSHOT_SETTINGS)[number];

const isSetting = (v: string): v is SnapshotSetting => (SNAPSHOT_SETTINGS as readonly string[]).includes(v);

/** `--snapshot` when given, else HWLAB_SNAPSHOT, else off; checked (a typo must not silently boot). */
export function snapshotSetting(option: string | undefined, env: NodeJS.ProcessEnv = process.env): SnapshotSetting {
  if (option !== undefined) {
    if (isSetting(option)) return option;
    throw new InputError(`--snapshot: must be one of ${SNAPSHOT_SETTINGS.join(', ')} (got "${option}")`, undefined, 'bad-option');
  }
  const v = env.HWLAB_SNAPSHOT;
  if (v === undefined || v === '') return 'off';
  if (isSetting(v)) return v;
  throw new InputError(`environment variable HWLAB_SNAPSHOT: must be one of ${SNAPSHOT_SETTINGS.join(', ')} (got "${v}")`, undefined, 'bad-environment');
}

/** The QEMU backend a run uses for a setting and a lab. */
export function qemuBackendFor(setting: SnapshotSetting, lab: LabSpec, opts: { gdb?: boolean } = {}): MachineBackend {
  if (setting === 'off') return qemuBackend;
  if (setting === 'auto' && (opts.gdb || whyNotMigratable(lab))) return qemuBackend;
  return snapshotQemuBackend;
}
