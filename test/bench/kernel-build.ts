// Kernel build benchmark (issue B). Prints figures; asserts nothing.
//   node --import tsx test/bench/kernel-build.ts            no-change rebuild, one-file change to results,
//                                                            the same change through the prebuilt+driver fast path
//   node --import tsx test/bench/kernel-build.ts --cold [lean|defconfig|both]
//        also cold builds: lean base vs x86_64_defconfig (same source, same flags, ccache off; ~45 min for both),
//        each with the feature fragment (what a lab builds), or with --bases-only without it
//   node --import tsx test/bench/kernel-build.ts --skip-warm --ccache-sample 40
//        a cold ccache's cost per miss: the same 40 objects of the default lab's build compiled one
//        at a time without ccache, with ccache's default direct mode and with hwlab's depend mode
//        (each time into an empty cache), two rounds interleaved (~5 min)
import { execa } from 'execa';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { runLab } from '../../src/run/run-lab.ts';
import { resolveKernelTree } from '../../src/kernel/source.ts';
import { headersForPrebuilt } from '../../src/kernel/driver-build.ts';
import { onCleanup, runCleanups } from '../../src/util/cleanup.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values } = parseArgs({
  options: {
    cold: { type: 'string' },
    'skip-warm': { type: 'boolean', default: false },
    'bases-only': { type: 'boolean', default: false },
    'ccache-sample': { type: 'string' },
  },
});
if (values.cold !== undefined && !['lean', 'defconfig', 'both'].includes(values.cold)) throw new Error('--cold takes lean, defconfig or both');
const lab = await loadLab(path.join(repoRoot, 'labs/default.yaml'));
if (lab.kernel.kind !== 'source') throw new Error('labs/default.yaml must build from source');
const progress = silentProgress();
const fmt = (s: number) => `${s.toFixed(2)} s`;
const scratch = await mkdtemp(path.join(os.tmpdir(), 'hwlab-kbench-'));
// Removed on Ctrl-C / SIGTERM too: the cold builds leave gigabytes here.
const forgetScratch = onCleanup(() => rm(scratch, { recursive: true, force: true }));

const tree = await resolveKernelTree(lab.kernel.source, progress.step('tree'));
let t = Date.now();
if (!values['skip-warm']) {
  // Warm-up: whatever the default lab needs, built now if the cache is cold.
  await prepareLab(lab, { progress }, scratch);
  console.log(`warm-up (build if cold)                      ${fmt((Date.now() - t) / 1000)}`);

  // 1. No-change rebuild: both cache levels hit, make never runs.
  t = Date.now();
  const again = await prepareLab(lab, { progress }, scratch);
  const noChange = (Date.now() - t) / 1000;
  console.log(`no-change rebuild (kernel+image+initramfs)   ${fmt(noChange)}   make ran: ${again.kernel.kind !== 'stock' && again.kernel.built}   (target < 2 s, no make)`);

  // 2. One-file change in drivers/vfio/pci, all the way to results, in the local
  //    loop's lab (labs/smoke.yaml: same kernel config as the default lab). The
  //    change is new code (not a comment), so neither the build cache nor ccache
  //    can skip it. Then another such change through the whole suite (labs/default.yaml).
  const smoke = await loadLab(path.join(repoRoot, 'labs/smoke.yaml'));
  for (const [which, target, note] of [[smoke, 'smoke', '(target <= 90 s)'], [lab, 'default', '(the whole suite, for comparison)']] as const) {
    const patchFile = await oneFileChange(tree.dir, `source-${target}`);
    t = Date.now();
    const out = await runLab(which, { progress, runsDir: scratch, extraPatches: [patchFile] });
    const oneFile = (Date.now() - t) / 1000;
    const k = out.results.kernel;
    const tm = out.results.timings;
    console.log(`one-file change -> results, labs/${target}.yaml ${fmt(oneFile)}   build ${fmt(k?.buildSeconds ?? 0)}, boot to SSH ${fmt(tm.boot_to_ssh ?? 0)}, probes ${fmt(tm.probes ?? 0)}, outcome ${out.results.outcome.class}   ${note}`);
  }

  // 3. The same kind of change through the fast path: the prebuilt Debian kernel,
  //    drivers/vfio/pci rebuilt against its headers (labs/fastpath.yaml).
  const fast = await loadLab(path.join(repoRoot, 'labs/fastpath.yaml'));
  if (fast.kernel.kind !== 'debian-prebuilt') throw new Error('labs/fastpath.yaml must use a prebuilt kernel');
  t = Date.now();
  const fastPrep = await prepareLab(fast, { progress }, scratch);
  console.log(`fast path warm-up (kernel, headers, tools)   ${fmt((Date.now() - t) / 1000)}`);
  // The patch is made against the source tree matching the prebuilt kernel, which may differ from the default lab's.
  const { tree: fastTree } = await headersForPrebuilt(fastPrep.kernel, fast.kernel, progress.step('headers'));
  const fastPatch = await oneFileChange(fastTree.dir, 'fast');
  t = Date.now();
  const fastOut = await runLab(fast, { progress, runsDir: scratch, extraPatches: [fastPatch] });
  const fastSecs = (Date.now() - t) / 1000;
  const fk = fastOut.results.kernel;
  console.log(`fast path: one-file change -> results        ${fmt(fastSecs)}   driver build ${fmt(fk?.buildSeconds ?? 0)}, boot to SSH ${fmt(fastOut.results.timings.boot_to_ssh ?? 0)}, probes ${fmt(fastOut.results.timings.probes ?? 0)}, outcome ${fastOut.results.outcome.class}`);
}

