import test from 'ava';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  evalExpr, explainMismatch, formatExpr, indexFromTexts, parseExpr, similarSymbols, N, M, Y,
} from '../../src/kernel/kconfig.ts';
import {
  assembleConfig, ConfigError, formatMismatch, requestedValues, verifyConfig,
} from '../../src/kernel/config.ts';
import { parseDotConfig } from '../../src/kernel/dotconfig.ts';

// Real Linux 7.2.13 Kconfig excerpts and .config lines (see the header of each fixture file).
const FIX = fileURLToPath(new URL('../fixtures/kconfig/', import.meta.url));
const REPO = fileURLToPath(new URL('../../', import.meta.url));

function treeTexts(): Array<{ file: string; text: string }> {
  const out: Array<{ file: string; text: string }> = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(path.join(FIX, 'tree', rel))) {
      const r = rel ? `${rel}/${name}` : name;
      if (statSync(path.join(FIX, 'tree', r)).isDirectory()) walk(r);
      else out.push({ file: r, text: readFileSync(path.join(FIX, 'tree', r), 'utf8') });
    }
  };
  walk('');
  // The root first, so every excerpt is read where the real tree sources it.
  return out.sort((a, b) => (a.file === 'Kconfig' ? -1 : b.file === 'Kconfig' ? 1 : 0));
}

const index = indexFromTexts(treeTexts());
const fixture = (name: string) => readFileSync(path.join(FIX, name), 'utf8');
const lean = parseDotConfig(fixture('lean.config'));
const noZoneDevice = parseDotConfig(fixture('no-zone-device.config'));

test('parseExpr/evalExpr: tristate logic, m needs MODULES, comparisons', (t) => {
  const cfg = new Map([['A', 'y'], ['B', 'm'], ['MODULES', 'y'], ['S', 'foo'], ['H', '0x10'], ['I', '8']]);
  const ev = (s: string, c: Map<string, string> = cfg) => evalExpr(parseExpr(s), c);
  t.is(ev('A && B'), M);
  t.is(ev('A || B'), Y);
  t.is(ev('!B'), M); // !m is m in kconfig
  t.is(ev('!A || C'), N); // unset symbol is n
  t.is(ev('(A || C) && !(B && C)'), Y);
  t.is(ev('B = m'), Y);
  t.is(ev('IOMMUFD!=n'), N);
  t.is(ev('S = "foo"'), Y);
  t.is(ev('H > 8'), Y); // numeric, not string, comparison
  t.is(ev('I >= 0x9'), N);
  t.is(ev('!A = y'), N); // `!` applies to the comparison, as in kconfig's grammar
  t.is(ev('m'), M);
  t.is(ev('m', new Map([['MODULES', 'n']])), N);
  t.is(ev('$(cc-option,-mfoo) && A'), Y);
  t.is(formatExpr(parseExpr('(A||B)&&!C'), cfg), '(A [=y] || B [=m]) && !C [=n]');
  t.throws(() => parseExpr('A && (B'), { message: /missing '\)'/ });
  t.throws(() => parseExpr('A B'), { message: /trailing 'B'/ });
});

test('index: inherited dependencies across sourced files, selects with their selector', (t) => {
  const vfioPci = index.symbols.get('VFIO_PCI')!;
  t.is(vfioPci.type, 'tristate');
  // drivers/vfio/pci/Kconfig is sourced inside `if VFIO`, and its entries sit in a `menu ... depends on PCI`.
  t.deepEqual(vfioPci.defs[0].inherited.map((x) => formatExpr(x.expr)), ['VFIO', 'PCI']);
  t.regex(vfioPci.defs[0].inherited[0].from, /^if VFIO \(drivers\/vfio\/Kconfig:\d+\)$/);
  const p2p = index.symbols.get('PCI_P2PDMA')!.defs[0];
  t.deepEqual(p2p.depends.map((e) => formatExpr(e)), ['ZONE_DEVICE', '64BIT']);
  t.deepEqual(p2p.inherited.map((x) => formatExpr(x.expr)), ['PCI']);
  t.is(readFileSync(path.join(FIX, 'tree', p2p.file), 'utf8').split('\n')[p2p.line - 1], 'config PCI_P2PDMA');
  const type1 = index.symbols.get('VFIO_IOMMU_TYPE1')!;
  t.deepEqual(type1.selectedBy.map((r) => r.by), ['VFIO_CONTAINER']);
  t.is(formatExpr(type1.selectedBy[0].cond!), 'MMU && (X86 || S390 || ARM || ARM64)');
  t.is(index.symbols.get('VFIO_PCI_DMABUF')!.defs[0].prompt, false);
  t.is(index.symbols.get('MEMORY_HOTPLUG')!.defs[0].prompt, true);
});

