// The endpoint kinds a lab can put in its topology, in one table. Each entry
// holds the fields a lab file sets (units, defaults, constraints), the QEMU
// arguments that create the device, the PCI functions it takes, and what the
// guest needs to know about it. Everything else derives from the table: the
// EndpointSpec type, the lab schema (src/lab/schema.ts builds zod from the
// fields), the QEMU command line (src/machine/cmdline.ts), the runner's
// config check, and which endpoints each probe takes
// (src/guest/probes/catalog.ts, from capabilities). Adding an endpoint kind is
// adding an entry here.
//
// Plain data and small pure functions only: the in-guest probe bundle imports
// this file (through src/protocol), so nothing here may import zod, yaml or
// other host-only code.

// ---------------------------------------------------------------------------
// Fields a lab file sets on an endpoint, besides id, type, port and function.

/** A size in MiB, written `64M`, `2G` or a bare number of MiB (like QEMU's -m). */
export interface MibField {
  kind: 'mib';
  /** The key in the lab file (snake_case). */
  key: string;
  /** MiB when the lab leaves the key out. */
  default: number;
  /** A BAR's size: QEMU rounds other sizes up, or refuses them. */
  powerOfTwo?: boolean;
  /** Largest size QEMU accepts (it clamps larger ones silently). */
  max?: number;
}

/** An integer within bounds. */
export interface IntField {
  kind: 'int';
  /** The key in the lab file (snake_case). */
  key: string;
  default: number;
  min: number;
  max: number;
}

/** A short string that goes into a QEMU option; when the lab leaves it out, the endpoint's id. */
export interface IdStringField {
  kind: 'id-string';
  /** The key in the lab file (snake_case). */
  key: string;
  /** Allowed characters, as the inside of a regex character class (never a comma: QEMU option syntax). */
  chars: string;
  /** The same characters in words, for messages: `A-Z, a-z, 0-9, _, . or -`. */
  charsWords: string;
  maxLength: number;
}

export type FieldSpec = MibField | IntField | IdStringField;
export type Fields = Readonly<Record<string, FieldSpec>>;

/** The LabSpec value of each field: sizes and integers are numbers, strings strings. */
export type FieldValues<F extends Fields> = { -readonly [P in keyof F]: F[P] extends IdStringField ? string : number };

/** The full regex an id-string field's value must match. */
export function idStringPattern(f: IdStringField): RegExp {
  return new RegExp(`^[${f.chars}]{1,${f.maxLength}}$`);
}

// ---------------------------------------------------------------------------
// What the guest knows about a kind.

/** What sits behind the exported BAR. */
export type BarContents =
  /** Memory that keeps what is written (RAM, a controller memory buffer, VRAM): DMA data checks through an import work. */
  | 'memory'
  /** Device registers: the BAR exports and imports, but bytes do not read back as written. */
  | 'registers'
  /** An empty window nothing decodes: only the export's own checks (the errno table) mean anything. */
  | 'nothing';

export interface GuestFacts {
  /** The BAR (VFIO region index) the probes export unless the lab sets `region`; null when the kind has no memory BAR. */
  exportBar: number | null;
  /** What sits behind exportBar. */
  contents: BarContents;
  /** A DMA engine hwlab_importer drives (edu): the importer side of the data checks. */
  dmaEngine: boolean;
}

/**
 * What a probe can ask of the endpoint it takes (or of an endpoint a param
 * names), as predicates on GuestFacts. The probe catalogue lists
 * capabilities; the kinds follow from the table.
 */
export const CAPABILITIES = {
  /** A memory BAR VFIO can export: the export's errno table can be posed. */
  'exports': (g: GuestFacts) => g.exportBar !== null,
  /** A memory BAR with something behind it: the probes that map, revoke and import, beyond the errno table. */
  'exports-device-memory': (g: GuestFacts) => g.exportBar !== null && g.contents !== 'nothing',
  /** A memory BAR that keeps what is written: DMA through an import can be checked byte for byte. */
  'exports-memory': (g: GuestFacts) => g.exportBar !== null && g.contents === 'memory',
  /** A DMA engine hwlab_importer drives. */
  'dma-engine': (g: GuestFacts) => g.dmaEngine,
} as const;
export type Capability = keyof typeof CAPABILITIES;

