import test from 'ava';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildQemuCommand, iommuKernelWords, optValue, type QemuLaunchInput } from '../../src/machine/cmdline.ts';
import { loadLab } from '../../src/lab/load.ts';
import type { IommuSpec, LabSpec, TopologySpec } from '../../src/lab/types.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

function lab(over: { iommu?: Partial<IommuSpec>; topology?: Partial<TopologySpec>; machine?: Partial<LabSpec['machine']> } = {}): LabSpec {
  return {
    file: '/labs/t.yaml',
    name: 't',
    description: '',
    kernel: { kind: 'debian-prebuilt', package: 'linux-image-7.2', flavour: 'amd64', suite: 'sid', mirror: 'http://deb.debian.org/debian', patches: [] },
    image: 'bookworm',
    machine: { cpu: 'EPYC', memoryMiB: 2048, smp: 2, accel: 'auto', cmdline: [], trace: [], ...over.machine },
    iommu: { kind: 'intel', cachingMode: true, strict: false, passthrough: false, ...over.iommu },
    topology: { rootPorts: [], switches: [], endpoints: [], ...over.topology },
    modules: ['vfio-pci'],
    dmabufAbi: 'ranges',
    probes: [],
    timeouts: { bootSec: 180, probesSec: 600, probeSec: 120, shutdownSec: 20, runnerExitSec: 30 },
  };
}

function input(l: LabSpec, over: Partial<QemuLaunchInput> = {}): QemuLaunchInput {
  return {
    lab: l,
    accel: 'kvm',
    kernelImage: '/cache/vmlinuz',
    initrd: '/cache/initrd.img',
    rootDisk: '/run/root.qcow2',
    modulesDisk: '/cache/modules.ext4',
    consoleLog: '/run/console.log',
    qmpSocket: '/run/qmp.sock',
    sshPort: 10022,
    memoryBackendDir: '/run/mem',
    append: ['console=ttyS0', 'root=/dev/vda'],
    ...over,
  };
}

/** Every `-device`/`-object` value, in order. */
const devices = (args: string[]) =>
  args.flatMap((a, i) => (args[i - 1] === '-device' || args[i - 1] === '-object' ? [`${args[i - 1]} ${a}`] : []));

/** The value after a flag (first occurrence). */
const after = (args: string[], flag: string) => args[args.indexOf(flag) + 1];

test('fixed part of the command line, intel vIOMMU first among devices', (t) => {
  const c = buildQemuCommand(input(lab()));
  t.is(c.binary, 'qemu-system-x86_64');
  t.deepEqual(c.args, [
    '-machine', 'q35,accel=kvm,kernel-irqchip=split',
    '-cpu', 'EPYC',
    '-m', '2048M',
    '-smp', '2',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', '/cache/vmlinuz',
    '-initrd', '/cache/initrd.img',
    '-append', 'console=ttyS0 root=/dev/vda intel_iommu=on iommu.strict=0 iommu.passthrough=0',
    '-device', 'intel-iommu,intremap=on,caching-mode=on',
    '-drive', 'file=/run/root.qcow2,if=none,id=root,format=qcow2,cache=unsafe',
    '-device', 'virtio-blk-pci,drive=root,serial=hwlab-root,addr=0x2',
    '-drive', 'file=/cache/modules.ext4,if=none,id=modules,format=raw,readonly=on',
    '-device', 'virtio-blk-pci,drive=modules,serial=hwlab-modules,addr=0x3',
    '-netdev', 'user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:10022-:22',
    '-device', 'virtio-net-pci,netdev=net0,addr=0x4',
    '-serial', 'file:/run/console.log',
    '-qmp', 'unix:/run/qmp.sock,server=on,wait=off',
    '-monitor', 'none',
  ]);
  t.is(c.append, 'console=ttyS0 root=/dev/vda intel_iommu=on iommu.strict=0 iommu.passthrough=0');
  t.deepEqual(c.pciPaths, {});
});