test('the real lean config satisfies what vfio-dmabuf.config asks', (t) => {
  const frag = readFileSync(path.join(REPO, 'labs/configs/vfio-dmabuf.config'), 'utf8');
  const req = requestedValues([{ file: 'configs/vfio-dmabuf.config', text: frag }]);
  t.true(req.size > 10);
  t.deepEqual(verifyConfig(req, lean, index), []);
});

test('PCI_P2PDMA without ZONE_DEVICE: names the chain down to MEMORY_HOTPLUG', (t) => {
  const frag = fixture('no-zone-device.fragment');
  const req = requestedValues([{ file: 'lab.config', text: frag }]);
  const mm = verifyConfig(req, noZoneDevice, index);
  const p2p = mm.find((m) => m.symbol === 'PCI_P2PDMA')!;
  t.truthy(p2p);
  t.is(p2p.actual, undefined); // an invisible symbol has no line at all in .config
  const msg = formatMismatch(p2p, index);
  const zd = index.symbols.get('ZONE_DEVICE')!.defs[0];
  const hp = index.symbols.get('MEMORY_HOTPLUG')!.defs[0];
  t.is(
    msg,
    `lab.config:${p2p.asked.line}: CONFIG_PCI_P2PDMA=y became not set: it depends on ZONE_DEVICE [=n] (drivers/pci/Kconfig:${index.symbols.get('PCI_P2PDMA')!.defs[0].line}); ` +
      `ZONE_DEVICE depends on MEMORY_HOTPLUG [=n] && MEMORY_HOTREMOVE [=n] (mm/Kconfig:${zd.line}); ` +
      `MEMORY_HOTPLUG [=n] has its dependencies met but is not enabled: add CONFIG_MEMORY_HOTPLUG=y (mm/Kconfig:${hp.line}); ` +
      `MEMORY_HOTREMOVE depends on MEMORY_HOTPLUG [=n] (inherited from if MEMORY_HOTPLUG (mm/Kconfig:${hp.line + 8})) (mm/Kconfig:${index.symbols.get('MEMORY_HOTREMOVE')!.defs[0].line})`,
  );
});

test('VFIO_PCI_DMABUF (promptless def_bool) explains its default and the part that is off', (t) => {
  const e = explainMismatch(index, noZoneDevice, 'VFIO_PCI_DMABUF', 'y');
  t.regex(e, /^it has no prompt \(drivers\/vfio\/pci\/Kconfig:\d+\), so a fragment cannot set it/);
  t.regex(e, /y if VFIO_PCI_CORE \[=m\] && PCI_P2PDMA \[=n\] && DMA_SHARED_BUFFER \[=y\]/);
  t.regex(e, /PCI_P2PDMA depends on ZONE_DEVICE \[=n\]/);
  // VFIO_PCI_CORE=m is enough for a bool's `default y if ...`: it must not be blamed.
  t.notRegex(e, /VFIO_PCI_CORE depends/);
});

test('=m that became =y: a tristate selected by a built-in bool names the selector', (t) => {
  const req = requestedValues([{ file: 'lab.config', text: fixture('no-zone-device.fragment') }]);
  const m = verifyConfig(req, noZoneDevice, index).find((x) => x.symbol === 'IOMMU_PT_AMDV1')!;
  t.is(m.actual, 'y');
  t.regex(
    formatMismatch(m, index),
    /^lab\.config:\d+: CONFIG_IOMMU_PT_AMDV1=m became y: it is selected by AMD_IOMMU \[=y\] \(drivers\/iommu\/amd\/Kconfig:\d+\), which forces it to at least y, so it cannot be a module$/,
  );
  // A bool asked as a module.
  t.regex(explainMismatch(index, lean, 'PCI_P2PDMA', 'm'), /^it is a bool \(drivers\/pci\/Kconfig:\d+\): it cannot be a module$/);
});

