// Prebuilt Debian kernels, fetched with a private apt configuration (own
// sources list, lists and state under hwlab's cache) so the host's apt
// sources never gain sid. Packages are unpacked with dpkg-deb -x, never installed.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { DebianKernelSpec } from '../lab/types.ts';
import { cacheRoot, ensureEntry, cacheKey } from '../util/cache.ts';

import type { Step } from '../util/progress.ts';
import { makeExt4 } from '../util/ext4.ts';
import { filesInEntry, type StockKernel } from './types.ts';
import { InfraError, InputError } from '../util/errors.ts';
import { aptGetLineBytes, bytesUnder, downloadLine, formatBytes, parsePrintUris, watchDownload } from '../util/download-progress.ts';

const KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';
/** Resolutions younger than this are reused without `apt-get update` (warm runs stay fast). */
export const RESOLVE_TTL_MS = 6 * 3600 * 1000;

/** Where the private apt state for one suite+mirror lives (shared with kernel/source.ts). */
export function aptDir(spec: Pick<DebianKernelSpec, 'suite' | 'mirror'>): string {
  return path.join(cacheRoot(), 'apt', cacheKey({ suite: spec.suite, mirror: spec.mirror }));
}

export function aptOptions(dir: string): string[] {
  const o = (k: string, v: string) => ['-o', `${k}=${v}`];
  return [
    ...o('Dir::Etc::SourceList', path.join(dir, 'sources.list')),
    ...o('Dir::Etc::SourceParts', path.join(dir, 'sources.list.d')),
    ...o('Dir::Etc::Preferences', path.join(dir, 'preferences')),
    ...o('Dir::Etc::PreferencesParts', path.join(dir, 'preferences.d')),
    ...o('Dir::State', dir),
    ...o('Dir::State::Lists', path.join(dir, 'lists')),
    ...o('Dir::State::status', path.join(dir, 'status')),
    ...o('Dir::Cache', path.join(dir, 'cache')),
    ...o('Debug::NoLocking', '1'),
    ...o('APT::Architecture', 'amd64'),
    ...o('APT::Architectures', 'amd64'),
    // apt drops to _apt for downloads; our cache dir is root-owned.
    ...o('APT::Sandbox::User', 'root'),
    ...o('Acquire::Languages', 'none'),
  ];
}

export async function aptUpdate(spec: Pick<DebianKernelSpec, 'suite' | 'mirror'>, dir: string, step?: Step): Promise<void> {
  for (const d of ['lists/partial', 'cache/archives/partial', 'sources.list.d', 'preferences.d']) {
    await mkdir(path.join(dir, d), { recursive: true });
  }
  if (!existsSync(KEYRING)) {
    throw new InfraError(`${KEYRING} is missing`, 'install it: apt-get install debian-archive-keyring');
  }
  await writeFile(path.join(dir, 'sources.list'), `deb [signed-by=${KEYRING}] ${spec.mirror} ${spec.suite} main\n`);
  await writeFile(path.join(dir, 'status'), '');
  // The indexes' sizes are not known before they arrive: bytes and rate from apt's own Get: lines.
  const child = execa('apt-get', [...aptOptions(dir), '-q', 'update'], { reject: false, timeout: 300_000 });
  const start = Date.now();
  let bytes = 0;
  let files = 0;
  child.stdout?.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) {
      const n = aptGetLineBytes(line);
      if (n === undefined) continue;
      bytes += n;
      files++;
      step?.update(downloadLine(`apt indexes (${files} files)`, bytes, undefined, start));
    }
  });
  const r = await child;
  if (r.exitCode !== 0 || /^(E|W): Failed/m.test(r.stderr)) {
    throw new InfraError(`apt-get update for ${spec.suite} at ${spec.mirror} failed:\n${r.stderr.trim()}`);
  }
}

export interface ResolvedDebianKernel {
  /** Binary package that was resolved, e.g. linux-image-7.2.13+deb14-amd64. */
  package: string;
  /** Debian version, e.g. 7.2.13-1. */
  version: string;
  /** Kernel release (uname -r), e.g. 7.2.13+deb14-amd64. */
  release: string;
  resolvedAt: string;
}

