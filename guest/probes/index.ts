// Probe registry. Loaded by the runner through a dynamic import, so a failure to
// load koffi turns into failing probes rather than a crashed runner.
import type { ProbeName } from './catalog.ts';
import type { Probe } from './common.ts';
import dmabufBadInputs from './dmabuf-bad-inputs.ts';
import dmabufExport from './dmabuf-export.ts';
import dmabufFd from './dmabuf-fd.ts';
import resetAndMemToggle from './reset-and-mem-toggle.ts';

export const PROBE_IMPLS: Record<ProbeName, Probe> = {
  'dmabuf-export': dmabufExport,
  'dmabuf-fd': dmabufFd,
  'dmabuf-bad-inputs': dmabufBadInputs,
  'reset-and-mem-toggle': resetAndMemToggle,
};