test('vIOMMU variants: device and kernel words', (t) => {
  const cases: [Partial<IommuSpec>, string[], string][] = [
    [{ kind: 'intel', cachingMode: false, strict: true }, ['-device intel-iommu,intremap=on,caching-mode=off'], 'intel_iommu=on iommu.strict=1 iommu.passthrough=0'],
    [{ kind: 'amd', cachingMode: false, passthrough: true }, ['-device amd-iommu,intremap=on'], 'iommu.strict=0 iommu.passthrough=1'],
    [{ kind: 'virtio', cachingMode: false }, ['-device virtio-iommu-pci,addr=0x1'], 'iommu.strict=0 iommu.passthrough=0'],
    [{ kind: 'none', cachingMode: false }, [], 'vfio.enable_unsafe_noiommu_mode=1'],
  ];
  for (const [iommu, dev, words] of cases) {
    const c = buildQemuCommand(input(lab({ iommu, machine: { cmdline: ['quiet'] } }), { append: [] }));
    const ds = devices(c.args);
    // The vIOMMU precedes every other device (the disks are the next ones).
    t.deepEqual(ds.slice(0, ds.length - 3), dev, iommu.kind);
    t.is(ds[dev.length], '-device virtio-blk-pci,drive=root,serial=hwlab-root,addr=0x2');
    // Lab cmdline words come last.
    t.is(c.append, `${words} quiet`, iommu.kind);
    t.is(after(c.args, '-append'), c.append);
    t.is(iommuKernelWords({ kind: 'intel', cachingMode: true, strict: false, passthrough: false, ...iommu }).join(' '), words);
  }
});

test('switch topology: ports, chassis, addresses, creation order and pci paths', (t) => {
  const c = buildQemuCommand(input(lab({
    topology: {
      rootPorts: [{ id: 'rp0' }, { id: 'rp1' }],
      // sw1 is listed first but hangs below sw0: it must be created after it.
      switches: [
        { id: 'sw1', port: 'dp1', downstream: ['dp2'] },
        { id: 'sw0', port: 'rp1', downstream: ['dp0', 'dp1'] },
      ],
      endpoints: [
        { id: 'shm0', type: 'ivshmem-plain', port: 'rp0', memoryMiB: 64 },
        { id: 'shm1', type: 'ivshmem-plain', port: 'dp0', memoryMiB: 1 },
        { id: 'edu0', type: 'edu', port: 'dp2', dmaMaskBits: 64 },
      ],
    },
  })));
  t.deepEqual(devices(c.args).slice(4), [
    '-device pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,addr=0x10',
    '-device pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=2,addr=0x11',
    '-device x3130-upstream,id=sw0,bus=rp1,addr=0x0',
    '-device xio3130-downstream,id=dp0,bus=sw0,chassis=3,slot=3,addr=0x0',
    '-device xio3130-downstream,id=dp1,bus=sw0,chassis=4,slot=4,addr=0x1',
    '-device x3130-upstream,id=sw1,bus=dp1,addr=0x0',
    '-device xio3130-downstream,id=dp2,bus=sw1,chassis=5,slot=5,addr=0x0',
    '-object memory-backend-file,id=mem-shm0,size=64M,mem-path=/run/mem/shm0,share=on',
    '-device ivshmem-plain,id=shm0,bus=rp0,addr=0x0,memdev=mem-shm0',
    '-object memory-backend-file,id=mem-shm1,size=1M,mem-path=/run/mem/shm1,share=on',
    '-device ivshmem-plain,id=shm1,bus=dp0,addr=0x0,memdev=mem-shm1',
    '-device edu,id=edu0,bus=dp2,addr=0x0,dma_mask=0xffffffffffffffff',
  ]);
  t.deepEqual(c.pciPaths, {
    shm0: ['10.0', '00.0'],
    shm1: ['11.0', '00.0', '00.0', '00.0'],
    edu0: ['11.0', '00.0', '01.0', '00.0', '00.0', '00.0'],
  });
});

test('edu dma mask: bits become a uint64 mask', (t) => {
  const mask = (bits: number) => {
    const c = buildQemuCommand(input(lab({
      topology: { rootPorts: [{ id: 'rp0' }], endpoints: [{ id: 'edu0', type: 'edu', port: 'rp0', dmaMaskBits: bits }] },
    })));
    return devices(c.args).at(-1);
  };
  t.is(mask(28), '-device edu,id=edu0,bus=rp0,addr=0x0,dma_mask=0xfffffff');
  t.is(mask(32), '-device edu,id=edu0,bus=rp0,addr=0x0,dma_mask=0xffffffff');
  t.is(mask(48), '-device edu,id=edu0,bus=rp0,addr=0x0,dma_mask=0xffffffffffff');
  t.is(mask(64), '-device edu,id=edu0,bus=rp0,addr=0x0,dma_mask=0xffffffffffffffff');
});

