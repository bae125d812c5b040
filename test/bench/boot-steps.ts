// Where a boot of the lab's debug kernel spends its time (issue 12, boot
// trimming with evidence): one bare boot-to-poweroff of a lab's machine with
// `initcall_debug`, then the console's printk timestamps split into steps
// (kernel until the initramfs runs, initramfs, guest init until sshd) and the
// slowest initcalls. Prints figures; asserts nothing.
//   node --import tsx test/bench/boot-steps.ts [lab.yaml] [--top N] [--append WORD]...
// --append adds kernel command-line words, to measure a trimming candidate
// (e.g. pty.legacy_count=0) against a boot without it.
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { loadLab } from '../../src/lab/load.ts';
import { decideAccel } from '../../src/machine/accel.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { READY_LINE } from '../../src/protocol/protocol.ts';
import { runCleanups } from '../../src/util/cleanup.ts';
import { silentProgress } from '../../src/util/progress.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '15' }, append: { type: 'string', multiple: true, default: [] } } });
const lab = await loadLab(path.resolve(positionals[0] ?? path.join(repoRoot, 'labs/smoke.yaml')));
const logDir = await mkdtemp('/tmp/hwlab-boot-steps-');
const prepared = await prepareLab(lab, { progress: silentProgress() }, logDir);
await rm(logDir, { recursive: true, force: true });
const accel = await decideAccel(lab.machine.accel, prepared.kernel.vmlinuz);
const dir = await mkdtemp(path.join('/dev/shm', 'hwlab-boot-steps-'));
let consoleText = '';
let wall = 0;
try {
  const overlay = path.join(dir, 'root.qcow2');
  await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', prepared.image.rootDisk, '-F', 'raw', overlay]);
  const cmd = buildQemuCommand({
    lab, accel: accel.accel, kernelImage: prepared.kernel.vmlinuz, initrd: prepared.initrd, rootDisk: overlay, modulesDisk: prepared.kernel.modulesDisk,
    consoleLog: path.join(dir, 'console.log'), qmpSocket: path.join(dir, 'qmp.sock'), sshPort: 20001 + Math.floor(Math.random() * 20000),
    memoryBackendDir: dir, append: [...KERNEL_WORDS, 'hwlab.bare', 'initcall_debug', 'ignore_loglevel', ...(values.append ?? [])],
  });
  const start = Date.now();
  await execa(cmd.binary, cmd.args, { timeout: 300_000 });
  wall = (Date.now() - start) / 1000;
  consoleText = await readFile(path.join(dir, 'console.log'), 'utf8');
} finally {
  await rm(dir, { recursive: true, force: true });
}

/** printk time (seconds since the kernel started) of the first line matching re. */
const at = (re: RegExp) => {
  for (const l of consoleText.split(/\r?\n/)) {
    const m = /^\[\s*([\d.]+)\]\s(.*)$/.exec(l);
    if (m && re.test(m[2])) return Number(m[1]);
  }
  return undefined;
};
const initcalls: Array<{ fn: string; usecs: number }> = [];
for (const m of consoleText.matchAll(/initcall (\S+?)(?:\+0x[0-9a-f]+\/0x[0-9a-f]+)? returned -?\d+ after (\d+) usecs/g)) initcalls.push({ fn: m[1], usecs: Number(m[2]) });
const total = initcalls.reduce((a, c) => a + c.usecs, 0) / 1e6;
const userspace = at(/^Run \/init as init process/);
const switched = at(/^hwlab-init: |EXT4-fs \(vda\): mounted/);
const ready = at(new RegExp(READY_LINE));
const fmt = (x: number | undefined) => (x === undefined ? '?' : `${x.toFixed(2)} s`);
console.log(`${lab.name}: ${prepared.kernel.release}, ${accel.accel}, 2 cores${values.append?.length ? `, extra words: ${values.append.join(' ')}` : ''}; load average ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`);
console.log(`bare boot-to-poweroff (QEMU start to exit, initcall_debug on): ${fmt(wall)}`);
console.log(`kernel start -> initramfs /init:     ${fmt(userspace)}   (${initcalls.length} initcalls, ${fmt(total)} in them)`);
console.log(`initramfs -> root mounted:           ${fmt(switched !== undefined && userspace !== undefined ? switched - userspace : undefined)}`);
console.log(`root mounted -> sshd started:        ${fmt(ready !== undefined && switched !== undefined ? ready - switched : undefined)}`);
console.log(`kernel start -> sshd started:        ${fmt(ready)}`);
console.log(`\nslowest initcalls:`);
for (const c of [...initcalls].sort((a, b) => b.usecs - a.usecs).slice(0, Number(values.top))) console.log(`  ${(c.usecs / 1000).toFixed(1).padStart(8)} ms  ${c.fn}`);
await runCleanups();