/** Compare dotted numeric versions like 7.2.13 vs 7.2.9 (enough for upstream kernel versions). */
function compareRelease(a: string, b: string): number {
  const na = a.match(/\d+/g)!.map(Number);
  const nb = b.match(/\d+/g)!.map(Number);
  for (let i = 0; i < Math.max(na.length, nb.length); i++) {
    const d = (na[i] ?? 0) - (nb[i] ?? 0);
    if (d) return d;
  }
  return 0;
}

/**
 * `linux-image-7.2` + flavour `amd64` -> the newest `linux-image-7.2.N+debM-amd64`
 * in the suite. Exact names (a full release) are accepted as they are.
 */
export async function resolveDebianKernel(spec: DebianKernelSpec, opts: { refresh?: boolean; step?: Step } = {}): Promise<ResolvedDebianKernel> {
  const dir = aptDir(spec);
  const memo = path.join(dir, `resolved-${spec.package}-${spec.flavour}.json`);
  if (!opts.refresh && existsSync(memo)) {
    const m = JSON.parse(await readFile(memo, 'utf8')) as ResolvedDebianKernel;
    if (Date.now() - Date.parse(m.resolvedAt) < RESOLVE_TTL_MS) return m;
  }
  await aptUpdate(spec, dir, opts.step);
  const prefix = spec.package.replace(/^linux-image-/, '');
  if (!/^\d+\.\d+(\.\d+)?/.test(prefix)) {
    throw new InputError(`kernel.debian: "${spec.package}" is not of the form linux-image-<major>.<minor>[.<patch>]`);
  }
  const esc = prefix.replace(/[.+]/g, (c) => `\\${c}`);
  const flav = spec.flavour.replace(/[.+]/g, (c) => `\\${c}`);
  // The ABI part (7.2.13+deb14) has no '-', so cloud-amd64 / rt-amd64 never match flavour amd64.
  const re = new RegExp(`^linux-image-(${esc}(?:\\.\\d+)?(?:\\+[^-\\s]+)?)-${flav}$`);
  const r = await execa('apt-cache', [...aptOptions(dir), 'pkgnames', 'linux-image-'], { timeout: 60_000 });
  const matches = r.stdout.split('\n').map((l) => l.trim()).filter((n) => re.test(n));
  if (matches.length === 0) {
    throw new InputError(
      `kernel.debian: no package matching ${spec.package} (flavour ${spec.flavour}) in ${spec.suite} at ${spec.mirror}`,
    );
  }
  matches.sort((a, b) => compareRelease(a.match(re)![1], b.match(re)![1]));
  const pkg = matches[matches.length - 1];
  const abi = pkg.match(re)![1];
  const show = await execa('apt-cache', [...aptOptions(dir), 'show', '--no-all-versions', pkg], { timeout: 60_000 });
  const version = show.stdout.match(/^Version: (\S+)/m)?.[1];
  if (!version) throw new InfraError(`apt-cache show ${pkg} gave no Version`);
  const res: ResolvedDebianKernel = { package: pkg, version, release: `${abi}-${spec.flavour}`, resolvedAt: new Date().toISOString() };
  await writeFile(memo, JSON.stringify(res, null, 2));
  return res;
}

/**
 * `apt-get download` of pkgs (names or name=version) into dir, with the
 * private config, showing bytes/total, rate and ETA on `step`: the total
 * from apt's --print-uris, the bytes from the files as apt writes them.
 */
export async function aptDownload(apt: string, pkgs: string[], dir: string, step: Step, timeoutMs: number): Promise<void> {
  step.update(`apt: the sizes of ${pkgs.join(' ')}`);
  const uris = await execa('apt-get', [...aptOptions(apt), '-q', '--print-uris', 'download', ...pkgs], { cwd: dir, reject: false, timeout: 60_000 });
  if (uris.exitCode !== 0) throw new InfraError(`apt-get download ${pkgs.join(' ')} failed:\n${uris.stderr.trim()}`);
  const files = parsePrintUris(uris.stdout);
  const total = files.reduce((n, f) => n + f.size, 0) || undefined;
  const label = `downloading ${files.length === 1 ? files[0].file : `${files.length} packages`}`;
  const stop = watchDownload(step, label, total, () => bytesUnder(dir));
  try {
    const dl = await execa('apt-get', [...aptOptions(apt), '-q', 'download', ...pkgs], { cwd: dir, reject: false, timeout: timeoutMs });
    if (dl.exitCode !== 0) throw new InfraError(`apt-get download ${pkgs.join(' ')} failed:\n${dl.stderr.trim()}`);
  } finally {
    stop();
  }
  if (total) step.update(`downloaded ${formatBytes(total)}`);
}

