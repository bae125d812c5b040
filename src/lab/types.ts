// LabSpec: the validated, fully-defaulted form of a lab file (labs/*.yaml).
// Everything downstream (kernel, image, qemu, guest, probes, results) takes
// these types, never raw YAML. Endpoints are declared by kind in
// src/lab/endpoints.ts, the one table of endpoint kinds.
import type { EndpointSpec } from './endpoints.ts';

export type { EndpointSpec, EndpointType } from './endpoints.ts';

export type Accel = 'auto' | 'kvm' | 'tcg';
export const ACCELS: readonly Accel[] = ['auto', 'kvm', 'tcg'];

export type IommuKind = 'intel' | 'amd' | 'virtio' | 'none';
export const IOMMU_KINDS: readonly IommuKind[] = ['intel', 'amd', 'virtio', 'none'];

/** Which binary layout of VFIO_DEVICE_FEATURE_DMA_BUF the kernel speaks (contract section 1). */
export type DmabufAbi = 'ranges' | 'v0';
export const DMABUF_ABIS: readonly DmabufAbi[] = ['ranges', 'v0'];

/** A prebuilt Debian kernel, e.g. `debian: linux-image-7.2`, resolved to the newest matching version. */
export interface DebianKernelSpec {
  kind: 'debian-prebuilt';
  /** As written in the lab: `linux-image-7.2`. */
  package: string;
  /** Kernel flavour suffix of the binary package: `amd64`, `cloud-amd64`. */
  flavour: string;
  /** Debian suite to fetch from (never added to the host's apt sources). */
  suite: string;
  /** Debian mirror to use. */
  mirror: string;
  /**
   * Fast path: rebuild these driver directories (default DEFAULT_DRIVER_DIRS)
   * from the matching linux-source with `patches` against the kernel's
   * linux-headers, and replace the stock modules in the guest.
   */
  driver?: { dirs: string[] };
  patches: PatchSourceSpec[];
}

/** Driver directories the fast path rebuilds when a lab's `kernel.driver` names none: the subject's driver. */
export const DEFAULT_DRIVER_DIRS = ['drivers/vfio/pci'];

/** Where the kernel source comes from (build-from-source labs). */
export type KernelSourceSpec =
  | { kind: 'debian-source'; package: string; suite: string; mirror: string }
  | { kind: 'git'; path: string; ref?: string }
  | { kind: 'tarball'; path: string };

/** A patch series entry; paths are absolute (resolved against the lab file). */
export type PatchSourceSpec = { kind: 'file'; path: string } | { kind: 'quilt'; dir: string } | { kind: 'mbox'; path: string };

/** A kernel built from source: tree + patches + config fragments checked against Kconfig. */
export interface SourceKernelSpec {
  kind: 'source';
  source: KernelSourceSpec;
  patches: PatchSourceSpec[];
  config: {
    /** make target for the base config (default tinyconfig: the lean guest base). */
    base: string;
    /** Fragment files, absolute paths, merged in order (later wins). */
    fragments: string[];
  };
}

export type KernelSpec = DebianKernelSpec | SourceKernelSpec;

export interface MachineSpec {
  /** QEMU -cpu model. Default EPYC: the CPU model decides p2pdma host-bridge cases (contract section 4). */
  cpu: string;
  memoryMiB: number;
  smp: number;
  accel: Accel;
  /** Extra kernel command-line words appended after hwlab's own. */
  cmdline: string[];
  /** QEMU trace events or patterns to enable (`-trace enable=`); they go to qemu-trace.log in the run folder. */
  trace: string[];
}

export interface IommuSpec {
  kind: IommuKind;
  /** intel-iommu caching-mode=on. */
  cachingMode: boolean;
  /** iommu.strict=1 on the kernel command line (strict TLB invalidation). */
  strict: boolean;
  /** iommu.passthrough=1: identity domains (the "direct" p2pdma map type). */
  passthrough: boolean;
}

export interface RootPortSpec {
  id: string;
}

/** A PCIe switch: x3130-upstream below `port`, with xio3130-downstream ports. */
export interface SwitchSpec {
  id: string;
  /** Id of the root port or downstream port the upstream port plugs into. */
  port: string;
  /** Ids of the downstream ports this switch provides, in order. */
  downstream: string[];
}

export interface TopologySpec {
  rootPorts: RootPortSpec[];
  switches: SwitchSpec[];
  endpoints: EndpointSpec[];
}

export interface ProbeSpec {
  /** Name from the probe catalog (guest/probes/catalog.ts). */
  name: string;
  /** Endpoint id the probe works on. */
  device: string;
  /** Probe-specific parameters, validated against the catalog. */
  params: Record<string, unknown>;
  /** Known failure on this kernel: the probe's failures become TAP todo with this reason. */
  expectFail?: string;
  /** Which failures expectFail covers (expect_fail's points / errno); absent: every failure of the probe. */
  expectFailScope?: { points?: string[]; errno?: string[] };
  /** Seconds this probe may run before the host calls it hung (`timeout`, else `timeouts.probe`). */
  timeoutSec: number;
}

/**
 * One entry of a lab's `selftests:`: a kselftest collection (a directory under
 * tools/testing/selftests of the lab's own kernel tree) and one of its tests,
 * or every test of the collection when `test` is absent.
 */
export interface SelftestSpec {
  /** tools/testing/selftests/<collection>: vfio, iommu, dmabuf-heaps, drivers/dma-buf. */
  collection: string;
  /** A test program of the collection (its kselftest-list.txt name); absent: all of them. */
  test?: string;
  /** Endpoint ids whose guest BDFs the test gets as trailing arguments (bound to vfio-pci first). */
  devices: string[];
  /** Seconds one test may run before hwlab lists the blocked tasks and kills it. */
  timeoutSec: number;
  /** Known failure on this kernel or emulator: the test's failures become TODO with this reason. */
  expectFail?: string;
  /** Where the entry is in the lab file (`labs/x.yaml:12:5`), for errors found after loading (an unknown collection). */
  at: string;
}

export interface TimeoutsSpec {
  /** Seconds from QEMU start until SSH answers. */
  bootSec: number;
  /** Seconds for all probes of one boot. */
  probesSec: number;
  /** Default seconds for one probe; past it the probe is hung and the probe phase ends. */
  probeSec: number;
  /** Seconds for a clean poweroff before QEMU is killed. */
  shutdownSec: number;
  /** Seconds the probe runner has to exit after its last probe closed; past it the phase ends with blocked tasks. */
  runnerExitSec: number;
}

export interface LabSpec {
  /** Absolute path of the lab file this came from. */
  file: string;
  name: string;
  description: string;
  kernel: KernelSpec;
  /** Name of a recipe in images/ (without .yaml). */
  image: string;
  machine: MachineSpec;
  iommu: IommuSpec;
  topology: TopologySpec;
  /** Driver modules hwlab loads in the guest before the probes. */
  modules: string[];
  dmabufAbi: DmabufAbi;
  probes: ProbeSpec[];
  /** The kernel's own selftests, run after the probes (absent or empty: none; optional so labs built in code need not say). */
  selftests?: SelftestSpec[];
  /** Patches to the selftests alone (`selftests.patches`), applied after the kernel's series to their build only. */
  selftestPatches?: PatchSourceSpec[];
  timeouts: TimeoutsSpec;
}
