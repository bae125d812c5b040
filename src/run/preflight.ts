// Every input file of a run checked before anything is downloaded, built or
// booted, and before the run folder exists: the lab's patches and fragments
// (load.ts already checked that they exist and are files) and the command
// line's --patch and --fragment, read and parsed the way the build will
// read them. A fragment full of garbage or a --patch naming a directory used
// to be found only after the kernel source was downloaded.
import { stat, readFile } from 'node:fs/promises';
import path from 'node:path';
import { requestedValues } from '../kernel/config.ts';
import { loadPatchSeries, type PatchSourceSpec } from '../kernel/patches.ts';
import type { LabSpec } from '../lab/types.ts';
import { InfraError, InputError } from '../util/errors.ts';
import { escapeForTerminal } from '../util/text.ts';

/** The biggest config fragment hwlab reads (a whole .config of allyesconfig is about 300 KB). */
export const MAX_FRAGMENT_BYTES = 4 << 20;

export interface RunInputs {
  extraPatches?: string[];
  extraFragments?: string[];
}

/** Reads one fragment, refusing what is not one: missing, a directory, too big, binary. */
export async function readFragment(file: string, what: string): Promise<{ file: string; text: string }> {
  const st = await stat(file).catch(() => null);
  if (!st) throw new InputError(`${what} ${file} does not exist`, undefined, 'missing-input');
  if (!st.isFile()) throw new InputError(`${what} ${file} is ${st.isDirectory() ? 'a directory' : 'not a regular file'}; expected a kernel config fragment`, undefined, 'bad-input');
  if (st.size > MAX_FRAGMENT_BYTES) throw new InputError(`${what} ${file} is ${st.size} bytes, more than the ${MAX_FRAGMENT_BYTES} a config fragment may have`, undefined, 'bad-input');
  const bytes = await readFile(file);
  if (bytes.includes(0)) throw new InputError(`${what} ${file} is binary, not a kernel config fragment`, undefined, 'bad-input');
  return { file, text: bytes.toString('utf8') };
}

/**
 * Checks every input file the run will read; all problems at once, in one
 * InputError (exit 2), each naming the file (and line, for fragments).
 */
export async function preflightInputs(lab: LabSpec, inputs: RunInputs): Promise<void> {
  const problems: string[] = [];
  const extraPatches: PatchSourceSpec[] = (inputs.extraPatches ?? []).map((p) => ({ kind: 'file', path: path.resolve(p) }));
  const extraFragments = (inputs.extraFragments ?? []).map((f) => path.resolve(f));
  if (lab.kernel.kind === 'debian-prebuilt') {
    if (extraFragments.length) problems.push(`--fragment needs a kernel built from source; ${lab.file} uses the prebuilt ${lab.kernel.package}`);
    if (extraPatches.length && !lab.kernel.driver) problems.push(`--patch needs kernel.driver (the fast path) or a kernel built from source; ${lab.file} uses the prebuilt ${lab.kernel.package}`);
  }
  // Each patch source on its own, so that every bad one is named, not only the first.
  for (const [i, spec] of [...lab.kernel.patches, ...extraPatches].entries()) {
    const from = i < lab.kernel.patches.length ? `${lab.file}: kernel.patches[${i}]` : '--patch';
    await loadPatchSeries([spec]).catch((err: Error) => problems.push(`${from}: ${err.message}`));
  }
  const fragmentFiles = [
    ...(lab.kernel.kind === 'source' ? lab.kernel.config.fragments.map((f, i) => ({ file: f, what: `${lab.file}: kernel.config.fragments[${i}]:` })) : []),
    ...extraFragments.map((f) => ({ file: f, what: '--fragment' })),
  ];
  const fragments: Array<{ file: string; text: string }> = [];
  for (const f of fragmentFiles) {
    try {
      fragments.push(await readFragment(f.file, f.what));
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  try {
    requestedValues(fragments);
  } catch (err) {
    problems.push((err as Error).message);
  }
  if (problems.length) {
    const lines = problems.join('\n').split('\n');
    const shown = lines.length > 20 ? [...lines.slice(0, 20), `... and ${lines.length - 20} more lines`] : lines;
    throw new InputError(escapeForTerminal(shown.join('\n')), 'nothing was downloaded or built', 'bad-input');
  }
}

/** MemAvailable of /proc/meminfo in MiB, or undefined where there is none. */
export async function hostAvailableMiB(): Promise<number | undefined> {
  const text = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const m = /^MemAvailable:\s+(\d+) kB/m.exec(text);
  return m ? Math.floor(Number(m[1]) / 1024) : undefined;
}

/**
 * Right before a boot: the guest's memory and its endpoints' backing memory
 * must fit in what the host has available now, or QEMU (or the host's OOM
 * killer) would end the run halfway. The host being busy is not the lab's
 * fault: infra, with the numbers.
 */
export async function checkHostMemory(lab: LabSpec, availableMiB?: number): Promise<void> {
  const available = availableMiB ?? await hostAvailableMiB();
  if (available === undefined) return;
  const endpointMiB = lab.topology.endpoints.reduce((n, e) => n + ('memoryMiB' in e && typeof e.memoryMiB === 'number' ? e.memoryMiB : 0), 0);
  const need = lab.machine.memoryMiB + endpointMiB;
  if (need > available) {
    throw new InfraError(
      `the host has ${available}M of memory available, and the guest needs ${lab.machine.memoryMiB}M${endpointMiB ? ` plus ${endpointMiB}M for its endpoints` : ''}: not booted`,
      'wait for other guests or builds to finish, or lower machine.memory', 'host-memory');
  }
}