/**
 * `apt-get download` of pkgs (names or name=version) with the private config,
 * each .deb unpacked with dpkg-deb -x into <workDir>/root (returned); the
 * .debs themselves are removed.
 */
export async function aptDownloadExtract(apt: string, pkgs: string[], workDir: string, step: Step): Promise<string> {
  const debs = path.join(workDir, 'debs');
  await mkdir(debs, { recursive: true });
  await aptDownload(apt, pkgs, debs, step, 900_000);
  const root = path.join(workDir, 'root');
  await mkdir(root, { recursive: true });
  for (const deb of (await readdir(debs)).filter((f) => f.endsWith('.deb'))) {
    step.update(`extracting ${deb}`);
    await execa('dpkg-deb', ['-x', path.join(debs, deb), root], { timeout: 600_000 });
  }
  await rm(debs, { recursive: true, force: true });
  return root;
}

/** Fetches and unpacks the kernel; cached by package and exact version. */
export async function fetchDebianKernel(spec: DebianKernelSpec, step: Step, opts: { refresh?: boolean } = {}): Promise<StockKernel> {
  step.update('resolving');
  const res = await resolveDebianKernel(spec, { ...opts, step });
  const key = cacheKey({ v: 2, package: res.package, version: res.version, mirror: spec.mirror });
  const { dir } = await ensureEntry('kernel', key, `${res.package} ${res.version}`, async (tmp) => {
    const apt = aptDir(spec);
    const show = await execa('apt-cache', [...aptOptions(apt), 'show', '--no-all-versions', res.package]);
    const depends = show.stdout.match(/^Depends: (.*)$/m)?.[1] ?? '';
    // Newer Debian kernels split the image into linux-{base,binary,modules}-<release>; take those.
    const parts = depends
      .split(',')
      .map((d) => d.trim().split(/\s/)[0])
      .filter((n) => n.startsWith('linux-') && n.endsWith(res.release));
    const pkgs = [res.package, ...parts];
    const root = await aptDownloadExtract(apt, pkgs, tmp, step);
    // Modules under modroot/lib/modules/<release>: the layout depmod -b and the guest expect.
    const candidates = [path.join(root, 'usr/lib/modules', res.release), path.join(root, 'lib/modules', res.release)];
    const modSrc = candidates.find((c) => existsSync(c));
    if (!modSrc) throw new InfraError(`${res.package}: no modules directory for ${res.release} in the packages`);
    const modDest = path.join(tmp, 'modroot/lib/modules', res.release);
    await mkdir(path.dirname(modDest), { recursive: true });
    await rename(modSrc, modDest);
    const vmlinuz = [path.join(modDest, 'vmlinuz'), path.join(root, 'boot', `vmlinuz-${res.release}`)].find((c) => existsSync(c));
    if (!vmlinuz) throw new InfraError(`${res.package}: no vmlinuz found in the packages`);
    await rename(vmlinuz, path.join(tmp, 'vmlinuz'));
    const config = [path.join(modDest, 'config'), path.join(root, 'boot', `config-${res.release}`)].find((c) => existsSync(c));
    if (config) await rename(config, path.join(tmp, 'config'));
    step.update('depmod');
    await execa('depmod', ['-b', path.join(tmp, 'modroot'), res.release], { timeout: 300_000 });
    await execa('rm', ['-rf', root]);
    step.update('modules disk');
    await makeExt4(path.join(tmp, 'modroot/lib/modules'), path.join(tmp, 'modules.ext4'), 'hwlab-mods');
    await writeFile(path.join(tmp, 'kernel.json'), JSON.stringify(res, null, 2));
  });
  return { kind: 'stock', ...filesInEntry(dir, key, { package: res.package, version: res.version, release: res.release }) };
}