test('nvme with a CMB, and root port slots in hex beyond 0x19', (t) => {
  const rootPorts = Array.from({ length: 12 }, (_, i) => ({ id: `rp${i}` }));
  const c = buildQemuCommand(input(lab({
    topology: { rootPorts, endpoints: [{ id: 'nvme0', type: 'nvme', port: 'rp11', cmbSizeMiB: 32, serial: 'hwlab0' }] },
  })));
  const ds = devices(c.args);
  t.is(ds.at(-2), '-device pcie-root-port,id=rp11,bus=pcie.0,chassis=12,slot=12,addr=0x1b');
  t.is(ds.at(-1), '-device nvme,id=nvme0,bus=rp11,addr=0x0,serial=hwlab0,cmb_size_mb=32');
  t.deepEqual(c.pciPaths, { nvme0: ['1b.0', '00.0'] });
});

test('pci-testdev with its 64-bit membar', (t) => {
  const c = buildQemuCommand(input(lab({
    topology: { rootPorts: [{ id: 'rp0' }], endpoints: [{ id: 'iot0', type: 'pci-testdev', port: 'rp0', membarMiB: 4 }] },
  })));
  t.is(devices(c.args).at(-1), '-device pci-testdev,id=iot0,bus=rp0,addr=0x0,membar=4M');
});

test('secondary-vga with its VRAM size', (t) => {
  const c = buildQemuCommand(input(lab({
    topology: { rootPorts: [{ id: 'rp0' }], endpoints: [{ id: 'vga0', type: 'secondary-vga', port: 'rp0', vgamemMiB: 32 }] },
  })));
  t.is(devices(c.args).at(-1), '-device secondary-vga,id=vga0,bus=rp0,addr=0x0,vgamem_mb=32');
  t.deepEqual(c.pciPaths, { vga0: ['10.0', '00.0'] });
});

test('two endpoints on one port: a multifunction device, function 0 says so, paths end in the function', (t) => {
  const c = buildQemuCommand(input(lab({
    topology: {
      rootPorts: [{ id: 'rp0' }],
      endpoints: [
        { id: 'f0', type: 'ivshmem-plain', port: 'rp0', memoryMiB: 16 },
        { id: 'f1', type: 'ivshmem-plain', port: 'rp0', memoryMiB: 16, function: 1 },
      ],
    },
  })));
  t.true(c.args.includes('ivshmem-plain,id=f0,bus=rp0,addr=0x0.0,multifunction=on,memdev=mem-f0'));
  t.true(c.args.includes('ivshmem-plain,id=f1,bus=rp0,addr=0x0.1,memdev=mem-f1'));
  t.deepEqual(c.pciPaths, { f0: ['10.0', '00.0'], f1: ['10.0', '00.1'] });
});

test('commas in paths are escaped inside option strings only', (t) => {
  const c = buildQemuCommand(input(
    lab({ topology: { rootPorts: [{ id: 'rp0' }], endpoints: [{ id: 'shm0', type: 'ivshmem-plain', port: 'rp0', memoryMiB: 2 }] } }),
    { rootDisk: '/r,1/root.qcow2', modulesDisk: '/r,1/m.ext4', qmpSocket: '/r,1/qmp', consoleLog: '/r,1/console', memoryBackendDir: '/r,1/mem', kernelImage: '/r,1/vmlinuz' },
  ));
  t.is(after(c.args, '-drive'), 'file=/r,,1/root.qcow2,if=none,id=root,format=qcow2,cache=unsafe');
  t.is(after(c.args, '-qmp'), 'unix:/r,,1/qmp,server=on,wait=off');
  // `-serial file:` and `-kernel` take the rest verbatim.
  t.is(after(c.args, '-serial'), 'file:/r,1/console');
  t.is(after(c.args, '-kernel'), '/r,1/vmlinuz');
  t.is(after(c.args, '-object'), 'memory-backend-file,id=mem-shm0,size=2M,mem-path=/r,,1/mem/shm0,share=on');
  t.is(optValue('a,,b'), 'a,,,,b');
});

