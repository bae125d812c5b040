// The fast path: a prebuilt Debian kernel stays as it is, and only the driver
// directories a patch series touches (drivers/vfio/pci by default) are rebuilt
// against that kernel's own linux-headers package and swapped into its
// modules tree. Minutes of full kernel build become seconds of module build,
// but only for patches confined to those directories: anything in core code or
// in a header the kernel image was compiled with would need the image rebuilt,
// and is refused here.
//
// Two cache levels:
//   'kheaders'      linux-headers-<release> + its -common and linux-kbuild
//                   packages, unpacked, made relocatable and made to work with
//                   the host toolchain (see prepareHeaders).
//   'kernel-driver' the rebuilt .ko files merged into a copy of the stock
//                   modules tree, depmod'ed, packed into modules.ext4; keyed by
//                   (kernel, headers, dirs, patches, compiler), so an unchanged
//                   request runs no make at all.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { chmod, copyFile, link, lstat, mkdir, open, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { readModuleIndex } from '../image/initramfs.ts';
import { DEFAULT_DRIVER_DIRS, type DebianKernelSpec } from '../lab/types.ts';
import { cacheKey, ensureEntry } from '../util/cache.ts';

import { makeExt4 } from '../util/ext4.ts';
import type { Step } from '../util/progress.ts';
import { extractBuildErrors, KernelBuildError, touchedFiles } from './build.ts';
import { aptDir, aptDownloadExtract, aptOptions } from './debian.ts';
import { applySeries, scratchCopy, type PatchFile } from './patches.ts';
import { resolveKernelTree, type KernelTree } from './source.ts';
import { configSettings } from './dotconfig.ts';
import { filesInEntry, type OverlayKernel, type ReplacedModule, type StockKernel } from './types.ts';
import { InfraError, InputError } from '../util/errors.ts';

export interface DriverBuildRequest {
  /** The prebuilt Debian kernel (fetchDebianKernel's result), release e.g. 7.2.13+deb14-amd64. */
  kernel: StockKernel;
  /** Suite and mirror the kernel came from: the headers and linux-source are fetched from the same place. */
  debian: Pick<DebianKernelSpec, 'suite' | 'mirror'>;
  /** Tree-relative driver directories to rebuild; default DEFAULT_DRIVER_DIRS. */
  dirs: string[];
  /** Applied, in order, to the matching linux-source tree's copy of `dirs`; must touch nothing outside them. */
  patches: PatchFile[];
  logFile: string;
  step: Step;
  jobs?: number;
}

// ---------------------------------------------------------------------------
// Request checks (pure)

/** Normalises the lab's dirs: tree-relative, no '..', no trailing slash, no overlaps. */
export function normalizeDriverDirs(dirs: string[]): string[] {
  if (dirs.length === 0) throw new InputError('kernel.driver.dirs is empty: name at least one tree-relative directory, e.g. drivers/vfio/pci');
  const out: string[] = [];
  for (const raw of dirs) {
    const d = path.posix.normalize(raw.trim()).replace(/\/+$/, '');
    if (!d || d === '.' || path.posix.isAbsolute(d) || d === '..' || d.startsWith('../')) {
      throw new InputError(`kernel.driver.dirs: "${raw}" is not a directory inside the kernel tree (give a path like drivers/vfio/pci)`);
    }
    out.push(d);
  }
  for (const a of out) {
    for (const b of out) {
      if (a !== b && b.startsWith(`${a}/`)) {
        throw new InputError(`kernel.driver.dirs: ${b} is inside ${a}; list only ${a} (kbuild builds its subdirectories with it)`);
      }
    }
  }
  return [...new Set(out)];
}

/**
 * Refuses a series that touches anything outside the driver directories: the
 * fast path rebuilds those modules only, so a change anywhere else (core
 * code, a header the kernel image was compiled with, another driver) would
 * not be in the kernel that runs, and a test would pass or fail against code
 * that is not the patched code.
 */
export function assertPatchesConfined(patches: PatchFile[], dirs: string[]): void {
  const inside = (f: string) => dirs.some((d) => f.startsWith(`${d}/`));
  const outside: Array<{ file: string; patches: string[] }> = [];
  for (const file of touchedFiles(patches)) {
    if (inside(file)) continue;
    const by = patches.filter((p) => touchedFiles([p]).includes(file)).map((p) => p.name);
    outside.push({ file, patches: by });
  }
  if (outside.length === 0) return;
  const lines = outside.map((o) => `  ${o.file}  (${o.patches.join(', ')})`);
  throw new InputError(
    `the driver fast path rebuilds only ${dirs.join(', ')} against the prebuilt Debian kernel, but the patch series also changes ${outside.length === 1 ? 'this file' : `these ${outside.length} files`} outside ${dirs.length === 1 ? 'it' : 'them'}:\n${lines.join('\n')}\n` +
      'those changes would not be in the kernel that boots, so the lab would test code that is not the patched code',
    outside.every((o) => o.file.startsWith('drivers/'))
      ? 'add the directories of those files to kernel.driver.dirs if they are modules too, or build the whole kernel from source (kernel: { debian: linux-source-7.2, patches: [...] })'
      : 'build the whole kernel from source for patches to core code or shared headers (kernel: { debian: linux-source-7.2, patches: [...] })',
  );
}

