import test from 'ava';
import { execa } from 'execa';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sha256 } from '../../src/util/cache.ts';
import {
  applySeries,
  loadPatchSeries,
  parseDiff,
  parseMbox,
  parseQuiltSeries,
  PatchApplyError,
  scratchCopy,
  splitMbox,
  type PatchFile,
} from '../../src/kernel/patches.ts';

const FX = fileURLToPath(new URL('../fixtures/patches/', import.meta.url));
const fx = (p: string) => join(FX, p);

async function tmp(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'hwlab-patches-'));
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
}

/** A fresh writable copy of the tiny demo tree. */
async function demoTree(t: Parameters<typeof tmp>[0]): Promise<string> {
  const dir = join(await tmp(t), 'tree');
  await cp(fx('demo-tree'), dir, { recursive: true });
  return dir;
}

async function listTree(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, rel), { withFileTypes: true })) {
    const r = rel ? `${rel}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listTree(dir, r)));
    else out.push(r);
  }
  return out.sort();
}

async function snapshotTree(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of await listTree(dir)) out[f] = await readFile(join(dir, f), 'utf8');
  return out;
}

const git = (cwd: string, ...args: string[]) =>
  execa('git', args, {
    cwd,
    env: {
      GIT_AUTHOR_NAME: 'Ada Example', GIT_AUTHOR_EMAIL: 'ada@example.org', GIT_AUTHOR_DATE: '2026-01-05T10:00:00Z',
      GIT_COMMITTER_NAME: 'Ada Example', GIT_COMMITTER_EMAIL: 'ada@example.org', GIT_COMMITTER_DATE: '2026-01-05T10:00:00Z',
    },
  });

// ---------------------------------------------------------------------------
// Parsing

test('quilt series: comments, blank lines, trailing comments and -pN', (t) => {
  const entries = parseQuiltSeries(
    '# header comment\n\nfirst.patch\n  second.patch -p0   # why p0\nsub/third.patch -p 2\n#disabled.patch\n\r\n',
  );
  t.deepEqual(entries, [
    { patch: 'first.patch', strip: 1, line: 3 },
    { patch: 'second.patch', strip: 0, line: 4 },
    { patch: 'sub/third.patch', strip: 2, line: 5 },
  ]);
});

test('quilt series: -R and unknown options are refused with the line', (t) => {
  t.throws(() => parseQuiltSeries('a.patch\nb.patch -R\n', 'x/series'), { message: /x\/series:2: reversed patches \(-R\) are not supported: b\.patch/ });
  t.throws(() => parseQuiltSeries('a.patch --fuzz=3\n', 'series'), { message: /series:1: unknown option "--fuzz=3" for a\.patch/ });
});

test('loadPatchSeries: plain files keep order, name, origin, sha256, subject and strip 1', async (t) => {
  const files = ['0002-demo-raise-DEMO_MAX.patch', '0001-demo-return-ENOENT-for-a-zero-length.patch'];
  const series = await loadPatchSeries(files.map((f) => ({ kind: 'file' as const, path: fx(f) })));
  t.deepEqual(series.map((p) => p.name), files);
  t.is(series[0].origin, fx(files[0]));
  t.is(series[0].strip, 1);
  t.is(series[0].sha256, sha256(await readFile(fx(files[0]), 'utf8')));
  // The format-patch subject is folded over two lines; it must come back as one.
  t.is(series[0].subject, 'demo: raise DEMO_MAX to 8192 so that two pages of ranges fit in one request even on the oldest supported configuration');
  t.is(series[1].subject, 'demo: return -ENOENT for a zero length');
});

test('loadPatchSeries: quilt directory honours the series file and its -p0', async (t) => {
  const series = await loadPatchSeries([{ kind: 'quilt', dir: fx('quilt') }]);
  t.deepEqual(series.map((p) => [p.name, p.strip]), [['demo-enoent.patch', 1], ['demo-default-p0.patch', 0]]);
  t.is(series[0].origin, fx('quilt/demo-enoent.patch'));
  t.is(series[0].subject, 'demo: return -ENOENT for a zero length');
  t.is(series[1].subject, undefined);
});

test('loadPatchSeries: missing files and non-patches are named', async (t) => {
  const d = await tmp(t);
  await t.throwsAsync(loadPatchSeries([{ kind: 'file', path: join(d, 'nope.patch') }]), { message: /nope\.patch does not exist/ });
  await writeFile(join(d, 'notes.txt'), 'just some notes\n');
  await t.throwsAsync(loadPatchSeries([{ kind: 'file', path: join(d, 'notes.txt') }]), { message: /notes\.txt: no diff found/ });
  await mkdir(join(d, 'q'));
  await writeFile(join(d, 'q/series'), 'a.patch\nmissing.patch\n');
  await writeFile(join(d, 'q/a.patch'), await readFile(fx('0002-demo-raise-DEMO_MAX.patch')));
  await t.throwsAsync(loadPatchSeries([{ kind: 'quilt', dir: join(d, 'q') }]), { message: /series:2: .*missing\.patch does not exist/ });
  await t.throwsAsync(loadPatchSeries([{ kind: 'quilt', dir: d }]), { message: /no series file in/ });
  await t.throwsAsync(loadPatchSeries([{ kind: 'file', path: fx('demo-series-b4.mbox') }]), { message: /demo-series-b4\.mbox holds 3 patch mails \(an mbox\)/ });
});

test('mbox (b4 style): cover letter skipped, patches sorted by [PATCH n/N], folded subject joined', async (t) => {
  const file = fx('demo-series-b4.mbox');
  const series = await loadPatchSeries([{ kind: 'mbox', path: file }]);
  t.deepEqual(series.map((p) => p.name), [
    '0001-demo-return-ENOENT-for-a-zero-length.patch',
    '0002-demo-raise-DEMO_MAX-to-8192-so-that-two-pages-of-ran.patch',
    '0003-demo-add-a-README.patch',
  ]);
  t.deepEqual(series.map((p) => p.origin), [`${file}#1`, `${file}#2`, `${file}#3`]);
  t.is(series[1].subject, 'demo: raise DEMO_MAX to 8192 so that two pages of ranges fit in one request even on the oldest supported configuration');
  for (const p of series) {
    t.is(p.sha256, sha256(p.text));
    t.true(p.text.startsWith('From git@z Thu Jan  1 00:00:00 1970\n'));
    t.is(parseDiff(p.text).length, 1);
  }
  // Each message is exactly one patch: the 2/3 text holds demo.h only.
  t.regex(series[1].text, /\+#define DEMO_MAX\t8192/);
  t.notRegex(series[1].text, /ENOENT|README/);
});

