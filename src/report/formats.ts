// The kernel report formats as data, in the style of syzkaller's pkg/report:
// each says how a report starts (anchored at the start of the printk message,
// so user text or a driver name that merely contains "BUG" never matches),
// what kind it is, how to name it (a title template whose {FUNC} comes from
// the start line, the faulting instruction, or the first stack frame that is
// not reporting or sleeping machinery), and whether the kernel survives it.
// Titles carry no CPU, pid, comm, address or code offset, so one bug keeps
// one title across occurrences and runs.

import type { KernelReportKind } from './kernel-report.ts';
import type { ReportLine } from './lines.ts';

/** Where a title's {FUNC} comes from; a format lists them in the order to try. */
export type FuncSource =
  /** The start line's `func` group: the WARN site, the KASAN access. */
  | 'start'
  /** The faulting or interrupted instruction: x86 RIP, arm64 pc, arm PC, powerpc NIP. */
  | 'pc'
  /** The first reliable call-trace frame the skip rules let through. */
  | 'stack'
  /** The same, ignoring frames inside <IRQ>/<NMI> (what a stalled CPU was doing, not the timer that noticed). */
  | 'task-stack'
  /** The `func` group of the first block line matching (lockdep's "..., at: func+0x12/0x40"). */
  | { line: RegExp };

export interface ReportFormat {
  kind: KernelReportKind;
  /** Anchored at the start of the message; its named groups are title values. */
  start: RegExp;
  /**
   * Title template: {name} is a start group or body value, {FUNC} the
   * function; a [bracketed part] is left out unless all its values exist.
   */
  title: string;
  /** Title when no {FUNC} is found; defaults to `title` with its optional parts. */
  noFunc?: string;
  /** Values from later lines of the report: group 1 of the first line matching. */
  body?: Record<string, RegExp>;
  func?: readonly FuncSource[];
  /** Functions that are this kind's own mechanics, skipped on top of SKIP_ALWAYS, wherever {FUNC} comes from. */
  skip?: RegExp;
  /** The kernel is unusable afterwards (the task was killed or the kernel stopped). */
  fatal: boolean;
  /** Among the starts in one report's header (refcount_t's message, its WARNING, a panic), the highest names the report. */
  specificity: number;
  /** A message printed inside a WARN (after its cut-here, before its WARNING line), not a report of its own. */
  insideWarn?: boolean;
  /** Where its 'stack' begins, when not at a "Call Trace:" line. */
  traceStart?: RegExp;
  /** The report ends with a line of '=' (KASAN). */
  closedBySeparator?: boolean;
}

const SYM = String.raw`[A-Za-z_][\w.$]*`;
const OFF = String.raw`\+0x[0-9a-f]+\/0x[0-9a-f]+`;
/** `func+0x12/0x40 [module]`, the function in group `func`. */
const FUNC_AT = String.raw`(?<func>${SYM})${OFF}(?: \[[\w-]+\])?`;
/** A %pS that did not resolve: "0x0", "0xffffffffc0123456". */
const NO_SYM = String.raw`0x[0-9a-f]+`;

const re = (source: string) => new RegExp(source);

/** Reporting, sanitizer and unwinding machinery: never the culprit, whatever the report. */
export const SKIP_ALWAYS = re(
  '^(?:' +
    [
      String.raw`dump_stack\w*|__dump_stack|show_stack\w*|show_trace_log_lvl|dump_backtrace\w*|show_regs|__show_regs|unwind_\w+`,
      String.raw`v?panic|check_panic_on_warn|__warn|warn_slowpath_\w+|__warn_printk|report_bug\w*|__report_bug|handle_bug|exc_invalid_op|asm_exc_invalid_op`,
      String.raw`do_error_trap|do_trap|do_invalid_op|invalid_op|exc_\w+|asm_exc_\w+|die|__die\w*|oops_\w+|bust_spinlocks`,
      String.raw`_?copy_(?:from|to)_user\w*|__copy_(?:from|to)_user\w*|raw_copy_\w+|copy_user_\w+|rep_movs_alternative`,
      String.raw`print_report|print_address_description\w*|kasan_\w+|__kasan_\w+|__asan_\w+|check_region_inline|kfence_\w+|__kfence_\w+`,
      String.raw`ubsan_\w+|__ubsan_\w+|__sanitizer_\w+|__tsan_\w+|__msan_\w+|__kmsan_\w+|kmsan_\w+|__kcsan_\w+|kcsan_\w+`,
      String.raw`__might_resched|__might_sleep|___might_sleep|__might_fault|might_fault|__schedule_bug`,
      String.raw`lock_acquire\w*|lock_release|__lock_acquire|lock_acquired|lock_contended|lockdep_\w+|__lockdep_\w+|print_\w+_bug|mark_lock\w*`,
      String.raw`nmi_cpu_backtrace\w*|nmi_trigger_cpumask_backtrace|arch_trigger_cpumask_backtrace|trigger_\w*backtrace\w*`,
      String.raw`debug_print_object|__debug_object_\w+|debug_object_\w+|debug_check_no_obj_freed`,
      String.raw`__pfx_\w+|__x86_indirect_thunk\w*|__x86_return_thunk|srso_\w+_return_thunk`,
    ].join('|') +
    ')$',
);