/** Upstream version of a Debian kernel package version: 7.2.13-1 -> 7.2.13, 1:6.1.4-2~bpo -> 6.1.4. */
export function upstreamVersion(debianVersion: string): string {
  return debianVersion.replace(/^\d+:/, '').replace(/-[^-]*$/, '').replace(/~.*$/, '');
}

// ---------------------------------------------------------------------------
// Kernel config overlay for a different compiler

/**
 * Config symbols that describe the toolchain (what the compiler, assembler,
 * linker and pahole can do), not the kernel: the kernel's Makefiles turn some
 * of them straight into compiler flags (CC_HAS_MIN_FUNCTION_ALIGNMENT ->
 * -fmin-function-alignment=, which gcc 12 rejects) and headers into attributes.
 */
export const TOOLCHAIN_SYMBOL = /^CONFIG_(CC_HAS_|CC_CAN_|CC_IS_|CC_VERSION_TEXT$|CC_OPT_|GCC_VERSION$|GCC_ASM_|CLANG_VERSION$|AS_|LD_VERSION$|LD_IS_|LD_CAN_|LD_ORPHAN_WARN|TOOLS_SUPPORT_|PAHOLE_)/;

export interface ConfigChange {
  symbol: string;
  /** Value in the Debian kernel's config (undefined: not set). */
  kernel?: string;
  /** Value for the host toolchain (undefined: not set). */
  host?: string;
}

/** Toolchain symbols whose value differs between the kernel's config and one made with the host toolchain. */
export function toolchainChanges(kernel: Map<string, string>, host: Map<string, string>): ConfigChange[] {
  const names = new Set([...kernel.keys(), ...host.keys()].filter((s) => TOOLCHAIN_SYMBOL.test(s)));
  return [...names]
    .filter((s) => kernel.get(s) !== host.get(s))
    .sort()
    .map((symbol) => ({ symbol, kernel: kernel.get(symbol), host: host.get(symbol) }));
}

/** auto.conf holds strings unquoted (kconfig since 5.x): "a \\"b\\"" in .config is a "b" there. */
function autoConfValue(value: string): string {
  if (!value.startsWith('"')) return value;
  return value.slice(1, -1).replace(/\\(.)/g, '$1');
}

function autoconfDefine(symbol: string, value: string): string {
  if (value === 'y') return `#define ${symbol} 1`;
  if (value === 'm') return `#define ${symbol}_MODULE 1`;
  return `#define ${symbol} ${value}`;
}

/** Applies changes (values in .config syntax) to include/config/auto.conf and include/generated/autoconf.h texts. */
export function applyConfigChanges(autoConf: string, autoconfH: string, changes: ConfigChange[]): { autoConf: string; autoconfH: string } {
  const bySym = new Map(changes.map((c) => [c.symbol, c]));
  const confLines = autoConf.split('\n').filter((l) => {
    const m = l.match(/^(CONFIG_[A-Za-z0-9_]+)=/);
    return !(m && bySym.has(m[1]));
  });
  const hLines = autoconfH.split('\n').filter((l) => {
    const m = l.match(/^#define (CONFIG_[A-Za-z0-9_]+?)(_MODULE)? /);
    return !(m && (bySym.has(m[1]) || bySym.has(m[1] + (m[2] ?? ''))));
  });
  while (confLines.length && confLines[confLines.length - 1] === '') confLines.pop();
  while (hLines.length && hLines[hLines.length - 1] === '') hLines.pop();
  for (const c of changes) {
    if (c.host === undefined) continue;
    confLines.push(`${c.symbol}=${autoConfValue(c.host)}`);
    hLines.push(autoconfDefine(c.symbol, c.host));
  }
  return { autoConf: confLines.join('\n') + '\n', autoconfH: hLines.join('\n') + '\n' };
}

// ---------------------------------------------------------------------------
// Headers

export interface PreparedHeaders {
  /** The directory to `make -C` (linux-headers-<release>, holding .config and Module.symvers). */
  dir: string;
  package: string;
  version: string;
  /** Extra make arguments every module build against these headers needs (CC=...). */
  makeArgs: string[];
  compiler: OverlayKernel['compiler'];
  cacheKey: string;
}

interface HeadersManifest {
  package: string;
  version: string;
  packages: string[];
  headersDir: string;
  cc: string;
  kernelCompiler: string;
  usedCompiler: string;
  toolchainChanges: ConfigChange[];
  /** Non-toolchain options a host-toolchain config would have differently; kept as Debian built them. */
  keptOptions: ConfigChange[];
  rebuiltTools: string[];
  unusableTools: string[];
  note?: string;
}

async function firstLine(cmd: string, args: string[]): Promise<string | undefined> {
  const r = await execa(cmd, args, { reject: false, env: { LC_ALL: 'C' } }).catch(() => undefined);
  return r && r.exitCode === 0 ? r.stdout.split('\n')[0].trim() : undefined;
}

/**
 * The compiler to build modules with: the one named by CONFIG_CC_VERSION_TEXT
 * when the host has exactly that version, else the host's gcc (the kernel's
 * gcc-16 is sid-only, and sid's binaries need a newer glibc than the host's).
 * Modules still load with a different gcc: vermagic holds no compiler
 * version. What does break is the kernel's config describing compiler
 * features the host gcc lacks; prepareHeaders adapts those.
 */
async function chooseCompiler(ccVersionText: string): Promise<{ cc: string; used: string; exact: boolean }> {
  const want = ccVersionText.split(/\s+/)[0];
  if (want && /^[\w.+-]+$/.test(want)) {
    const v = await firstLine(want, ['--version']);
    if (v === ccVersionText) return { cc: want, used: v, exact: true };
  }
  const host = await firstLine('gcc', ['--version']);
  if (!host) throw new InfraError('gcc is not installed', 'apt-get install gcc make flex bison bc libelf-dev libssl-dev');
  return { cc: 'gcc', used: host, exact: host === ccVersionText };
}

async function isElf(file: string): Promise<boolean> {
  const fh = await open(file, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    return b.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } finally {
    await fh.close();
  }
}

async function walkFiles(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await walkFiles(dir, r)));
    else if (e.isFile()) out.push(r);
  }
  return out;
}

