// The build tree's src/ (pristine + the lab's series) across series changes:
// after a complete preparation only the files the previous series touched go
// back to pristine before the next series is applied (no full re-copy of the
// tree), the result is exactly pristine + the new series, and the pristine
// tree is never written. Through withPatchedSource, on a small real tree with
// real patches applied by hwlab's applySeries.
import test from 'ava';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { withPatchedSource } from '../../src/kernel/build.ts';
import type { PatchFile } from '../../src/kernel/patches.ts';
import type { KernelTree } from '../../src/kernel/source.ts';
import { silentProgress } from '../../src/util/progress.ts';
import { tempDir } from './helpers/temp.ts';

function patch(name: string, text: string): PatchFile {
  return { name, origin: name, sha256: createHash('sha256').update(text).digest('hex'), text, strip: 1 };
}
const EDIT_A = patch('a.patch', '--- a/drivers/a.c\n+++ b/drivers/a.c\n@@ -1,2 +1,2 @@\n int a;\n-int a2;\n+int a2_patched;\n');
const EDIT_B_ADD_C = patch('b.patch', [
  '--- a/drivers/b.c', '+++ b/drivers/b.c', '@@ -1 +1 @@', '-int b;', '+int b_patched;',
  '--- /dev/null', '+++ b/drivers/new/c.c', '@@ -0,0 +1 @@', '+int c;', '',
].join('\n'));
const DELETE_A = patch('del.patch', '--- a/drivers/a.c\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-int a;\n-int a2;\n');

async function snapshot(dir: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const e of await readdir(path.join(dir, rel), { withFileTypes: true })) {
    const r = path.join(rel, e.name);
    if (e.isDirectory()) Object.assign(out, await snapshot(dir, r));
    else out[r] = await readFile(path.join(dir, r), 'utf8');
  }
  return out;
}

test('src/ follows the series: only the previous series\' files are put back, then the new series applies', async (t) => {
  const root = tempDir('hwlab-patched-tree-');
  process.env.HWLAB_CACHE = path.join(root, 'cache');
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const treeDir = path.join(root, 'tree');
  await mkdir(path.join(treeDir, 'drivers'), { recursive: true });
  await writeFile(path.join(treeDir, 'Makefile'), 'all:\n');
  await writeFile(path.join(treeDir, 'drivers/a.c'), 'int a;\nint a2;\n');
  await writeFile(path.join(treeDir, 'drivers/b.c'), 'int b;\n');
  const pristine = await snapshot(treeDir);
  const tree: KernelTree = { dir: treeDir, id: 'tar:test', version: '7.2.0', label: 'test tree' };
  const entry = path.join(root, 'cache/kernel-build/k1');
  const src = path.join(process.env.HWLAB_CACHE, 'kbuild-work/w1/src');
  await mkdir(entry, { recursive: true });
  await writeFile(path.join(entry, 'build.json'), JSON.stringify({ treeId: tree.id, srcDir: src }));
  const step = silentProgress().step('test');
  const prepare = (patches: PatchFile[]) => withPatchedSource({ tree, patches, step, objDir: path.join(entry, 'obj') }, async (dir) => snapshot(dir));

  t.deepEqual(await prepare([EDIT_A]), { ...pristine, 'drivers/a.c': 'int a;\nint a2_patched;\n' });
  // A file the series never touched: a full re-copy would lose it.
  await writeFile(path.join(src, 'marker'), 'left by the test\n');
  const mtimeBefore = (await stat(path.join(src, 'drivers/a.c'))).mtimeMs;

  t.deepEqual(await prepare([EDIT_B_ADD_C]), { ...pristine, 'drivers/b.c': 'int b_patched;\n', 'drivers/new/c.c': 'int c;\n', marker: 'left by the test\n' });
  t.true((await stat(path.join(src, 'drivers/a.c'))).mtimeMs >= mtimeBefore, 'a.c, back to pristine, has a fresh mtime so make rebuilds it');

  t.deepEqual(await prepare([DELETE_A]), { ...Object.fromEntries(Object.entries(pristine).filter(([k]) => k !== 'drivers/a.c')), marker: 'left by the test\n' });
  t.false(existsSync(path.join(src, 'drivers/new/c.c')), 'a file the previous series created is gone');

  t.deepEqual(await prepare([]), { ...pristine, marker: 'left by the test\n' });
  t.deepEqual(await snapshot(treeDir), pristine, 'the pristine tree was never written');

  // An unreadable state (an interrupted preparation) is not trusted: a full copy.
  await writeFile(path.join(path.dirname(src), 'src-state.json'), '{');
  t.deepEqual(await prepare([EDIT_A]), { ...pristine, 'drivers/a.c': 'int a;\nint a2_patched;\n' });
});
