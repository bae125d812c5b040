// What makes a run folder reproduce itself: the lab as this run resolved it,
// in the lab-file schema (lab/lab.yaml), with copies of its patches and
// config fragments beside it (lab/patches, lab/configs) and of its image
// recipe (images/), so `hwlab rerun <run-dir>` runs the same thing even when
// the original files changed or are gone; and the kernel's final .config.
// The --patch and --fragment of the command line become part of that lab.
import { cp, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { dumpLab, type PathKind } from '../lab/dump.ts';
import type { LabSpec } from '../lab/types.ts';

/** Where a run folder keeps its lab (what `hwlab rerun` loads). */
export const RUN_LAB_FILE = path.join('lab', 'lab.yaml');

/** The lab with this run's --patch and --fragment folded in where the kernel kind takes them (prepare refuses the rest). */
export function labWithExtras(lab: LabSpec, extraPatches: readonly string[], extraFragments: readonly string[]): LabSpec {
  const k = lab.kernel;
  const patches = [...k.patches, ...extraPatches.map((p) => ({ kind: 'file' as const, path: path.resolve(p) }))];
  if (k.kind === 'source') {
    return { ...lab, kernel: { ...k, patches, config: { ...k.config, fragments: [...k.config.fragments, ...extraFragments.map((f) => path.resolve(f))] } } };
  }
  return k.driver && !extraFragments.length ? { ...lab, kernel: { ...k, patches } } : lab;
}

/**
 * Writes lab/lab.yaml and the copies it names (lab/patches/NN/<name>,
 * lab/configs/NN/<name>); returns the lab file's path.
 */
export async function writeRunLab(lab: LabSpec, runDir: string): Promise<string> {
  const labDir = path.join(runDir, 'lab');
  await mkdir(labDir, { recursive: true });
  const copies: Array<{ from: string; to: string; dir: boolean }> = [];
  const sub: Record<PathKind, string | null> = { patch: 'patches', quilt: 'patches', mbox: 'patches', fragment: 'configs', tree: null, tarball: null };
  const counters: Record<string, number> = {};
  const place = (abs: string, kind: PathKind): string => {
    const dir = sub[kind];
    // A source tree or tarball is too big to copy: the lab names it where it is.
    if (!dir) return abs;
    counters[dir] = (counters[dir] ?? 0) + 1;
    // Numbered folders keep series order and tell two files of one name apart; the file keeps its
    // name, which results record and the config cache key includes (a rerun reuses the config).
    const rel = path.join(dir, String(counters[dir]).padStart(2, '0'), path.basename(abs));
    copies.push({ from: abs, to: path.join(labDir, rel), dir: kind === 'quilt' });
    return rel;
  };
  const text = dumpLab(lab, [
    `The lab as run ${path.basename(runDir)} resolved it (from ${lab.file}),`,
    'with its patches and fragments copied beside it. Run it again with:',
    `  hwlab rerun ${runDir}`,
  ].join('\n'), place);
  for (const c of copies) {
    await mkdir(path.dirname(c.to), { recursive: true });
    // A file that is missing now is reported by the run's own preparation; the lab still says what was asked.
    if (!existsSync(c.from)) continue;
    if (c.dir) await cp(c.from, c.to, { recursive: true });
    else await copyFile(c.from, c.to);
  }
  const recipe = path.join(path.dirname(path.dirname(lab.file)), 'images', `${lab.image}.yaml`);
  if (existsSync(recipe)) {
    await mkdir(path.join(runDir, 'images'), { recursive: true });
    await copyFile(recipe, path.join(runDir, 'images', `${lab.image}.yaml`));
  }
  const file = path.join(runDir, RUN_LAB_FILE);
  await writeFile(file, text);
  return file;
}

/** The kernel's final .config in the run folder (kernel.config), when the kernel has one. */
export async function keepKernelConfig(config: string | undefined, runDir: string): Promise<void> {
  if (config && existsSync(config)) await copyFile(config, path.join(runDir, 'kernel.config'));
}

/** The one line that runs a folder again, relative to the current directory when that is shorter. */
export function rerunLine(runDir: string): string {
  const rel = path.relative(process.cwd(), runDir);
  return `hwlab rerun ${rel && !rel.startsWith('..') && rel.length < runDir.length ? rel : runDir}`;
}
