// Which accelerator to use. /dev/kvm existing proves nothing (here it exists
// and every guest dies with "KVM internal error"), so KVM counts only after
// a real guest start under it reached the kernel's panic on a missing root.
import { execa } from 'execa';
import { constants, existsSync } from 'node:fs';
import { access, mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Accel } from '../lab/types.ts';
import { cacheRoot } from '../util/cache.ts';
import { InfraError } from '../util/errors.ts';
import type { AccelDecision } from './instance.ts';



const MEMO_TTL_MS = 24 * 3600 * 1000;

export async function probeKvm(vmlinuz: string): Promise<{ works: boolean; why: string }> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return { works: false, why: existsSync('/dev/kvm') ? '/dev/kvm is not accessible' : 'no /dev/kvm' };
  }
  const dir = await mkdtemp(path.join(os.tmpdir(), 'hwlab-kvm-'));
  try {
    const consoleLog = path.join(dir, 'console.log');
    const r = await execa(
      'qemu-system-x86_64',
      ['-machine', 'q35,accel=kvm', '-cpu', 'host', '-m', '256', '-smp', '1', '-nodefaults', '-no-user-config', '-display', 'none',
        '-no-reboot', '-kernel', vmlinuz, '-append', 'console=ttyS0 panic=-1 root=/dev/hwlab-none rootwait=0',
        '-serial', `file:${consoleLog}`, '-monitor', 'none'],
      { reject: false, timeout: 60_000 },
    );
    const log = existsSync(consoleLog) ? await readFile(consoleLog, 'utf8') : '';
    if (/Kernel panic/.test(log) && r.exitCode === 0) return { works: true, why: 'a test guest booted under KVM' };
    const err = (r.stderr || '').split('\n').find((l) => /error|abort|fail/i.test(l)) ?? (r.timedOut ? 'test guest timed out' : `exit ${r.exitCode ?? r.signal}`);
    return { works: false, why: `a test guest under KVM failed: ${err.trim()}` };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function decideAccel(requested: Accel, vmlinuz: string, opts: { fresh?: boolean } = {}): Promise<AccelDecision> {
  if (requested === 'tcg') return { accel: 'tcg', note: 'TCG (the lab asks for it)' };
  const memoFile = path.join(cacheRoot(), 'accel.json');
  const qemuVersion = (await execa('qemu-system-x86_64', ['--version'], { reject: false })).stdout.split('\n')[0];
  const host = `${os.hostname()} ${os.release()} ${qemuVersion}`;
  let probe: { works: boolean; why: string } | undefined;
  if (!opts.fresh && existsSync(memoFile)) {
    const m = JSON.parse(await readFile(memoFile, 'utf8'));
    if (m.host === host && Date.now() - Date.parse(m.at) < MEMO_TTL_MS) probe = m.probe;
  }
  if (!probe) {
    probe = await probeKvm(vmlinuz);
    await mkdir(path.dirname(memoFile), { recursive: true });
    await writeFile(memoFile, JSON.stringify({ host, at: new Date().toISOString(), probe }, null, 2));
  }
  if (probe.works) return { accel: 'kvm', note: `KVM (${probe.why})` };
  if (requested === 'kvm') throw new InfraError(`the lab asks for KVM but KVM does not work here: ${probe.why}`);
  return { accel: 'tcg', note: `KVM unusable (${probe.why}); using TCG` };
}
