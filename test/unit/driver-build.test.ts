import test from 'ava';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildIdFromNotes, parseBuildIdDumps, parseOdHex } from '../../src/session/modules-buildid.ts';
import {
  applyConfigChanges,
  assertPatchesConfined,
  buildOverlayKernel,
  elfBuildId,
  headerDepends,
  normalizeDriverDirs,
  toolchainChanges,
  upstreamVersion,
} from '../../src/kernel/driver-build.ts';
import { fetchDebianKernel } from '../../src/kernel/debian.ts';
import { loadPatchSeries, type PatchFile } from '../../src/kernel/patches.ts';
import { cacheRoot, sha256 } from '../../src/util/cache.ts';
import { InputError } from '../../src/util/errors.ts';
import type { Step } from '../../src/util/progress.ts';
import { configSettings } from '../../src/kernel/dotconfig.ts';

const PATCHES = fileURLToPath(new URL('../fixtures/patches/', import.meta.url));

function patch(name: string, text: string): PatchFile {
  return { name, origin: `/x/${name}`, sha256: sha256(text), text, strip: 1 };
}

function diff(file: string): string {
  return `diff --git a/${file} b/${file}\n--- a/${file}\n+++ b/${file}\n@@ -1,1 +1,1 @@\n-a\n+b\n`;
}

function recorder(): Step & { updates: string[] } {
  const updates: string[] = [];
  return { updates, update: (d) => void updates.push(d), done: () => 0, fail: () => 0 };
}

// ---------------------------------------------------------------------------
// Refusal of patches outside the driver dirs

test('a patch confined to the driver dirs is accepted', async (t) => {
  const [p] = await loadPatchSeries([{ kind: 'file', path: join(PATCHES, 'vfio-zero-length-enoent.patch') }]);
  t.notThrows(() => assertPatchesConfined([p], ['drivers/vfio/pci']));
  // New files under a dir are fine too.
  const created = patch('new.patch', 'diff --git a/drivers/vfio/pci/new.c b/drivers/vfio/pci/new.c\nnew file mode 100644\n--- /dev/null\n+++ b/drivers/vfio/pci/new.c\n@@ -0,0 +1 @@\n+x\n');
  t.notThrows(() => assertPatchesConfined([created], ['drivers/vfio/pci']));
});

test('a patch touching core code or a shared header is refused, naming the files and the patches', (t) => {
  const p1 = patch('0001-vfio.patch', diff('drivers/vfio/pci/vfio_pci_core.c') + diff('include/linux/vfio_pci_core.h'));
  const p2 = patch('0002-mm.patch', diff('mm/memory.c'));
  const err = t.throws(() => assertPatchesConfined([p1, p2], ['drivers/vfio/pci']), { instanceOf: InputError })!;
  t.regex(err.message, /fast path rebuilds only drivers\/vfio\/pci/);
  t.regex(err.message, /include\/linux\/vfio_pci_core\.h  \(0001-vfio\.patch\)/);
  t.regex(err.message, /mm\/memory\.c  \(0002-mm\.patch\)/);
  t.notRegex(err.message, /vfio_pci_core\.c/);
  t.regex((err as InputError).hint ?? '', /from source .*linux-source/);
});

test('a dir prefix is not a dir: drivers/vfio/pcix is outside drivers/vfio/pci', (t) => {
  const p = patch('p.patch', diff('drivers/vfio/pcix/a.c'));
  const err = t.throws(() => assertPatchesConfined([p], ['drivers/vfio/pci']))!;
  t.regex(err.message, /drivers\/vfio\/pcix\/a\.c/);
  // A file in another driver dir suggests adding the dir.
  t.regex((err as InputError).hint ?? '', /kernel\.driver\.dirs/);
  t.notThrows(() => assertPatchesConfined([p], ['drivers/vfio/pci', 'drivers/vfio/pcix']));
});

test('driver dirs are normalised; absolute, escaping and nested dirs are refused', (t) => {
  t.deepEqual(normalizeDriverDirs(['drivers/vfio/pci/', './drivers/vfio/pci']), ['drivers/vfio/pci']);
  t.throws(() => normalizeDriverDirs(['/usr/src/x']), { message: /not a directory inside the kernel tree/ });
  t.throws(() => normalizeDriverDirs(['drivers/../../etc']), { message: /not a directory inside the kernel tree/ });
  t.throws(() => normalizeDriverDirs(['drivers/vfio', 'drivers/vfio/pci']), { message: /drivers\/vfio\/pci is inside drivers\/vfio/ });
  t.throws(() => normalizeDriverDirs([]), { message: /empty/ });
});

