// LabSpec -> qemu-system-x86_64 argument vector (checked against QEMU 7.2).
// Every PCI device sits at a fixed address so that the path from the root
// complex to each endpoint is known before boot (pciPaths) and the guest can
// find devices by walking sysfs, not by guessing bus numbers.
import path from 'node:path';
import { endpointQemuArgs } from '../lab/endpoints.ts';
import { assertSlots, PCIE0_SLOTS } from '../lab/slots.ts';
import type { EndpointSpec, IommuSpec, LabSpec, SwitchSpec } from '../lab/types.ts';

export interface QemuLaunchInput {
  lab: LabSpec;
  /** Resolved accelerator (lab.machine.accel `auto` is decided by the caller). */
  accel: 'kvm' | 'tcg';
  kernelImage: string;
  initrd: string;
  /** qcow2 overlay, written with cache=unsafe (it is thrown away). */
  rootDisk: string;
  /** raw ext4 with lib/modules, attached read-only. */
  modulesDisk: string;
  consoleLog: string;
  qmpSocket: string;
  /** Host port forwarded (127.0.0.1 only) to the guest's sshd. */
  sshPort: number;
  /** Where endpoints keep host backing files (ivshmem-plain's memory), one per endpoint, named by its id. */
  memoryBackendDir: string;
  /** hwlab's own kernel command-line words, before the IOMMU words and lab.machine.cmdline. */
  append: string[];
  /**
   * A booted guest saved to or restored from a migration file (snapshot.ts):
   * ivshmem-plain as master (peer mode blocks migration), the console opened
   * for appending (a restored run's console.log starts with the boot's), and
   * for a restore QEMU waiting for the stream (`-incoming defer`).
   */
  migration?: 'save' | 'restore';
  /** 127.0.0.1 port for QEMU's gdbstub (`--gdb`); none when absent. */
  gdbPort?: number;
  /** Where QEMU writes the trace events lab.machine.trace enables (-D); needed only when it enables some. */
  traceLog?: string;
}

export interface QemuCommand {
  binary: 'qemu-system-x86_64';
  args: string[];
  /** Endpoint id -> devfn path from the root complex, e.g. ['10.0', '00.0', '01.0', '00.0']. */
  pciPaths: Record<string, string[]>;
  /** The -append string. */
  append: string;
}

/** Serial numbers of the two disks: the guest finds them as /dev/disk/by-id/virtio-<serial>. */
export const DISK_SERIALS = { root: 'hwlab-root', modules: 'hwlab-modules' } as const;

/** Escape a value inside a QEMU `key=value,...` option string (a literal comma is written twice). */
export function optValue(v: string): string {
  return v.replace(/,/g, ',,');
}

/**
 * QEMU's `addr=` is parsed as hex even without 0x (`addr=10` is slot 0x10),
 * so always write it with the prefix to make the intent unambiguous.
 */
const addr = (slot: number): string => `0x${slot.toString(16)}`;

/** `slot.fn` as Linux prints it in a BDF: two hex digits, then the function. */
const devfn = (slot: number, fn = 0): string => `${slot.toString(16).padStart(2, '0')}.${fn}`;

/**
 * Kernel words the accelerator asks for. Under TCG: tsc=unstable. With the TSC
 * as clock the kernel flips the sched_clock static branch at late_initcall
 * ("sched_clock: Marking stable") and again whenever the clocksource watchdog
 * gives up on the TSC; each flip is live code patching (text_poke_bp: int3,
 * tail, head). Under QEMU 7.2's multi-threaded TCG another vCPU now and then
 * executes the temporary int3 after the patch is done and the kernel dies with
 * "Oops: int3" in sched_clock_cpu or sched_clock_idle_wakeup_event: 2 of 40
 * boots of Debian's 7.2.13 with two vCPUs here (about 1 in 8 earlier, under
 * load), and the same flip happens on hwlab's own kernels. tsc=unstable
 * clears the branch before sched_clock starts, so it never flips: 0 of 40
 * boots. The clocksource is then the HPET; under KVM nothing changes.
 */
export function accelKernelWords(accel: 'kvm' | 'tcg'): string[] {
  return accel === 'tcg' ? ['tsc=unstable'] : [];
}

