// What a kernel report is once found, shared by the host (console) and the
// guest (/dev/kmsg): its kind, a stable title, how often that title came, and
// the first occurrence's place and text. A broken kernel can WARN hundreds of
// times; results keep each title once with a count, never one entry per WARN.
// Pure data and functions: the guest bundle imports this, so nothing host-only.

export type KernelReportKind =
  | 'WARNING'
  | 'BUG'
  | 'Oops'
  | 'KASAN'
  | 'KFENCE'
  | 'KCSAN'
  | 'UBSAN'
  | 'panic'
  | 'lockdep'
  | 'refcount'
  | 'DMA-API'
  | 'ODEBUG'
  | 'list corruption'
  | 'hung task'
  | 'RCU stall'
  | 'lockup'
  | 'kmemleak';

export interface KernelReport {
  kind: KernelReportKind;
  /** Stable, address-free title, e.g. "WARNING in vfio_pci_dma_buf_move": the same bug gives the same title on every run. */
  title: string;
  /** Reports with this title (1 for a single report; deduplicated lists add them up). */
  count: number;
  /** 1-based input line (console line, or kmsg line for the guest) where the first occurrence starts. */
  line: number;
  /** printk time (seconds since boot) of the first occurrence's first timestamped line. */
  timestampSec?: number;
  /** The kernel is unusable after it (oops, panic), for any occurrence. */
  fatal: boolean;
  /** The first occurrence's lines, as printed. */
  excerpt: string;
}

/**
 * One entry per title, in order of first appearance: the first occurrence's
 * line, time and excerpt, the counts added up, fatal if any occurrence was.
 */
export function dedupByTitle(reports: readonly KernelReport[]): KernelReport[] {
  const byTitle = new Map<string, KernelReport>();
  for (const r of reports) {
    const seen = byTitle.get(r.title);
    if (!seen) byTitle.set(r.title, { ...r });
    else {
      seen.count += r.count;
      seen.fatal ||= r.fatal;
    }
  }
  return [...byTitle.values()];
}

/** " (x899)" for a repeated title, nothing for a single report. */
export function countSuffix(r: Pick<KernelReport, 'count'>): string {
  return r.count > 1 ? ` (x${r.count})` : '';
}

/** One line per title, as verdict reasons and failure lists show it: "WARNING (fatal): WARNING in f (x3)". */
export function describeReport(r: Pick<KernelReport, 'kind' | 'title' | 'fatal' | 'count'>): string {
  return `${r.kind}${r.fatal ? ' (fatal)' : ''}: ${r.title}${countSuffix(r)}`;
}

/** Excerpt lines a diagnostic shows; the whole excerpt stays in results.json. */
export const EXCERPT_PREVIEW_LINES = 12;

/** What a failing "no kernel report" point carries in its TAP diagnostics. */
export interface KernelReportDiagnostic {
  kind: KernelReportKind;
  title: string;
  count: number;
  fatal: boolean;
  excerpt: string[];
}

export function reportDiagnostics(reports: readonly KernelReport[], lines = EXCERPT_PREVIEW_LINES): KernelReportDiagnostic[] {
  return reports.map((r) => ({ kind: r.kind, title: r.title, count: r.count, fatal: r.fatal, excerpt: r.excerpt.split('\n').slice(0, lines) }));
}