// ---------------------------------------------------------------------------
// The table.

/** Where an endpoint goes on the QEMU command line, worked out by src/machine/cmdline.ts. */
export interface QemuPlacement {
  /** `id=<id>,bus=<port>,addr=<slot.fn>[,multifunction=on]`, for the -device option. */
  at: string;
  /** A host file of the endpoint's own, for backing memory (under the run's memory backend directory). */
  backingFile: string;
  /** Escapes a value inside a QEMU `key=value,...` option (commas doubled). */
  optValue(v: string): string;
}

interface EndpointBase {
  id: string;
  /** Id of a root port or switch downstream port. */
  port: string;
  /**
   * PCI function number (1-7) when several endpoints share a port as one
   * multifunction device; absent for function 0. Functions of one device share
   * a slot reset, so VFIO_DEVICE_PCI_HOT_RESET resets them together.
   */
  function?: number;
}

/** An endpoint of a kind with fields F, as LabSpec holds it. */
export type EndpointOf<F extends Fields, T extends string = string> = EndpointBase & { type: T } & FieldValues<F>;

export interface EndpointKind<F extends Fields = Fields> {
  /** What the QEMU device is, and what a lab uses it for. */
  doc: string;
  /** Lab-file fields beyond id, type, port and function, by LabSpec (camelCase) name, in the order they are listed. */
  fields: F;
  /** What the endpoint takes of its port. */
  slot: {
    /** PCI functions from its `function` on (1: one function of the port's device). */
    functions: number;
  };
  guest: GuestFacts;
  /**
   * The PCI `vendor:device` ID QEMU gives the device (lower-case hex, as sysfs
   * shows it without 0x). hwlab compares it with what the guest enumerated at
   * the endpoint's devfn path, so a probe never runs on another device.
   */
  pciId: string;
  /** The QEMU arguments that create the endpoint (checked against QEMU 7.2). */
  qemu(ep: EndpointOf<F>, where: QemuPlacement): string[];
}

/** Infers an entry's field types, so that its qemu() sees them. */
const kind = <const F extends Fields>(k: EndpointKind<F>): EndpointKind<F> => k;