/** Kernel command-line words that make the guest use (or knowingly not use) the vIOMMU. */
export function iommuKernelWords(iommu: IommuSpec): string[] {
  const words: string[] = [];
  switch (iommu.kind) {
    case 'intel':
      // Distro kernels may build with INTEL_IOMMU_DEFAULT_ON=n; be explicit.
      words.push('intel_iommu=on');
      break;
    case 'amd':
      // amd_iommu= has no "on": the driver is active whenever ACPI IVRS (built by QEMU's amd-iommu) is present.
      break;
    case 'virtio':
      // Found through the ACPI VIOT table QEMU builds; needs CONFIG_VIRTIO_IOMMU in the guest kernel.
      break;
    case 'none':
      // Without an IOMMU, vfio-pci only binds in no-IOMMU mode (groups appear as /dev/vfio/noiommu-N).
      words.push('vfio.enable_unsafe_noiommu_mode=1');
      return words;
  }
  // Both ways explicitly: the distro's Kconfig default must not decide the DMA domain type.
  words.push(iommu.strict ? 'iommu.strict=1' : 'iommu.strict=0');
  words.push(iommu.passthrough ? 'iommu.passthrough=1' : 'iommu.passthrough=0');
  return words;
}

function iommuDevice(iommu: IommuSpec): string[] {
  switch (iommu.kind) {
    case 'intel':
      // intremap=on: vfio_iommu_type1 refuses to attach a group without interrupt
      // remapping ("No interrupt remapping support"), as on real hosts. Pinned,
      // since QEMU's "auto" differs between KVM and TCG; KVM then needs
      // kernel-irqchip=split (see the -machine line).
      return ['-device', `intel-iommu,intremap=on,caching-mode=${iommu.cachingMode ? 'on' : 'off'}`];
    case 'amd':
      return ['-device', 'amd-iommu,intremap=on'];
    case 'virtio':
      return ['-device', `virtio-iommu-pci,addr=${addr(PCIE0_SLOTS.iommu)}`];
    case 'none':
      return [];
  }
}

/** Switches ordered so that each comes after the switch owning its upstream port (QEMU needs the bus to exist). */
function switchesInCreationOrder(lab: LabSpec): SwitchSpec[] {
  const rootPorts = new Set(lab.topology.rootPorts.map((r) => r.id));
  const done = new Set<string>(rootPorts); // ports that exist so far
  const pending = [...lab.topology.switches];
  const ordered: SwitchSpec[] = [];
  while (pending.length) {
    const i = pending.findIndex((s) => done.has(s.port));
    if (i < 0) {
      throw new Error(`switches ${pending.map((s) => s.id).join(', ')} are not below any root port (parseLab rejects this)`);
    }
    const [sw] = pending.splice(i, 1);
    ordered.push(sw);
    for (const dp of sw.downstream) done.add(dp);
  }
  return ordered;
}

function endpointArgs(ep: EndpointSpec, memoryBackendDir: string, multifunction: boolean, migratable: boolean): string[] {
  // Function 0 of a multifunction device says so; QEMU then accepts functions 1-7 in the slot.
  const slot = multifunction ? `${addr(0)}.${ep.function ?? 0}${ep.function ? '' : ',multifunction=on'}` : addr(0);
  // The kind's own arguments come from the table of endpoint kinds (src/lab/endpoints.ts).
  const args = endpointQemuArgs(ep, { at: `id=${ep.id},bus=${ep.port},addr=${slot}`, backingFile: path.join(memoryBackendDir, ep.id), optValue });
  // master=on: this QEMU owns the shared memory and migrates it with the guest's RAM (QEMU 7.2 refuses to migrate peer mode).
  return migratable && ep.type === 'ivshmem-plain' ? args.map((a) => (a.startsWith('ivshmem-plain,') ? `${a},master=on` : a)) : args;
}

