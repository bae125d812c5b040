// Kernel health from a serial console log, in the style of syzkaller's
// pkg/report: oops formats are data (start regex + title rule), a report is a
// block of console lines, and only anchored starts count, so driver names or
// user text that merely contain "BUG"/"WARNING" never raise a splat.

import { parseProbeMarker } from '../protocol/protocol.ts';

export type SplatKind =
  | 'WARNING'
  | 'BUG'
  | 'Oops'
  | 'KASAN'
  | 'KFENCE'
  | 'UBSAN'
  | 'panic'
  | 'lockdep'
  | 'refcount'
  | 'DMA-API'
  | 'hung task'
  | 'RCU stall'
  | 'lockup'
  | 'kmemleak';

export interface Splat {
  kind: SplatKind;
  /** Stable, address-free title, e.g. "WARNING in vfio_pci_dma_buf_move". */
  title: string;
  /** 1-based console line where the report block starts (the cut-here / ==== preamble when present). */
  line: number;
  /** printk timestamp (seconds since boot) of the first timestamped line of the block. */
  timestampSec?: number;
  /** True when the report means the kernel is unusable (oops/panic) or the block contains a panic. */
  fatal: boolean;
  /** The raw console lines of the report block. */
  excerpt: string;
}

/** One parsed console line: the message with printk prefixes removed. */
interface ConsoleLine {
  raw: string;
  /** Message text after `<lvl>[ ts][ T123]`; for untimestamped lines, the raw line. */
  msg: string;
  ts?: number;
}

/** What the title rule may look at: the start match and the whole report block. */
interface TitleContext {
  match: RegExpMatchArray;
  block: ConsoleLine[];
}

export interface OopsFormat {
  kind: SplatKind;
  /** Anchored at the start of the printk message, like syzkaller's oops titles. */
  start: RegExp;
  title: (ctx: TitleContext) => string;
  fatal: boolean;
  /**
   * When several formats start inside one report's header (e.g. refcount_t's
   * message + the WARNING it triggers + panic_on_warn's panic), the most
   * specific one names the report.
   */
  specificity: number;
}

const MAX_EXCERPT_LINES = 60;
/** Lines after a block's start in which other starts are part of the same report. */
const HEADER_MAX_LINES = 10;
/**
 * A panic this close after a report is that report's consequence ("Fatal exception" after an oops's
 * end marker and repeated register dump, hung_task_panic, panic_on_warn), not a new bug.
 */
const PANIC_MERGE_GAP = 20;

// `<4>[   12.345678][ T1234] msg` — level, timestamp and caller id are all optional.
const PRINTK_PREFIX = /^(?:<\d+>)?\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])?\s?/;
const CUT_HERE = /^-+\[ cut here \]-+\s*$/;
const SEPARATOR = /^={20,}\s*$/;
const END_MARKER = /^-+\[ end (?:trace|Kernel panic)\b.*\]-+/;
// Lines that close a report's header (WARN/oops register dump and stack follow).
const HEADER_STOP = /^(?:CPU: \d+ (?:UID: \d+ )?PID: \d+|Hardware name:|Call Trace:|Call trace:)/;
const FUNC = String.raw`([A-Za-z_][\w.$]*)\+0x[0-9a-f]+(?:\/0x[0-9a-f]+)?`;

/** Drop compiler clone suffixes so titles stay stable across builds. */
function cleanFunc(name: string): string {
  return name.replace(/\.(?:cold|isra|constprop|part|llvm|lto_priv)(?:\.\d+)*.*$/, '');
}

/** Faulting function from the register dump: x86 RIP, arm64 pc, arm32 PC. */
function pcFunc(block: ConsoleLine[]): string | undefined {
  const re = new RegExp(String.raw`^(?:RIP: [0-9a-f]{4}:|pc : |PC is at |NIP \[[0-9a-f]+\] )` + FUNC);
  for (const l of block) {
    const m = re.exec(l.msg);
    if (m) return cleanFunc(m[1]);
  }
  return undefined;
}

function withFunc(base: string, func: string | undefined): string {
  return func ? `${base} in ${func}` : base;
}

