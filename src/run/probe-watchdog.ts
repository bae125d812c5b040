// Per-probe time budget, kept on the host. A probe that blocks in the kernel
// (a revoke waiting forever for an importer that was never told) cannot be
// interrupted from inside the guest's single node process, so the host watches
// the TAP stream: a top-level "# Subtest:" line starts a probe's clock, its
// closing test point stops it. When a clock runs out the caller collects the
// guest's blocked tasks and ends the probe phase, keeping the TAP so far.
// After the last probe closes, the runner itself gets a short budget to exit
// (a kernel spinning after the last probe used to hold the run until the
// whole phase's timeout, 600 s).

import { isTopLevelPoint, subtestName } from '../protocol/protocol.ts';

export interface ProbeBudget {
  name: string;
  timeoutSec: number;
}

export interface ProbeTimeout {
  /** Index of the probe in the lab's order. */
  index: number;
  name: string;
  timeoutSec: number;
}


/** Seconds the runner has to exit once its last probe has closed (it only prints the plan's end and exits). */
export const RUNNER_EXIT_BUDGET_SEC = 30;

export class ProbeWatchdog {
  private exitTimer: NodeJS.Timeout | undefined;
  private buffered = '';
  private started = 0;
  private running: { index: number; timer: NodeJS.Timeout } | undefined;
  private fired: ProbeTimeout | undefined;

  constructor(
    private readonly budgets: readonly ProbeBudget[],
    private readonly onTimeout: (t: ProbeTimeout) => void,
    /** Called when the runner has not exited RUNNER_EXIT_BUDGET_SEC (or exitBudgetSec) after its last probe closed. */
    private readonly onRunnerStuck?: (afterSec: number) => void,
    private readonly exitBudgetSec = RUNNER_EXIT_BUDGET_SEC,
  ) {}

  /** Feeds runner stdout; chunks may split lines anywhere. */
  push(chunk: string): void {
    this.buffered += chunk;
    const lines = this.buffered.split('\n');
    this.buffered = lines.pop() ?? '';
    for (const line of lines) this.line(line);
  }

  /** The probe that ran out of time, if one did. */
  get timedOut(): ProbeTimeout | undefined {
    return this.fired;
  }

  /** Index of the probe running now (its subtest opened, not yet closed). */
  get current(): number | undefined {
    return this.running?.index;
  }

  /** How many probes have started (closed or not). */
  get startedCount(): number {
    return this.started;
  }

  stop(): void {
    this.stopProbe();
    if (this.exitTimer) clearTimeout(this.exitTimer);
    this.exitTimer = undefined;
  }

  private stopProbe(): void {
    if (this.running) clearTimeout(this.running.timer);
    this.running = undefined;
  }

  private line(line: string): void {
    if (this.fired) return;
    if (subtestName(line) !== null) {
      this.stopProbe();
      const index = this.started++;
      const budget = this.budgets[index];
      if (!budget) return;
      const timer = setTimeout(() => {
        this.fired = { index, name: budget.name, timeoutSec: budget.timeoutSec };
        this.running = undefined;
        this.onTimeout(this.fired);
      }, budget.timeoutSec * 1000);
      timer.unref();
      this.running = { index, timer };
    } else if (isTopLevelPoint(line)) {
      const wasRunning = this.running !== undefined;
      this.stopProbe();
      if (wasRunning && this.started === this.budgets.length && this.onRunnerStuck && !this.exitTimer) {
        this.exitTimer = setTimeout(() => this.onRunnerStuck?.(this.exitBudgetSec), this.exitBudgetSec * 1000);
        this.exitTimer.unref();
      }
    }
  }
}