/** A patch adding new code (a unique string) to vfio_pci_core.c, so no cache can skip the rebuild. */
async function oneFileChange(treeDir: string, tag: string): Promise<string> {
  const rel = 'drivers/vfio/pci/vfio_pci_core.c';
  const orig = await readFile(path.join(treeDir, rel), 'utf8');
  const token = `hwlab_bench_${tag.replace(/\W/g, '_')}_${Date.now().toString(36)}`;
  const changed = `${orig}\nstatic const char ${token}[] __used = "${token}";\n`;
  const dir = path.join(scratch, `patch-${tag}`);
  const a = path.join(dir, 'a', rel);
  const b = path.join(dir, 'b', rel);
  await execa('mkdir', ['-p', path.dirname(a), path.dirname(b)]);
  await writeFile(a, orig);
  await writeFile(b, changed);
  const diff = await execa('diff', ['-u', `a/${rel}`, `b/${rel}`], { cwd: dir, reject: false });
  const patchFile = path.join(scratch, `one-file-change-${tag}.patch`);
  await writeFile(patchFile, diff.stdout + '\n');
  return patchFile;
}

/** Sum of the children's user and system time in bash `times` output (its second line: "0m1.5s 0m0.3s"). */
export function cpuSeconds(timesOutput: string): number {
  const lines = timesOutput.trim().split('\n').filter((l) => /^\d+m[\d.]+s \d+m[\d.]+s$/.test(l.trim()));
  const last = lines[lines.length - 1];
  if (!last) throw new Error(`no \`times\` output in: ${timesOutput.slice(-200)}`);
  return last.trim().split(' ').reduce((sum, t) => {
    const m = t.match(/^(\d+)m([\d.]+)s$/)!;
    return sum + Number(m[1]) * 60 + Number(m[2]);
  }, 0);
}