test('mbox (git format-patch --cover-letter --stdout, made with real git): 3 patches in order, apply cleanly', async (t) => {
  const d = await tmp(t);
  const repo = join(d, 'repo');
  await cp(fx('demo-tree'), repo, { recursive: true });
  await git(repo, 'init', '-q', '-b', 'master');
  await git(repo, 'add', '-A');
  await git(repo, 'commit', '-qm', 'base');
  const edits: Array<[string, string, string, string]> = [
    ['drivers/demo/demo.c', 'return -EINVAL;', 'return -ENOENT;', 'demo: return -ENOENT for a zero length'],
    ['drivers/demo/demo.h', 'DEMO_MAX\t4096', 'DEMO_MAX\t8192', 'demo: raise DEMO_MAX'],
    ['drivers/demo/demo.c', 'MODULE_LICENSE("GPL");', 'MODULE_LICENSE("GPL");\nMODULE_AUTHOR("Ada Example");', 'demo: add MODULE_AUTHOR'],
  ];
  for (const [f, from, to, msg] of edits) {
    const p = join(repo, f);
    await writeFile(p, (await readFile(p, 'utf8')).replace(from, to));
    await git(repo, 'commit', '-qam', msg, '-m', 'From the demo maintainers, with love 2026');
  }
  const mbox = (await git(repo, 'format-patch', '-3', '--stdout', '--cover-letter', '--thread')).stdout + '\n';
  t.is(splitMbox(mbox).length, 4);
  const series = parseMbox(mbox, 'series.mbox');
  t.deepEqual(series.map((p) => p.subject), edits.map((e) => e[3]));
  t.deepEqual(series.map((p) => p.origin), ['series.mbox#1', 'series.mbox#2', 'series.mbox#3']);

  const tree = join(d, 'tree');
  await cp(fx('demo-tree'), tree, { recursive: true });
  await applySeries(tree, series);
  // The result equals the repo's own HEAD.
  for (const f of ['drivers/demo/demo.c', 'drivers/demo/demo.h']) {
    t.is(await readFile(join(tree, f), 'utf8'), await readFile(join(repo, f), 'utf8'), f);
  }
});