/** A task's way into sleep: where it waits, not what it waits in. */
const SLEEP_SKIP = re(
  '^(?:' +
    [
      String.raw`__?schedule\w*|schedule\w*|io_schedule\w*|preempt_schedule\w*|_?_cond_resched`,
      String.raw`__?mutex_lock\w*|mutex_lock\w*|rwsem_down\w*|down_(?:read|write)\w*|__down\w*|down|down_\w+|rt_mutex\w*|__rt_mutex\w*|percpu_(?:down|rwsem)\w*`,
      String.raw`wait_for_completion\w*|__wait_for_common|wait_for_common\w*|__?flush_work\w*|__?flush_workqueue\w*|bit_wait\w*|out_of_line_wait_on_bit\w*|__wait_on_bit\w*|wait_on_\w+`,
      String.raw`folio_wait\w*|__folio_lock\w*|do_wait\w*|__switch_to\w*|kthread|ret_from_fork\w*|usleep_range\w*|msleep\w*|schedule_timeout\w*`,
      String.raw`dma_resv_wait_timeout|dma_fence_wait\w*|dma_fence_default_wait`,
    ].join('|') +
    ')$',
);

/** A stall's detection path: the RCU core and the timer interrupt that ran it. */
const STALL_SKIP = re(
  '^(?:' +
    [
      String.raw`rcu_\w+|__rcu_\w+|print_cpu_stall\w*|print_other_cpu_stall\w*|check_cpu_stall\w*|update_process_times|tick_\w+|__tick_\w+`,
      String.raw`__hrtimer_\w+|hrtimer_\w+|__sysvec_\w+|sysvec_\w+|asm_sysvec_\w+|smp_apic_timer_interrupt|apic_timer_interrupt|local_apic_timer_interrupt`,
      String.raw`irq_exit\w*|__irq_exit_rcu|irqentry_\w+|handle_softirqs|__do_softirq|do_softirq\w*|run_ksoftirqd|watchdog_timer_fn|queue_stop_cpus_work`,
    ].join('|') +
    ')$',
);

/** The allocator: where a bad free is caught or a leak was allocated, never who got it wrong. */
const ALLOC_SKIP = re(
  String.raw`^(?:k?free|kfree\w*|kvfree\w*|krealloc\w*|kmem_cache_\w+|__kmem_cache_\w+|slab_\w+|__slab_\w+|kmalloc\w*|__kmalloc\w*|__do_kmalloc\w*|kzalloc\w*|kvmalloc\w*|__kvmalloc\w*|kcalloc\w*|kmemdup\w*|vmalloc\w*|__vmalloc\w*|vfree|kmemleak_\w+|alloc_pages\w*|__alloc_pages\w*|free_pages\w*|__free_pages\w*)$`,
);

/** A stalled CPU's report also lists tasks that merely sleep in the way. */
const STALL_OR_SLEEP = re(`${STALL_SKIP.source}|${SLEEP_SKIP.source}`);

