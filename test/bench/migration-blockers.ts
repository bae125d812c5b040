// Which emulated devices of hwlab's labs block QEMU migration: restoring a
// booted guest from a migration file (issue 12) needs every device of the
// machine to be migratable. One paused QEMU per device kind (no kernel, no
// guest), QMP `migrate` to /dev/null, and the answer printed; then whether
// QEMU has any device state to migrate for it (`-dump-vmstate`): a device
// without one "migrates" but comes back at reset, config space included.
// Asserts nothing.
//   node --import tsx test/bench/migration-blockers.ts
import { execa } from 'execa';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { QmpClient } from '../../src/machine/qmp.ts';

const scratch = await mkdtemp(path.join(os.tmpdir(), 'hwlab-migration-'));
const disk = path.join(scratch, 'disk.img');
const shm = path.join(scratch, 'ivshmem');
const rootPort = ['-device', 'pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1'];
// The same device arguments the lab's command line uses (src/machine/cmdline.ts, src/lab/endpoints.ts).
/** The vmstate names of each case's devices (virtio devices migrate through their -device part). */
const stateNames: Record<string, string[]> = {
  'intel-iommu': ['intel-iommu'], 'amd-iommu': ['amd-iommu'], 'virtio-iommu-pci': ['virtio-iommu-device'], 'ivshmem-plain': ['ivshmem-plain'],
  'ivshmem-plain,master=on': ['ivshmem-plain'], edu: ['edu'], nvme: ['nvme'], 'pci-testdev': ['pci-testdev'], 'secondary-vga': ['secondary-vga'],
  'x3130-upstream + xio3130-downstream': ['x3130-upstream', 'xio3130-downstream'], 'virtio-blk-pci + virtio-net-pci (user, hostfwd)': ['virtio-blk-device', 'virtio-net-device'],
};
const cases: Record<string, string[]> = {
  'intel-iommu': ['-device', 'intel-iommu,intremap=on,caching-mode=on'],
  'amd-iommu': ['-device', 'amd-iommu,intremap=on'],
  'virtio-iommu-pci': ['-device', 'virtio-iommu-pci'],
  'ivshmem-plain': ['-object', `memory-backend-file,id=m0,size=16M,mem-path=${shm},share=on`, ...rootPort, '-device', 'ivshmem-plain,bus=rp0,memdev=m0'],
  // master=on: this QEMU owns the shared memory and migrates it (peer mode blocks migration).
  'ivshmem-plain,master=on': ['-object', `memory-backend-file,id=m0,size=16M,mem-path=${shm},share=on`, ...rootPort, '-device', 'ivshmem-plain,bus=rp0,memdev=m0,master=on'],
  edu: [...rootPort, '-device', 'edu,bus=rp0,dma_mask=0xffffffffffffffff'],
  nvme: [...rootPort, '-device', 'nvme,bus=rp0,serial=nvme0,cmb_size_mb=64'],
  'pci-testdev': [...rootPort, '-device', 'pci-testdev,bus=rp0,membar=4M'],
  'secondary-vga': [...rootPort, '-device', 'secondary-vga,bus=rp0,vgamem_mb=16'],
  'x3130-upstream + xio3130-downstream': [...rootPort, '-device', 'x3130-upstream,id=sw0,bus=rp0', '-device', 'xio3130-downstream,id=dp0,bus=sw0,chassis=2,slot=2'],
  'virtio-blk-pci + virtio-net-pci (user, hostfwd)': ['-drive', `file=${disk},if=none,id=d0,format=raw`, '-device', 'virtio-blk-pci,drive=d0',
    '-netdev', 'user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:0-:22', '-device', 'virtio-net-pci,netdev=n0'],
};

try {
  await execa('truncate', ['-s', '1M', disk]);
  console.log(`${(await execa('qemu-system-x86_64', ['--version'])).stdout.split('\n')[0]}`);
  const dump = path.join(scratch, 'vmstate.json');
  await execa('qemu-system-x86_64', ['-machine', 'q35', '-nodefaults', '-display', 'none', '-dump-vmstate', dump]);
  const vmstate = JSON.parse(await readFile(dump, 'utf8')) as Record<string, unknown>;
  const stateNote = (name: string) => {
    const missing = (stateNames[name] ?? []).filter((n) => !(n in vmstate));
    return missing.length ? `; NO DEVICE STATE for ${missing.join(', ')}: comes back at reset` : '';
  };
  for (const [name, args] of Object.entries(cases)) {
    const sock = path.join(scratch, 'qmp.sock');
    const child = execa('qemu-system-x86_64', ['-machine', 'q35,accel=tcg', '-m', '256M', '-nodefaults', '-display', 'none', '-S',
      '-qmp', `unix:${sock},server=on,wait=off`, ...args], { reject: false, timeout: 60_000 });
    try {
      let q: QmpClient | undefined;
      for (let i = 0; i < 100 && !q && child.exitCode === null; i++) {
        q = await QmpClient.connect(sock, 1000).catch(() => undefined);
        if (!q) await new Promise((r) => setTimeout(r, 100));
      }
      if (!q) {
        child.kill('SIGKILL');
        console.log(`${name.padEnd(48)} QEMU did not start: ${(await child).stderr.trim()}`);
        continue;
      }
      const r = await q.execute('migrate', { uri: 'exec:cat > /dev/null' });
      let status = '';
      for (let i = 0; i < 100 && !r.error; i++) {
        const s = (await q.execute('query-migrate')) as { return?: { status?: string; 'error-desc'?: string } };
        status = `${s.return?.status}${s.return?.['error-desc'] ? `: ${s.return['error-desc']}` : ''}`;
        if (/completed|failed/.test(status)) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      console.log(`${name.padEnd(48)} ${r.error ? `BLOCKED: ${r.error.desc}` : `migrates (${status})${stateNote(name)}`}`);
      await q.execute('quit', undefined, 2000).catch(() => {});
      q.close();
    } finally {
      child.kill('SIGKILL');
      await child;
      await rm(sock, { force: true });
    }
  }
} finally {
  await rm(scratch, { recursive: true, force: true });
}