test('buildOverlayKernel refuses an out-of-dir patch before fetching anything', async (t) => {
  const step = recorder();
  const kernel = {
    kind: 'stock' as const, package: 'linux-image-7.2.13+deb14-amd64', version: '7.2.13-1', release: '7.2.13+deb14-amd64',
    vmlinuz: '/nonexistent', modulesRoot: '/nonexistent', modulesDisk: '/nonexistent', cacheDir: '/nonexistent', cacheKey: 'x',
  };
  await t.throwsAsync(
    buildOverlayKernel({
      kernel, debian: { suite: 'sid', mirror: 'http://127.0.0.1:9/debian' }, dirs: ['drivers/vfio/pci'],
      patches: [patch('core.patch', diff('kernel/module/main.c'))], logFile: '/nonexistent/log', step,
    }),
    { message: /kernel\/module\/main\.c/ },
  );
  t.deepEqual(step.updates, []);
});

// ---------------------------------------------------------------------------
// Small pure helpers

test('upstream version of Debian kernel versions', (t) => {
  t.is(upstreamVersion('7.2.13-1'), '7.2.13');
  t.is(upstreamVersion('1:6.1.4-2~bpo12+1'), '6.1.4');
  t.is(upstreamVersion('7.2.13-1+b2'), '7.2.13');
});

test('header package Depends: only linux-headers-* and linux-kbuild-*, with exact versions', (t) => {
  const deps = headerDepends(
    'gcc-16-for-host, linux-base (>= 4.12~), linux-base-7.2.13+deb14-amd64 (= 7.2.13-1), linux-headers-7.2.13+deb14-common (= 7.2.13-1), linux-kbuild-7.2.13+deb14',
  );
  t.deepEqual(deps, [
    { name: 'linux-headers-7.2.13+deb14-common', version: '7.2.13-1' },
    { name: 'linux-kbuild-7.2.13+deb14', version: undefined },
  ]);
});