/** ELF executables under dir (relative paths) that the host's dynamic loader cannot run (e.g. need GLIBC_2.38). */
async function unrunnableBinaries(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const rel of await walkFiles(dir)) {
    const full = path.join(dir, rel);
    const st = await stat(full);
    if (!(st.mode & 0o111) || !(await isElf(full))) continue;
    // ldd exits 0 even when a symbol version is missing; the message is what tells.
    const r = await execa('ldd', [full], { reject: false, all: true, env: { LC_ALL: 'C' } });
    if (/not found/.test(r.all ?? '')) out.push(rel);
  }
  return out.sort();
}

/** Debian's multi-target wrappers exec these; only the x86-64 ones matter for amd64 modules. */
const FOREIGN_TARGET_VARIANT = /\.real-(msb-32|msb-64|lsb-32|powerpc|arm64|s390|mips\w*|riscv\w*)$/;

/** The host-built counterpart, in an O= build of the source tree, of a kbuild package binary. */
function hostCounterpart(rel: string): string {
  return rel.replace(/\.real-(lsb-64|x86)$/, '');
}

/** Tools an M= module build runs, given the kernel config. */
function neededTools(conf: Map<string, string>): string[] {
  const need = ['scripts/basic/fixdep', 'scripts/mod/modpost'];
  if (conf.get('CONFIG_OBJTOOL') === 'y') need.push('tools/objtool/objtool');
  if (conf.get('CONFIG_MODVERSIONS') === 'y' && conf.get('CONFIG_GENDWARFKSYMS') !== 'y') need.push('scripts/genksyms/genksyms');
  if (conf.get('CONFIG_MODVERSIONS') === 'y' && conf.get('CONFIG_GENDWARFKSYMS') === 'y') need.push('scripts/gendwarfksyms/gendwarfksyms');
  return need;
}

function aptShowField(show: string, field: string): string | undefined {
  return show.match(new RegExp(`^${field}: (.*)$`, 'm'))?.[1];
}

/** Package names among Depends that are part of the headers (the -common headers and linux-kbuild). */
export function headerDepends(depends: string): Array<{ name: string; version?: string }> {
  return depends
    .split(',')
    .map((d) => d.trim().split('|')[0].trim())
    .map((d): { name: string; version?: string } | undefined => {
      const m = d.match(/^(\S+)(?:\s*\(\s*=\s*([^)\s]+)\s*\))?/);
      return m ? { name: m[1], version: m[2] } : undefined;
    })
    .filter((d): d is { name: string; version?: string } => !!d && /^linux-(headers|kbuild)-/.test(d.name));
}

