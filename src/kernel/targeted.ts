// Targeted module rebuild: the local loop changes a driver that is built as a
// module, yet a whole-tree `make bzImage modules` spends most of its time
// walking every directory and running modpost over everything. When kbuild's
// own dependency records (the .cmd files of the base build) show that every
// changed file is compiled into module objects only, the kernel image cannot
// change, and building just the modules' .ko targets (`make <dir>/<m>.ko`:
// prepare, the modules' directories, modpost and the final link) gives the
// same .ko files as the whole-tree make. Anything else (a Makefile, Kconfig,
// a header some built-in object includes, a host tool's source) needs the
// whole tree, and the plan says why.
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';

/** How an incremental build from an earlier build's objects proceeds, and why. */
export type RebuildPlan =
  | { kind: 'whole-tree'; reason: string }
  | {
      kind: 'modules';
      /** Every module of the base build (objtree-relative .ko paths): modpost needs the whole set to write the same .mod.c files. */
      targets: string[];
      /** The modules whose objects a changed file goes into. */
      affected: string[];
      /** Tree-relative files that differ from the base build's sources. */
      changed: string[];
    };

/** Files kbuild records as compile dependencies; anything else (Makefile, Kconfig, scripts) may change what is built. */
const SOURCE_FILE = /\.(c|h|S)$/;

/** The modules of a finished build: modules.order lists each module's .o, its .mod file that module's member objects. */
export async function moduleObjects(objDir: string): Promise<{ modules: string[]; objectOwner: Map<string, string> } | null> {
  const orderFile = path.join(objDir, 'modules.order');
  if (!existsSync(orderFile)) return null;
  const modules = (await readFile(orderFile, 'utf8')).split('\n').map((l) => l.trim()).filter(Boolean);
  const objectOwner = new Map<string, string>();
  for (const m of modules) {
    const base = m.replace(/\.o$/, '');
    for (const own of [m, `${base}.mod.o`, `${base}.ko`]) objectOwner.set(own, m);
    const modFile = path.join(objDir, `${base}.mod`);
    if (!existsSync(modFile)) return null;
    for (const member of (await readFile(modFile, 'utf8')).split(/\s+/).filter(Boolean)) objectOwner.set(member, m);
  }
  return { modules, objectOwner };
}

/** The target a kbuild .cmd file records (dir/.name.cmd -> dir/name), objtree-relative. */
export function cmdTarget(relCmdPath: string): string {
  const dir = path.dirname(relCmdPath);
  const name = path.basename(relCmdPath).replace(/^\./, '').replace(/\.cmd$/, '');
  return dir === '.' ? name : path.join(dir, name);
}

/**
 * Decides between a whole-tree make and a targeted module rebuild, from the
 * base build's objects (objDir, built from srcDir) and the tree-relative files
 * whose content differs from what that build compiled. kbuild records a
 * dependency relative to the object tree it built in (../src/include/... when
 * src/ and obj/ are siblings) or absolute; objtree says where that was, when
 * the objects were read from a copy (default objDir).
 */
export async function planRebuild(opts: { objDir: string; srcDir: string; changed: string[]; objtree?: string }): Promise<RebuildPlan> {
  const changed = [...new Set(opts.changed)].sort();
  if (changed.length === 0) return { kind: 'whole-tree', reason: 'no file differs from the base build' };
  const notSource = changed.filter((f) => !SOURCE_FILE.test(f));
  if (notSource.length) {
    return { kind: 'whole-tree', reason: `${notSource.join(', ')}: not a .c, .h or .S file (a Makefile, Kconfig or script can change what is built)` };
  }
  const mods = await moduleObjects(opts.objDir);
  if (!mods) return { kind: 'whole-tree', reason: 'the base build has no modules.order or .mod files' };
  const objtree = opts.objtree ?? opts.objDir;
  const wanted = new Map(changed.map((f) => [path.resolve(opts.srcDir, f), f]));
  const affected = new Set<string>();
  const entries = await readdir(opts.objDir, { recursive: true, withFileTypes: true });
  for (const e of entries) {
    if (!e.isFile() || !e.name.startsWith('.') || !e.name.endsWith('.cmd')) continue;
    const full = path.join(e.parentPath ?? e.path, e.name);
    const text = await readFile(full, 'utf8');
    // Cheap pre-check before tokenising: most .cmd files mention none of the files.
    if (!changed.some((rel) => text.includes(rel))) continue;
    const deps = new Set<string>();
    for (const tok of text.split(/[\s\\]+/)) {
      if (!tok || tok.startsWith('$') || tok.startsWith('-') || tok.endsWith(':') || tok === ':=') continue;
      if (changed.some((rel) => tok.endsWith(rel))) deps.add(path.resolve(objtree, tok));
    }
    const target = cmdTarget(path.relative(opts.objDir, full));
    for (const [abs, rel] of wanted) {
      if (!deps.has(abs)) continue;
      const owner = mods.objectOwner.get(target);
      if (!owner) return { kind: 'whole-tree', reason: `${rel} goes into ${target}, which is not part of a module` };
      affected.add(owner);
    }
  }
  // A changed file no object depends on is not built with this config (the whole-tree make would not compile it either).
  return {
    kind: 'modules',
    targets: mods.modules.map((m) => m.replace(/\.o$/, '.ko')),
    affected: [...affected].sort().map((m) => m.replace(/\.o$/, '.ko')),
    changed,
  };
}

/** One line for logs and progress. */
export function describePlan(plan: RebuildPlan): string {
  return plan.kind === 'modules'
    ? `targeted module rebuild: ${plan.changed.join(', ')} only in ${plan.affected.join(', ') || 'no built object'}; make ${plan.targets.join(' ')}`
    : `whole-tree make: ${plan.reason}`;
}
