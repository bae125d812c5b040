// Finds kernel reports in lines of kernel log, the same way for the host's
// serial console and the guest's /dev/kmsg records: a report is a block of
// lines that starts at a format's start line (or a cut-here), takes in the
// other starts printed in its header (refcount_t's message, the WARNING it
// raises, a panic_on_warn panic) and is named by the most specific of them.
// Each report is returned once per occurrence; dedupByTitle counts them.

import { CUT_HERE_FALLBACK, fallbackTitle, PANIC_AFTER, REPORT_FORMATS, titleOf, type ReportFormat } from './formats.ts';
import type { KernelReport } from './kernel-report.ts';
import { consoleLines, kmsgLines, type KmsgLike, type ReportLine } from './lines.ts';

/** Longest excerpt kept; the rest of a long report (lockdep chains, big stacks) is in the log. */
export const MAX_EXCERPT_LINES = 60;
/** Lines after a block's start in which other starts are part of the same report. */
const HEADER_MAX_LINES = 10;
/**
 * A panic this close after a report is that report's consequence ("Fatal exception" after an oops's
 * end marker and repeated register dump, hung_task_panic, panic_on_warn), not a new bug.
 */
const PANIC_MERGE_GAP = 20;

const CUT_HERE = /^-+\[ cut here \]-+\s*$/;
const SEPARATOR = /^={20,}\s*$/;
const END_MARKER = /^-+\[ end (?:trace|Kernel panic)\b.*\]-+/;
// Lines that close a report's header: the register dump and stack follow.
const HEADER_STOP = /^(?:CPU: \d+ (?:UID: \d+ )?PID: \d+|Hardware name:|Call Trace:|Call trace:)/;

interface StartHit {
  format: ReportFormat;
  groups: Record<string, string | undefined>;
}

function matchStart(l: ReportLine): StartHit | undefined {
  if (!l.kernel) return undefined;
  for (const format of REPORT_FORMATS) {
    const m = format.start.exec(l.text);
    if (m) return { format, groups: { ...m.groups } };
  }
  return undefined;
}

function pickPrimary(hits: readonly StartHit[]): StartHit | undefined {
  let best: StartHit | undefined;
  for (const h of hits) if (!best || h.format.specificity > best.format.specificity) best = h;
  return best;
}

const isBlankUserLine = (l: ReportLine) => !l.kernel && l.text.trim() === '';

/** Every kernel report in `lines`, in order, each with count 1. */
export function findKernelReports(lines: readonly ReportLine[]): KernelReport[] {
  const out: KernelReport[] = [];
  // End (exclusive) of the last report block: starts before it belong to it.
  let prevEnd = -1;
  let prev: KernelReport | undefined;

  let i = 0;
  while (i < lines.length) {
    const l = lines[i];
    const cut = l.kernel && CUT_HERE.test(l.text);
    const direct = cut ? undefined : matchStart(l);
    if (!cut && !direct) {
      i++;
      continue;
    }
    let start = i;
    // KASAN's and lockdep's "=====" preamble belongs to the report.
    if (!cut && i > 0 && i - 1 >= prevEnd && SEPARATOR.test(lines[i - 1].text)) start = i - 1;

    // Header: the lines up to the register dump / stack, where co-printed starts live.
    const hits: StartHit[] = direct ? [direct] : [];
    let headerEnd = i + 1;
    for (; headerEnd < lines.length && headerEnd < start + HEADER_MAX_LINES; headerEnd++) {
      const h = lines[headerEnd];
      if (isBlankUserLine(h)) break;
      if (!h.kernel) continue;
      if (HEADER_STOP.test(h.text) || END_MARKER.test(h.text)) break;
      if (CUT_HERE.test(h.text)) {
        // A second cut-here after we already know what this is opens a new report.
        if (hits.some((x) => !x.format.insideWarn)) break;
        continue;
      }
      const hit = matchStart(h);
      if (!hit) continue;
      // Two independent reports back to back (two hung tasks) are not one header.
      if (hits.some((x) => x.format === hit.format && x.format.kind !== 'panic')) break;
      hits.push(hit);
    }
    const primary = pickPrimary(hits);

    // Body: until the end marker, a fresh report, a blank line that is not the kernel's, or the size cap.
    let end = headerEnd;
    for (; end < lines.length && end < start + MAX_EXCERPT_LINES; end++) {
      const b = lines[end];
      if (isBlankUserLine(b)) break;
      if (!b.kernel) continue;
      if (END_MARKER.test(b.text)) {
        end++;
        break;
      }
      if (primary?.format.closedBySeparator && SEPARATOR.test(b.text)) {
        end++;
        break;
      }
      if (CUT_HERE.test(b.text) || matchStart(b)) break;
      if (SEPARATOR.test(b.text) && end + 1 < lines.length && matchStart(lines[end + 1])) break;
    }

    const block = lines.slice(start, end);
    const format = primary?.format ?? CUT_HERE_FALLBACK;
    const report: KernelReport = {
      kind: format.kind,
      title: primary ? titleOf(primary.format, primary.groups, block) : fallbackTitle(block),
      count: 1,
      line: start + 1,
      fatal: hits.some((h) => h.format.fatal),
      excerpt: block.map((b) => b.raw).join('\n'),
    };
    const ts = block.find((b) => b.ts !== undefined)?.ts;
    if (ts !== undefined) report.timestampSec = ts;

    const consequence = report.kind === 'panic' && (start - prevEnd <= PANIC_MERGE_GAP || PANIC_AFTER.test(primary?.groups.reason ?? ''));
    if (prev && consequence) {
      // "Kernel panic - not syncing: Fatal exception" after an oops is that oops' consequence.
      prev.fatal = true;
      // The excerpt runs on to the panic, within the cap (the panic line itself is always kept).
      const from = prev.line - 1;
      const upTo = Math.min(end, from + MAX_EXCERPT_LINES);
      prev.excerpt = [...lines.slice(from, upTo), ...(upTo < end ? lines.slice(start, end) : [])].map((b) => b.raw).join('\n');
    } else {
      out.push(report);
      prev = report;
    }
    prevEnd = end;
    i = Math.max(end, i + 1);
  }
  return out;
}

/** The host's entry: reports in a serial console log (line numbers are console lines). */
export function findConsoleReports(consoleText: string): KernelReport[] {
  return findKernelReports(consoleLines(consoleText));
}

/** The guest's entry: reports in /dev/kmsg records (line numbers count the records' lines). */
export function findKmsgReports(records: readonly KmsgLike[]): KernelReport[] {
  return findKernelReports(kmsgLines(records));
}