/**
 * linux-headers-<release> and the packages it needs (linux-headers-<abi>-common,
 * linux-kbuild-<abi>), unpacked into a cache entry and made usable here:
 *
 * - Relocated: the Makefile wrapper names /usr/src/... absolutely; it is
 *   rewritten to relative paths (make -C runs it from its own directory), and
 *   any absolute symlink into /usr is made relative inside the entry.
 * - Host tools: sid's linux-kbuild binaries (modpost, objtool, ...) need glibc
 *   2.38 while bookworm has 2.36, so they cannot even start ("version
 *   `GLIBC_2.38' not found"). Each one that does not load is replaced by the
 *   same tool built from the matching linux-source tree with the host gcc:
 *   `make O=<tmp> olddefconfig modules_prepare` on the Debian config builds
 *   fixdep, modpost, objtool and friends (about a minute), and Debian's
 *   multi-target wrappers (modpost -> modpost.real-lsb-64, objtool ->
 *   objtool.real-x86) keep working because the real binaries are swapped in
 *   under their names. Tools no M= build of this config runs (kallsyms,
 *   resolve_btfids, genksyms without MODVERSIONS...) are recorded, not fixed.
 * - Compiler: the headers insist on CC=x86_64-linux-gnu-gcc-16 and the config
 *   carries gcc 16's feature symbols. With the host gcc instead, the toolchain
 *   symbols (TOOLCHAIN_SYMBOL) in auto.conf/autoconf.h are set to what kconfig
 *   finds for the host toolchain (from the same olddefconfig), so no gcc-16
 *   flag or attribute reaches gcc 12. Every other option stays exactly as
 *   Debian built the kernel; options a host-toolchain config would have
 *   changed are listed in the entry's headers.json (keptOptions).
 * - BTF: vmlinux is removed from the headers, so kbuild skips module BTF
 *   ("Skipping BTF generation ... unavailability of vmlinux"): bookworm's
 *   pahole is far older than the kernel's. A module without BTF loads fine
 *   (the kernel only registers BTF a module carries).
 */