test('mbox: unnumbered messages keep file order; numbering problems are refused', (t) => {
  const msg = (subject: string, body = 'diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n') =>
    `From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: ${subject}\n\n${body}\n`;
  const plain = parseMbox(msg('[PATCH] second thing') + msg('first thing'), 'm');
  t.deepEqual(plain.map((p) => [p.name, p.origin]), [['0001-second-thing.patch', 'm#1'], ['0002-first-thing.patch', 'm#2']]);
  t.throws(() => parseMbox(msg('[PATCH 1/3] a') + msg('[PATCH 3/3] c'), 'm'), { message: /m: incomplete series: patch\(es\) 2 of 3 missing/ });
  t.throws(() => parseMbox(msg('[PATCH 1/2] a') + msg('[PATCH v2 1/2] a') + msg('[PATCH 2/2] b'), 'm'), { message: /patch 1\/2 appears twice/ });
  t.throws(() => parseMbox(msg('[PATCH 0/1] cover', 'blurb\n'), 'm'), { message: /no patches found/ });
  t.throws(() => parseMbox(msg('[PATCH 1/1] a').replace('Subject:', 'Content-Transfer-Encoding: base64\nSubject:'), 'm'), { message: /m#1: the message body is base64-encoded/ });
});

test('parseDiff: hunks are read by their counts (a removed "-- " line is not a header) and git-only sections count', (t) => {
  const text = [
    'diff --git a/f b/f', '--- a/f', '+++ b/f', '@@ -1,3 +1,3 @@', ' x', '--- old comment', '+++ new comment', ' y',
    'diff --git a/s.sh b/s.sh', 'old mode 100644', 'new mode 100755',
    'diff --git a/gone b/gone', 'deleted file mode 100644', '--- a/gone', '+++ /dev/null', '@@ -1 +0,0 @@', '-bye',
    '-- ', '2.39.5', '',
  ].join('\n');
  const s = parseDiff(text);
  t.deepEqual(s.map((x) => [x.oldPath, x.newPath, x.hunks.length]), [['a/f', 'b/f', 1], ['a/s.sh', 'b/s.sh', 0], ['a/gone', '/dev/null', 1]]);
  t.deepEqual(s[0].hunks[0].lines, [' x', '--- old comment', '+++ new comment', ' y']);
});

// ---------------------------------------------------------------------------
// Applying

test('applySeries: quilt (-p1 and -p0) and a new file apply in order', async (t) => {
  const tree = await demoTree(t);
  const series = await loadPatchSeries([
    { kind: 'quilt', dir: fx('quilt') },
    { kind: 'file', path: fx('0003-demo-add-a-README.patch') },
  ]);
  await applySeries(tree, series);
  const c = await readFile(join(tree, 'drivers/demo/demo.c'), 'utf8');
  const h = await readFile(join(tree, 'drivers/demo/demo.h'), 'utf8');
  t.regex(c, /if \(!len\)\n\t\treturn -ENOENT;/);
  t.regex(h, /DEMO_MAX\t4096/);
  t.regex(h, /DEMO_DEFAULT\t128/);
  t.regex(await readFile(join(tree, 'drivers/demo/README'), 'utf8'), /fixture for hwlab/);
  // No backups, rejects or temp files left behind.
  t.deepEqual(await listTree(tree), ['Makefile', 'drivers/demo/README', 'drivers/demo/demo.c', 'drivers/demo/demo.h']);
});

test('applySeries: a patch that does not apply names patch, origin, file, hunk and what applied before it', async (t) => {
  const tree = await demoTree(t);
  const series = await loadPatchSeries([
    { kind: 'file', path: fx('0002-demo-raise-DEMO_MAX.patch') },
    { kind: 'file', path: fx('demo-bad-context.patch') },
    { kind: 'file', path: fx('0003-demo-add-a-README.patch') },
  ]);
  const before = await snapshotTree(tree);
  const err = await t.throwsAsync(applySeries(tree, series), { instanceOf: PatchApplyError });
  const m = err!.message;
  t.regex(m, /^patch 2\/3 "demo-bad-context\.patch" \(.*test\/fixtures\/patches\/demo-bad-context\.patch\) does not apply:/);
  t.regex(m, /\n {2}drivers\/demo\/demo\.c: hunk #2 FAILED: its context does not match \(tried at line 15\)\n/);
  t.regex(m, /\n {4}@@ -14,6 \+15,6 @@ static int demo_check\(unsigned long len\)\n/);
  t.regex(m, /\n {4}-\treturn demo_check\(DEMO_DEFAULT \* 2\);\n/);
  t.regex(m, /\napplied cleanly before it: 0002-demo-raise-DEMO_MAX\.patch\n/);
  t.regex(m, /nothing of "demo-bad-context\.patch" was applied$/);
  t.is(err!.failures.length, 1);
  t.is(err!.appliedBefore.length, 1);
  // Patch 1 stays applied; patch 2's good first hunk (#include) was not; patch 3 never ran.
  const after = await snapshotTree(tree);
  t.regex(after['drivers/demo/demo.h'], /DEMO_MAX\t8192/);
  t.is(after['drivers/demo/demo.c'], before['drivers/demo/demo.c']);
  t.false('drivers/demo/README' in after);
});

test('applySeries: a patch whose first file applies and second fails leaves nothing applied', async (t) => {
  const tree = await demoTree(t);
  const before = await snapshotTree(tree);
  const series = await loadPatchSeries([{ kind: 'file', path: fx('demo-partial.patch') }]);
  const err = await t.throwsAsync(applySeries(tree, series), { instanceOf: PatchApplyError });
  t.regex(err!.message, /patch 1\/1 "demo-partial\.patch"/);
  t.regex(err!.message, /drivers\/demo\/demo\.c: hunk #1 FAILED/);
  t.notRegex(err!.message, /demo\.h:/);
  t.regex(err!.message, /no patch before it in the series/);
  t.deepEqual(await snapshotTree(tree), before);
});

test('applySeries: one file edited in two sections (dry run cannot check it) applies, and a failure there is rolled back', async (t) => {
  const tree = await demoTree(t);
  const before = await snapshotTree(tree);
  const sec1 = '--- a/drivers/demo/demo.h\n+++ b/drivers/demo/demo.h\n@@ -4,3 +4,3 @@\n \n-#define DEMO_MAX\t4096\n+#define DEMO_MAX\t1024\n #define DEMO_DEFAULT\t64\n';
  // Section 2 depends on section 1's result.
  const sec2ok = '--- a/drivers/demo/demo.h\n+++ b/drivers/demo/demo.h\n@@ -5,3 +5,3 @@\n #define DEMO_MAX\t1024\n-#define DEMO_DEFAULT\t64\n+#define DEMO_DEFAULT\t32\n \n';
  const sec2bad = '--- a/drivers/demo/demo.h\n+++ b/drivers/demo/demo.h\n@@ -5,3 +5,3 @@\n #define DEMO_MAX\t2048\n-#define DEMO_DEFAULT\t64\n+#define DEMO_DEFAULT\t32\n \n';
  // Plain (non-git) diff sections, as handmade or concatenated patches have them.
  const newFile = '--- /dev/null\n+++ b/drivers/extra/new.c\n@@ -0,0 +1 @@\n+int x;\n';
  const mk = (name: string, text: string): PatchFile => ({ name, origin: name, sha256: sha256(text), text, strip: 1 });

  const bad = mk('twice-bad.patch', newFile + sec1 + sec2bad);
  const err = await t.throwsAsync(applySeries(tree, [bad]), { instanceOf: PatchApplyError });
  t.regex(err!.message, /drivers\/demo\/demo\.h: hunk #1 FAILED/);
  t.regex(err!.message, /@@ -5,3 \+5,3 @@\n {4} #define DEMO_MAX\t2048/); // the second section's hunk, not the first's
  t.deepEqual(await snapshotTree(tree), before); // demo.h restored, new.c and drivers/extra removed

  await applySeries(tree, [mk('twice.patch', newFile + sec1 + sec2ok)]);
  t.regex(await readFile(join(tree, 'drivers/demo/demo.h'), 'utf8'), /DEMO_MAX\t1024\n#define DEMO_DEFAULT\t32/);
  t.is(await readFile(join(tree, 'drivers/extra/new.c'), 'utf8'), 'int x;\n');
});

test('applySeries: an already applied patch and a missing file are explained', async (t) => {
  const tree = await demoTree(t);
  const [p] = await loadPatchSeries([{ kind: 'file', path: fx('0002-demo-raise-DEMO_MAX.patch') }]);
  const err = await t.throwsAsync(applySeries(tree, [p, p]), { instanceOf: PatchApplyError });
  t.regex(err!.message, /drivers\/demo\/demo\.h: already applied\? patch found its changes already present/);
  const err2 = await t.throwsAsync(applySeries(tree, [{ ...p, strip: 0 }]), { instanceOf: PatchApplyError });
  t.regex(err2!.message, /b\/drivers\/demo\/demo\.h: no such file in the tree \(patch strips 0 leading path component\(s\)\)/);
});

// ---------------------------------------------------------------------------
// Hard-linked scratch copies

test('GNU patch replaces files (rename) instead of writing in place, so a hard link keeps the old content', async (t) => {
  const d = await tmp(t);
  await cp(fx('demo-tree'), join(d, 'a'), { recursive: true });
  await execa('cp', ['-al', join(d, 'a'), join(d, 'b')]);
  const f = 'drivers/demo/demo.h';
  t.is((await stat(join(d, 'a', f))).nlink, 2);
  await execa('patch', ['-d', join(d, 'b'), '-p1', '--batch'], { inputFile: fx('0002-demo-raise-DEMO_MAX.patch') });
  t.regex(await readFile(join(d, 'a', f), 'utf8'), /DEMO_MAX\t4096/);
  t.regex(await readFile(join(d, 'b', f), 'utf8'), /DEMO_MAX\t8192/);
  t.is((await stat(join(d, 'a', f))).nlink, 1);
});

test('scratchCopy + applySeries never change the pristine tree', async (t) => {
  const d = await tmp(t);
  const pristine = join(d, 'pristine');
  await cp(fx('demo-tree'), pristine, { recursive: true });
  const before = await snapshotTree(pristine);
  const inodeBefore = (await stat(join(pristine, 'drivers/demo/demo.c'))).ino;
  await execa('chmod', ['0644', join(pristine, 'Makefile')]);
  const scratch = join(d, 'work', 'scratch');
  await scratchCopy(pristine, scratch);
  // Hard links: same inode, so the copy is cheap; untouched files stay shared.
  t.is((await stat(join(scratch, 'Makefile'))).ino, (await stat(join(pristine, 'Makefile'))).ino);
  const series = await loadPatchSeries([
    { kind: 'mbox', path: fx('demo-series-b4.mbox') },
    // Mode-only changes are where an in-place chmod would leak through a hard link.
    { kind: 'file', path: await writeModePatch(d) },
  ]);
  await applySeries(scratch, series);
  t.regex(await readFile(join(scratch, 'drivers/demo/demo.c'), 'utf8'), /-ENOENT/);
  t.is((await stat(join(scratch, 'Makefile'))).mode & 0o777, 0o755);
  t.deepEqual(await snapshotTree(pristine), before);
  t.is((await stat(join(pristine, 'drivers/demo/demo.c'))).ino, inodeBefore);
  t.is((await stat(join(pristine, 'Makefile'))).mode & 0o777, 0o644);
  t.false((await listTree(pristine)).includes('drivers/demo/README'));
  await t.throwsAsync(scratchCopy(pristine, scratch), { message: /already exists/ });
});

async function writeModePatch(d: string): Promise<string> {
  const p = join(d, 'mode.patch');
  await writeFile(p, 'diff --git a/Makefile b/Makefile\nold mode 100644\nnew mode 100755\n');
  return p;
}

// ---------------------------------------------------------------------------
// Real 7.2 fixtures (vfio_pci_dmabuf.c copied from linux-source-7.2 7.2.13-1)

test('vfio-zero-length-enoent.patch applies to the real vfio_pci_dmabuf.c', async (t) => {
  const tree = join(await tmp(t), 'tree');
  await cp(fx('tree'), tree, { recursive: true });
  const series = await loadPatchSeries([{ kind: 'file', path: fx('vfio-zero-length-enoent.patch') }]);
  t.is(series[0].subject, 'vfio/pci: return -ENOENT for a zero-length DMA-buf range');
  await applySeries(tree, series);
  const c = await readFile(join(tree, 'drivers/vfio/pci/vfio_pci_dmabuf.c'), 'utf8');
  t.regex(c, /\t\tif \(!len\)\n\t\t\treturn -ENOENT;\n\n\t\tif \(!PAGE_ALIGNED\(offset\) \|\| !PAGE_ALIGNED\(len\)\)\n\t\t\treturn -EINVAL;/);
  t.regex(c, /if \(!dma_ranges\[i\]\.length\)\n\t\t\treturn -ENOENT;/);
});

test('does-not-apply.patch fails on hunk #2 of the real vfio_pci_dmabuf.c, leaving the file untouched', async (t) => {
  const tree = join(await tmp(t), 'tree');
  await cp(fx('tree'), tree, { recursive: true });
  const file = join(tree, 'drivers/vfio/pci/vfio_pci_dmabuf.c');
  const before = await readFile(file, 'utf8');
  const series = await loadPatchSeries([
    { kind: 'file', path: fx('vfio-zero-length-enoent.patch') },
    { kind: 'file', path: fx('does-not-apply.patch') },
  ]);
  // Against the pristine file alone (not after the good patch, which would make hunk #1 fail too).
  const err = await t.throwsAsync(applySeries(tree, [series[1]]), { instanceOf: PatchApplyError });
  t.is(
    err!.message,
    [
      `patch 1/1 "does-not-apply.patch" (${fx('does-not-apply.patch')}) does not apply:`,
      '  drivers/vfio/pci/vfio_pci_dmabuf.c: hunk #2 FAILED: its context does not match (tried at line 200)',
      '    @@ -200,7 +200,10 @@ static int validate_dmabuf_input(struct vfio_device_feature_dma_buf *dma_buf,',
      '     \t\tu64 offset = dma_ranges[i].offset;',
      '     \t\tu64 len = dma_ranges[i].length;',
      '     ',
      '    -\t\tif (!len || !IS_ALIGNED(offset, PAGE_SIZE) || !IS_ALIGNED(len, PAGE_SIZE))',
      '    +\t\tif (!len)',
      '    +\t\t\treturn -ENOENT;',
      'no patch before it in the series',
      'nothing of "does-not-apply.patch" was applied',
    ].join('\n'),
  );
  t.is(await readFile(file, 'utf8'), before);
});
