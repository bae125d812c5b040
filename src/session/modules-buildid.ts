// Which build of a module the guest is running: the GNU build-id the kernel
// exposes in /sys/module/<name>/notes/.note.gnu.build-id, compared with the
// build-id of the .ko hwlab built. Works for any module (no dependence on
// CONFIG_MODULE_SRCVERSION_ALL), and tells two builds of the same source apart.

import { failedStepError, sh, type GuestShell } from './commands.ts';
import { InfraError } from '../util/errors.ts';

const NT_GNU_BUILD_ID = 3;
const MARK = '== ';

/** Bytes from `od -An -tx1 -v` output (hex pairs separated by blanks and newlines). */
export function parseOdHex(dump: string): Buffer {
  const words = dump.split(/\s+/).filter(Boolean);
  for (const w of words) if (!/^[0-9a-fA-F]{2}$/.test(w)) throw new InfraError(`od output has "${w}" where a hex byte belongs`);
  return Buffer.from(words.join(''), 'hex');
}

/**
 * The GNU build-id (hex) in a sequence of ELF notes (little-endian, as on
 * x86): each note is namesz, descsz, type (u32 each), the name padded to 4
 * bytes, the descriptor padded to 4 bytes. Returns undefined when no
 * NT_GNU_BUILD_ID note named "GNU" is there.
 */
export function buildIdFromNotes(buf: Buffer): string | undefined {
  const pad4 = (n: number) => (n + 3) & ~3;
  let off = 0;
  while (off + 12 <= buf.length) {
    const namesz = buf.readUInt32LE(off);
    const descsz = buf.readUInt32LE(off + 4);
    const type = buf.readUInt32LE(off + 8);
    const nameStart = off + 12;
    const descStart = nameStart + pad4(namesz);
    if (descStart + descsz > buf.length) throw new InfraError(`truncated ELF note at byte ${off}: namesz ${namesz}, descsz ${descsz}, ${buf.length} bytes in all`);
    const name = buf.subarray(nameStart, nameStart + namesz).toString('latin1');
    if (type === NT_GNU_BUILD_ID && name === 'GNU\0') return buf.subarray(descStart, descStart + descsz).toString('hex');
    off = descStart + pad4(descsz);
  }
  return undefined;
}

/** Output of the guest script below: `== name` lines, each followed by that module's od dump (if readable). */
export function parseBuildIdDumps(out: string): Map<string, string> {
  const res = new Map<string, string>();
  let current: string | undefined;
  let lines: string[] = [];
  const flush = () => {
    if (current === undefined || lines.length === 0) return;
    const id = buildIdFromNotes(parseOdHex(lines.join('\n')));
    if (id) res.set(current, id);
  };
  for (const line of out.split('\n')) {
    if (line.startsWith(MARK)) {
      flush();
      current = line.slice(MARK.length).trim();
      lines = [];
    } else if (line.trim()) {
      lines.push(line);
    }
  }
  flush();
  return res;
}

const norm = (n: string) => n.replace(/-/g, '_');

/**
 * Build-ids of loaded modules, keyed by module name (dashes as underscores).
 * Modules that are not loaded (or built in: no notes) are absent from the map.
 * `insmod` (guest paths of .ko files) are loaded first, in the same guest
 * command (each costs about 0.25 s under TCG); one that fails is the error.
 */
export async function guestModuleBuildIds(guest: GuestShell, names: string[], insmod: string[] = []): Promise<Map<string, string>> {
  const mods = [...new Set(names.map(norm))];
  for (const m of mods) if (!/^[A-Za-z0-9_]+$/.test(m)) throw new InfraError(`"${m}" is not a module name`);
  if (mods.length === 0 && insmod.length === 0) return new Map();
  const script =
    'n=$1; shift; while [ "$n" -gt 0 ]; do insmod "$1" || { echo "insmod $1 exited $?" >&2; exit 3; }; shift; n=$((n-1)); done; ' +
    'for m in "$@"; do f="/sys/module/$m/notes/.note.gnu.build-id"; echo "== $m"; ' +
    'if [ -r "$f" ]; then od -An -tx1 -v "$f" || exit 1; fi; done';
  const r = await sh(guest, script, [String(insmod.length), ...insmod, ...mods], { timeoutMs: 30_000 + 60_000 * insmod.length });
  if (r.code === 3) throw failedStepError(r, 'insmod failed');
  if (r.code !== 0) throw new InfraError(`reading module build-ids in the guest failed (exit ${r.code}): ${r.stderr.trim().slice(0, 500)}`);
  return parseBuildIdDumps(r.stdout);
}

/**
 * Proof that the guest runs the rebuilt modules: every one of them that is
 * loaded must carry the build-id of the .ko the driver build produced (a
 * mismatch throws). Names in `mustBeLoaded` (e.g. the lab's modules list)
 * must also be loaded; the rest are reported as not loaded.
 */
export async function verifyReplacedModules(
  guest: GuestShell,
  replaced: Array<{ module: string; buildId: string }>,
  mustBeLoaded: string[] = [],
): Promise<{ verified: string[]; notLoaded: string[] }> {
  const got = await guestModuleBuildIds(guest, replaced.map((m) => m.module));
  const problems: string[] = [];
  const verified: string[] = [];
  const notLoaded: string[] = [];
  const must = new Set(mustBeLoaded.map(norm));
  for (const m of replaced) {
    const name = norm(m.module);
    const id = got.get(name);
    if (!id) {
      notLoaded.push(name);
      if (must.has(name)) problems.push(`${name}: not loaded in the guest`);
    } else if (id !== m.buildId) {
      problems.push(`${name}: the guest runs build-id ${id}, the rebuilt module has ${m.buildId}`);
    } else {
      verified.push(name);
    }
  }
  if (problems.length) throw new InfraError(`the guest is not running the rebuilt modules:\n  ${problems.join('\n  ')}`);
  return { verified, notLoaded };
}