export async function prepareHeaders(
  kernel: Pick<StockKernel, 'package' | 'version' | 'release'>,
  debian: Pick<DebianKernelSpec, 'suite' | 'mirror'>,
  tree: KernelTree,
  step: Step,
): Promise<PreparedHeaders> {
  const pkg = `linux-headers-${kernel.release}`;
  if (!/^[a-z0-9][a-z0-9+.-]+$/.test(pkg)) throw new InputError(`${pkg} is not a Debian package name`);
  const hostCc = (await firstLine('gcc', ['--version'])) ?? 'none';
  const hostLd = (await firstLine('ld', ['--version'])) ?? 'none';
  const hostLibc = (await firstLine('ldd', ['--version'])) ?? 'none';
  const key = cacheKey({ v: 1, pkg, version: kernel.version, tree: tree.id, hostCc, hostLd, hostLibc });
  const { dir } = await ensureEntry('kheaders', key, `${pkg} ${kernel.version}`, async (tmp) => {
    const apt = aptDir(debian);
    step.update(`apt-cache show ${pkg}`);
    const show = await execa('apt-cache', [...aptOptions(apt), 'show', `${pkg}=${kernel.version}`], { reject: false, timeout: 60_000 });
    if (show.exitCode !== 0 || !aptShowField(show.stdout, 'Version')) {
      throw new InfraError(
        `${pkg} version ${kernel.version} (matching the kernel) is not in ${debian.suite} at ${debian.mirror}${show.stderr.trim() ? `: ${show.stderr.trim()}` : ''}`,
        'the suite may have moved on: re-fetch the kernel (hwlab cache prune, or wait for the resolution TTL) so kernel and headers match',
      );
    }
    const deps = headerDepends(aptShowField(show.stdout, 'Depends') ?? '');
    const pkgs = [`${pkg}=${kernel.version}`, ...deps.map((d) => `${d.name}=${d.version ?? kernel.version}`)];
    const root = await aptDownloadExtract(apt, pkgs, tmp, step);
    const headersRel = `usr/src/${pkg}`;
    const headersDir = path.join(root, headersRel);
    if (!existsSync(path.join(headersDir, 'Makefile')) || !existsSync(path.join(headersDir, '.config'))) {
      throw new InfraError(`${pkg}: no ${headersRel}/Makefile and .config in the package`);
    }
    await relocate(root, headersDir);
    await rm(path.join(headersDir, 'vmlinux'), { force: true });

    const config = configSettings(await readFile(path.join(headersDir, '.config'), 'utf8'));
    const ccText = JSON.parse(config.get('CONFIG_CC_VERSION_TEXT') ?? '""') as string;
    const cc = await chooseCompiler(ccText);

    // Which packaged tools do not run here? (The kbuild package is reached through the scripts/ and tools/ symlinks.)
    const kbuild = await kbuildDir(root, headersDir);
    const broken = await unrunnableBinaries(kbuild);
    const brokenAmd64 = broken.filter((b) => !FOREIGN_TARGET_VARIANT.test(b));

    let changes: ConfigChange[] = [];
    let kept: ConfigChange[] = [];
    const rebuilt: string[] = [];
    if (!cc.exact || brokenAmd64.length) {
      const obj = path.join(tmp, 'hostobj');
      await mkdir(obj);
      await copyFile(path.join(headersDir, '.config'), path.join(obj, '.config'));
      const log: string[] = [];
      step.update('kconfig with the host toolchain');
      await kmake(tree.dir, obj, ['olddefconfig'], cc.cc, log, step, 'olddefconfig');
      const hostConf = configSettings(await readFile(path.join(obj, '.config'), 'utf8'));
      if (!cc.exact) {
        changes = toolchainChanges(config, hostConf);
        kept = [...new Set([...config.keys(), ...hostConf.keys()])]
          .filter((s) => !TOOLCHAIN_SYMBOL.test(s) && config.get(s) !== hostConf.get(s))
          .sort()
          .map((symbol) => ({ symbol, kernel: config.get(symbol), host: hostConf.get(symbol) }));
        const ac = path.join(headersDir, 'include/config/auto.conf');
        const ah = path.join(headersDir, 'include/generated/autoconf.h');
        const res = applyConfigChanges(await readFile(ac, 'utf8'), await readFile(ah, 'utf8'), changes);
        await rm(ac);
        await writeFile(ac, res.autoConf);
        await rm(ah);
        await writeFile(ah, res.autoconfH);
      }
      if (brokenAmd64.length) {
        step.update(`building host tools (${brokenAmd64.map((b) => path.basename(b)).join(' ')})`);
        await kmake(tree.dir, obj, ['modules_prepare'], cc.cc, log, step, 'modules_prepare (host tools)');
        for (const rel of brokenAmd64) {
          const from = path.join(obj, hostCounterpart(rel));
          if (!existsSync(from)) continue;
          const to = path.join(kbuild, rel);
          const mode = (await stat(to)).mode & 0o7777;
          await rm(to);
          await copyFile(from, to);
          await chmod(to, mode);
          rebuilt.push(rel);
        }
      }
      await rm(obj, { recursive: true, force: true });
    }
    const stillBroken = (await unrunnableBinaries(kbuild)).filter((b) => !FOREIGN_TARGET_VARIANT.test(b));
    const missing = neededTools(config).filter((t) => stillBroken.includes(t) || stillBroken.some((b) => hostCounterpart(b) === t));
    if (missing.length) {
      throw new InfraError(`${pkg}: the module build needs ${missing.join(', ')}, which neither the package's binaries nor a host build provide`);
    }
    const note = cc.exact
      ? undefined
      : `the kernel was built with "${ccText}", which this host does not have; modules are built with "${cc.used}" ` +
        `and ${changes.length} toolchain config symbol(s) adapted to it (vermagic holds no compiler version, so they load)`;
    const manifest: HeadersManifest = {
      package: pkg,
      version: kernel.version,
      packages: pkgs,
      headersDir: path.posix.join('root', headersRel),
      cc: cc.cc,
      kernelCompiler: ccText,
      usedCompiler: cc.used,
      toolchainChanges: changes,
      keptOptions: kept,
      rebuiltTools: rebuilt,
      unusableTools: stillBroken,
      note,
    };
    await writeFile(path.join(tmp, 'headers.json'), JSON.stringify(manifest, null, 2));
  });
  const m = JSON.parse(await readFile(path.join(dir, 'headers.json'), 'utf8')) as HeadersManifest;
  return {
    dir: path.join(dir, m.headersDir),
    package: m.package,
    version: m.version,
    makeArgs: [`CC=${m.cc}`, 'HOSTCC=gcc'],
    compiler: { kernel: m.kernelCompiler, used: m.usedCompiler, note: m.note },
    cacheKey: key,
  };
}

/** The unpacked linux-kbuild-* directory the headers' scripts/ symlink leads to. */
async function kbuildDir(root: string, headersDir: string): Promise<string> {
  const scripts = path.join(headersDir, 'scripts');
  const st = await lstat(scripts).catch(() => undefined);
  if (!st) throw new InfraError(`${headersDir}: no scripts/ (is linux-kbuild missing from the packages?)`);
  const real = st.isSymbolicLink() ? path.resolve(path.dirname(scripts), await readlink(scripts)) : scripts;
  if (!real.startsWith(root + path.sep) || !existsSync(real)) throw new InfraError(`${headersDir}/scripts leads outside the unpacked packages (${real})`);
  return path.dirname(real);
}

/**
 * Makes the unpacked packages self-contained: absolute symlinks into /usr
 * become relative links inside root, and the headers' Makefile wrapper
 * (KBUILD_OUTPUT=/usr/src/..., include /usr/src/...-common/Makefile) names
 * its paths relative to itself; make -C runs it from its own directory.
 */
