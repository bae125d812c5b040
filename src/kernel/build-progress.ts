// Progress of a kernel build for a person waiting on it: objects compiled so
// far out of the number expected, with an ETA from the rate so far, and the
// last file. The expected number comes from an earlier build of the same
// tree (its objects); an incremental build of the same config has no useful
// total, so it shows the count alone. Kbuild's quiet output has one line per
// object ("  CC [M]  drivers/vfio/pci/vfio_pci_core.o").
import { execa } from 'execa';

const OBJECT_LINE = /^\s+(CC|AS)( \[M\])?\s+(\S+\.o)\s*$/gm;

export class BuildProgress {
  private done = 0;
  private last = '';
  constructor(private readonly expected: number | undefined, private readonly startMs = Date.now()) {}

  /** Feeds make's output; returns the progress line to show. */
  push(chunk: string, now = Date.now()): string {
    for (const m of chunk.matchAll(OBJECT_LINE)) {
      this.done++;
      this.last = m[3];
    }
    return this.line(now);
  }

  get objects(): number {
    return this.done;
  }

  line(now = Date.now()): string {
    const secs = (now - this.startMs) / 1000;
    const total = this.expected;
    if (!total || this.done === 0) return `${this.done} objects${this.last ? `, ${this.last}` : ''}`;
    if (this.done >= total) return `${this.done} objects (about ${total} expected, finishing), ${this.last}`;
    const eta = ((total - this.done) * secs) / this.done;
    const etaText = eta >= 90 ? `${Math.round(eta / 60)} min` : `${Math.max(1, Math.round(eta))} s`;
    return `${this.done}/~${total} objects (${Math.floor((100 * this.done) / total)}%), ETA ${etaText}, ${this.last}`;
  }
}

/** Objects an earlier build of the tree left in its obj/ (the *.o files): the expected count of a build of a similar config. */
export async function objectCount(objDir: string): Promise<number | undefined> {
  const r = await execa('find', [objDir, '-name', '*.o', '-type', 'f'], { reject: false, timeout: 60_000, lines: true });
  const n = r.exitCode === 0 ? (r.stdout as unknown as string[]).filter(Boolean).length : 0;
  return n > 0 ? n : undefined;
}