/** The lock and unlock paths lockdep reports from. */
const LOCK_SKIP = re(
  String.raw`^(?:_raw_\w+|raw_spin_\w+|spin_\w+|_spin_\w+|read_(?:un)?lock\w*|write_(?:un)?lock\w*|__?mutex_\w+|mutex_\w+|rt_mutex\w*|down_\w+|up_\w+|__down\w*|__up\w*|up|down|rwsem_\w+|__rwsem_\w+|rcu_\w+|__rcu_\w+|validate_chain|check_\w+)$`,
);

/** lockdep's reports are titled by what went wrong and the lock site its "at:" lines name. */
function lockSiteFormat(start: RegExp): ReportFormat {
  return {
    kind: 'lockdep', start, title: '{what}[ in {FUNC}]',
    func: [{ line: re(String.raw`\bat: (?:\[<[0-9a-f]+>\] )?${FUNC_AT}`) }, 'stack'],
    skip: LOCK_SKIP, fatal: false, specificity: 4,
  };
}

/** The WARN machinery's line formats differ by kernel version; what they mean and how they are titled does not. */
function warningFormat(start: string, noFunc: string): ReportFormat {
  return { kind: 'WARNING', start: re(start), title: 'WARNING in {FUNC}', noFunc, func: ['start', 'pc', 'stack'], fatal: false, specificity: 2 };
}

/**
 * Most specific first within one line (the first format whose start matches
 * a line names it); specificity ranks the starts of one report's header.
 */
