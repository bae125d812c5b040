// Which probe a kernel report belongs to. The guest runner writes a begin and
// an end marker per probe to /dev/kmsg, so the console carries each probe's
// time window; a report whose printk time falls inside one belongs to that
// probe and fails it. Attribution works on single reports; the per-probe and
// per-run lists are then kept one entry per title, with counts.

import { parseProbeMarker, parseSelftestMarker } from '../protocol/protocol.ts';
import { dedupByTitle, describeReport, type KernelReport } from '../report/kernel-report.ts';
import { consoleLines } from '../report/lines.ts';
import { TAP_STREAM_PROBE, type ProbeResult } from './tap.ts';

/** A probe as the runner counted it: `index` is its 1-based place in the run config (a probe may run more than once). */
export interface ProbeRef {
  index: number;
  probe: string;
}

export interface ProbeWindow extends ProbeRef {
  /** Kernel printk time (seconds since boot) when the probe started. */
  startSec: number;
  endSec: number;
}

/**
 * Probe windows from the markers in the console. A begin without an end (the
 * guest died mid-probe) runs to the end of the log.
 */
export function probeWindowsFromConsole(consoleText: string, parse: (message: string) => { edge: 'begin' | 'end'; index: number; probe: string } | null = parseProbeMarker): ProbeWindow[] {
  const open = new Map<number, { ref: ProbeRef; startSec: number }>();
  const windows: ProbeWindow[] = [];
  for (const l of consoleLines(consoleText)) {
    const m = l.ts === undefined ? null : parse(l.text);
    if (!m) continue;
    const o = open.get(m.index);
    if (m.edge === 'begin') open.set(m.index, { ref: { index: m.index, probe: m.probe }, startSec: l.ts! });
    else if (o && o.ref.probe === m.probe) {
      windows.push({ ...o.ref, startSec: o.startSec, endSec: l.ts! });
      open.delete(m.index);
    }
  }
  for (const { ref, startSec } of open.values()) windows.push({ ...ref, startSec, endSec: Number.POSITIVE_INFINITY });
  return windows;
}

/** The selftests' windows (hwlab-selftest markers, see src/guest/kselftest/run-one.sh); `probe` is `collection:test`. */
export function selftestWindowsFromConsole(consoleText: string): ProbeWindow[] {
  return probeWindowsFromConsole(consoleText, (text) => {
    const m = parseSelftestMarker(text);
    return m ? { edge: m.edge, index: m.index, probe: m.test } : null;
  });
}

export interface Attribution {
  /** Each window that holds reports, with them, in order. */
  byProbe: Array<{ window: ProbeWindow; reports: KernelReport[] }>;
  /** Reports without a timestamp or outside every window (boot, shutdown, between probes). */
  unattributed: KernelReport[];
}

/** Puts each report in the window whose [startSec, endSec] holds its printk timestamp. */
export function attributeReports(reports: readonly KernelReport[], windows: readonly ProbeWindow[]): Attribution {
  const byWindow = new Map<ProbeWindow, KernelReport[]>();
  const unattributed: KernelReport[] = [];
  for (const r of reports) {
    const ts = r.timestampSec;
    const w = ts === undefined ? undefined : windows.find((x) => ts >= x.startSec && ts <= x.endSec);
    if (!w) {
      unattributed.push(r);
      continue;
    }
    const list = byWindow.get(w) ?? [];
    list.push(r);
    byWindow.set(w, list);
  }
  return { byProbe: [...byWindow].map(([window, list]) => ({ window, reports: list })), unattributed };
}

/**
 * Attaches the reports inside a probe's window to that probe (one entry per
 * title, with counts) and fails it, even if every assertion passed: a probe
 * that ran while the kernel WARNed has not shown the driver is healthy. A
 * known failure (TODO) keeps its reports but stays TODO.
 */
export function attachKernelReports(probes: ProbeResult[], reports: readonly KernelReport[], windows: readonly ProbeWindow[]): void {
  const real = probes.filter((p) => p.name !== TAP_STREAM_PROBE);
  for (const { window, reports: list } of attributeReports(reports, windows).byProbe) {
    const p = real[window.index - 1];
    if (!p || p.name !== window.probe) continue;
    p.kernelReports = dedupByTitle([...p.kernelReports, ...list]);
    if (p.ok && p.todo === undefined) {
      p.ok = false;
      p.diagnostics = { ...(p.diagnostics ?? {}), kernelReports: p.kernelReports.map(describeReport) };
    }
  }
}

/**
 * The run's reports (one per title) that no probe accounts for: per title,
 * the run's count less the counts its probes hold. A title seen both inside
 * a probe and outside every window shows in both places.
 */
export function unattributedReports(run: readonly KernelReport[], probes: ReadonlyArray<Pick<ProbeResult, 'kernelReports'>>): KernelReport[] {
  const held = new Map<string, number>();
  for (const p of probes) for (const r of p.kernelReports) held.set(r.title, (held.get(r.title) ?? 0) + r.count);
  return run.flatMap((r) => {
    const left = r.count - (held.get(r.title) ?? 0);
    return left > 0 ? [{ ...r, count: left }] : [];
  });
}