async function relocate(root: string, headersDir: string): Promise<void> {
  const links = (await execa('find', [root, '-type', 'l'])).stdout.split('\n').filter(Boolean);
  for (const l of links) {
    const target = await readlink(l);
    if (!target.startsWith('/')) continue;
    await unlink(l);
    await symlink(path.relative(path.dirname(l), path.join(root, target)), l);
  }
  const mk = path.join(headersDir, 'Makefile');
  const text = await readFile(mk, 'utf8');
  const rel = (abs: string) => path.relative(headersDir, path.join(root, abs)) || '.';
  const fixed = text
    .replace(/^(KBUILD_OUTPUT[ \t]*:?=[ \t]*)(\/\S+)[ \t]*$/m, (_m, k: string, p: string) => `${k}${rel(p)}`)
    .replace(/^(-?include[ \t]+)(\/usr\/\S+)[ \t]*$/gm, (_m, k: string, p: string) => `${k}${rel(p)}`);
  if (/^[^#\n]*\s\/usr\/(src|lib\/linux-kbuild)/m.test(fixed)) {
    throw new InfraError(`${mk}: still names /usr/src or /usr/lib/linux-kbuild after relocation; unexpected Makefile layout`);
  }
  await rm(mk);
  await writeFile(mk, fixed);
}

/** make on the pristine source tree with O= (the tree is never written to). */
async function kmake(src: string, obj: string, targets: string[], cc: string, log: string[], step: Step, what: string): Promise<void> {
  const child = execa('make', ['-C', src, `O=${obj}`, 'ARCH=x86_64', `CC=${cc}`, 'HOSTCC=gcc', `-j${os.cpus().length}`, ...targets], {
    reject: false,
    all: true,
    env: { LC_ALL: 'C' },
    timeout: 3600_000,
  });
  child.all?.on('data', (d: Buffer) => {
    const s = d.toString();
    log.push(s);
    const m = s.match(/^\s+(CC|LD|HOSTCC|HOSTLD|LINK)\s+(\S+)/gm);
    if (m) step.update(`${what}: ${m[m.length - 1].trim()}`);
  });
  const r = await child;
  if (r.exitCode !== 0) {
    const out = String(r.all);
    const errors = extractBuildErrors(out);
    throw new KernelBuildError(`make ${what} in the linux-source tree failed (exit ${r.exitCode}):\n${(errors.length ? errors : out.split('\n').slice(-25)).join('\n')}`);
  }
}

// ---------------------------------------------------------------------------
// Module builds (M=)

/**
 * `make -C <headers> M=<dir> modules`: builds the external (or in-tree, copied)
 * module directory against prepared headers and returns the .ko files it
 * produced, relative to dir, from its modules.order. Also the entry point for
 * hwlab's own modules.
 */
export async function makeModules(headers: Pick<PreparedHeaders, 'dir' | 'makeArgs'>, dir: string, log: (s: string) => void, step: Step, jobs = os.cpus().length): Promise<string[]> {
  const child = execa('make', ['-C', headers.dir, `M=${dir}`, ...headers.makeArgs, `-j${jobs}`, 'modules'], {
    reject: false,
    all: true,
    env: { LC_ALL: 'C', KBUILD_BUILD_TIMESTAMP: '2026-01-01 00:00:00 UTC', KBUILD_BUILD_USER: 'hwlab', KBUILD_BUILD_HOST: 'hwlab' },
    timeout: 3600_000,
  });
  child.all?.on('data', (d: Buffer) => {
    const s = d.toString();
    log(s);
    const m = s.match(/^\s+(CC|LD|MODPOST)( \[M\])?\s+(\S+)/gm);
    if (m) step.update(m[m.length - 1].trim());
  });
  const r = await child;
  if (r.exitCode !== 0) {
    const out = String(r.all);
    const errors = extractBuildErrors(out);
    throw new KernelBuildError(`make M=${dir} modules failed (exit ${r.exitCode}):\n${(errors.length ? errors : out.split('\n').slice(-25)).join('\n')}`);
  }
  const order = path.join(dir, 'modules.order');
  const listed = existsSync(order) ? (await readFile(order, 'utf8')).split('\n').map((l) => l.trim()).filter(Boolean) : [];
  const kos = listed.map((o) => o.replace(/\.o$/, '.ko'));
  for (const ko of kos) if (!existsSync(path.join(dir, ko))) throw new InfraError(`make M=${dir} listed ${ko} in modules.order but did not produce it`);
  return kos;
}

// ---------------------------------------------------------------------------
// ELF notes

/** GNU build-id from the ELF notes of a .ko (or any ELF file), via readelf -n. */
export async function elfBuildId(file: string): Promise<string> {
  // readelf exits 1 on warnings it has about the rest of a file (e.g. a signed module's appended signature).
  const r = await execa('readelf', ['-n', file], { env: { LC_ALL: 'C' }, reject: false });
  const m = r.stdout.match(/Build ID:\s*([0-9a-f]+)/);
  if (!m) throw new InfraError(`${file} has no GNU build-id note${r.stderr.trim() ? ` (readelf: ${r.stderr.trim().slice(0, 300)})` : ''}`);
  return m[1];
}

async function modinfoField(file: string, field: string): Promise<string> {
  const r = await execa('modinfo', ['-F', field, file], { reject: false });
  if (r.exitCode !== 0) throw new InfraError(`modinfo -F ${field} ${file} failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

const modName = (rel: string) => path.basename(rel).replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');

// ---------------------------------------------------------------------------
// The fast path

interface DriverManifest {
  release: string;
  headers: { package: string; version: string };
  compiler: OverlayKernel['compiler'];
  dirs: string[];
  patches: OverlayKernel['patches'];
  replaced: ReplacedModule[];
  added: ReplacedModule[];
  /** Stock modules under the dirs that the build did not produce (left as shipped). */
  untouchedStock: string[];
  vermagic: string;
  buildSeconds: number;
  finishedAt: string;
}

/**
 * The linux-headers package matching a prebuilt Debian kernel, prepared for
 * M= builds (tools rebuilt for the host), plus the matching linux-source tree.
 * Used by the fast path and by hwlab's own modules on prebuilt kernels.
 */
export async function headersForPrebuilt(
  kernel: Pick<StockKernel, 'package' | 'version' | 'release'>,
  debian: Pick<DebianKernelSpec, 'suite' | 'mirror'>,
  step: Step,
): Promise<{ tree: KernelTree; headers: PreparedHeaders }> {
  const mm = kernel.release.match(/^(\d+\.\d+)/);
  if (!mm) throw new InfraError(`kernel release ${kernel.release} does not start with <major>.<minor>`);
  const sourcePkg = `linux-source-${mm[1]}`;
  const tree = await resolveKernelTree({ kind: 'debian-source', package: sourcePkg, suite: debian.suite, mirror: debian.mirror }, step);
  const want = upstreamVersion(kernel.version);
  if (tree.version !== want) {
    throw new InfraError(
      `${sourcePkg} in ${debian.suite} is ${tree.label} (upstream ${tree.version}), but the prebuilt kernel ${kernel.package} is ${kernel.version} (upstream ${want}); ` +
        'driver sources must match the kernel they load into',
      'the suite is mid-update: retry later, or re-fetch the kernel so both come from the same upload',
    );
  }
  step.update('preparing headers');
  return { tree, headers: await prepareHeaders(kernel, debian, tree, step) };
}

export async function buildOverlayKernel(req: DriverBuildRequest): Promise<OverlayKernel> {
  const { kernel, step } = req;
  const dirs = normalizeDriverDirs(req.dirs.length ? req.dirs : DEFAULT_DRIVER_DIRS);
  assertPatchesConfined(req.patches, dirs);
  if (kernel.kind !== 'stock') {
    throw new InputError(`the driver fast path needs a prebuilt Debian kernel; ${kernel.package} was built from source (rebuild it with the patches instead)`);
  }
  const { tree, headers } = await headersForPrebuilt(kernel, req.debian, step);
  const patchesInfo = req.patches.map((p) => ({ name: p.name, sha256: p.sha256, origin: p.origin }));
  const key = cacheKey({
    v: 1,
    kernel: kernel.cacheKey,
    headers: headers.cacheKey,
    tree: tree.id,
    dirs,
    patches: req.patches.map((p) => p.sha256),
    compiler: headers.compiler.used,
  });
  let built = false;
  let buildSeconds: number | undefined;
  const logChunks: string[] = [];
  const { dir } = await ensureEntry('kernel-driver', key, `${kernel.package} + ${dirs.join(' ')} + ${req.patches.length} patches`, async (tmp) => {
    const start = Date.now();
    const src = path.join(tmp, 'src');
    for (const d of dirs) {
      const from = path.join(tree.dir, d);
      if (!(await stat(from).catch(() => undefined))?.isDirectory()) throw new InputError(`kernel.driver.dirs: ${d} is not a directory in ${tree.label}`);
      step.update(`copying ${d}`);
      await scratchCopy(from, path.join(src, d));
    }
    // The scratch tree has the driver dirs at their tree-relative paths, so the series applies as-is.
    if (req.patches.length) await applySeries(src, req.patches, { step });
    const stockDir = path.join(kernel.modulesRoot, 'lib/modules', kernel.release);
    const idx = await readModuleIndex(kernel);
    const builtKos: Array<{ dir: string; ko: string; full: string }> = [];
    try {
      for (const d of dirs) {
        step.update(`make M=${d}`);
        logChunks.push(`### make -C ${headers.dir} M=${path.join(src, d)} ${headers.makeArgs.join(' ')} modules\n`);
        const kos = await makeModules(headers, path.join(src, d), (s) => logChunks.push(s), step, req.jobs);
        for (const ko of kos) builtKos.push({ dir: d, ko, full: path.join(src, d, ko) });
      }
    } finally {
      await writeFile(req.logFile, logChunks.join(''));
    }
    if (builtKos.length === 0) {
      throw new InputError(`make produced no modules in ${dirs.join(', ')}: the kernel config builds nothing there as a module (built in, or disabled)`);
    }

    step.update('merging modules');
    const modroot = path.join(tmp, 'modroot');
    const r = await execa('cp', ['-al', '--', kernel.modulesRoot, modroot], { reject: false });
    if (r.exitCode !== 0) throw new InfraError(`copying the stock modules tree failed: ${r.stderr.trim()}`);
    const modDir = path.join(modroot, 'lib/modules', kernel.release);
    // depmod rewrites these; unlink so the stock entry's hard-linked copies stay untouched.
    for (const f of await readdir(modDir)) if (/^modules\./.test(f)) await rm(path.join(modDir, f));
    let vermagic: string | undefined;
    const replaced: ReplacedModule[] = [];
    const added: ReplacedModule[] = [];
    for (const b of builtKos) {
      const name = modName(b.ko);
      const stockRel = idx.path.get(name);
      const newVermagic = await modinfoField(b.full, 'vermagic');
      if (stockRel) {
        const stockVermagic = await modinfoField(path.join(stockDir, stockRel), 'vermagic');
        if (newVermagic !== stockVermagic) {
          throw new InfraError(`rebuilt ${name} has vermagic "${newVermagic}", the stock module "${stockVermagic}": the kernel would refuse to load it`);
        }
      } else if (!newVermagic.startsWith(`${kernel.release} `)) {
        throw new InfraError(`rebuilt ${name} has vermagic "${newVermagic}", not for ${kernel.release}`);
      }
      vermagic = newVermagic;
      const rel = stockRel ? stockRel.replace(/\.ko\.(xz|zst|gz)$/, '.ko') : path.posix.join('kernel', b.dir, b.ko);
      const dest = path.join(modDir, rel);
      if (stockRel) await rm(path.join(modDir, stockRel));
      await mkdir(path.dirname(dest), { recursive: true });
      // Like INSTALL_MOD_STRIP=1: debug info out, the build-id note stays.
      const s = await execa('strip', ['--strip-debug', '-o', dest, b.full], { reject: false });
      if (s.exitCode !== 0) throw new InfraError(`strip --strip-debug ${b.full} failed: ${s.stderr.trim()}`);
      const entry: ReplacedModule = { module: name, path: rel, buildId: await elfBuildId(dest), stock: stockRel };
      (stockRel ? replaced : added).push(entry);
    }
    const rebuiltStock = new Set(replaced.map((m) => m.stock));
    const untouchedStock = [...idx.path.values()]
      .filter((p) => dirs.some((d) => p.startsWith(`kernel/${d}/`)) && !rebuiltStock.has(p))
      .sort();
    step.update('depmod');
    const dm = await execa('depmod', ['-b', modroot, kernel.release], { reject: false, timeout: 300_000 });
    if (dm.exitCode !== 0) throw new InfraError(`depmod for the merged modules tree failed: ${dm.stderr.trim()}`);
    step.update('modules disk');
    await makeExt4(path.join(modroot, 'lib/modules'), path.join(tmp, 'modules.ext4'), 'hwlab-mods');
    // The image is the stock one; linked (or copied) in so the entry stands on its own.
    await link(kernel.vmlinuz, path.join(tmp, 'vmlinuz')).catch(() => copyFile(kernel.vmlinuz, path.join(tmp, 'vmlinuz')));
    if (kernel.config) await copyFile(kernel.config, path.join(tmp, 'config'));
    await rm(src, { recursive: true, force: true });
    buildSeconds = (Date.now() - start) / 1000;
    built = true;
    const manifest: DriverManifest = {
      release: kernel.release,
      headers: { package: headers.package, version: headers.version },
      compiler: headers.compiler,
      dirs,
      patches: patchesInfo,
      replaced,
      added,
      untouchedStock,
      vermagic: vermagic!,
      buildSeconds,
      finishedAt: new Date().toISOString(),
    };
    await writeFile(path.join(tmp, 'driver.json'), JSON.stringify(manifest, null, 2));
  });
  const m = JSON.parse(await readFile(path.join(dir, 'driver.json'), 'utf8')) as DriverManifest;
  if (!built) await writeFile(req.logFile, `cache hit: ${dir} (built ${m.finishedAt} in ${m.buildSeconds.toFixed(0)} s)\n`);
  return {
    kind: 'overlay',
    ...filesInEntry(dir, key, { package: kernel.package, version: kernel.version, release: kernel.release }),
    replaced: m.replaced,
    added: m.added,
    headers: m.headers,
    compiler: m.compiler,
    dirs: m.dirs,
    patches: m.patches,
    built,
    buildSeconds,
  };
}
