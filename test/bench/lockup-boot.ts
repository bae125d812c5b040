// What the soft- and hard-lockup detectors cost at boot (issue 16): bare
// boot-to-poweroff of two labs' kernels, alternated in one run so that the
// host's load hits both alike; prints each boot, the medians and the ratio.
// Also counts lockup reports on the consoles (false positives under TCG).
// Asserts nothing.
//   node --import tsx test/bench/lockup-boot.ts [--runs N] <lab with detectors> <lab without>
import { execa } from 'execa';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { loadLab } from '../../src/lab/load.ts';
import { decideAccel } from '../../src/machine/accel.ts';
import { buildQemuCommand } from '../../src/machine/cmdline.ts';
import { KERNEL_WORDS } from '../../src/run/on-machine.ts';
import { prepareLab } from '../../src/run/prepare.ts';
import { boundToHwlab } from '../../src/util/host-tools.ts';
import { silentProgress } from '../../src/util/progress.ts';

const { values, positionals } = parseArgs({ allowPositionals: true, options: { runs: { type: 'string', default: '5' } } });
if (positionals.length !== 2) throw new Error('usage: lockup-boot.ts [--runs N] <lab with detectors> <lab without>');
const runs = Number(values.runs);
const progress = silentProgress();
const labs = await Promise.all(positionals.map(async (f) => {
  const lab = await loadLab(path.resolve(f));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-bench-lockup-'));
  const prepared = await prepareLab(lab, { progress }, dir);
  await rm(dir, { recursive: true, force: true });
  return { file: f, lab, prepared, accel: await decideAccel(lab.machine.accel, prepared.kernel.vmlinuz), boots: [] as number[], lockups: 0 };
}));
console.log(`${runs} bare boots each, alternated; ${os.cpus().length} cores; load average at start ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
for (let i = 0; i < runs; i++) {
  for (const l of labs) {
    const scratch = await mkdtemp(path.join('/dev/shm', 'hwlab-bare-'));
    try {
      const overlay = path.join(scratch, 'root.qcow2');
      await execa('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', l.prepared.image.rootDisk, '-F', 'raw', overlay]);
      const cmd = buildQemuCommand({
        lab: l.lab, accel: l.accel.accel, kernelImage: l.prepared.kernel.vmlinuz, initrd: l.prepared.initrd, rootDisk: overlay,
        modulesDisk: l.prepared.kernel.modulesDisk, consoleLog: path.join(scratch, 'console.log'), qmpSocket: path.join(scratch, 'qmp.sock'),
        sshPort: 20001 + Math.floor(Math.random() * 20000), memoryBackendDir: scratch,
        append: [...KERNEL_WORDS, 'hwlab.bare'],
      });
      const start = Date.now();
      await execa(...boundToHwlab(cmd.binary, cmd.args), { timeout: 180_000 });
      const s = (Date.now() - start) / 1000;
      l.boots.push(s);
      const console_ = await readFile(path.join(scratch, 'console.log'), 'utf8');
      l.lockups += (console_.match(/soft lockup|hard LOCKUP|Watchdog detected hard LOCKUP/g) ?? []).length;
      console.log(`  ${l.file}: ${s.toFixed(2)} s (load ${os.loadavg()[0].toFixed(1)})`);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const l of labs) console.log(`${l.file}: median ${median(l.boots).toFixed(2)} s, min ${Math.min(...l.boots).toFixed(2)} s, lockup reports ${l.lockups}`);
console.log(`ratio (first / second): ${(median(labs[0].boots) / median(labs[1].boots)).toFixed(3)}`);