// Frames that are the mechanics of sleeping, not the place that is stuck.
const HUNG_SKIP =
  /^(?:__?schedule|schedule\w*|io_schedule\w*|preempt_schedule\w*|__?mutex_lock\w*|mutex_lock\w*|rwsem_down\w*|down_(?:read|write)\w*|__down\w*|down|down_\w+|rt_mutex\w*|__rt_mutex\w*|percpu_(?:down|rwsem)\w*|wait_for_completion\w*|__wait_for_common|wait_for_common\w*|__?flush_work\w*|__?flush_workqueue\w*|bit_wait\w*|out_of_line_wait_on_bit\w*|__wait_on_bit\w*|wait_on_\w+|folio_wait\w*|__folio_lock\w*|do_wait\w*|__pfx_\w+|__switch_to\w*|kthread|ret_from_fork\w*)$/;

/** First reliable (no "?") stack frame that is not scheduler/lock plumbing. */
function firstInterestingFrame(block: ConsoleLine[], skip: RegExp): string | undefined {
  const frame = new RegExp(String.raw`^\s*` + FUNC);
  let inTrace = false;
  for (const l of block) {
    if (/^\s*Call [Tt]race:/.test(l.msg)) {
      inTrace = true;
      continue;
    }
    if (!inTrace) continue;
    const m = frame.exec(l.msg);
    if (!m) continue;
    const f = cleanFunc(m[1]);
    if (!skip.test(f)) return f;
  }
  return undefined;
}

/**
 * The oops formats, most specific first. Each start is anchored at the start
 * of the printk message; `title` turns a block into a stable, address-free name.
 */
