// Probe registry. Loaded by the runner through a dynamic import, so a failure to
// load koffi turns into failing probes rather than a crashed runner.
import type { ProbeName } from './catalog.ts';
import type { Probe } from './common.ts';
import dmabufBadInputs from './dmabuf-bad-inputs.ts';
import dmabufExport from './dmabuf-export.ts';
import dmabufFd from './dmabuf-fd.ts';
import exportRanges from './export-ranges.ts';
import faultInject from './fault-inject.ts';
import hotResetSet from './hot-reset-set.ts';
import importerMultirange from './importer-multirange.ts';
import importerRefusals from './importer-refusals.ts';
import iommufdMapFile from './iommufd-map-file.ts';
import lifetime from './lifetime.ts';
import mapType from './map-type.ts';
import rdmaRegDmabufMr from './rdma-reg-dmabuf-mr.ts';
import resetAndMemToggle from './reset-and-mem-toggle.ts';
import revokeTriggers from './revoke-triggers.ts';
import roughEdges from './rough-edges.ts';
import stress from './stress.ts';
import surpriseRemoval from './surprise-removal.ts';

export const PROBE_IMPLS: Record<ProbeName, Probe> = {
  'dmabuf-export': dmabufExport,
  'dmabuf-fd': dmabufFd,
  'dmabuf-bad-inputs': dmabufBadInputs,
  'reset-and-mem-toggle': resetAndMemToggle,
  'importer-refusals': importerRefusals,
  'revoke-triggers': revokeTriggers,
  'map-type': mapType,
  'importer-multirange': importerMultirange,
  'rdma-reg-dmabuf-mr': rdmaRegDmabufMr,
  'iommufd-map-file': iommufdMapFile,
  'export-ranges': exportRanges,
  'lifetime': lifetime,
  'rough-edges': roughEdges,
  'stress': stress,
  'surprise-removal': surpriseRemoval,
  'hot-reset-set': hotResetSet,
  'fault-inject': faultInject,
};
