// The Debian downloads' progress (src/util/download-progress.ts): apt's own
// size listings and Get: lines parsed, the line a person sees, and the
// plain-line pacing without a TTY (at most one line per 10 s, through the
// same Progress as the kernel build) driven by a real file that grows.
import test from 'ava';
import { appendFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { aptGetLineBytes, bytesUnder, downloadLine, formatBytes, parsePrintUris, watchDownload } from '../../src/util/download-progress.ts';
import { Progress } from '../../src/util/progress.ts';
import { tempDir } from './helpers/temp.ts';

test('apt --print-uris and Get: lines give the sizes', (t) => {
  const uris = `'http://deb.debian.org/debian/pool/main/l/linux/linux-source-7.2_7.2.13-1_all.deb' linux-source-7.2_7.2.13-1_all.deb 152418360 SHA256:ab12\n'http://x/y/kmod_1_amd64.deb' kmod_1_amd64.deb 1200 SHA256:cd34\n`;
  t.deepEqual(parsePrintUris(uris).map((f) => [f.file, f.size]), [['linux-source-7.2_7.2.13-1_all.deb', 152418360], ['kmod_1_amd64.deb', 1200]]);
  t.is(aptGetLineBytes('Get:1 http://deb.debian.org/debian sid InRelease [198 kB]'), 198_000);
  t.is(aptGetLineBytes('Get:3 http://deb.debian.org/debian sid/main amd64 Packages [9,876 kB]'), 9_876_000);
  t.is(aptGetLineBytes('Hit:2 http://deb.debian.org/debian sid InRelease'), undefined);
  t.is(aptGetLineBytes('Fetched 10.1 MB in 3s (3,370 kB/s)'), undefined);
});

test('the line: bytes of total, percent, rate and ETA; without a total, bytes and rate', (t) => {
  t.is(formatBytes(999), '999 B');
  t.is(formatBytes(152_418_360), '152.4 MB');
  const start = 1_000_000;
  t.is(downloadLine('downloading linux-source-7.2.deb', 50_000_000, 150_000_000, start, start + 10_000),
    'downloading linux-source-7.2.deb: 50.0 MB/150.0 MB (33%), 5.0 MB/s, ETA 20 s');
  t.is(downloadLine('d', 10_000_000, 150_000_000, start, start + 10_000), 'd: 10.0 MB/150.0 MB (6%), 1.0 MB/s, ETA 2 min');
  t.is(downloadLine('d', 150_000_000, 150_000_000, start, start + 30_000), 'd: 150.0 MB/150.0 MB (100%), 5.0 MB/s');
  t.is(downloadLine('apt indexes (3 files)', 2_500_000, undefined, start, start + 2_000), 'apt indexes (3 files): 2.5 MB, 1.3 MB/s');
});

test('watchDownload measures a growing file; without a TTY the step prints plain lines at most every 10 s', async (t) => {
  const dir = tempDir('hwlab-dl-');
  const file = path.join(dir, 'pkg.deb');
  await writeFile(file, '');
  const lines: string[] = [];
  const sink = { write: (s: string) => { lines.push(s); return true; }, isTTY: false, columns: 80 } as unknown as NodeJS.WriteStream;
  const step = new Progress(sink, false).step('kernel source');
  const seen: string[] = [];
  const spy = { update: (d: string) => { seen.push(d); step.update(d); }, done: step.done, fail: step.fail };
  const stop = watchDownload(spy, 'downloading pkg.deb', 4000, () => bytesUnder(dir));
  for (let i = 0; i < 4; i++) {
    await appendFile(file, Buffer.alloc(1000));
    await sleep(600);
  }
  await sleep(600);
  stop();
  t.regex(seen[0], /^downloading pkg\.deb: 0 B\/4\.0 kB \(0%\)/);
  t.regex(seen.at(-1)!, /^downloading pkg\.deb: 4\.0 kB\/4\.0 kB \(100%\), [\d.]+ kB\/s$/);
  // About 3 s of updates, every second: the plain output has only the step's header.
  t.deepEqual(lines, ['==> kernel source\n']);
});
