// Warm-run benchmark of the default lab (issue A): total wall time, time to
// SSH, probe time, teardown, against a bare QEMU boot-to-poweroff of the
// same kernel and image. Prints figures; asserts nothing.
//   node --import tsx test/bench/warm-run.ts [--runs N] [lab.yaml]
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadLab } from '../../src/lab/load.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { runLab } from '../../src/run/run-lab.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { decideAccel } from '../../src/machine/accel.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { runCleanups } from '../../src/util/cleanup.ts';
import { silentProgress } from '../../src/util/progress.ts';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: 'string', default: '3' } } });
const labFile = path.resolve(positionals[0] ?? path.join(import.meta.dirname ?? '.', '../../labs/default.yaml'));
const runs = Number(values.runs);
const lab = await loadLab(labFile);
const progress = silentProgress();

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const fmt = (x: number) => `${x.toFixed(2)} s`;

console.log(`lab ${lab.name} (${labFile}), ${runs} warm runs, ${os.cpus().length} cores`);
let t = Date.now();
const warmDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-warm-'));
const prepared = await prepareLab(lab, { progress }, warmDir);
await rm(warmDir, { recursive: true, force: true });
console.log(`warm-up (kernel, image, initramfs from cache or built now): ${fmt((Date.now() - t) / 1000)}`);
const accel = await decideAccel(lab.machine.accel, prepared.kernel.vmlinuz);
console.log(`accel: ${accel.note}`);

const runsDir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-'));
const rows: Array<Record<string, number>> = [];
for (let i = 0; i < runs; i++) {
  const start = Date.now();
  const out = await runLab(lab, { progress, runsDir });
  const wall = (Date.now() - start) / 1000;
  const tm = out.results.timings;
  rows.push({ wall, boot_to_ssh: tm.boot_to_ssh, setup: tm.setup, probes: tm.probes, teardown: tm.teardown });
  console.log(`run ${i + 1}: ${out.results.outcome.class} wall ${fmt(wall)}  boot->ssh ${fmt(tm.boot_to_ssh)}  setup ${fmt(tm.setup)}  probes ${fmt(tm.probes)}  teardown ${fmt(tm.teardown)}`);
}

// Bare boot: the same QEMU command line (kernel, initramfs, image, topology),
// with the guest init told to power off as soon as sshd is up.
const bare: number[] = [];
for (let i = 0; i < runs; i++) {
  const scratch = await mkdtemp(path.join('/dev/shm', 'hwlab-bare-'));
  try {
    const overlay = path.join(scratch, 'root.qcow2');
    await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', prepared.image.rootDisk, '-F', 'raw', overlay]);
    const cmd = buildQemuCommand({
      lab, accel: accel.accel, kernelImage: prepared.kernel.vmlinuz, initrd: prepared.initrd, rootDisk: overlay,
      modulesDisk: prepared.kernel.modulesDisk, consoleLog: path.join(scratch, 'console.log'), qmpSocket: path.join(scratch, 'qmp.sock'),
      sshPort: 1 + 20000 + Math.floor(Math.random() * 20000), memoryBackendDir: scratch,
      append: [...KERNEL_WORDS, 'hwlab.bare'],
    });
    const start = Date.now();
    await execa(cmd.binary, cmd.args, { timeout: 180_000 });
    bare.push((Date.now() - start) / 1000);
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
await rm(runsDir, { recursive: true, force: true });

const col = (k: string) => median(rows.map((r) => r[k]));
console.log('\nmedian of warm runs:');
console.log(`  total wall time        ${fmt(col('wall'))}   (target <= 25 s under TCG)`);
console.log(`  time to SSH            ${fmt(col('boot_to_ssh'))}`);
console.log(`  driver load + binding  ${fmt(col('setup'))}`);
console.log(`  probe time             ${fmt(col('probes'))}`);
console.log(`  teardown               ${fmt(col('teardown'))}`);
console.log(`  bare boot-to-poweroff  ${fmt(median(bare))}`);
console.log(`  ratio warm run / bare  ${(col('wall') / median(bare)).toFixed(2)}`);
await runCleanups();
