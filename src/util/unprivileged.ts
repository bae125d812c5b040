// What an ordinary (non-root) user needs for hwlab runs, checked before any
// work so that a missing piece is one clear message rather than a failure
// deep inside an image build. Only image builds need more than file access:
// mmdebstrap's unshare mode maps the guest's uids onto the user's
// subordinate range (/etc/subuid, /etc/subgid) through the setuid newuidmap
// and newgidmap, in a user namespace. QEMU runs under TCG as anyone; KVM,
// where it works, needs read-write access to /dev/kvm (the kvm group).
import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import os from 'node:os';

/** mmdebstrap maps uids 0..65535 of the guest: a smaller range cannot hold Debian's system users and nobody. */
export const MIN_SUBORDINATE_IDS = 65536;

export interface SubordinateRange {
  start: number;
  count: number;
}

/**
 * The user's first range in an /etc/subuid or /etc/subgid text (lines
 * `name-or-uid:start:count`), or null when there is none of at least
 * MIN_SUBORDINATE_IDS ids.
 */
export function subordinateRange(text: string, user: string, uid: number): SubordinateRange | null {
  for (const line of text.split('\n')) {
    const [who, start, count] = line.trim().split(':');
    if (who !== user && who !== String(uid)) continue;
    const range = { start: Number(start), count: Number(count) };
    if (Number.isInteger(range.start) && Number.isInteger(range.count) && range.count >= MIN_SUBORDINATE_IDS) return range;
  }
  return null;
}

export interface UnprivilegedCheck {
  what: string;
  ok: boolean;
  /** What root runs to fix it (or, for informational checks, what it means). */
  fix?: string;
}

export interface Identity {
  user: string;
  uid: number;
}

export function currentIdentity(): Identity {
  return { user: os.userInfo().username, uid: process.getuid?.() ?? 0 };
}

/** The checks for a non-root user (none are needed as root). */
export async function unprivilegedChecks(id: Identity = currentIdentity(), files = { subuid: '/etc/subuid', subgid: '/etc/subgid', maxUserNs: '/proc/sys/user/max_user_namespaces', usernsClone: '/proc/sys/kernel/unprivileged_userns_clone' }): Promise<UnprivilegedCheck[]> {
  const read = (f: string) => readFile(f, 'utf8').catch(() => '');
  const checks: UnprivilegedCheck[] = [];
  const texts = { subuid: await read(files.subuid), subgid: await read(files.subgid) };
  // The first range above every one already given, so the suggested command collides with nobody's.
  const start = Math.max(100000, ...[texts.subuid, texts.subgid].flatMap((t) => t.split('\n').map((l) => l.split(':')).filter((f) => f.length === 3).map((f) => Number(f[1]) + Number(f[2])).filter(Number.isFinite)));
  const addRange = `usermod --add-subuids ${start}-${start + MIN_SUBORDINATE_IDS - 1} --add-subgids ${start}-${start + MIN_SUBORDINATE_IDS - 1} ${id.user}`;
  for (const [kind, file] of [['subuid', files.subuid], ['subgid', files.subgid]] as const) {
    const r = subordinateRange(texts[kind], id.user, id.uid);
    checks.push({
      what: `${file}: ${r ? `${id.user} has ids ${r.start}..${r.start + r.count - 1}` : `no range of ${MIN_SUBORDINATE_IDS} ${kind === 'subuid' ? 'uids' : 'gids'} for ${id.user}`} (image builds map the guest's ids onto it)`,
      ok: r !== null,
      ...(r ? {} : { fix: `as root: ${addRange}` }),
    });
  }
  const maxNs = (await read(files.maxUserNs)).trim();
  const clone = (await read(files.usernsClone)).trim();
  const nsOk = maxNs !== '0' && clone !== '0';
  checks.push({
    what: `user namespaces ${nsOk ? 'allowed' : `disabled (${maxNs === '0' ? 'user.max_user_namespaces = 0' : 'kernel.unprivileged_userns_clone = 0'})`} (mmdebstrap --mode=unshare)`,
    ok: nsOk,
    ...(nsOk ? {} : { fix: `as root: sysctl -w ${maxNs === '0' ? 'user.max_user_namespaces=15000' : 'kernel.unprivileged_userns_clone=1'}` }),
  });
  return checks;
}

/** Can this process open /dev/kvm read-write? (KVM itself may still not work: src/machine/accel.ts boots a guest to find out.) */
export async function kvmAccessible(): Promise<boolean> {
  return access('/dev/kvm', constants.R_OK | constants.W_OK).then(() => true, () => false);
}