test('toolchain symbols are adapted in auto.conf and autoconf.h; kernel options are not', (t) => {
  const kernel = configSettings(
    'CONFIG_CC_VERSION_TEXT="x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0"\nCONFIG_GCC_VERSION=160200\nCONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y\n' +
      'CONFIG_FUNCTION_ALIGNMENT=16\nCONFIG_EXT_GROUP_SCHED=y\nCONFIG_VFIO_PCI_CORE=m\n# CONFIG_X is not set\n',
  );
  const host = configSettings(
    'CONFIG_CC_VERSION_TEXT="gcc (Debian 12.2.0-14+deb12u1) 12.2.0"\nCONFIG_GCC_VERSION=120200\nCONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN=y\n' +
      'CONFIG_FUNCTION_ALIGNMENT=16\nCONFIG_VFIO_PCI_CORE=m\n',
  );
  const changes = toolchainChanges(kernel, host);
  t.deepEqual(changes.map((c) => c.symbol), ['CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT', 'CONFIG_CC_VERSION_TEXT', 'CONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN', 'CONFIG_GCC_VERSION']);
  // auto.conf holds strings unquoted; autoconf.h as C strings.
  const autoConf = 'CONFIG_CC_VERSION_TEXT=x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0\nCONFIG_GCC_VERSION=160200\nCONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT=y\nCONFIG_EXT_GROUP_SCHED=y\nCONFIG_VFIO_PCI_CORE=m\n';
  const autoconfH =
    '#define CONFIG_CC_VERSION_TEXT "x86_64-linux-gnu-gcc-16 (Debian 16.2.0-4) 16.2.0"\n#define CONFIG_GCC_VERSION 160200\n' +
    '#define CONFIG_CC_HAS_MIN_FUNCTION_ALIGNMENT 1\n#define CONFIG_EXT_GROUP_SCHED 1\n#define CONFIG_VFIO_PCI_CORE_MODULE 1\n';
  const res = applyConfigChanges(autoConf, autoconfH, changes);
  t.notRegex(res.autoConf, /MIN_FUNCTION_ALIGNMENT/);
  t.notRegex(res.autoconfH, /MIN_FUNCTION_ALIGNMENT/);
  t.regex(res.autoConf, /^CONFIG_GCC_VERSION=120200$/m);
  t.regex(res.autoConf, /^CONFIG_CC_VERSION_TEXT=gcc \(Debian 12\.2\.0-14\+deb12u1\) 12\.2\.0$/m);
  t.is(res.autoConf.match(/CONFIG_CC_VERSION_TEXT/g)!.length, 1);
  t.regex(res.autoconfH, /^#define CONFIG_GCC_VERSION 120200$/m);
  t.regex(res.autoconfH, /^#define CONFIG_GCC_ASM_GOTO_OUTPUT_BROKEN 1$/m);
  t.regex(res.autoconfH, /^#define CONFIG_CC_VERSION_TEXT "gcc \(Debian 12\.2\.0-14\+deb12u1\) 12\.2\.0"$/m);
  // Kernel options stay as Debian built them, even where a host config differs (EXT_GROUP_SCHED).
  t.regex(res.autoConf, /^CONFIG_EXT_GROUP_SCHED=y$/m);
  t.regex(res.autoconfH, /^#define CONFIG_EXT_GROUP_SCHED 1$/m);
  t.regex(res.autoconfH, /^#define CONFIG_VFIO_PCI_CORE_MODULE 1$/m);
  t.is(res.autoconfH.match(/CONFIG_GCC_VERSION/g)!.length, 1);
});

// ---------------------------------------------------------------------------
// Build-id notes as the guest's od prints them

// /sys/module/vfio_pci_core/notes/.note.gnu.build-id of a real module: namesz 4,
// descsz 20, type 3 (NT_GNU_BUILD_ID), "GNU\0", then the 20-byte sha1 build-id.
const OD_DUMP = [
  ' 04 00 00 00 14 00 00 00 03 00 00 00 47 4e 55 00',
  ' 5f 0e 2a 91 c4 7d 03 b8 e1 6a 42 19 9c d0 77 3e',
  ' 0b 21 f4 8a',
  '',
].join('\n');

test('build-id is parsed from an od -An -tx1 -v dump of the note', (t) => {
  const buf = parseOdHex(OD_DUMP);
  t.is(buf.length, 36);
  t.is(buildIdFromNotes(buf), '5f0e2a91c47d03b8e16a42199cd0773e0b21f48a');
});

test('notes before the build-id are skipped, padding included; other notes give undefined', (t) => {
  // A Linux note (namesz 6 "Linux\0" padded to 8, descsz 3 padded to 4, type 0x100) then the GNU one.
  const linux = '06 00 00 00 03 00 00 00 00 01 00 00 4c 69 6e 75 78 00 00 00 01 02 03 00';
  const gnu = OD_DUMP.trim();
  t.is(buildIdFromNotes(parseOdHex(`${linux}\n${gnu}`)), '5f0e2a91c47d03b8e16a42199cd0773e0b21f48a');
  t.is(buildIdFromNotes(parseOdHex(linux)), undefined);
  // A GNU note of another type (NT_GNU_PROPERTY_TYPE_0 = 5) is not a build-id.
  t.is(buildIdFromNotes(parseOdHex('04 00 00 00 04 00 00 00 05 00 00 00 47 4e 55 00 aa bb cc dd')), undefined);
  t.throws(() => buildIdFromNotes(parseOdHex('04 00 00 00 14 00 00 00 03 00 00 00 47 4e 55 00 5f 0e')), { message: /truncated ELF note/ });
  t.throws(() => parseOdHex('04 00 zz'), { message: /hex byte/ });
});

test('the guest script output maps module names to build-ids; unloaded modules are absent', (t) => {
  const out = `== vfio_pci_core\n${OD_DUMP}== vfio_pci\n 04 00 00 00 08 00 00 00 03 00 00 00 47 4e 55 00\n 01 02 03 04 05 06 07 08\n== not_loaded\n`;
  const ids = parseBuildIdDumps(out);
  t.deepEqual([...ids.entries()], [
    ['vfio_pci_core', '5f0e2a91c47d03b8e16a42199cd0773e0b21f48a'],
    ['vfio_pci', '0102030405060708'],
  ]);
});

test('the note parser agrees with readelf on a real ELF file', async (t) => {
  // The host's own /bin/true carries a GNU build-id; compare our parse of its note section with readelf's.
  const d = await mkdtemp(join(tmpdir(), 'hwlab-note-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  const r = await execa('objcopy', ['-O', 'binary', '--only-section=.note.gnu.build-id', '/bin/true', join(d, 'note')], { reject: false });
  if (r.exitCode !== 0) return t.pass('objcopy unavailable');
  const od = await execa('od', ['-An', '-tx1', '-v', join(d, 'note')]);
  const readelf = (await execa('readelf', ['-n', '/bin/true'])).stdout.match(/Build ID:\s*([0-9a-f]+)/)![1];
  t.is(buildIdFromNotes(parseOdHex(od.stdout)), readelf);
});

// ---------------------------------------------------------------------------
// The real thing (network, ~minutes the first time)

const network = process.env.HWLAB_NETWORK_TESTS === '1' ? test.serial : test.skip;
network('network: drivers/vfio/pci rebuilt against the 7.2 headers with a patch replaces vfio-pci-core, same vermagic', async (t) => {
  const debian = { suite: 'sid', mirror: 'http://deb.debian.org/debian' };
  const step = recorder();
  const saved = process.env.HWLAB_CACHE;
  const kernel = await fetchDebianKernel({ kind: 'debian-prebuilt', package: 'linux-image-7.2', flavour: 'amd64', patches: [], ...debian }, step);
  const patches = await loadPatchSeries([{ kind: 'file', path: join(PATCHES, 'vfio-zero-length-enoent.patch') }]);
  // A private cache root for the driver entry, so the build really runs every time, while the big
  // shared inputs (kernel, linux-source, apt lists, prepared headers) come from the real cache.
  // It sits inside the real cache: cp -al needs one filesystem.
  const real = cacheRoot();
  const d = await mkdtemp(join(real, '.test-driver-'));
  for (const kind of ['kernel', 'kernel-src', 'apt', 'kheaders']) {
    await mkdir(join(real, kind), { recursive: true });
    await symlink(join(real, kind), join(d, kind));
  }
  process.env.HWLAB_CACHE = d;
  t.teardown(async () => {
    if (saved === undefined) delete process.env.HWLAB_CACHE;
    else process.env.HWLAB_CACHE = saved;
    await rm(d, { recursive: true, force: true });
  });
  const start = Date.now();
  const res = await buildOverlayKernel({ kernel, debian, dirs: ['drivers/vfio/pci'], patches, logFile: join(d, 'build.log'), step });
  const firstSeconds = (Date.now() - start) / 1000;

  t.true(res.built);
  t.is(res.release, kernel.release);
  t.not(res.cacheKey, kernel.cacheKey);
  t.not(res.modulesDisk, kernel.modulesDisk);
  t.true((await stat(res.modulesDisk)).size > 0);
  t.is(sha256(await readFile(res.vmlinuz)), sha256(await readFile(kernel.vmlinuz)), 'the kernel image is the stock one');
  const core = res.replaced.find((m) => m.module === 'vfio_pci_core');
  t.truthy(core, `vfio_pci_core not among replaced: ${res.replaced.map((m) => m.module).join(', ')}`);
  t.is(core!.path, 'kernel/drivers/vfio/pci/vfio-pci-core.ko');
  t.is(core!.stock, 'kernel/drivers/vfio/pci/vfio-pci-core.ko.xz');
  t.regex(core!.buildId, /^[0-9a-f]{40}$/);

  const modDir = join(res.modulesRoot, 'lib/modules', res.release);
  const stockDir = join(kernel.modulesRoot, 'lib/modules', kernel.release);
  t.false(existsSync(join(modDir, 'kernel/drivers/vfio/pci/vfio-pci-core.ko.xz')));
  t.true(existsSync(join(stockDir, 'kernel/drivers/vfio/pci/vfio-pci-core.ko.xz')), 'the stock tree must be untouched');
  const vermagic = async (f: string) => (await execa('modinfo', ['-F', 'vermagic', f])).stdout.trim();
  t.is(await vermagic(join(modDir, core!.path)), await vermagic(join(stockDir, core!.stock!)));
  // depmod indexes the new file.
  t.regex(await readFile(join(modDir, 'modules.dep'), 'utf8'), /^kernel\/drivers\/vfio\/pci\/vfio-pci-core\.ko:/m);
  // The patch is in the module: its build-id differs from the stock one, and it was really rebuilt.
  await execa('sh', ['-c', 'xz -dc "$1" > "$2"', 'sh', join(stockDir, core!.stock!), join(d, 'stock.ko')]);
  const stockId = await elfBuildId(join(d, 'stock.ko'));
  t.regex(stockId, /^[0-9a-f]{40}$/);
  t.not(stockId, core!.buildId);
  t.is(await elfBuildId(join(modDir, core!.path)), core!.buildId);
  t.regex(await readFile(join(d, 'build.log'), 'utf8'), /vfio_pci_dmabuf\.o/);

  // Unchanged request: cache hit, no make.
  const again = await buildOverlayKernel({ kernel, debian, dirs: ['drivers/vfio/pci'], patches, logFile: join(d, 'again.log'), step: recorder() });
  t.false(again.built);
  t.is(again.cacheKey, res.cacheKey);
  t.regex(await readFile(join(d, 'again.log'), 'utf8'), /^cache hit/);
  t.log(`first build ${firstSeconds.toFixed(1)} s (entry build ${res.buildSeconds?.toFixed(1)} s), compiler: ${res.compiler.used}${res.compiler.note ? ` (${res.compiler.note})` : ''}`);
  t.log(`replaced: ${res.replaced.map((m) => `${m.module}=${m.buildId.slice(0, 12)}`).join(' ')}`);
});
