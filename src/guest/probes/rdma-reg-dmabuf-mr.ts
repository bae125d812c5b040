// rdma-reg-dmabuf-mr: rdma-core's ibv_reg_dmabuf_mr() as the importer, the way
// an RDMA application would register a VFIO dma-buf (contract section 5). It
// needs an RDMA device whose driver implements reg_user_mr_dmabuf (mlx5,
// irdma, ...): QEMU emulates none, and rxe/siw have no dma-buf support, so in
// an emulated lab the probe says why it skips. On such a device it registers
// the exported BAR, then checks a revoke (COMMAND MEM off) is seen by the
// registration being refused anew while revoked.
import { existsSync, readdirSync } from 'node:fs';
import koffi from 'koffi';
import * as libc from '../lib/libc.ts';
import { PCI_COMMAND, PCI_COMMAND_MEMORY } from '../lib/vfio.ts';
import { closeFd, exportDiag, withDevice, type ProbeContext } from './common.ts';

const IB_CLASS = '/sys/class/infiniband';
const IBV_ACCESS_LOCAL_WRITE = 1;

/** RDMA devices the kernel registered (ib_core's class directory). */
function rdmaDevices(): string[] {
  return existsSync(IB_CLASS) ? readdirSync(IB_CLASS) : [];
}

export default async function rdmaRegDmabufMr(ctx: ProbeContext): Promise<void> {
  const { t } = ctx;
  const devices = rdmaDevices();
  if (devices.length === 0) {
    return void t.skip('ibv_reg_dmabuf_mr of a VFIO dma-buf',
      `no RDMA device (${IB_CLASS} ${existsSync(IB_CLASS) ? 'is empty' : 'does not exist'}): QEMU emulates no RDMA adapter, and rxe/siw cannot import dma-bufs`);
  }
  let lib: koffi.IKoffiLib;
  try {
    lib = koffi.load('libibverbs.so.1');
  } catch (e) {
    return void t.skip('ibv_reg_dmabuf_mr of a VFIO dma-buf', `RDMA devices ${devices.join(', ')} present but rdma-core's libibverbs.so.1 is not installed in the guest image (${(e as Error).message})`);
  }
  const getDeviceList = lib.func('void **ibv_get_device_list(_Out_ int *num)');
  const freeDeviceList = lib.func('void ibv_free_device_list(void **list)');
  const openDevice = lib.func('void *ibv_open_device(void *device)');
  const closeDevice = lib.func('int ibv_close_device(void *context)');
  const allocPd = lib.func('void *ibv_alloc_pd(void *context)');
  const deallocPd = lib.func('int ibv_dealloc_pd(void *pd)');
  const regDmabufMr = lib.func('void *ibv_reg_dmabuf_mr(void *pd, uint64_t offset, size_t length, uint64_t iova, int fd, int access)');
  const deregMr = lib.func('int ibv_dereg_mr(void *mr)');
  const errno = () => koffi.errno();

  const num = [0];
  const list = getDeviceList(num);
  if (!t.ok(list !== null && num[0] > 0, 'ibv_get_device_list finds the RDMA devices', { sysfs: devices, found: num[0] })) return;
  const first = koffi.decode(list, 'void *');
  const context = openDevice(first);
  freeDeviceList(list);
  if (!t.ok(context !== null, 'ibv_open_device', { errno: libc.errnoName(errno()) })) return;
  const pd = allocPd(context);
  try {
    if (!t.ok(pd !== null, 'ibv_alloc_pd', { errno: libc.errnoName(errno()) })) return;
    await withDevice(ctx, (dev) => {
      const region = ctx.params.region as number;
      const info = dev.regionInfo(region);
      const req = { region, ranges: [{ offset: 0, length: info.size }] };
      const r = dev.exportDmabuf(ctx.abi, req);
      if (!t.ok(r.ok, `export BAR ${region} as a dma-buf`, exportDiag(ctx.abi, req, r)) || !r.ok) return;
      try {
        const mr = regDmabufMr(pd, 0, info.size, 0, r.value, IBV_ACCESS_LOCAL_WRITE);
        if (!t.ok(mr !== null, 'ibv_reg_dmabuf_mr registers the VFIO dma-buf', { errno: libc.errnoName(errno()) })) return;
        deregMr(mr);
        const cmd = dev.configRead(PCI_COMMAND, 2);
        dev.configWrite(PCI_COMMAND, 2, cmd & ~PCI_COMMAND_MEMORY);
        const revoked = regDmabufMr(pd, 0, info.size, 0, r.value, IBV_ACCESS_LOCAL_WRITE);
        t.ok(revoked === null && errno() === libc.ERRNO.ENODEV, 'while revoked (MEM off) a new registration fails ENODEV',
          { registered: revoked !== null, errno: libc.errnoName(errno()) });
        if (revoked !== null) deregMr(revoked);
        dev.configWrite(PCI_COMMAND, 2, cmd | PCI_COMMAND_MEMORY);
      } finally {
        closeFd(r.value);
      }
    });
  } finally {
    if (pd !== null) deallocPd(pd);
    closeDevice(context);
  }
}