test('=y that became =m: a tristate under a module (VFIO_IOMMU_TYPE1 inside if VFIO)', (t) => {
  const e = explainMismatch(index, lean, 'VFIO_IOMMU_TYPE1', 'y');
  t.regex(e, /^it depends on VFIO \[=m\] \(inherited from if VFIO \(drivers\/vfio\/Kconfig:\d+\)\)/);
  t.regex(e, /a tristate cannot be built in while a dependency is only m/);
});

test('select strength includes the selector\'s own dependencies', (t) => {
  // VFIO_CONTAINER=y selects VFIO_IOMMU_TYPE1, but inside `if VFIO` with VFIO=m the select is only m.
  const e = explainMismatch(index, lean, 'VFIO_IOMMU_TYPE1', 'n');
  t.regex(e, /selected by VFIO_CONTAINER \[=y\] .*forces it to at least m, so it cannot be off/);
});

test('a symbol that does not exist: said so, with close names', (t) => {
  const e = explainMismatch(index, lean, 'PCI_P2P_DMA', 'y');
  t.is(e, 'CONFIG_PCI_P2P_DMA does not exist in this tree (no `config PCI_P2P_DMA` in the Kconfig files read for x86); did you mean CONFIG_PCI_P2PDMA?');
  t.deepEqual(similarSymbols(index, 'MEMORY_HOTREMOV'), ['MEMORY_HOTREMOVE']);
  const req = requestedValues([{ file: 'x.config', text: 'CONFIG_REFCOUNT_FULL=y\n' }]);
  const [m] = verifyConfig(req, lean, index);
  t.regex(formatMismatch(m, index), /^x\.config:1: CONFIG_REFCOUNT_FULL=y: CONFIG_REFCOUNT_FULL does not exist in this tree/);
  // Asking n of a name that does not exist is reported too (a typo leaves the real option as it was)...
  const off = verifyConfig(requestedValues([{ file: 'y.config', text: '# CONFIG_ZONE_DEVIC is not set\n' }]), lean, index);
  t.is(off.length, 1);
  t.regex(formatMismatch(off[0], index), /^y\.config:1: CONFIG_ZONE_DEVIC=n: CONFIG_ZONE_DEVIC does not exist .*did you mean CONFIG_ZONE_DEVICE\?$/);
  // ...but not n of a real symbol kconfig left out of .config because it is invisible.
  t.deepEqual(verifyConfig(requestedValues([{ file: 'z.config', text: '# CONFIG_PCI_P2PDMA is not set\n' }]), noZoneDevice, index), []);
});

test('requestedValues: last fragment wins, "is not set" asks n, bad lines rejected', (t) => {
  const req = requestedValues([
    { file: 'a.config', text: 'CONFIG_VFIO=y\nCONFIG_CMDLINE="console=ttyS0 x=\\"q\\""\n# CONFIG_ZONE_DEVICE is not set\n' },
    { file: 'b.config', text: '# comment\nCONFIG_VFIO=m\nCONFIG_ZONE_DEVICE=y\n\nCONFIG_NR_CPUS=8\n' },
  ]);
  t.deepEqual(req.get('VFIO'), { value: 'm', raw: 'm', file: 'b.config', line: 2 });
  t.deepEqual(req.get('ZONE_DEVICE'), { value: 'y', raw: 'y', file: 'b.config', line: 3 });
  t.is(req.get('CMDLINE')!.value, 'console=ttyS0 x="q"');
  // Only the winning request is checked: lean has VFIO=m, so a.config's VFIO=y is not an error.
  t.deepEqual(verifyConfig(new Map([['VFIO', req.get('VFIO')!]]), lean, index), []);
  const lost = requestedValues([
    { file: 'a.config', text: 'CONFIG_VFIO=m\n' },
    { file: 'b.config', text: '# CONFIG_VFIO is not set\n' },
  ]);
  const [m] = verifyConfig(lost, lean, index);
  t.is(m.asked.file, 'b.config');
  t.regex(formatMismatch(m, index), /^b\.config:1: CONFIG_VFIO=n became m: /);
  const err = t.throws(() => requestedValues([{ file: 'c.config', text: 'CONFIG_A=y\nVFIO=m\n#CONFIG_B=y\n' }]), { instanceOf: ConfigError });
  t.regex(err!.message, /c\.config:2: not a config line: VFIO=m/);
  t.regex(err!.message, /c\.config:3: commented-out assignment/);
});

