// The in-guest probe runner: src/guest/runner.ts bundled by esbuild into one
// CommonJS file, plus koffi's package with only the linux_x64 native module.
import * as esbuild from 'esbuild';
import { copyFile, mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface ProbeBundle {
  /** Local file -> path relative to the guest's probe directory. */
  files: Array<{ local: string; relative: string }>;
  entry: string;
}

export async function bundleProbes(outDir: string): Promise<ProbeBundle> {
  await mkdir(outDir, { recursive: true });
  const runner = path.join(outDir, 'runner.cjs');
  await esbuild.build({
    entryPoints: [path.join(repoRoot, 'src/guest/runner.ts')],
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node18', // bookworm's nodejs
    external: ['koffi'],
    outfile: runner,
    logLevel: 'silent',
  });
  const require = createRequire(import.meta.url);
  const koffiDir = path.dirname(require.resolve('koffi/package.json'));
  const koffiFiles = ['package.json', 'index.js', 'build/koffi/linux_x64/koffi.node'];
  const files = [{ local: runner, relative: 'runner.cjs' }];
  for (const f of koffiFiles) {
    const dest = path.join(outDir, 'node_modules/koffi', f);
    await mkdir(path.dirname(dest), { recursive: true });
    await copyFile(path.join(koffiDir, f), dest);
    files.push({ local: dest, relative: `node_modules/koffi/${f}` });
  }
  return { files, entry: 'runner.cjs' };
}