export function buildQemuCommand(input: QemuLaunchInput): QemuCommand {
  const { lab } = input;
  const { machine, topology } = lab;
  // The lab stage checked this for lab files; a LabSpec built in code gets the same limits.
  assertSlots(topology);
  if (machine.accel !== 'auto' && machine.accel !== input.accel) {
    throw new Error(`lab ${lab.name} asks for accel=${machine.accel} but the launch uses ${input.accel}`);
  }
  const words = [...input.append, ...accelKernelWords(input.accel), ...iommuKernelWords(lab.iommu), ...machine.cmdline];
  const bad = words.find((w) => w === '' || /\s/.test(w));
  if (bad !== undefined) throw new Error(`kernel command-line word ${JSON.stringify(bad)} is empty or contains whitespace`);
  const append = words.join(' ');
  if (machine.trace.length && !input.traceLog) throw new Error(`lab ${lab.name} enables QEMU trace events but the launch names no trace file`);

  const args: string[] = [
    // Interrupt remapping in an emulated IOMMU needs the split irqchip under KVM (TCG has no in-kernel irqchip).
    '-machine', `q35,accel=${input.accel}${input.accel === 'kvm' && (lab.iommu.kind === 'intel' || lab.iommu.kind === 'amd') ? ',kernel-irqchip=split' : ''}`,
    '-cpu', machine.cpu,
    '-m', `${machine.memoryMiB}M`,
    '-smp', String(machine.smp),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-kernel', input.kernelImage,
    '-initrd', input.initrd,
    '-append', append,
    // The vIOMMU first: it must exist before the PCI devices it translates for.
    ...iommuDevice(lab.iommu),
    '-drive', `file=${optValue(input.rootDisk)},if=none,id=root,format=qcow2,cache=unsafe`,
    '-device', `virtio-blk-pci,drive=root,serial=${DISK_SERIALS.root},addr=${addr(PCIE0_SLOTS.rootDisk)}`,
    '-drive', `file=${optValue(input.modulesDisk)},if=none,id=modules,format=raw,readonly=on`,
    '-device', `virtio-blk-pci,drive=modules,serial=${DISK_SERIALS.modules},addr=${addr(PCIE0_SLOTS.modulesDisk)}`,
    // restrict=on: the guest reaches nothing outside; only the forwarded ssh port comes in.
    '-netdev', `user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${input.sshPort}-:22`,
    '-device', `virtio-net-pci,netdev=net0,addr=${addr(PCIE0_SLOTS.net)}`,
    // file: takes the rest verbatim (no option parsing), so no comma escaping here.
    ...(input.migration
      ? ['-chardev', `file,id=hwlab-serial,path=${optValue(input.consoleLog)},append=on`, '-serial', 'chardev:hwlab-serial']
      : ['-serial', `file:${input.consoleLog}`]),
    '-qmp', `unix:${optValue(input.qmpSocket)},server=on,wait=off`,
    '-monitor', 'none',
    // The gdbstub listens on loopback only, like the SSH forward.
    ...(input.gdbPort !== undefined ? ['-gdb', `tcp:127.0.0.1:${input.gdbPort}`] : []),
    // Trace events to their own file (-D), not QEMU's stderr: a busy vIOMMU prints millions of lines.
    ...(machine.trace.length ? [...machine.trace.flatMap((ev) => ['-trace', `enable=${ev}`]), '-D', input.traceLog!] : []),
  ];

  // Each port has its own chassis number and the same slot number: (chassis, slot)
  // must be unique in QEMU, and unique slot numbers keep Linux's pciehp slot names apart.
  let chassis = 0;
  const portPath = new Map<string, string[]>();
  topology.rootPorts.forEach((rp, i) => {
    const slot = PCIE0_SLOTS.firstRootPort + i;
    chassis++;
    args.push('-device', `pcie-root-port,id=${rp.id},bus=pcie.0,chassis=${chassis},slot=${chassis},addr=${addr(slot)}`);
    portPath.set(rp.id, [devfn(slot)]);
  });
  for (const sw of switchesInCreationOrder(lab)) {
    const upstreamPath = [...portPath.get(sw.port)!, devfn(0)];
    args.push('-device', `x3130-upstream,id=${sw.id},bus=${sw.port},addr=${addr(0)}`);
    sw.downstream.forEach((dp, j) => {
      chassis++;
      args.push('-device', `xio3130-downstream,id=${dp},bus=${sw.id},chassis=${chassis},slot=${chassis},addr=${addr(j)}`);
      portPath.set(dp, [...upstreamPath, devfn(j)]);
    });
  }

  const pciPaths: Record<string, string[]> = {};
  for (const ep of topology.endpoints) {
    const parent = portPath.get(ep.port);
    if (!parent) throw new Error(`endpoint ${ep.id}: no port ${ep.port} (parseLab rejects this)`);
    const shared = topology.endpoints.filter((x) => x.port === ep.port).length > 1;
    args.push(...endpointArgs(ep, input.memoryBackendDir, shared, input.migration !== undefined));
    pciPaths[ep.id] = [...parent, devfn(0, ep.function ?? 0)];
  }

  if (input.migration === 'restore') args.push('-incoming', 'defer');
  return { binary: 'qemu-system-x86_64', args, pciPaths, append };
}