test('parseDotConfig: values, not-set as n, strings unquoted, numbers compared by value', (t) => {
  const c = parseDotConfig('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S="a b"\nCONFIG_H=0x10\n# comment\n');
  t.deepEqual([...c], [['A', 'y'], ['B', 'n'], ['S', 'a b'], ['H', '0x10']]);
  const req = requestedValues([{ file: 'f', text: 'CONFIG_H=0x0010\nCONFIG_B=n\nCONFIG_S="a b"\n' }]);
  t.deepEqual(verifyConfig(req, c, () => { throw new Error('index must not be built when all holds'); }), []);
});

// ---- against a real tree (slow: make tinyconfig + olddefconfig, and a Kconfig index on failure)

// Opt-in (HWLAB_KERNEL_TREE=<a 7.2 tree>): the unit tier stays fast; the end-to-end
// tests assemble and verify the real config on every run anyway.
const TREE = process.env.HWLAB_KERNEL_TREE ?? '';
const haveTree = TREE !== '' && existsSync(path.join(TREE, 'scripts/kconfig/merge_config.sh'));
const treeTest = haveTree ? test.serial : test.serial.skip;

const repoFragment = (name: string) => ({
  file: `configs/${name}`, text: readFileSync(path.join(REPO, 'labs/configs', name), 'utf8'),
});

treeTest('kernel-tree: tinyconfig + guest-base + vfio-dmabuf gives the lab kernel', async (t) => {
  const obj = await mkdtemp(path.join(os.tmpdir(), 'hwlab-kconfig-'));
  try {
    const { configText, requested } = await assembleConfig({
      srcDir: TREE, objDir: obj, base: 'tinyconfig',
      fragments: [repoFragment('guest-base.config'), repoFragment('vfio-dmabuf.config')],
    });
    const c = parseDotConfig(configText);
    const want: Record<string, string> = {
      VFIO_PCI_DMABUF: 'y', PCI_P2PDMA: 'y', IOMMUFD: 'y', VFIO_DEVICE_CDEV: 'y',
      INTEL_IOMMU: 'y', AMD_IOMMU: 'y', VIRTIO_IOMMU: 'y', IRQ_REMAP: 'y',
      VFIO: 'm', VFIO_PCI: 'm', VFIO_PCI_CORE: 'm', MODULES: 'y', MODULE_UNLOAD: 'y',
      EXT4_FS: 'y', VIRTIO_BLK: 'y', VIRTIO_NET: 'y', SERIAL_8250_CONSOLE: 'y', BLK_DEV_INITRD: 'y', X86_64: 'y',
    };
    for (const [k, v] of Object.entries(want)) t.is(c.get(k), v, `CONFIG_${k}`);
    t.is(requested.get('VFIO_PCI')?.file, 'configs/vfio-dmabuf.config');
  } finally {
    await rm(obj, { recursive: true, force: true });
  }
});

treeTest('kernel-tree: PCI_P2PDMA=y without ZONE_DEVICE stops with a ConfigError naming ZONE_DEVICE', async (t) => {
  const obj = await mkdtemp(path.join(os.tmpdir(), 'hwlab-kconfig-'));
  try {
    const err = await t.throwsAsync(assembleConfig({
      srcDir: TREE, objDir: obj, base: 'tinyconfig',
      fragments: [repoFragment('guest-base.config'), { file: 'labs/p2p.config', text: 'CONFIG_PCI_P2PDMA=y\n' }],
    }), { instanceOf: ConfigError });
    const e = err as ConfigError;
    t.is(e.mismatches.length, 1);
    t.regex(e.message, /labs\/p2p\.config:1: CONFIG_PCI_P2PDMA=y became not set: it depends on ZONE_DEVICE \[=n\] \(drivers\/pci\/Kconfig:206\); ZONE_DEVICE depends on MEMORY_HOTPLUG \[=n\] && MEMORY_HOTREMOVE \[=n\] \(mm\/Kconfig:1236\)/);
  } finally {
    await rm(obj, { recursive: true, force: true });
  }
});