// 4. Cold builds of the same source with the lean base and with x86_64_defconfig.
if (values.cold) {
  const { assembleConfig } = await import('../../src/kernel/config.ts');
  const fragments = await Promise.all(lab.kernel.config.fragments.map(async (file) => ({ file, text: await readFile(file, 'utf8') })));
  const cold = async (base: string, frags: typeof fragments) => {
    const obj = path.join(scratch, `obj-${base}`);
    await assembleConfig({ srcDir: tree.dir, objDir: obj, base, fragments: frags });
    const start = Date.now();
    // bash's `times` reports the CPU seconds of make and all its children: unlike
    // wall time, that figure does not move when something else shares the cores.
    const r = await execa('bash', ['-c', 'make "$@"; rc=$?; times; exit $rc', 'make',
      '-C', tree.dir, `O=${obj}`, 'ARCH=x86_64', `-j${os.cpus().length}`, 'bzImage', 'modules'],
    { reject: false, env: { CCACHE_DISABLE: '1' }, timeout: 3 * 3600_000 });
    if (r.exitCode !== 0) throw new Error(`${base} build failed:\n${r.stderr.split('\n').slice(-20).join('\n')}`);
    const secs = (Date.now() - start) / 1000;
    const cpu = cpuSeconds(r.stdout);
    console.log(`  ${base}: wall ${fmt(secs)}, CPU (user+sys of make and children) ${fmt(cpu)}`);
    // Object count and load average make the figure comparable across machines and runs.
    const objects = (await execa('find', [obj, '-name', '*.o', '!', '-name', '*.mod.o'])).stdout.split('\n').filter(Boolean).length;
    console.log(`  ${base}: ${objects} objects, load average at end ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    await rm(obj, { recursive: true, force: true });
    return { secs, cpu };
  };
  // The bases compared with the feature fragment only: debug options cost the same on either base.
  const base = (name: string) => fragments.filter((f) => path.basename(f.file) === name);
  // --bases-only: the two bases as they are, without the feature fragment (a
  // kernel that cannot run the labs, but the literal base-vs-base comparison).
  const feature = values['bases-only'] ? [] : base('vfio-dmabuf.config');
  const what = values['bases-only'] ? 'alone' : '+ feature';
  const lean = values.cold === 'defconfig' ? undefined : await cold('tinyconfig', [...base('guest-base.config'), ...feature]);
  if (lean !== undefined) console.log(`cold build, lean base (tinyconfig + guest-base) ${what} ${fmt(lean.secs)} wall, ${fmt(lean.cpu)} CPU`);
  const big = values.cold === 'lean' ? undefined : await cold('x86_64_defconfig', feature);
  if (big !== undefined) console.log(`cold build, x86_64_defconfig ${what}       ${fmt(big.secs)} wall, ${fmt(big.cpu)} CPU`);
  if (lean !== undefined && big !== undefined) {
    console.log(`ratio defconfig / lean                       ${(big.secs / lean.secs).toFixed(2)} wall, ${(big.cpu / lean.cpu).toFixed(2)} CPU   (target >= 3)`);
  }
}
// 5. What a cold ccache costs per miss, by mode: the first build is all misses.
if (values['ccache-sample'] !== undefined) {
  const count = Number(values['ccache-sample']);
  if (!Number.isInteger(count) || count < 1) throw new Error('--ccache-sample takes a number of objects, e.g. 40');
  const { CCACHE_ENV } = await import('../../src/kernel/build.ts');
  const built = await prepareLab(lab, { progress }, scratch);
  if (built.kernel.kind !== 'source') throw new Error('labs/default.yaml must build from source');
  // A copy of the cached build's objects: the cache entry itself is never touched.
  const obj = path.join(scratch, 'obj-ccache');
  await execa('cp', ['-a', built.kernel.objDir, obj]);
  // The tree the entry was built from (its objects' recorded commands name it), not a fresh one.
  const src = (JSON.parse(await readFile(path.join(path.dirname(built.kernel.objDir), 'build.json'), 'utf8')) as { srcDir: string }).srcDir;
  // Every k-th object compiled from a .c file of the tree (host tools and generated files left out): the same list each run.
  const all = (await execa('find', ['kernel', 'mm', 'fs', 'lib', 'net', 'drivers', 'arch/x86/kernel', 'arch/x86/mm', '-name', '*.o', '!', '-name', '*.mod.o', '!', '-name', 'built-in*'], { cwd: obj })).stdout
    .split('\n').filter(Boolean).sort();
  const withSource: string[] = [];
  for (const o of all) if ((await execa('test', ['-f', path.join(src, o.replace(/\.o$/, '.c'))], { reject: false })).exitCode === 0) withSource.push(o);
  const step = Math.max(1, Math.floor(withSource.length / count));
  const sample = withSource.filter((_, i) => i % step === 0).slice(0, count);
  const compile = async (env: Record<string, string>) => {
    await execa('rm', ['-f', ...sample.map((o) => path.join(obj, o))]);
    const start = Date.now();
    // The same CC in every mode (ccache turned off by CCACHE_DISABLE), so kbuild's recorded commands match and only the sample is rebuilt.
    const r = await execa('bash', ['-c', 'make "$@"; rc=$?; times; exit $rc', 'make', '-s', '-C', src, `O=${obj}`, 'ARCH=x86_64', '-j1', 'CC=ccache gcc', ...sample],
      { reject: false, env: { CCACHE_BASEDIR: path.dirname(obj), CCACHE_NOHASHDIR: '1', ...env }, timeout: 3600_000 });
    if (r.exitCode !== 0) throw new Error(`compiling the sample failed:\n${r.stderr.split('\n').slice(-20).join('\n')}`);
    return { secs: (Date.now() - start) / 1000, cpu: cpuSeconds(r.stdout) };
  };
  const modes: Array<[string, () => Promise<Record<string, string>>]> = [
    ['no ccache', async () => ({ CCACHE_DISABLE: '1' })],
    ['direct mode, empty cache', async () => ({ CCACHE_DIR: await mkdtemp(path.join(scratch, 'ccache-')) })],
    ['depend mode (hwlab), empty cache', async () => ({ ...CCACHE_ENV, CCACHE_DIR: await mkdtemp(path.join(scratch, 'ccache-')) })],
  ];
  // Discarded: the copy's first make also redoes what kbuild's prepare finds out of date.
  await compile({ CCACHE_DISABLE: '1' });
  console.log(`cold ccache per miss: ${sample.length} objects of the default lab's build, compiled one at a time (-j1)`);
  const totals = new Map<string, number[]>();
  for (let round = 1; round <= 2; round++) {
    for (const [name, env] of modes) {
      const m = await compile(await env());
      totals.set(name, [...(totals.get(name) ?? []), m.cpu]);
      console.log(`  round ${round}, ${name.padEnd(33)} wall ${fmt(m.secs)}, CPU ${fmt(m.cpu)}`);
    }
  }
  const mean = (name: string) => (totals.get(name) ?? []).reduce((a, b) => a + b, 0) / 2;
  for (const [name] of modes.slice(1)) console.log(`  ${name}: CPU ${(mean(name) / mean('no ccache')).toFixed(2)}x no ccache`);
  // And the point of a cache: the same objects again from a depend-mode cache are hits.
  const warmDir = await mkdtemp(path.join(scratch, 'ccache-'));
  await compile({ ...CCACHE_ENV, CCACHE_DIR: warmDir });
  await execa('ccache', ['--zero-stats'], { env: { CCACHE_DIR: warmDir } });
  const warm = await compile({ ...CCACHE_ENV, CCACHE_DIR: warmDir });
  const stats = (await execa('ccache', ['--print-stats'], { env: { CCACHE_DIR: warmDir } })).stdout;
  const stat = (key: string) => Number(stats.match(new RegExp(`^${key}\\t(\\d+)$`, 'm'))?.[1] ?? NaN);
  console.log(`  depend mode, the same objects again: wall ${fmt(warm.secs)}, CPU ${fmt(warm.cpu)}; compiler calls: ${stat('direct_cache_hit')} hits, ${stat('cache_miss')} misses (make compiles more than the ${sample.length} objects: their prerequisites)`);
}
forgetScratch();
await rm(scratch, { recursive: true, force: true });
await runCleanups();