export const REPORT_FORMATS: readonly ReportFormat[] = [
  {
    // REFCOUNT_WARN: "refcount_t: underflow; use-after-free." inside its WARN.
    kind: 'refcount',
    start: /^refcount_t: (?<what>[^;.]+)/,
    title: 'refcount_t: {what}[ in {FUNC}]',
    func: ['stack'],
    // kobject_put and put_device are kref_put by another name: the caller dropped the reference.
    skip: /^(?:__)?(?:refcount_\w+|kref_\w+)$|^(?:kobject_put|put_device)$/,
    fatal: false,
    specificity: 5,
    insideWarn: true,
  },
  {
    // dma-debug's err_printk: "<driver> <device>: DMA-API: <what> [details]" (pre-5.x kernels put the device after "DMA-API: ").
    // Its boot chatter ("DMA-API: preallocated 65536 debug entries") names no device and does not match.
    kind: 'DMA-API',
    start: /^(?:\S+ \S+: DMA-API: |DMA-API: \S+ \S+: )(?<what>[^[]+?)\s*(?:\[|$)/,
    title: 'DMA-API: {what}[ in {FUNC}]',
    func: ['stack'],
    skip: /^(?:check_\w+|debug_dma_\w+|add_dma_entry|err_printk|dma_(?:map|unmap|sync|alloc|free)_\w+|__dma_\w+|dma_\w+_attrs|dma_direct_\w+|iommu_dma_\w+)$/,
    fatal: false,
    specificity: 5,
    insideWarn: true,
  },
  {
    // A double or invalid free is caught in kfree: the frame under the allocator names it.
    kind: 'KASAN',
    start: re(String.raw`^BUG: KASAN: (?<what>.+?) in ${FUNC_AT}`),
    title: 'KASAN: {what}[ {access}] in {FUNC}',
    body: { access: /^(Read|Write) of size/ },
    func: ['start', 'stack'],
    skip: ALLOC_SKIP,
    fatal: false,
    specificity: 5,
    closedBySeparator: true,
  },
  {
    kind: 'KFENCE',
    start: re(String.raw`^BUG: KFENCE: (?<what>.+?) in ${FUNC_AT}`),
    title: 'KFENCE: {what}[ in {FUNC}]',
    func: ['start', 'stack'],
    skip: ALLOC_SKIP,
    // KFENCE prints its stacks without a "Call Trace:" line, under the access or corruption line.
    traceStart: /^(?:Corrupted memory|Out-of-bounds (?:read|write)|Use-after-free (?:read|write)|Invalid (?:read|write)|Invalid free of) /,
    fatal: false,
    specificity: 5,
    closedBySeparator: true,
  },
  {
    // KCSAN prints the two racing functions sorted by name ("data-race in f1 / f2"), so the pair
    // is the title whichever side noticed; "data-race in f" alone is a race of unknown origin.
    // Its "assert: race" and "assert: no watchpoints" kinds come from ASSERT_EXCLUSIVE_*().
    kind: 'KCSAN',
    start: re(String.raw`^BUG: KCSAN: (?<what>[\w:-]+(?: [\w-]+)*?) in (?<f1>${SYM})(?:${OFF})?(?: \[[\w-]+\])?(?: \/ (?<f2>${SYM})(?:${OFF})?(?: \[[\w-]+\])?)?\s*$`),
    title: 'KCSAN: {what} in {f1}[ / {f2}]',
    fatal: false,
    specificity: 5,
    closedBySeparator: true,
  },
  {
    // debug_print_object's WARN message; its hint (the timer/work callback) says whose object it is.
    kind: 'ODEBUG',
    start: re(
      String.raw`^ODEBUG: (?<what>\w+ \w+) \(active state \d+\) object: \S+ object type: (?<type>\S+) hint: (?:(?<hint>${SYM})${OFF}|${NO_SYM}|\(null\))`,
    ),
    title: 'ODEBUG: {what} {type}[ ({hint})]',
    fatal: false,
    specificity: 5,
    insideWarn: true,
  },
  {
    // CHECK_DATA_CORRUPTION in lib/list_debug.c, then a WARN or (BUG_ON_DATA_CORRUPTION) a BUG.
    kind: 'list corruption',
    start: /^(?<what>list_(?:add|del)) corruption\b/,
    title: '{what} corruption[ in {FUNC}]',
    func: ['stack'],
    skip: /^(?:__list_\w+|list_\w+)$/,
    fatal: false,
    specificity: 4,
    insideWarn: true,
  },
  {
    kind: 'UBSAN',
    start: /^UBSAN: (?<what>[\w-]+) in (?<file>[^\s:]+)/,
    title: 'UBSAN: {what} in {FUNC}',
    noFunc: 'UBSAN: {what} in {file}',
    func: ['stack'],
    fatal: false,
    specificity: 4,
  },
  // Lock-order and lock-state reports name the lock site on their "..., at: func+0x12/0x40" lines.
  lockSiteFormat(/^WARNING: (?<what>possible circular locking dependency detected|possible recursive locking detected|inconsistent lock state|possible irq lock inversion dependency detected|\S+-safe -> \S+-unsafe lock order detected|bad unlock balance detected|held lock freed|lock held when returning to user space|lock held at task exit time|Nested lock was not taken)!?/),
  lockSiteFormat(/^WARNING: (?:\S+\/\d+ )?(?<what>still has locks held)!/),
  {
    // The RCU read-side lock a caller holds says nothing; the stack says who dereferenced.
    kind: 'lockdep',
    start: /^WARNING: suspicious RCU usage/,
    title: 'suspicious RCU usage[ in {FUNC}]',
    func: ['stack'],
    skip: LOCK_SKIP,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'hung task',
    start: /^INFO: task .+:\d+ blocked (?:in I\/O wait )?for more than \d+ seconds\./,
    title: 'INFO: task hung in {FUNC}',
    noFunc: 'INFO: task hung',
    func: ['stack'],
    skip: SLEEP_SKIP,
    fatal: false,
    specificity: 4,
  },
  {
    // kmemleak's report (the debugfs file echoed to the console): named by who allocated, under the allocator.
    kind: 'kmemleak',
    start: /^BUG: memory leak\s*$/,
    title: 'memory leak in {FUNC}',
    noFunc: 'memory leak',
    func: ['stack'],
    skip: ALLOC_SKIP,
    fatal: false,
    specificity: 4,
  },
  {
    // rcu_sched/rcu_preempt, self-detected or not, expedited or not: one bug reaches the console any of these ways.
    kind: 'RCU stall',
    start: /^(?:rcu: )?INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?\b/,
    title: 'INFO: rcu detected stall in {FUNC}',
    noFunc: 'INFO: rcu detected stall',
    func: ['pc', 'task-stack'],
    skip: STALL_OR_SLEEP,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'lockup',
    start: /^(?:watchdog: )?BUG: soft lockup - CPU#\d+ stuck for \d+s!/,
    title: 'BUG: soft lockup in {FUNC}',
    noFunc: 'BUG: soft lockup',
    // The registers and stack are the interrupted context's, softirqs included: no IRQ frames to drop.
    func: ['pc', 'stack'],
    skip: STALL_OR_SLEEP,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'lockup',
    start: /^(?:watchdog: )?Watchdog detected hard LOCKUP on cpu \d+/,
    title: 'hard LOCKUP in {FUNC}',
    noFunc: 'hard LOCKUP',
    func: ['pc', 'stack'],
    skip: STALL_OR_SLEEP,
    fatal: false,
    specificity: 4,
  },
  {
    kind: 'BUG',
    start: /^BUG: kernel NULL pointer dereference, address: /,
    title: 'BUG: kernel NULL pointer dereference[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^BUG: unable to handle (?<what>page fault|kernel NULL pointer dereference|kernel paging request)/,
    title: 'BUG: unable to handle {what}[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^Unable to handle kernel (?<what>NULL pointer dereference|paging request) at virtual address/,
    title: 'Unable to handle kernel {what}[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 3,
  },
  {
    kind: 'BUG',
    start: /^kernel BUG at (?<file>[^\s:!]+)/,
    title: 'kernel BUG in {FUNC}',
    noFunc: 'kernel BUG at {file}',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 3,
  },
  {
    // Any other "BUG: <what>": sleeping in atomic, bad page state, workqueue lockup, ... <what> ends where
    // the details (addresses, comm/pid, counts) begin.
    kind: 'BUG',
    start: /^BUG: (?<what>[A-Za-z][^[]*?)\s*(?:,| - |!|: | at | in process | for address| on CPU|\s\[|\s\(|$)/,
    title: 'BUG: {what}[ in {FUNC}]',
    func: ['pc', 'stack'],
    skip: SLEEP_SKIP,
    fatal: false,
    specificity: 3,
  },
  // Up to 6.18: "WARNING: CPU: 0 PID: 1 at drivers/x.c:12 func+0x1/0x2 [mod]".
  warningFormat(String.raw`^WARNING: CPU: \d+ PID: \d+ at (?<file>[^\s:]+)(?::\d+)? (?:${FUNC_AT}|${NO_SYM})`, 'WARNING at {file}'),
  // 6.19+: "WARNING: [cond] drivers/x.c:12 at func+0x1/0x2 [mod], CPU#0: comm/1"; the [cond] part is
  // CONFIG_DEBUG_BUGVERBOSE_DETAILED, the function is "0x0" when %pS did not resolve.
  warningFormat(String.raw`^WARNING: (?:\[.*\] (?=\S+:\d+ at ))?(?<file>[^\s:]+):\d+ at (?:${FUNC_AT}|${NO_SYM}), CPU#\d+: `, 'WARNING at {file}'),
  // 6.19+ without a file: "WARNING: at func+0x1/0x2 [mod], CPU#0: comm/1".
  warningFormat(String.raw`^WARNING: at (?:${FUNC_AT}|${NO_SYM}), CPU#\d+: `, 'WARNING'),
  {
    // Before 3.x: "WARNING: at drivers/x.c:12 func+0x1/0x2()".
    kind: 'WARNING',
    start: re(String.raw`^WARNING: at (?<file>[^\s:]+):\d+ (?:(?<func>${SYM})(?:${OFF})?\(\)|${NO_SYM})`),
    title: 'WARNING in {FUNC}',
    noFunc: 'WARNING at {file}',
    func: ['start', 'pc', 'stack'],
    fatal: false,
    specificity: 2,
  },
  {
    // 6.x: "Oops: general protection fault, probably for non-canonical address 0x...: 0000 [#1] SMP".
    kind: 'Oops',
    start: /^Oops: (?<what>[a-z][\w ]*?)(?:, [^:]*)?: [0-9a-f]{4} \[#\d+\]/,
    title: '{what}[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 1,
  },
  {
    // Older kernels print the trap name alone.
    kind: 'Oops',
    start: /^(?<what>general protection fault|invalid opcode|stack segment|double fault)(?:, [^:]*)?: [0-9a-f]{4} \[#\d+\]/,
    title: '{what}[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 1,
  },
  {
    // x86 after a page fault report: "Oops: 0002 [#1]", since 6.x "Oops: Oops: 0002 [#1]" (die() names its caller
    // "Oops"); arm "Internal error: Oops: 5 [#1]".
    kind: 'Oops',
    start: /^(?:Oops: (?:Oops: )?[0-9a-f]{4}|Internal error: Oops[^:]*: [0-9a-f]+) \[#\d+\]/,
    title: 'Oops[ in {FUNC}]',
    func: ['pc', 'stack'],
    fatal: true,
    specificity: 1,
  },
  {
    kind: 'kmemleak',
    start: /^kmemleak: \d+ new suspected memory leaks?/,
    title: 'kmemleak: new suspected memory leaks',
    fatal: false,
    specificity: 1,
  },
  {
    // A panic that only says it follows the report before it is merged into that report (see PANIC_AFTER).
    kind: 'panic',
    start: /^Kernel panic - not syncing: ?(?<reason>.*?)\s*$/,
    title: 'Kernel panic - not syncing: {reason}',
    fatal: true,
    specificity: 0,
  },
];

/**
 * Panic reasons that are the previous report's consequence (panic_on_oops, panic_on_warn,
 * softlockup_panic, hung_task_panic, ...): such a panic makes that report fatal instead of
 * being a report of its own, however long the report before it was.
 */
export const PANIC_AFTER = /^(?:Fatal exception|(?:kernel: )?panic_on_warn set|softlockup: hung tasks|hung_task: blocked tasks|Hard LOCKUP|RCU Stall|Oops)/;

// ---------------------------------------------------------------------------
// Naming a report from its lines.

const PC = re(String.raw`^(?:RIP: [0-9a-f]{4}:|pc : |PC is at |NIP \[[0-9a-f]+\] )${FUNC_AT}`);
/** x86/arm64 "[<addr>] ? func+0x1/0x2 [mod]" ("?" marks an unreliable frame) and arm "[<addr>] (func) from [<addr>] (caller+0x1/0x2)". */
const FRAME = re(String.raw`^\s*(?:\[<[0-9a-f]+>\] )?(?<unreliable>\? )?${FUNC_AT}`);
const ARM_FRAME = re(String.raw`^\s*\[<[0-9a-f]+>\] \((?<func>${SYM})(?:${OFF})?\) from `);
const TRACE_START = /^\s*(?:Call [Tt]race|Backtrace|backtrace(?: \(crc [0-9a-f]+\))?):/;
/** Where the first trace ends: the task's end marker, or the stacks KASAN adds after it. */
const TRACE_END = /^\s*<\/TASK>|^(?:Allocated|Freed) by task \d+|^The buggy address/;
const IRQ_OPEN = /^\s*<(?:IRQ|NMI|SOFTIRQ)>\s*$/;
const IRQ_CLOSE = /^\s*<\/(?:IRQ|NMI|SOFTIRQ)>\s*$/;

/**
 * Drops compiler clone suffixes (.cold, .isra.0, .constprop.0, .part.0, .llvm.123) so titles stay
 * stable across builds, and names a syscall by itself whatever the arch wrapper (__x64_sys_ioctl,
 * __se_sys_ioctl, __do_sys_ioctl: sys_ioctl).
 */
export function cleanFunc(name: string): string {
  return name
    .replace(/\.(?:cold|isra|constprop|part|llvm|lto_priv)(?:\.\d+)*.*$/, '')
    .replace(/^__(?:x64|ia32|x32|arm64|riscv|s390x?|se|do)_(?:compat_)?sys_/, 'sys_');
}

function skipped(func: string, format: ReportFormat): boolean {
  return SKIP_ALWAYS.test(func) || (format.skip?.test(func) ?? false);
}

function pcFunc(block: readonly ReportLine[], format: ReportFormat): string | undefined {
  for (const l of block) {
    const m = PC.exec(l.text);
    if (!m) continue;
    const f = cleanFunc(m.groups!.func);
    // Only the first register dump counts: later ones are other CPUs or the repeat after the end marker.
    return skipped(f, format) ? undefined : f;
  }
  return undefined;
}

function stackFunc(block: readonly ReportLine[], format: ReportFormat, taskOnly: boolean): string | undefined {
  let inTrace = false;
  let irq = 0;
  for (const l of block) {
    if (!inTrace) {
      inTrace = (format.traceStart ?? TRACE_START).test(l.text);
      continue;
    }
    if (TRACE_END.test(l.text)) break;
    if (IRQ_OPEN.test(l.text)) irq++;
    else if (IRQ_CLOSE.test(l.text)) irq = Math.max(0, irq - 1);
    if (taskOnly && irq > 0) continue;
    const m = FRAME.exec(l.text) ?? ARM_FRAME.exec(l.text);
    if (!m || m.groups!.unreliable) continue;
    const f = cleanFunc(m.groups!.func);
    if (!skipped(f, format)) return f;
  }
  return undefined;
}

function findFunc(format: ReportFormat, startFunc: string | undefined, block: readonly ReportLine[]): string | undefined {
  for (const src of format.func ?? []) {
    let f: string | undefined;
    if (src === 'start') f = startFunc && !skipped(cleanFunc(startFunc), format) ? cleanFunc(startFunc) : undefined;
    else if (src === 'pc') f = pcFunc(block, format);
    else if (src === 'stack' || src === 'task-stack') f = stackFunc(block, format, src === 'task-stack');
    else {
      for (const l of block) {
        const m = src.line.exec(l.text);
        if (m?.groups?.func) {
          f = cleanFunc(m.groups.func);
          break;
        }
      }
    }
    if (f) return f;
  }
  return undefined;
}

/** Fills a template: {name} from values, [parts] only when all their values exist. */
export function renderTitle(template: string, values: Readonly<Record<string, string | undefined>>): string {
  const fill = (s: string) => s.replace(/\{(\w+)\}/g, (_, k: string) => values[k] ?? '?');
  const has = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].every(([, k]) => values[k] !== undefined && values[k] !== '');
  return fill(template.replace(/\[([^\]]*)\]/g, (_, part: string) => (has(part) ? part : '')));
}

/**
 * Last line of defence for stability: no code offsets, no kernel addresses
 * or other long hex numbers, single spaces.
 */
export function sanitizeTitle(title: string): string {
  return title
    .replace(/\+0x[0-9a-f]+(?:\/0x[0-9a-f]+)?/g, '')
    .replace(/\b(?:0x)?[0-9a-f]{12,}\b/gi, '')
    .replace(/\s+/g, ' ')
    .replace(/\s+([,.;:)])/g, '$1')
    .trim();
}

/** The title of a report `format` started (`groups`: its start match's named groups), from its block of lines. */
export function titleOf(format: ReportFormat, groups: Readonly<Record<string, string | undefined>>, block: readonly ReportLine[]): string {
  const values: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(groups)) if (v !== undefined) values[k] = v.trim();
  for (const [k, lineRe] of Object.entries(format.body ?? {})) {
    for (const l of block) {
      const m = lineRe.exec(l.text);
      if (m) {
        values[k] = m[1];
        break;
      }
    }
  }
  const func = findFunc(format, groups.func, block);
  values.FUNC = func;
  return sanitizeTitle(renderTitle(func ? format.title : (format.noFunc ?? format.title), values));
}

/**
 * A cut-here block no format recognised is still the kernel's WARN/BUG
 * machinery firing: named by the function it fired in when the register dump
 * or stack says, else by its first message with every number taken out.
 */
export const CUT_HERE_FALLBACK: ReportFormat = {
  kind: 'WARNING',
  start: /^-+\[ cut here \]-+\s*$/,
  title: 'WARNING in {FUNC}',
  noFunc: 'kernel warning: {message}',
  func: ['pc', 'stack'],
  fatal: false,
  specificity: -1,
};

export function fallbackTitle(block: readonly ReportLine[]): string {
  const first = block.slice(1).find((l) => l.kernel && l.text.trim() !== '');
  const message = first
    ? sanitizeTitle(first.text.replace(/, CPU#\d+: .*$/, '').replace(/\+0x[0-9a-f]+(?:\/0x[0-9a-f]+)?/g, ''))
        .replace(/\b0x[0-9a-f]+\b/gi, 'ADDR')
        .replace(/\d+/g, 'N')
        .slice(0, 100)
    : '(empty report)';
  return titleOf(CUT_HERE_FALLBACK, { message }, block);
}