export const OOPS_FORMATS: readonly OopsFormat[] = [
  {
    kind: 'refcount',
    start: /^refcount_t: (.+?)\s*$/,
    title: ({ match }) => `refcount_t: ${match[1]}`,
    fatal: false,
    specificity: 5,
  },
  {
    // dma-debug's err_printk: "DMA-API: <driver> <device>: <what>" (pre-4.x kernels put the device first).
    // Its boot chatter ("DMA-API: preallocated 65536 debug entries") has no device and does not match.
    kind: 'DMA-API',
    start: /^(?:\S+ \S+: DMA-API: |DMA-API: \S+ \S+: )(.+?)\s*$/,
    title: ({ match }) => `DMA-API: ${match[1].replace(/\s*\[.*$/, '')}`,
    fatal: false,
    specificity: 5,
  },
  {
    kind: 'KASAN',
    start: new RegExp(String.raw`^BUG: KASAN: (.+?) in ` + FUNC),
    title: ({ match, block }) => {
      const access = block.map((l) => /^(Read|Write) of size/.exec(l.msg)?.[1]).find(Boolean);
      return `KASAN: ${match[1]}${access ? ` ${access}` : ''} in ${cleanFunc(match[2])}`;
    },
    fatal: false,
    specificity: 5,
  },
  {
    kind: 'KFENCE',
    start: new RegExp(String.raw`^BUG: KFENCE: (.+?) in ` + FUNC),
    title: ({ match }) => `KFENCE: ${match[1]} in ${cleanFunc(match[2])}`,
    fatal: false,
    specificity: 5,
  },
  {
    kind: 'UBSAN',
    start: /^UBSAN: ([\w-]+) in (\S+?)(?::\d+)*\s*$/,
    title: ({ match }) => `UBSAN: ${match[1]} in ${match[2]}`,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'lockdep',
    start:
      /^WARNING: (possible circular locking dependency detected|possible recursive locking detected|inconsistent lock state|possible irq lock inversion dependency detected|\S+-safe -> \S+-unsafe lock order detected|suspicious RCU usage|bad unlock balance detected!|held lock freed!|lock held when returning to user space!|lock held at task exit time!|.+ still has locks held!|Nested lock was not taken)/,
    title: ({ match, block }) => {
      // lockdep names the lock site as "..., at: func+0x12/0x40".
      const at = new RegExp(String.raw`\bat: (?:\[<[0-9a-f]+>\] )?` + FUNC);
      const m = block.map((l) => at.exec(l.msg)).find(Boolean);
      return withFunc(match[1].replace(/!$/, ''), m ? cleanFunc(m[1]) : undefined);
    },
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'hung task',
    start: /^INFO: task (.+):(\d+) blocked (?:in I\/O wait )?for more than (\d+) seconds\./,
    title: ({ match, block }) => {
      const f = firstInterestingFrame(block, HUNG_SKIP);
      return f ? `INFO: task hung in ${f}` : `INFO: task ${match[1]} blocked for more than ${match[3]} seconds`;
    },
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'RCU stall',
    start: /^(?:rcu: )?INFO: (rcu_\w+ (?:self-)?detected(?: expedited)? stalls?(?: on CPUs?(?:\/tasks)?)?)/,
    title: ({ match }) => `INFO: ${match[1]}`,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'lockup',
    start: /^(?:watchdog: )?(?:BUG: soft lockup - CPU#\d+ stuck for \d+s!|Watchdog detected hard LOCKUP on cpu \d+)/,
    title: ({ match, block }) => withFunc(match[0].includes('soft lockup') ? 'BUG: soft lockup' : 'hard LOCKUP', pcFunc(block)),
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'BUG',
    start: /^BUG: kernel NULL pointer dereference, address: /,
    title: ({ block }) => withFunc('BUG: kernel NULL pointer dereference', pcFunc(block)),
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^BUG: unable to handle (page fault|kernel NULL pointer dereference|kernel paging request)/,
    title: ({ match, block }) => withFunc(`BUG: unable to handle ${match[1]}`, pcFunc(block)),
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^Unable to handle kernel (NULL pointer dereference|paging request) at virtual address/,
    title: ({ match, block }) => withFunc(`Unable to handle kernel ${match[1]}`, pcFunc(block)),
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^kernel BUG at (\S+?)!?\s*$/,
    title: ({ match, block }) => {
      const f = pcFunc(block);
      return f ? `kernel BUG in ${f}` : `kernel BUG at ${match[1]}`;
    },
    fatal: true,
    specificity: 3,
  },
  {
    // Any other "BUG: <what>": sleeping in atomic, bad page state, workqueue lockup, ...
    kind: 'BUG',
    start: /^BUG: ([A-Za-z].*)$/,
    title: ({ match, block }) => {
      const what = match[1]
        .replace(/\s*\[[0-9a-f]+\]/g, '')
        .split(/,| - |!|: | at | in process | for address/)[0]
        .trim();
      return withFunc(`BUG: ${what}`, pcFunc(block));
    },
    fatal: false,
    specificity: 3,
  },
  {
    // Classic "WARNING: CPU: 0 PID: 1 at file.c:12 func+0x1/0x2 [mod]", the 6.19+ "WARNING: file.c:12 at
    // func+0x1/0x2, CPU#0: comm/1" and the pre-3.x "WARNING: at file.c:12 func+0x1/0x2()".
    kind: 'WARNING',
    start: /^WARNING: (?:CPU: \d+ PID: \d+ at (\S+)(.*)$|(\S+:\d+) at (\S+?),? CPU#\d+|at (\S+)(.*)$)/,
    title: ({ match, block }) => {
      const rest = match[2] ?? match[4] ?? match[6] ?? '';
      const m = new RegExp(String.raw`^\s*` + FUNC).exec(rest);
      const src = match[1] ?? match[3] ?? match[5];
      const f = m ? cleanFunc(m[1]) : pcFunc(block);
      return f ? `WARNING in ${f}` : `WARNING at ${src}`;
    },
    fatal: false,
    specificity: 2,
  },
  {
    kind: 'Oops',
    // 6.x "Oops: general protection fault, ...: 0000 [#1]", older kernels without "Oops: ", arm "Internal error: Oops:".
    start:
      /^(?:Oops: (?:([a-z][\w ]*?)(?:, [^:]*)?: )?[0-9a-f]{4} \[#\d+\]|(general protection fault|invalid opcode|stack segment|double fault)(?:, [^:]*)?: [0-9a-f]{4} \[#\d+\]|Internal error: Oops: [0-9a-f]+ \[#\d+\])/,
    title: ({ match, block }) => withFunc(match[1] ?? match[2] ?? 'Oops', pcFunc(block)),
    fatal: true,
    specificity: 1,
  },
  {
    kind: 'kmemleak',
    start: /^kmemleak: \d+ new suspected memory leaks?/,
    title: () => 'kmemleak: new suspected memory leaks',
    fatal: false,
    specificity: 1,
  },
  {
    kind: 'panic',
    start: /^Kernel panic - not syncing: ?(.*?)\s*$/,
    title: ({ match }) => `Kernel panic - not syncing: ${match[1]}`,
    fatal: true,
    specificity: 0,
  },
];

function parseLines(text: string): ConsoleLine[] {
  return text.split(/\r?\n/).map((raw) => {
    const clean = raw.replace(/\r/g, '');
    const m = PRINTK_PREFIX.exec(clean);
    if (!m) return { raw: clean, msg: clean };
    return { raw: clean, msg: clean.slice(m[0].length), ts: Number(m[1]) };
  });
}

interface StartHit {
  format: OopsFormat;
  match: RegExpMatchArray;
  index: number;
}

function matchStart(l: ConsoleLine, timestamped: boolean): StartHit | undefined {
  // When the kernel stamps its lines, an unstamped line is userspace writing to the console.
  if (timestamped && l.ts === undefined) return undefined;
  for (const format of OOPS_FORMATS) {
    const match = format.start.exec(l.msg);
    if (match) return { format, match, index: -1 };
  }
  return undefined;
}

function isStamped(l: ConsoleLine, timestamped: boolean): boolean {
  return !timestamped || l.ts !== undefined;
}

/**
 * Find kernel error reports in a console log. Each report is returned once,
 * named by the most specific format found in its header.
 */
export function findSplats(consoleText: string): Splat[] {
  const lines = parseLines(consoleText);
  const timestamped = lines.some((l) => l.ts !== undefined);
  const out: Splat[] = [];
  // End (exclusive) of the last report block: later starts before it belong to it.
  let prevEnd = -1;
  let prev: Splat | undefined;

  let i = 0;
  while (i < lines.length) {
    const l = lines[i];
    const cut = isStamped(l, timestamped) && CUT_HERE.test(l.msg);
    const direct = cut ? undefined : matchStart(l, timestamped);
    if (!cut && !direct) {
      i++;
      continue;
    }
    let start = i;
    // Include KASAN/lockdep's "=====" preamble line.
    if (!cut && i > 0 && i - 1 >= prevEnd && SEPARATOR.test(lines[i - 1].msg)) start = i - 1;

    // Header: the lines up to the register dump / stack where co-printed starts live.
    const hits: StartHit[] = [];
    if (direct) hits.push({ ...direct, index: i });
    let headerEnd = i + 1;
    for (; headerEnd < lines.length && headerEnd < start + HEADER_MAX_LINES; headerEnd++) {
      const h = lines[headerEnd];
      if (HEADER_STOP.test(h.msg) || END_MARKER.test(h.msg) || lines[headerEnd].raw === '') break;
      if (CUT_HERE.test(h.msg)) {
        // A second cut-here after we already know what this is opens a new report.
        if (hits.length > 0 && hits.some((x) => x.format.kind !== 'refcount' && x.format.kind !== 'DMA-API')) break;
        continue;
      }
      const hit = matchStart(h, timestamped);
      if (!hit) continue;
      // Two independent reports back to back (e.g. two hung tasks) are not one header.
      if (hits.some((x) => x.format === hit.format && x.format.kind !== 'panic')) break;
      hits.push({ ...hit, index: headerEnd });
    }

    // Body: until the end marker, a fresh report, a truly blank line or the size cap.
    let end = headerEnd;
    const sawPanic = hits.some((h) => h.format.kind === 'panic');
    const primaryKind = pickPrimary(hits)?.format.kind;
    for (; end < lines.length && end < start + MAX_EXCERPT_LINES; end++) {
      const b = lines[end];
      if (b.raw.trim() === '') break;
      if (END_MARKER.test(b.msg)) {
        end++;
        break;
      }
      if (primaryKind === 'KASAN' && SEPARATOR.test(b.msg)) {
        end++;
        break;
      }
      if (!isStamped(b, timestamped)) continue;
      if (CUT_HERE.test(b.msg) || matchStart(b, timestamped)) break;
      if (SEPARATOR.test(b.msg) && end + 1 < lines.length && matchStart(lines[end + 1], timestamped)) break;
    }

    const block = lines.slice(start, end);
    const primary = pickPrimary(hits);
    let splat: Splat;
    if (primary) {
      splat = {
        kind: primary.format.kind,
        title: primary.format.title({ match: primary.match, block }),
        line: start + 1,
        fatal: primary.format.fatal || sawPanic,
        excerpt: block.map((b) => b.raw).join('\n'),
      };
    } else {
      // A cut-here with nothing we recognise is still the kernel's WARN/BUG machinery firing.
      const first = block.slice(1).find((b) => b.msg.trim() !== '');
      splat = {
        kind: 'WARNING',
        title: `kernel warning: ${first ? first.msg.trim().slice(0, 100) : '(empty report)'}`,
        line: start + 1,
        fatal: false,
        excerpt: block.map((b) => b.raw).join('\n'),
      };
    }
    const ts = block.find((b) => b.ts !== undefined)?.ts;
    if (ts !== undefined) splat.timestampSec = ts;

    // "Kernel panic - not syncing: Fatal exception" right after an oops is that oops' consequence.
    if (prev && splat.kind === 'panic' && start - prevEnd <= PANIC_MERGE_GAP) {
      prev.fatal = true;
      prev.excerpt = lines
        .slice(prev.line - 1, end)
        .map((b) => b.raw)
        .join('\n');
    } else {
      out.push(splat);
      prev = splat;
    }
    prevEnd = end;
    i = Math.max(end, i + 1);
  }
  return out;
}

function pickPrimary(hits: StartHit[]): StartHit | undefined {
  let best: StartHit | undefined;
  for (const h of hits) if (!best || h.format.specificity > best.format.specificity) best = h;
  return best;
}

export interface ProbeWindow {
  probe: string;
  /** Kernel printk time (seconds since boot) when the probe started. */
  startSec: number;
  endSec: number;
}

export interface SplatAttribution {
  byProbe: Map<string, Splat[]>;
  /** Splats without a timestamp or outside every window (boot, shutdown, between probes). */
  unattributed: Splat[];
}

/** Attach splats to the probe whose [startSec, endSec] window holds their printk timestamp. */
export function attributeSplats(splats: readonly Splat[], windows: readonly ProbeWindow[]): SplatAttribution {
  const byProbe = new Map<string, Splat[]>();
  const unattributed: Splat[] = [];
  for (const s of splats) {
    const w =
      s.timestampSec === undefined
        ? undefined
        : windows.find((w) => s.timestampSec! >= w.startSec && s.timestampSec! <= w.endSec);
    if (!w) {
      unattributed.push(s);
      continue;
    }
    const list = byProbe.get(w.probe) ?? [];
    list.push(s);
    byProbe.set(w.probe, list);
  }
  return { byProbe, unattributed };
}

const TIMESTAMPED = /^\[\s*(\d+\.\d+)\]\s+(.*)$/;

/**
 * Probe windows from the markers the guest runner writes to /dev/kmsg
 * ("hwlab-probe: begin 2 dmabuf-fd" ... "end 2 dmabuf-fd"). The window is
 * named "<n> <probe>" so a probe that runs twice gets two windows. A begin
 * without an end (the guest died mid-probe) runs to the end of the log.
 */
export function probeWindowsFromConsole(consoleText: string): ProbeWindow[] {
  const open = new Map<string, number>();
  const windows: ProbeWindow[] = [];
  for (const line of consoleText.split(/\r?\n/)) {
    const ts = TIMESTAMPED.exec(line.trim());
    const m = ts ? parseProbeMarker(ts[2]) : null;
    if (!m) continue;
    const key = `${m.index} ${m.probe}`;
    if (m.edge === 'begin') open.set(key, Number(ts![1]));
    else if (open.has(key)) {
      windows.push({ probe: key, startSec: open.get(key)!, endSec: Number(ts![1]) });
      open.delete(key);
    }
  }
  for (const [probe, startSec] of open) windows.push({ probe, startSec, endSec: Number.POSITIVE_INFINITY });
  return windows;
}