export const ENDPOINT_KINDS = {
  'ivshmem-plain': kind({
    doc: 'Inter-VM shared memory: a host memory-backend-file shown as BAR2 (64-bit, prefetchable), so bytes written by the guest, the host or a DMA engine can be compared. The main exporter.',
    fields: {
      /** Size of the shared memory (BAR2), MiB, power of two. */
      memoryMiB: { kind: 'mib', key: 'memory', default: 64, powerOfTwo: true },
    },
    slot: { functions: 1 },
    guest: { exportBar: 2, contents: 'memory', dmaEngine: false },
    pciId: '1af4:1110',
    // share=on: the host (and tests) can see the same bytes the guest's BAR2 shows.
    qemu: (ep, q) => [
      '-object', `memory-backend-file,id=mem-${ep.id},size=${ep.memoryMiB}M,mem-path=${q.optValue(q.backingFile)},share=on`,
      '-device', `ivshmem-plain,${q.at},memdev=mem-${ep.id}`,
    ],
  }),
  'edu': kind({
    doc: 'QEMU\'s educational device: a DMA engine (4 KiB buffer in BAR0 at 0x40000) that hwlab_importer points at the addresses a mapping returned, to prove the mapping reaches the exporter\'s memory. Exports too: BAR0 is its registers.',
    fields: {
      /** DMA mask width in bits (QEMU default 28; 64 to reach any address). */
      dmaMaskBits: { kind: 'int', key: 'dma_mask', default: 28, min: 28, max: 64 },
    },
    slot: { functions: 1 },
    guest: { exportBar: 0, contents: 'registers', dmaEngine: true },
    pciId: '1234:11e8',
    // edu's dma_mask is a uint64 mask (default (1<<28)-1), not a bit count.
    qemu: (ep, q) => ['-device', `edu,${q.at},dma_mask=0x${((1n << BigInt(ep.dmaMaskBits)) - 1n).toString(16)}`],
  }),
  'nvme': kind({
    doc: 'An NVMe controller with a controller memory buffer (CMB, BAR2): a second exporter with a real controller behind it, which has PCIe FLR and a PM capability (ivshmem-plain has neither).',
    fields: {
      /** Controller memory buffer size (BAR2), MiB. */
      cmbSizeMiB: { kind: 'mib', key: 'cmb_size', default: 64 },
      /** Serial number; NVMe's field is 20 bytes. Default: the endpoint id. */
      serial: { kind: 'id-string', key: 'serial', chars: 'A-Za-z0-9_.-', charsWords: 'A-Z, a-z, 0-9, _, . or -', maxLength: 20 },
    },
    slot: { functions: 1 },
    guest: { exportBar: 2, contents: 'memory', dmaEngine: false },
    pciId: '1b36:0010',
    // No drive: a controller without namespaces is enough to export its CMB.
    qemu: (ep, q) => ['-device', `nvme,${q.at},serial=${ep.serial},cmb_size_mb=${ep.cmbSizeMiB}`],
  }),
  'pci-testdev': kind({
    doc: 'QEMU\'s PCI test device, conventional PCI with no guest driver: BAR0 memory (one page), BAR1 I/O ports, BAR2 a 64-bit prefetchable window with nothing behind it. It gives the errno table the BAR shapes the others lack (an I/O BAR, the upper half of a 64-bit BAR).',
    fields: {
      /** Size of BAR2, MiB, power of two. */
      membarMiB: { kind: 'mib', key: 'membar', default: 4, powerOfTwo: true },
    },
    slot: { functions: 1 },
    guest: { exportBar: 2, contents: 'nothing', dmaEngine: false },
    pciId: '1b36:0005',
    qemu: (ep, q) => ['-device', `pci-testdev,${q.at},membar=${ep.membarMiB}M`],
  }),
  'secondary-vga': kind({
    doc: 'QEMU\'s secondary (non-boot) standard VGA, conventional PCI, class 0x0380 (display, not VGA-compatible, so the VGA arbiter and VFIO\'s VGA region leave it alone): BAR0 is its VRAM (32-bit, prefetchable, RAM behind it), BAR2 a 4 KiB register page. A second kind of memory exporter, with no driver bound in the lean guest kernel (no DRM).',
    fields: {
      /** VRAM size (BAR0), MiB, power of two, at most 512 (QEMU rounds other sizes up and clamps larger ones). */
      vgamemMiB: { kind: 'mib', key: 'vgamem', default: 16, powerOfTwo: true, max: 512 },
    },
    slot: { functions: 1 },
    guest: { exportBar: 0, contents: 'memory', dmaEngine: false },
    pciId: '1234:1111',
    qemu: (ep, q) => ['-device', `secondary-vga,${q.at},vgamem_mb=${ep.vgamemMiB}`],
  }),
} as const;

export type EndpointType = keyof typeof ENDPOINT_KINDS;

/** Endpoint kinds in table order (the order messages list them in). */
export const ENDPOINT_TYPES = Object.keys(ENDPOINT_KINDS) as EndpointType[];

/** One endpoint of the lab's topology, with its kind's fields (LabSpec form). */
export type EndpointSpec = { [T in EndpointType]: EndpointOf<(typeof ENDPOINT_KINDS)[T]['fields'], T> }[EndpointType];

export function isEndpointType(t: unknown): t is EndpointType {
  return typeof t === 'string' && Object.prototype.hasOwnProperty.call(ENDPOINT_KINDS, t);
}

/** The table entry of a kind, with its field types erased (for code that handles every kind alike). */
export function endpointKind(t: EndpointType): EndpointKind {
  return ENDPOINT_KINDS[t] as unknown as EndpointKind;
}

/** What the guest knows about a kind. */
export function guestFacts(t: EndpointType): GuestFacts {
  return ENDPOINT_KINDS[t].guest;
}

/** Kinds with a capability, in table order. */
export function kindsWith(cap: Capability): EndpointType[] {
  return ENDPOINT_TYPES.filter((t) => CAPABILITIES[cap](ENDPOINT_KINDS[t].guest));
}

/** The QEMU arguments of one endpoint. */
export function endpointQemuArgs(ep: EndpointSpec, where: QemuPlacement): string[] {
  return endpointKind(ep.type).qemu(ep as unknown as EndpointOf<Fields>, where);
}
