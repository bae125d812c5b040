// fault-inject: hwlab's own fault-suite probe (labs/faults/), never in a lab that
// tests a kernel. It asks the hwlab_fault module for a real kernel fault in
// the middle of a probe (a panic, a soft lockup, a hung task), so the suite
// can check on a real guest that the host titles the report, attributes it to
// this probe and classes the run `kernel`. The lockup and hung-task
// detectors' thresholds are lowered for the fault (and restored after it) so
// the report comes in seconds, before an RCU stall or the probe timeout.
import { readFileSync, writeFileSync } from 'node:fs';
import type { ProbeContext } from './common.ts';

export const FAULT_TRIGGER = '/sys/kernel/debug/hwlab_fault/trigger';
const WATCHDOG_THRESH = '/proc/sys/kernel/watchdog_thresh';
const HUNG_TASK_TIMEOUT = '/proc/sys/kernel/hung_task_timeout_secs';

/** Sets a sysctl for the length of fn, then puts the old value back. */
function withSysctl<T>(file: string, value: number, fn: () => T): T {
  const old = readFileSync(file, 'utf8').trim();
  writeFileSync(file, String(value));
  try {
    return fn();
  } finally {
    writeFileSync(file, old);
  }
}

export default function faultInject(ctx: ProbeContext): void {
  const { t } = ctx;
  const kind = ctx.params.kind as string;
  const threshold = ctx.params.threshold as number;
  // watchdog_thresh 0 would turn the detector off rather than make it quick.
  if (kind !== 'panic' && !t.ok(threshold >= 1, 'threshold is at least 1 s', { threshold })) return;
  t.comment(`hwlab fault suite: asking hwlab_fault for a ${kind}`);
  if (kind === 'panic') {
    // The write does not return: the guest is gone.
    writeFileSync(FAULT_TRIGGER, 'panic');
    t.fail('the guest panicked on request', { why: 'the write to the trigger returned' });
  } else if (kind === 'softlockup') {
    // The detector reports a CPU stuck for more than 2 * watchdog_thresh seconds.
    withSysctl(WATCHDOG_THRESH, threshold, () => writeFileSync(FAULT_TRIGGER, `softlockup ${2 * threshold + 4}`));
    t.pass(`spun ${2 * threshold + 4} s with preemption disabled (watchdog_thresh ${threshold})`);
  } else {
    // khungtaskd checks every hung_task_timeout_secs: a sleep of three timeouts is seen at least once.
    withSysctl(HUNG_TASK_TIMEOUT, threshold, () => writeFileSync(FAULT_TRIGGER, `hung ${3 * threshold}`));
    t.pass(`slept ${3 * threshold} s uninterruptibly (hung_task_timeout_secs ${threshold})`);
  }
}
