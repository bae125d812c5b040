// A small, real git history of the kernel for `hwlab bisect` to search: a
// bare repository whose first commit is Debian's 7.2 source tree as hwlab
// unpacks it, then eight commits on top. Seven are harmless (a comment in a
// vfio-pci or dma-buf source file, so each step still recompiles something,
// or a documentation line); one applies a catalogue patch, the bug bisect
// must find. Built with git plumbing only (no checkout: the pristine tree is
// read as the work tree of one `git add`, and later commits are written to
// the index directly), and kept in the cache under a key of its recipe, so
// the second test run reuses it.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { cacheKey, cacheRoot } from '../../src/util/cache.ts';

export interface KernelHistory {
  repo: string;
  /** The base commit (Debian's tree) and the eight on top, oldest first. */
  base: string;
  commits: Array<{ sha: string; subject: string }>;
  /** The commit that applies the catalogue patch. */
  bad: { sha: string; subject: string };
}

type Change = { kind: 'comment'; file: string; text: string } | { kind: 'patch'; file: string };

/** Position 4 of 8 is the bug: bisect has to look on both sides. */
export function historyRecipe(mutantPatch: string): Array<{ subject: string; change: Change }> {
  return [
    { subject: 'Documentation: vfio: mention dma-buf export in the overview', change: { kind: 'comment', file: 'Documentation/driver-api/vfio.rst', text: '.. hwlab test history: dma-buf export of BARs is described in vfio_pci_dmabuf.c' } },
    { subject: 'vfio/pci: comment on the dma-buf priv lifetime', change: { kind: 'comment', file: 'drivers/vfio/pci/vfio_pci_dmabuf.c', text: '/* hwlab test history: priv lives until the last dma-buf reference is put */' } },
    { subject: 'dma-buf: comment on phys_vec ranges', change: { kind: 'comment', file: 'drivers/dma-buf/dma-buf-mapping.c', text: '/* hwlab test history: ranges are linked in order */' } },
    { subject: 'vfio/pci: accept dma-buf importers without allow_peer2peer', change: { kind: 'patch', file: mutantPatch } },
    { subject: 'vfio/pci: comment on revoke ordering', change: { kind: 'comment', file: 'drivers/vfio/pci/vfio_pci_core.c', text: '/* hwlab test history: revoke before the BAR goes away */' } },
    { subject: 'Documentation: dma-buf: note on MMIO importers', change: { kind: 'comment', file: 'Documentation/driver-api/dma-buf.rst', text: '.. hwlab test history: MMIO-backed buffers need a p2p-capable importer' } },
    { subject: 'vfio/pci: comment on MEM toggles', change: { kind: 'comment', file: 'drivers/vfio/pci/vfio_pci_config.c', text: '/* hwlab test history: clearing MEM revokes exported buffers */' } },
    { subject: 'vfio/pci: comment on the export feature entry', change: { kind: 'comment', file: 'drivers/vfio/pci/vfio_pci_dmabuf.c', text: '/* hwlab test history: VFIO_DEVICE_FEATURE_DMA_BUF enters here */' } },
  ];
}

async function git(repo: string, args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<string> {
  const r = await execa('git', ['--git-dir', repo, ...args], {
    input: opts.input, timeout: 1_800_000,
    env: { GIT_AUTHOR_NAME: 'hwlab test', GIT_AUTHOR_EMAIL: 'hwlab@localhost', GIT_COMMITTER_NAME: 'hwlab test', GIT_COMMITTER_EMAIL: 'hwlab@localhost', GIT_AUTHOR_DATE: '2026-12-01T00:00:00Z', GIT_COMMITTER_DATE: '2026-12-01T00:00:00Z', ...opts.env },
  });
  return r.stdout.trim();
}

/** The history over `tree` (a pristine kernel tree, e.g. hwlab's unpacked linux-source), made once and cached. */
export async function kernelHistory(tree: string, treeId: string, mutantPatch: string, log: (s: string) => void = () => {}): Promise<KernelHistory> {
  const recipe = historyRecipe(mutantPatch);
  const key = cacheKey({ v: 1, treeId, recipe: recipe.map((r) => r.subject), patch: await readFile(mutantPatch, 'utf8') });
  const dir = path.join(cacheRoot(), 'test-kernel-history', key);
  const done = path.join(dir, 'history.json');
  if (existsSync(done)) return JSON.parse(await readFile(done, 'utf8')) as KernelHistory;
  const tmp = `${dir}.tmp-${process.pid}`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  const repo = path.join(tmp, 'linux.git');
  await execa('git', ['init', '--quiet', '--bare', repo]);
  log(`test kernel history: adding ${tree} (takes a few minutes)`);
  // The pristine tree is only read: it is the work tree of this one command, with the index in the bare repository.
  await git(repo, ['--work-tree', tree, 'add', '--all', '--force', '.']);
  const commit = async (subject: string, parent?: string) => {
    const treeSha = await git(repo, ['write-tree']);
    const sha = await git(repo, ['commit-tree', treeSha, ...(parent ? ['-p', parent] : []), '-m', subject]);
    await git(repo, ['update-ref', 'refs/heads/master', sha]);
    return sha;
  };
  const base = await commit(`Linux ${treeId} as Debian ships it`);
  const commits: KernelHistory['commits'] = [];
  let head = base;
  for (const step of recipe) {
    if (step.change.kind === 'patch') {
      await git(repo, ['apply', '--cached', step.change.file]);
    } else {
      const { file, text } = step.change;
      // Byte for byte: the file's content as committed, plus one line.
      const blob = (await execa('git', ['--git-dir', repo, 'cat-file', 'blob', `${head}:${file}`], { stripFinalNewline: false, encoding: 'buffer' })).stdout;
      const sha = (await execa('git', ['--git-dir', repo, 'hash-object', '-w', '--stdin'], { input: Buffer.concat([blob, Buffer.from(`${text}\n`)]) })).stdout.trim();
      await git(repo, ['update-index', '--cacheinfo', `100644,${sha},${file}`]);
    }
    head = await commit(step.subject, head);
    commits.push({ sha: head, subject: step.subject });
  }
  const bad = commits[recipe.findIndex((r) => r.change.kind === 'patch')];
  const history: KernelHistory = { repo: path.join(dir, 'linux.git'), base, commits, bad };
  await writeFile(path.join(tmp, 'history.json'), JSON.stringify(history, null, 2));
  await rm(dir, { recursive: true, force: true });
  await rename(tmp, dir);
  return history;
}
