// The in-guest probe runner: src/guest/runner.ts bundled by esbuild into one
// CommonJS file (and the stress probe's worker entry into another), plus koffi's package with only the linux_x64 native module,
// and src/guest/prestart.sh, which starts a runner that waits in a guest
// about to be saved and hands it a run after the restore. The bundle's hash
// tells a waiting runner whether it is the code this run uploaded.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { PRESTART_SCRIPT_NAME, STRESS_WORKER_ENTRY } from '../protocol/protocol.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface ProbeBundle {
  /** Local file -> path relative to the guest's probe directory. */
  files: Array<{ local: string; relative: string }>;
  entry: string;
  /** sha256 over every file's relative path and contents, in order. */
  hash: string;
}

export async function bundleProbes(outDir: string): Promise<ProbeBundle> {
  await mkdir(outDir, { recursive: true });
  const runner = path.join(outDir, 'runner.cjs');
  const worker = path.join(outDir, STRESS_WORKER_ENTRY);
  await esbuild.build({
    entryPoints: [
      { in: path.join(repoRoot, 'src/guest/runner.ts'), out: 'runner' },
      { in: path.join(repoRoot, 'src/guest/stress-worker.ts'), out: STRESS_WORKER_ENTRY.replace(/\.cjs$/, '') },
    ],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node18', // the oldest a recipe may use: bookworm's nodejs (images/bookworm.yaml has the official 20)
    external: ['koffi'],
    outdir: outDir,
    outExtension: { '.js': '.cjs' },
    logLevel: 'silent',
  });
  const require = createRequire(import.meta.url);
  const koffiDir = path.dirname(require.resolve('koffi/package.json'));
  const koffiFiles = ['package.json', 'index.js', 'build/koffi/linux_x64/koffi.node'];
  const files = [{ local: runner, relative: 'runner.cjs' }, { local: worker, relative: STRESS_WORKER_ENTRY }];
  for (const f of koffiFiles) {
    const dest = path.join(outDir, 'node_modules/koffi', f);
    await mkdir(path.dirname(dest), { recursive: true });
    await copyFile(path.join(koffiDir, f), dest);
    files.push({ local: dest, relative: `node_modules/koffi/${f}` });
  }
  const prestart = path.join(outDir, PRESTART_SCRIPT_NAME);
  await copyFile(path.join(repoRoot, 'src/guest', PRESTART_SCRIPT_NAME), prestart);
  files.push({ local: prestart, relative: PRESTART_SCRIPT_NAME });
  const h = createHash('sha256');
  for (const f of files) h.update(`${f.relative}\0`).update(await readFile(f.local)).update('\0');
  return { files, entry: 'runner.cjs', hash: h.digest('hex') };
}
