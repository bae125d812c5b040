// Progress of the Debian downloads (the kernel source package, prebuilt
// kernel and header .debs, apt's indexes) for a person waiting on them:
// bytes so far out of the total, the rate and an ETA, shown through a Step
// like the kernel build's (src/kernel/build-progress.ts): a live line on a
// TTY, plain lines at most every 10 s otherwise. The totals come from apt
// itself (`apt-get --print-uris download` lists each file's size); the bytes
// are measured on disk while apt writes, so the figure is what arrived.
import { readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Step } from './progress.ts';

const UNITS = ['B', 'kB', 'MB', 'GB'];

/** 1536 -> "1.5 kB" (decimal units, as apt prints them). */
export function formatBytes(n: number): string {
  let v = n;
  let u = 0;
  while (v >= 1000 && u < UNITS.length - 1) {
    v /= 1000;
    u++;
  }
  return `${u === 0 ? v.toFixed(0) : v.toFixed(1)} ${UNITS[u]}`;
}

/** The line for `bytes` received of `total` (when known) since `startMs`. */
export function downloadLine(label: string, bytes: number, total: number | undefined, startMs: number, now = Date.now()): string {
  const secs = Math.max((now - startMs) / 1000, 0.001);
  const rate = bytes / secs;
  const rateText = `${formatBytes(rate)}/s`;
  if (!total) return `${label}: ${formatBytes(bytes)}, ${rateText}`;
  const shown = Math.min(bytes, total);
  const pct = Math.floor((100 * shown) / total);
  const eta = rate > 0 ? (total - shown) / rate : undefined;
  const etaText = eta === undefined ? '' : `, ETA ${eta >= 90 ? `${Math.round(eta / 60)} min` : `${Math.max(0, Math.round(eta))} s`}`;
  return `${label}: ${formatBytes(shown)}/${formatBytes(total)} (${pct}%), ${rateText}${shown < total ? etaText : ''}`;
}

/** What `apt-get --print-uris download` lists: `'URL' file size SHA256:...` per file. */
export function parsePrintUris(stdout: string): Array<{ url: string; file: string; size: number }> {
  const out: Array<{ url: string; file: string; size: number }> = [];
  for (const m of stdout.matchAll(/^'([^']+)'\s+(\S+)\s+(\d+)\b/gm)) out.push({ url: m[1], file: m[2], size: Number(m[3]) });
  return out;
}

/** Bytes apt announces for one fetched index (`Get:3 http://... InRelease [151 kB]`), or undefined. */
export function aptGetLineBytes(line: string): number | undefined {
  const m = /^Get:\d+\s.*\[([\d,.]+)\s*(B|kB|MB|GB)\]\s*$/.exec(line.trim());
  if (!m) return undefined;
  return Math.round(Number(m[1].replace(/,/g, '')) * 1000 ** UNITS.indexOf(m[2]));
}

/** Bytes of the regular files under dir (0 when it does not exist yet). */
export async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) total += await bytesUnder(p);
    else if (e.isFile()) total += await stat(p).then((s) => s.size, () => 0);
  }
  return total;
}

/**
 * Shows the download's progress on `step` once a second until the returned
 * function is called: `measure` says how many bytes have arrived.
 */
export function watchDownload(step: Step, label: string, total: number | undefined, measure: () => Promise<number>): () => void {
  const start = Date.now();
  let busy = false;
  let last = 0;
  let lastChange = start;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      const bytes = await measure();
      if (bytes !== last) [last, lastChange] = [bytes, Date.now()];
      // The rate over the time bytes were arriving: a pause (apt unpacking between fetches) does not drag it down.
      step.update(downloadLine(label, bytes, total, start, lastChange));
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => { void tick(); }, 1000);
  timer.unref();
  step.update(downloadLine(label, 0, total, start));
  return () => clearInterval(timer);
}