test('machine settings and accel', (t) => {
  const c = buildQemuCommand(input(lab({ machine: { cpu: 'Skylake-Server,+x2apic', memoryMiB: 512, smp: 4, accel: 'tcg' } }), { accel: 'tcg' }));
  t.deepEqual(c.args.slice(0, 8), ['-machine', 'q35,accel=tcg', '-cpu', 'Skylake-Server,+x2apic', '-m', '512M', '-smp', '4']);
  // Under TCG the TSC is never the clock (live patching of the sched_clock branch races TCG); under KVM it is untouched.
  t.is(c.append, 'console=ttyS0 root=/dev/vda tsc=unstable intel_iommu=on iommu.strict=0 iommu.passthrough=0');
  t.false(buildQemuCommand(input(lab(), { accel: 'kvm' })).append.includes('tsc='));
  t.throws(() => buildQemuCommand(input(lab({ machine: { accel: 'kvm' } }), { accel: 'tcg' })), { message: /asks for accel=kvm but the launch uses tcg/ });
  t.throws(() => buildQemuCommand(input(lab(), { append: ['a b'] })), { message: /"a b" is empty or contains whitespace/ });
});

test('labs/default.yaml builds the documented machine', async (t) => {
  const c = buildQemuCommand(input(await loadLab(path.join(repo, 'labs', 'default.yaml'))));
  t.deepEqual(c.pciPaths, {
    shm0: ['10.0', '00.0'],
    shm1: ['11.0', '00.0', '00.0', '00.0'],
    edu0: ['11.0', '00.0', '01.0', '00.0'],
    nvme0: ['11.0', '00.0', '02.0', '00.0'],
    shm2: ['12.0', '00.0'],
    iotest0: ['13.0', '00.0'],
    shm3: ['14.0', '00.0'],
    shm4: ['14.0', '00.1'],
  });
  t.is(devices(c.args)[0], '-device intel-iommu,intremap=on,caching-mode=on');
  t.true(c.args.includes('edu,id=edu0,bus=dp1,addr=0x0,dma_mask=0xffffffffffffffff'));
});

test('a LabSpec built in code that breaks the slot plan is refused with the lab stage\'s words', (t) => {
  const rootPorts = Array.from({ length: 16 }, (_, i) => ({ id: `rp${i}` }));
  t.throws(() => buildQemuCommand(input(lab({ topology: { rootPorts } }))), { message: /slot plan: at most 15 root ports fit on pcie\.0 \(slots 0x10-0x1e\)/ });
  const downstream = Array.from({ length: 32 }, (_, j) => `d${j}`);
  const switches = Array.from({ length: 8 }, (_, i) => ({ id: `s${i}`, port: `rp${i}`, downstream: downstream.map((d) => `${d}x${i}`) }));
  t.throws(() => buildQemuCommand(input(lab({ topology: { rootPorts: rootPorts.slice(0, 15), switches } }))), { message: /at most 255 root and downstream ports in all \(got 271\)/ });
});

test('machine.trace: each event pattern enabled, the events into their own file (-D), none by default', (t) => {
  const plain = buildQemuCommand(input(lab()));
  t.false(plain.args.includes('-trace'));
  t.false(plain.args.includes('-D'));
  const c = buildQemuCommand(input(lab({ iommu: { kind: 'amd', cachingMode: false }, machine: { trace: ['amdvi_*', 'pci_update_mappings'] } }), { traceLog: '/run/qemu-trace.log' }));
  const i = c.args.indexOf('-trace');
  t.deepEqual(c.args.slice(i, i + 6), ['-trace', 'enable=amdvi_*', '-trace', 'enable=pci_update_mappings', '-D', '/run/qemu-trace.log']);
  t.throws(() => buildQemuCommand(input(lab({ machine: { trace: ['amdvi_*'] } }))), { message: /enables QEMU trace events but the launch names no trace file/ });
});
