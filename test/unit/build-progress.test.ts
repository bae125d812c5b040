// The kernel build's progress line: objects counted from kbuild's quiet
// output, out of an expected total with an ETA from the rate so far; no
// total, no ETA.
import test from 'ava';
import { BuildProgress } from '../../src/kernel/build-progress.ts';

const out = `  CC      init/main.o
  AS      arch/x86/entry/entry_64.o
  AR      init/built-in.a
  CC [M]  drivers/vfio/pci/vfio_pci_core.o
  LD [M]  drivers/vfio/pci/vfio-pci-core.ko
  CHK     include/generated/compile.h
`;

test('counts CC and AS objects (modules too), not AR/LD/CHK lines; ETA from the rate', (t) => {
  const p = new BuildProgress(300, 0);
  t.is(p.push(out, 30_000), '3/~300 objects (1%), ETA 50 min, drivers/vfio/pci/vfio_pci_core.o');
  t.is(p.objects, 3);
  // A chunk boundary inside a line loses nothing that matters: lines come whole from make's pipe in practice.
  const many = Array.from({ length: 147 }, (_, i) => `  CC      kernel/f${i}.o\n`).join('');
  t.is(p.push(many, 60_000), '150/~300 objects (50%), ETA 60 s, kernel/f146.o');
  p.push(Array.from({ length: 160 }, (_, i) => `  CC      mm/g${i}.o\n`).join(''), 120_000);
  t.regex(p.line(120_000), /^310 objects \(about 300 expected, finishing\)/);
});

test('no expected total (an incremental build of the same config): the count alone', (t) => {
  const p = new BuildProgress(undefined, 0);
  t.is(p.line(0), '0 objects');
  t.is(p.push(out, 1000), '3 objects, drivers/vfio/pci/vfio_pci_core.o');
});
