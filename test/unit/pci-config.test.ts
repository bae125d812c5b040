// Capability walks and register decoding of guest/lib/pci-config.ts against a
// hand-built config space image: the shape of QEMU's nvme (PM, MSI-X, PCIe
// with FLR) plus an ACS extended capability and an AF capability.
import test from 'ava';
import * as pc from '../../src/guest/lib/pci-config.ts';

function image(): Buffer {
  const b = Buffer.alloc(4096);
  b.writeUInt16LE(pc.PCI_STATUS_CAP_LIST, pc.PCI_STATUS);
  b.writeUInt8(0x40, pc.PCI_CAPABILITY_LIST);
  // PM at 0x40 -> MSI-X at 0x50 -> EXP at 0x60 -> AF at 0xa0 -> end.
  b.writeUInt8(pc.CAP.PM, 0x40); b.writeUInt8(0x50, 0x41);
  b.writeUInt16LE(0x0003 | pc.PCI_PM_CAP_D1, 0x42); // D1 supported, D2 not
  b.writeUInt16LE(0x0003 | pc.PCI_PM_CTRL_NO_SOFT_RESET, 0x44); // D3hot, NoSoftRst
  b.writeUInt8(pc.CAP.MSIX, 0x50); b.writeUInt8(0x60, 0x51);
  b.writeUInt8(pc.CAP.EXP, 0x60); b.writeUInt8(0xa0, 0x61);
  b.writeUInt16LE(0x0002, 0x62); // version 2, type 0 (endpoint)
  b.writeUInt32LE(pc.PCI_EXP_DEVCAP_FLR | 0x8000, 0x64);
  b.writeUInt8(pc.CAP.AF, 0xa0); b.writeUInt8(0x00, 0xa1);
  b.writeUInt8(pc.PCI_AF_CAP_FLR, 0xa3); // FLR without TP
  // Extended: AER at 0x100 -> ACS at 0x148 -> end.
  b.writeUInt32LE(0x0001 | (1 << 16) | (0x148 << 20), 0x100);
  b.writeUInt32LE(0x000d | (1 << 16), 0x148);
  b.writeUInt16LE(0x005f, 0x14c);
  b.writeUInt16LE(pc.ACS_BITS.SV | pc.ACS_BITS.RR | pc.ACS_BITS.CR | pc.ACS_BITS.UF, 0x14e);
  return b;
}

test('standard and extended capability lists in chain order', (t) => {
  const r = pc.bufferReader(image());
  t.deepEqual(pc.capabilities(r).map((c) => [c.name, c.offset]), [['PM', 0x40], ['MSIX', 0x50], ['EXP', 0x60], ['AF', 0xa0]]);
  t.deepEqual(pc.extCapabilities(r, 4096).map((c) => [c.name, c.offset]), [['ERR', 0x100], ['ACS', 0x148]]);
  t.deepEqual(pc.extCapabilities(r, 256), [], 'conventional PCI has no extended space');
  t.is(pc.findCapability(r, pc.CAP.EXP), 0x60);
  t.is(pc.findCapability(r, pc.CAP.MSI), null);
});

test('describeDevice decodes PM, PCIe FLR, AF and ACS', (t) => {
  const d = pc.describeDevice(pc.bufferReader(image()), 4096);
  t.deepEqual(d.pm, { offset: 0x40, d1: true, d2: false, state: 'D3hot', noSoftReset: true });
  t.deepEqual(d.exp, { offset: 0x60, type: 0, flr: true });
  t.deepEqual(d.af, { offset: 0xa0, flr: true, tp: false });
  t.deepEqual(d.acs, { offset: 0x148, cap: 0x5f, ctrl: 0x1d });
  t.deepEqual(pc.acsBitNames(d.acs!.ctrl), ['SV', 'RR', 'CR', 'UF']);
});

test('no capability list bit: no capabilities; a looping chain stops', (t) => {
  const b = image();
  b.writeUInt16LE(0, pc.PCI_STATUS);
  t.deepEqual(pc.capabilities(pc.bufferReader(b)), []);
  const loop = image();
  loop.writeUInt8(0x40, 0xa1); // AF points back at PM
  t.is(pc.capabilities(pc.bufferReader(loop)).length, 4);
  const d = pc.describeDevice(pc.bufferReader(Buffer.alloc(256)), 256);
  t.deepEqual(d, { caps: [], extCaps: [], pm: null, exp: null, af: null, acs: null });
});

test('power states from PMCSR', (t) => {
  t.is(pc.powerStateOf(0), 'D0');
  t.is(pc.powerStateOf(0x0101), 'D1');
  t.is(pc.powerStateOf(2), 'D2');
  t.is(pc.powerStateOf(0x8 | 3), 'D3hot');
});
