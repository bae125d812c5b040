// Saving a booted guest to a file and bringing it back, over QMP (issue 12:
// restore instead of boot). QEMU 7.2 has no `file:` migration URI, so the
// stream goes through `exec:cat`; the file is a cache path that is checked
// to hold no shell syntax, since QEMU hands the URI to /bin/sh. The disks are
// not part of the stream: the caller keeps the root overlay and the modules
// disk as they were when the guest stopped (snapshot.ts).
import type { QmpClient, QmpReply } from './qmp.ts';
import { InfraError } from '../util/errors.ts';

/** What a saved guest consists of: the stream, and the disks and console as they were when it stopped. */
export interface GuestSnapshotFiles {
  /** The migration stream (RAM and device state). */
  state: string;
  /** The root disk's qcow2 overlay at the moment of the save; a run boots a throwaway overlay on top of it. */
  rootOverlay: string;
  /** The modules disk the guest had mounted (its page cache refers to this exact image). */
  modulesDisk: string;
  /** The console from the first kernel line to the save: a restored run's console.log starts with it. */
  console: string;
}

/** Paths QEMU's `exec:` hands to the shell: letters, digits and . _ / + - only. */
const SHELL_SAFE_PATH = /^[\w./+-]+$/;

function execUri(direction: 'save' | 'load', file: string): string {
  if (!SHELL_SAFE_PATH.test(file)) {
    throw new InfraError(`snapshot file ${JSON.stringify(file)} has characters QEMU's exec: migration would hand to the shell`, 'set HWLAB_CACHE to a plain path', 'snapshot');
  }
  return direction === 'save' ? `exec:cat > ${file}` : `exec:cat ${file}`;
}

function ok(what: string, r: QmpReply): QmpReply {
  if (r.error) throw new InfraError(`QMP ${what}: ${r.error.desc}`, undefined, 'snapshot');
  return r;
}

interface MigrationStatus {
  status?: string;
  'error-desc'?: string;
}

/** Polls query-migrate until the migration completed (either side); throws on failure or timeout. */
async function waitMigration(qmp: QmpClient, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const st = (ok('query-migrate', await qmp.execute('query-migrate')).return ?? {}) as MigrationStatus;
    if (st.status === 'completed') return;
    if (st.status === 'failed' || st.status === 'cancelled') {
      throw new InfraError(`${what}: migration ${st.status}${st['error-desc'] ? `: ${st['error-desc']}` : ''}`, undefined, 'snapshot');
    }
    if (Date.now() > deadline) throw new InfraError(`${what}: not completed in ${(timeoutMs / 1000).toFixed(0)} s (status ${st.status ?? 'none'})`, undefined, 'snapshot');
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Stops the guest and writes its RAM and device state to stateFile; the guest stays stopped (resumeGuest). */
export async function saveStoppedGuest(qmp: QmpClient, stateFile: string, timeoutMs: number): Promise<void> {
  ok('stop', await qmp.execute('stop'));
  // The default bandwidth cap (32 MiB/s in 7.2) is for live migration over a network; this is a local file.
  ok('migrate-set-parameters', await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 8 * 2 ** 30 }));
  ok('migrate', await qmp.execute('migrate', { uri: execUri('save', stateFile) }));
  await waitMigration(qmp, `saving the guest to ${stateFile}`, timeoutMs);
}

/** Lets a stopped guest run again (after saveStoppedGuest; QEMU reactivates its disks). */
export async function resumeGuest(qmp: QmpClient): Promise<void> {
  ok('cont', await qmp.execute('cont'));
}

/** Loads stateFile into a QEMU started with `-incoming defer`; the guest runs when this returns. */
export async function loadGuest(qmp: QmpClient, stateFile: string, timeoutMs: number): Promise<void> {
  ok('migrate-incoming', await qmp.execute('migrate-incoming', { uri: execUri('load', stateFile) }));
  await waitMigration(qmp, `restoring the guest from ${stateFile}`, timeoutMs);
  const st = (ok('query-status', await qmp.execute('query-status')).return ?? {}) as { status?: string };
  // Without -S QEMU starts the guest itself once the stream is in; anything else is a state hwlab did not ask for.
  if (st.status !== 'running') ok('cont', await qmp.execute('cont'));
}
