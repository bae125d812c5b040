// Builds the kernel's own selftests for one built kernel: from the lab's own
// kernel tree with its patch series applied (the tree the kernel was built
// from) plus the lab's `selftests.patches` (fixes to the selftests alone,
// which must not change the kernel's build key), on a hard-linked scratch
// copy, against that tree's exported UAPI headers (`make headers_install`),
// with kselftest's own `make -C tools/testing/selftests TARGETS=... install`.
// The install tree (run_kselftest.sh, kselftest/runner.sh,
// kselftest-list.txt, one directory per collection) plus hwlab's wrapper
// (src/guest/kselftest/run-one.sh) is packed as one tarball for upload.
// Cached by the kernel's content key, the collections and the wrapper, like
// hwlab's own modules: a warm run does not run make.
//
// The binaries are built with the host's toolchain and run in the guest, so
// host and guest must share the C library: both are Debian bookworm here
// (glibc 2.36); iommufd links libcap (libcap-dev on the host, libcap2 in the
// image, which iproute2 pulls in).
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { copyFile, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { extractBuildErrors } from '../kernel/build.ts';
import { applySeries, scratchCopy, type PatchFile } from '../kernel/patches.ts';
import type { KernelTree } from '../kernel/source.ts';
import type { SourceKernel } from '../kernel/types.ts';
import { cacheKey, ensureEntry, sha256 } from '../util/cache.ts';
import { InfraError, InputError, isDiskFull } from '../util/errors.ts';
import type { Step } from '../util/progress.ts';
import { parseKselftestList, SELFTESTS_DIR } from './plan.ts';

/** hwlab's per-test wrapper, shipped beside run_kselftest.sh. */
export const RUN_ONE_SCRIPT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../guest/kselftest/run-one.sh');

export interface BuiltSelftests {
  /** The install tree on the host. */
  installDir: string;
  /** The install tree packed (tar.gz), what goes up to the guest. */
  tarball: string;
  /** kselftest-list.txt: `collection:test` per line. */
  list: string;
  collections: string[];
  cacheKey: string;
  /** Whether make ran for this request (false: the cached entry was reused). */
  built: boolean;
  buildSeconds?: number;
}

export interface SelftestBuildRequest {
  kernel: SourceKernel;
  tree: KernelTree;
  /** The kernel's series (the kernel was built with these). */
  patches: PatchFile[];
  /** The lab's selftests.patches, applied after the kernel's series to this build only. */
  selftestPatches: PatchFile[];
  collections: string[];
  logFile: string;
  step: Step;
  jobs?: number;
}

/** Host libraries a collection links against that a bare build host may lack: checked before make, named in the error. */
const HOST_NEEDS: Record<string, Array<{ file: string; pkg: string }>> = {
  // kselftest's install (lib.mk) and the kernel's headers_install copy with rsync.
  '*': [{ file: '/usr/bin/rsync', pkg: 'rsync' }],
  iommu: [{ file: '/usr/include/sys/capability.h', pkg: 'libcap-dev' }],
  vfio: [{ file: '/usr/include/uuid/uuid.h', pkg: 'uuid-dev' }],
};

async function make(args: string[], log: (s: string) => void, step: Step, what: string, logFile: string): Promise<void> {
  const child = execa('make', args, { reject: false, all: true, env: { LC_ALL: 'C' }, timeout: 3600_000 });
  child.all?.on('data', (d: Buffer) => {
    const s = d.toString();
    log(s);
    const m = s.match(/^\s*(CC|LD|INSTALL|HOSTCC|gcc|cc)\s+(\S+)/gm);
    if (m) step.update(m[m.length - 1].trim().slice(0, 100));
  });
  const r = await child;
  if (r.exitCode !== 0) {
    const out = String(r.all);
    if (isDiskFull(out)) throw new InfraError(`${what} failed: the disk is full; full log: ${logFile}`, 'free space, e.g. hwlab cache prune --max-size 20G', 'disk-full');
    const errors = extractBuildErrors(out);
    // The selftests of the lab's tree do not build: like a patch that does not build, the input is at fault.
    throw new InputError(`${what} failed (exit ${r.exitCode}); full log: ${logFile}\n${(errors.length ? errors : out.split('\n').slice(-25)).join('\n')}`, undefined, 'selftest-build-failed');
  }
}

export function selftestsKey(kernel: Pick<SourceKernel, 'cacheKey'>, collections: readonly string[], selftestPatches: readonly Pick<PatchFile, 'sha256'>[], runner: string): string {
  return cacheKey({ v: 1, kernel: kernel.cacheKey, collections: [...collections].sort(), patches: selftestPatches.map((p) => p.sha256), runner: sha256(runner) });
}

export async function buildSelftests(req: SelftestBuildRequest): Promise<BuiltSelftests> {
  const missing = ['*', ...req.collections].flatMap((c) => (HOST_NEEDS[c] ?? []).filter((n) => !existsSync(n.file)).map((n) => `${n.pkg} (${n.file}${c === '*' ? '' : `, for the ${c} selftests`})`));
  if (missing.length) throw new InfraError(`host packages missing: ${missing.join(', ')}`, `apt-get install ${missing.map((m) => m.split(' ')[0]).join(' ')}`, 'host-tool-missing');
  const runner = await readFile(RUN_ONE_SCRIPT, 'utf8');
  const key = selftestsKey(req.kernel, req.collections, req.selftestPatches, runner);
  const log: string[] = [];
  let built = false;
  let buildSeconds: number | undefined;
  const { dir } = await ensureEntry('kselftest', key, `selftests ${req.collections.join(' ')} for ${req.kernel.release}`, async (tmp) => {
    const t0 = Date.now();
    const src = path.join(tmp, 'src');
    const obj = path.join(tmp, 'obj');
    const install = path.join(tmp, 'install');
    const jobs = `-j${req.jobs ?? os.cpus().length}`;
    try {
      // A scratch copy of its own: no lock on the kernel's work tree, and the selftest patches stay out of it.
      req.step.update('copying the source tree');
      await scratchCopy(req.tree.dir, src);
      await applySeries(src, [...req.patches, ...req.selftestPatches], { step: req.step });
      // UAPI headers need no config: exported from the patched tree into the O= directory
      // the selftests Makefile reads them from (obj/usr/include).
      req.step.update('make headers_install');
      await make(['-C', src, `O=${obj}`, 'ARCH=x86_64', jobs, 'headers_install', `INSTALL_HDR_PATH=${path.join(obj, 'usr')}`], (s) => log.push(s), req.step, 'make headers_install', req.logFile);
      req.step.update(`make -C ${SELFTESTS_DIR} TARGETS="${req.collections.join(' ')}" install`);
      await make(['-C', path.join(src, SELFTESTS_DIR), `O=${obj}`, 'ARCH=x86_64', jobs, `TARGETS=${req.collections.join(' ')}`,
        `INSTALL_PATH=${install}`, 'install'], (s) => log.push(s), req.step, `make -C ${SELFTESTS_DIR} install`, req.logFile);
    } finally {
      await writeFile(req.logFile, log.join(''));
    }
    const listFile = path.join(install, 'kselftest-list.txt');
    if (!existsSync(path.join(install, 'run_kselftest.sh')) || !existsSync(listFile)) {
      throw new InfraError(`make install of the selftests left no run_kselftest.sh or kselftest-list.txt in ${install}; full log: ${req.logFile}`);
    }
    // kselftest's install goes on past a collection that fails to build (make exits 0): a collection
    // with nothing in the list did not build, and its compiler errors say why.
    const listed = parseKselftestList(await readFile(listFile, 'utf8'));
    const unbuilt = req.collections.filter((c) => !listed.get(c)?.length);
    if (unbuilt.length) {
      const errors = extractBuildErrors(log.join(''));
      throw new InputError(`the ${unbuilt.join(', ')} selftests did not build (nothing of theirs in kselftest-list.txt); full log: ${req.logFile}\n${errors.join('\n') || '(no compiler error found in the log)'}`,
        'a selftest that does not build in this tree can be fixed for the run with selftests.patches in the lab', 'selftest-build-failed');
    }
    await rm(src, { recursive: true, force: true });
    await copyFile(RUN_ONE_SCRIPT, path.join(install, 'hwlab-run-one.sh'));
    await execa('chmod', ['0755', path.join(install, 'hwlab-run-one.sh')]);
    await execa('tar', ['-C', install, '--owner=0', '--group=0', '-czf', path.join(tmp, 'kselftest.tar.gz'), '.']);
    await rm(obj, { recursive: true, force: true });
    buildSeconds = (Date.now() - t0) / 1000;
    await writeFile(path.join(tmp, 'build.json'), JSON.stringify({ collections: req.collections, kernel: req.kernel.cacheKey, buildSeconds, finishedAt: new Date().toISOString() }, null, 2));
    built = true;
  });
  if (!built) await writeFile(req.logFile, `cache hit: ${dir}\n`);
  const installDir = path.join(dir, 'install');
  return {
    installDir,
    tarball: path.join(dir, 'kselftest.tar.gz'),
    list: await readFile(path.join(installDir, 'kselftest-list.txt'), 'utf8'),
    collections: req.collections,
    cacheKey: key,
    built,
    ...(buildSeconds !== undefined ? { buildSeconds } : {}),
  };
}
