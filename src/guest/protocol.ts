// The host/guest boundary of the probe runner. The host writes a
// GuestRunConfig as JSON, uploads it with the bundled runner, and runs
// `node runner.js config.json`; the runner prints TAP 14 on stdout, one
// subtest per probe. Nothing else crosses.

export type DmabufAbi = 'ranges' | 'v0';
export type EndpointType = 'ivshmem-plain' | 'edu' | 'nvme' | 'pci-testdev';

export interface GuestDevice {
  /** Endpoint id from the lab. */
  id: string;
  type: EndpointType;
  /** Resolved PCI address in the guest, e.g. 0000:02:00.0. */
  bdf: string;
  /** IOMMU group number in the guest, or null when the device has none (noiommu). */
  iommuGroup: number | null;
}

export interface GuestProbeRequest {
  name: string;
  device: GuestDevice;
  params: Record<string, unknown>;
  /** When set, failures of this probe are reported as TAP todo with this reason. */
  expectFail?: string;
}

export interface GuestRunConfig {
  abi: DmabufAbi;
  probes: GuestProbeRequest[];
  /**
   * Every endpoint of the lab by id, whether or not a probe targets it: probes
   * that need a second device (the edu DMA engine an importer attaches for, a
   * second exporter) find it here by the id a param names.
   */
  devices: Record<string, GuestDevice>;
}
