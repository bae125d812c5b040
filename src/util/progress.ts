// Progress for long steps: a live line on a TTY, plain lines otherwise
// (CI logs, pipes), so both a developer and a log reader see what runs.

export interface Step {
  /** Update the detail text (TTY: redrawn; plain: printed at most every 10 s). */
  update(detail: string): void;
  done(detail?: string): number;
  fail(detail?: string): number;
}

export class Progress {
  private readonly tty: boolean;
  private readonly out: NodeJS.WriteStream;
  constructor(out: NodeJS.WriteStream = process.stderr, tty = Boolean(out.isTTY) && !process.env.CI) {
    this.out = out;
    this.tty = tty;
  }

  info(line: string): void {
    this.out.write(`${line}\n`);
  }

  step(name: string): Step {
    const start = Date.now();
    const secs = () => ((Date.now() - start) / 1000).toFixed(1);
    let detail = '';
    let lastPlain = 0;
    let timer: NodeJS.Timeout | undefined;
    const frames = ['|', '/', '-', '\\'];
    let frame = 0;
    const draw = () => {
      const text = `${frames[frame++ % 4]} ${name} ${secs()}s ${detail}`;
      const cols = this.out.columns || 100;
      this.out.write(`\r\x1b[K${text.slice(0, cols - 1)}`);
    };
    if (this.tty) {
      draw();
      timer = setInterval(draw, 200);
      timer.unref();
    } else {
      this.out.write(`==> ${name}\n`);
      lastPlain = Date.now();
    }
    const finish = (mark: string, d?: string) => {
      if (timer) clearInterval(timer);
      const elapsed = (Date.now() - start) / 1000;
      const line = `${mark} ${name} (${elapsed.toFixed(1)}s)${d ? `: ${d}` : ''}`;
      this.out.write(this.tty ? `\r\x1b[K${line}\n` : `    ${line}\n`);
      return elapsed;
    };
    return {
      update: (d: string) => {
        detail = d;
        if (!this.tty && Date.now() - lastPlain >= 10_000) {
          lastPlain = Date.now();
          this.out.write(`    ${name}: ${d} (${secs()}s)\n`);
        }
      },
      done: (d?: string) => finish('ok', d),
      fail: (d?: string) => finish('FAILED', d),
    };
  }

  /** Run `fn` as a step; the step fails (and rethrows) if fn throws. */
  async run<T>(name: string, fn: (step: Step) => Promise<T>, summary?: (v: T) => string): Promise<T> {
    const s = this.step(name);
    try {
      const v = await fn(s);
      s.done(summary?.(v));
      return v;
    } catch (err) {
      s.fail(err instanceof Error ? err.message.split('\n')[0] : String(err));
      throw err;
    }
  }
}

/** A Progress that prints nothing (tests, benchmarks). */
export function silentProgress(): Progress {
  const sink = { write: () => true, isTTY: false, columns: 80 } as unknown as NodeJS.WriteStream;
  return new Progress(sink, false);
}
