// A run folder reproduces itself: lab/lab.yaml loads back to the lab the run
// ran (with --patch and --fragment folded in, read from the folder's own
// copies), and qemu-cmdline.sh refers only to the cache and the folder.
import test from 'ava';
import { execa } from 'execa';
import { mkdtempSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { reproduceScript } from '../../src/machine/qemu.ts';
import { labWithExtras, RUN_LAB_FILE, rerunLine, writeRunLab } from '../../src/run/reproduce.ts';
import { tempDir } from './helpers/temp.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

test('lab/lab.yaml: the run\'s lab with its --patch and --fragment, from copies in the folder, loads back the same', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/smoke.yaml'));
  const patch = path.join(repo, 'labs/mutants/03-attach-allows-no-p2p.patch');
  const frag = path.join(repo, 'labs/configs/kasan.config');
  const run = labWithExtras(lab, [patch], [frag]);
  const runDir = tempDir('hwlab-run-');
  const file = await writeRunLab(run, runDir);
  t.is(file, path.join(runDir, RUN_LAB_FILE));
  t.deepEqual((await readdir(path.join(runDir, 'lab/patches/01'))), ['03-attach-allows-no-p2p.patch']);
  const configs = ['01/guest-base.config', '02/vfio-dmabuf.config', '03/debug.config', '04/kasan.config'];
  for (const c of configs) t.is(await readFile(path.join(runDir, 'lab/configs', c), 'utf8'), await readFile(path.join(repo, 'labs/configs', path.basename(c)), 'utf8'));
  t.is(await readFile(path.join(runDir, 'lab/patches/01/03-attach-allows-no-p2p.patch'), 'utf8'), await readFile(patch, 'utf8'));
  t.is(await readFile(path.join(runDir, 'images/bookworm.yaml'), 'utf8'), await readFile(path.join(repo, 'images/bookworm.yaml'), 'utf8'));
  const again = await loadLab(file);
  t.is(again.file, file);
  t.deepEqual(again.kernel, {
    ...run.kernel,
    patches: [{ kind: 'file', path: path.join(runDir, 'lab/patches/01/03-attach-allows-no-p2p.patch') }],
    ...(run.kernel.kind === 'source' ? { config: { base: run.kernel.config.base, fragments: configs.map((f) => path.join(runDir, 'lab/configs', f)) } } : {}),
  });
  t.deepEqual({ ...again, file: '', kernel: null }, { ...run, file: '', kernel: null });
  t.regex(await readFile(file, 'utf8'), new RegExp(`^# .*\\n# .*\\n#   hwlab rerun ${runDir}\\n`));
  t.is(rerunLine(path.join(process.cwd(), 'runs/x')), 'hwlab rerun runs/x');
  t.is(rerunLine('/elsewhere/runs/x'), 'hwlab rerun /elsewhere/runs/x');
});

test('a prebuilt kernel without the fast path keeps --patch as an option (prepare refuses it)', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/prebuilt.yaml'));
  t.is(labWithExtras(lab, ['x.patch'], []), lab);
  const fast = await loadLab(path.join(repo, 'labs/fastpath.yaml'));
  t.deepEqual(labWithExtras(fast, ['x.patch'], []).kernel.patches.at(-1), { kind: 'file', path: path.resolve('x.patch') });
});

test('qemu-cmdline.sh names no scratch path, makes its own overlay, and is valid sh', async (t) => {
  const lab = await loadLab(path.join(repo, 'labs/default.yaml'));
  const scratch = '/dev/shm/hwlab-Ab1x';
  const cache = '/root/.cache/hwlab';
  const cmd = buildQemuCommand({
    lab, accel: 'tcg', kernelImage: `${cache}/kernel-build/k/vmlinuz`, initrd: `${cache}/initramfs/i/initrd`, rootDisk: `${scratch}/root.qcow2`,
    modulesDisk: `${cache}/kernel-build/k/modules.ext4`, consoleLog: '/runs/r/console.log', qmpSocket: `${scratch}/qmp.sock`, sshPort: 40000,
    memoryBackendDir: scratch, append: ['console=ttyS0,115200', 'panic=-1'],
  });
  const script = reproduceScript(cmd, scratch, `${cache}/image/i/rootfs.ext4`);
  t.false(script.includes(scratch), script);
  t.regex(script, /scratch=\$\(mktemp -d /);
  t.regex(script, /qemu-img create -q -f qcow2 -b \/root\/\.cache\/hwlab\/image\/i\/rootfs\.ext4 -F raw "\$scratch\/root\.qcow2"/);
  t.regex(script, /-serial mon:stdio/);
  t.regex(script, /"file=\$scratch\/root\.qcow2,if=none/);
  // Every absolute path left is the cache's.
  const paths = [...script.matchAll(/(?<![\w$])\/[\w./-]+/g)].map((m) => m[0]).filter((p) => !['/dev/shm/hwlab-manual-XXXXXX', '/bin/sh'].includes(p) && !p.startsWith('/root.qcow2') && !p.startsWith('/qmp.sock'));
  t.true(paths.every((p) => p.startsWith(cache) || /^\/(shm\d|root\.qcow2|qmp\.sock)/.test(p) || p.startsWith('/shm')), paths.join(' '));
  const r = await execa('sh', ['-n'], { input: script, reject: false });
  t.is(r.exitCode, 0, r.stderr);
});
