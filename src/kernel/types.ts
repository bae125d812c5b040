// The kernel a run boots, as one tagged type: the rest of hwlab switches on
// `kind` and never guesses from which fields happen to be there.
//   stock    a prebuilt Debian linux-image, as packaged
//   source   built here from a tree, a patch series and checked fragments
//   overlay  a prebuilt Debian kernel whose driver directories were rebuilt
//            from the matching linux-source with patches (the fast path)
// Every kind lays out its cache entry the same way (artifactInEntry).
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { RebuildPlan } from './targeted.ts';

export type KernelKind = 'stock' | 'source' | 'overlay';

/** One patch of an applied series, as results record it. */
export interface AppliedPatch {
  name: string;
  sha256: string;
  /** Where it came from: the file, or the mbox or quilt series and position. */
  origin: string;
}

/** What every kernel is: an image, its modules tree, and the disk that carries the modules into the guest. */
interface KernelFiles {
  /** Exact package (stock, overlay: linux-image-7.2.13+deb14-amd64) or tree label (source: linux-source-7.2 7.2.13-1). */
  package: string;
  /** Exact version: the Debian version (7.2.13-1) or the tree's kernel version (7.2.13). */
  version: string;
  /** uname -r in the guest. */
  release: string;
  vmlinuz: string;
  /** The kernel's .config, when the entry has one. */
  config?: string;
  /** Directory holding lib/modules/<release>, depmod'ed. */
  modulesRoot: string;
  /** ext4 image of lib/modules (label hwlab-mods), attached read-only. */
  modulesDisk: string;
  cacheDir: string;
  cacheKey: string;
}

export interface StockKernel extends KernelFiles {
  kind: 'stock';
}

export interface SourceKernel extends KernelFiles {
  kind: 'source';
  /** The O= build directory kept in the entry (for M= module builds and incremental rebuilds). */
  objDir: string;
  /** Whether make ran for this request (false: the cached entry was reused). */
  built: boolean;
  buildSeconds?: number;
  /** How the build started: from scratch, or from an earlier entry's objects. */
  incrementalFrom?: string;
  /** When make ran: whole tree or only the modules, and why. */
  rebuild?: RebuildPlan;
  patches: AppliedPatch[];
  configSha256: string;
}

/** A module the fast path rebuilt. */
export interface ReplacedModule {
  /** Module name as the kernel knows it (dashes as underscores): vfio_pci_core. */
  module: string;
  /** Path under lib/modules/<release> of the rebuilt .ko. */
  path: string;
  /** GNU build-id of the rebuilt .ko (hex): what /sys/module/<name>/notes/.note.gnu.build-id shows once loaded. */
  buildId: string;
  /** The stock module it replaced (relative path), absent for a module the stock kernel does not have. */
  stock?: string;
}

export interface OverlayKernel extends KernelFiles {
  kind: 'overlay';
  /** Rebuilt modules now in the modules tree in place of the stock ones. */
  replaced: ReplacedModule[];
  /** Rebuilt modules the stock kernel did not ship (a patch that adds a module). */
  added: ReplacedModule[];
  headers: { package: string; version: string };
  compiler: {
    /** CONFIG_CC_VERSION_TEXT of the Debian kernel. */
    kernel: string;
    /** `--version` line of the compiler that built the modules. */
    used: string;
    /** Set when they differ: what was adapted. */
    note?: string;
  };
  /** The driver directories rebuilt, tree-relative. */
  dirs: string[];
  patches: AppliedPatch[];
  /** Whether make ran for this request (false: cached entry reused). */
  built: boolean;
  buildSeconds?: number;
}

export type Kernel = StockKernel | SourceKernel | OverlayKernel;

/** The files of a kernel cache entry, laid out the same for every kind. */
export function filesInEntry(dir: string, key: string, id: Pick<KernelFiles, 'package' | 'version' | 'release'>): KernelFiles {
  return {
    ...id,
    vmlinuz: path.join(dir, 'vmlinuz'),
    config: existsSync(path.join(dir, 'config')) ? path.join(dir, 'config') : undefined,
    modulesRoot: path.join(dir, 'modroot'),
    modulesDisk: path.join(dir, 'modules.ext4'),
    cacheDir: dir,
    cacheKey: key,
  };
}
