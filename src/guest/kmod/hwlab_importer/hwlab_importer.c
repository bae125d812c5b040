// SPDX-License-Identifier: GPL-2.0
/*
 * hwlab_importer: a dma-buf importer with the RDMA core's importer contract
 * (drivers/infiniband/core/umem_dmabuf.c), attached on behalf of an emulated
 * PCI device so the exporter's p2pdma decision is the kernel's real one.
 * Userspace drives it through /dev/hwlab_importer; see README.md and the UAPI
 * header hwlab_importer.h.
 *
 * Objects and lifetime
 *
 *   session (one per open file) owns up to HWLAB_IMPORTER_MAX_IMPORTS imports.
 *   It is freed in ->release, after every import it owns has been destroyed,
 *   so an import may point at its session without a reference.
 *
 *   import = dma_buf reference (dma_buf_get) + attachment + current sg_table
 *   + pci_dev references for the importer (attach->dev) and, optionally, the
 *   exporter. The dma_buf reference keeps the buffer (and the exporter's priv)
 *   alive however the exporter's device goes away; vfio turns device close or
 *   unbind into a revoke, which reaches us as invalidate_mappings, and every
 *   later map fails with the exporter's errno (ENODEV).
 *
 *   engine = the importer device's DMA engine (QEMU edu): device enabled, bus
 *   master, BAR0 mapped, a coherent bounce buffer. One per device, shared by
 *   every import (of any session) that has used the DMA ioctl on it, set up at
 *   the first such use and torn down when the last of those imports goes.
 *
 * Locking
 *
 *   session->lock (mutex) serializes all ioctls of a session and protects the
 *   imports[] table, next_handle and the per-import fields marked "session".
 *   dmabuf->resv (the reservation lock) protects import->sgt and
 *   import->invalidate_count; map, unmap, pin and unpin are only called with
 *   it held, as the dma-buf locking convention requires of importers.
 *
 *   engine->lock (mutex) serializes programming the engine and its bounce
 *   buffer; it is taken inside dmabuf->resv, which keeps the mapping being
 *   DMAed to alive. hwi_engines_lock guards the engine list and user counts.
 *
 *   Order: session->lock -> hwi_engines_lock -> device_lock, and
 *   session->lock -> dmabuf->resv -> engine->lock. The exporter calls
 *   invalidate_mappings with resv held (vfio also holds its memory_lock),
 *   so the callback must never take session->lock; it touches only
 *   resv-protected state and the session's waitqueue/event counter.
 *
 *   Release vs invalidate: an import is freed only after dma_buf_detach()
 *   returns. Detach removes the attachment from the dma-buf's list under the
 *   reservation lock, and exporters walk that list under the same lock to
 *   call invalidate_mappings, so no callback can be running or start on an
 *   import being freed.
 *
 *   Nothing is copied to or from userspace under the reservation lock: the
 *   dma-resv lockdep priming orders mmap_lock before it, so a page fault
 *   there would be a lock inversion.
 */
#include <linux/dma-buf.h>
#include <linux/dma-mapping.h>
#include <linux/dma-resv.h>
#include <linux/fs.h>
#include <linux/iommu-dma.h>
#include <linux/iopoll.h>
#include <linux/list.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-p2pdma.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "hwlab_importer.h"

MODULE_IMPORT_NS("DMA_BUF");

/* QEMU's edu device: the default device to attach on behalf of. */
#define HWI_EDU_VENDOR	0x1234
#define HWI_EDU_DEVICE	0x11e8

/*
 * edu's DMA engine (QEMU hw/misc/edu.c): BAR0 registers and one channel
 * between its 4 KiB buffer, at device address 0x40000, and a bus address.
 * A transfer runs from a timer 100 ms (QEMU virtual clock) after the command.
 */
#define HWI_EDU_REGS_LEN	0x100
#define HWI_EDU_REG_IDENT	0x00	/* 0xMMmm00ed: major, minor, 0xed */
#define HWI_EDU_REG_DMA_SRC	0x80
#define HWI_EDU_REG_DMA_DST	0x88
#define HWI_EDU_REG_DMA_CNT	0x90
#define HWI_EDU_REG_DMA_CMD	0x98
#define HWI_EDU_CMD_RUN		BIT_ULL(0)	/* start; reads 1 while busy */
#define HWI_EDU_CMD_TO_RAM	BIT_ULL(1)	/* edu buffer -> bus address */
#define HWI_EDU_BUF_ADDR	0x40000
#define HWI_EDU_BUF_SIZE	4096
/*
 * QEMU 7.2's edu_check_range wants a transfer to end strictly before the
 * buffer's end (a later QEMU fixed that off-by-one), and a range it refuses
 * is a hw_error() that kills the VM: the buffer's last byte is never used.
 */
#define HWI_EDU_WINDOW		(HWI_EDU_BUF_SIZE - 1)
/*
 * edu masks the bus address with its dma_mask property and silently DMAs to
 * the truncated address. QEMU's default is 28 bits; an IMPORT that sets
 * dma_mask_bits declares the edu's width (hwlab sets both from the lab).
 */
#define HWI_EDU_DEFAULT_REACH	DMA_BIT_MASK(28)
/* 100 ms per transfer, plus room for a loaded host running TCG. */
#define HWI_EDU_TIMEOUT_MS	2000
#define HWI_EDU_POLL_US		2000

struct hwi_engine {
	struct list_head node;			/* hwi_engines */
	unsigned int users;			/* hwi_engines_lock: imports holding it */
	struct pci_dev *pdev;			/* ref */
	void __iomem *regs;

	/* lock */
	struct mutex lock;
	void *bounce;				/* HWI_EDU_BUF_SIZE coherent bytes */
	dma_addr_t bounce_dma;
	bool stalled;				/* a transfer timed out: bus master off */
};

static LIST_HEAD(hwi_engines);
static DEFINE_MUTEX(hwi_engines_lock);

struct hwi_session {
	struct mutex lock;
	struct hwi_import *imports[HWLAB_IMPORTER_MAX_IMPORTS];
	u32 next_handle;
	/*
	 * Bumped by every invalidate_mappings and RELEASE, then wq is woken.
	 * WAIT sleeps on a change of it without holding session->lock, so it
	 * needs no reference on the import it waits for.
	 */
	atomic_t events;
	wait_queue_head_t wq;
};

struct hwi_import {
	struct hwi_session *session;
	u32 handle;
	u32 mode;
	struct pci_dev *importer;		/* ref; attach->dev is &importer->dev */
	struct pci_dev *exporter;		/* ref or NULL */
	u32 exporter_bar;
	struct dma_buf *dmabuf;			/* ref from dma_buf_get */
	struct dma_buf_attachment *attach;
	bool pinned;				/* dma_buf_pin succeeded */
	u64 dma_reach;				/* highest bus address the engine reaches */

	/* resv */
	struct sg_table *sgt;			/* current mapping or NULL */
	u64 invalidate_count;			/* also READ_ONCE by WAIT */

	/* session */
	u64 map_count;
	u32 last_map_error;
	struct hwi_engine *engine;		/* ref once DMA was used, or NULL */
};

/* ---- importer ops: the RDMA contract ---------------------------------- */

/*
 * Like the RDMA dynamic importers (mlx5's invalidate callback ends in
 * ib_umem_dmabuf_unmap_pages): drop the mapping now. vfio's revoke waits
 * until every mapping is unmapped, so deferring the unmap would hang the
 * syscall that triggered the revoke.
 */
static void hwi_invalidate_mappings(struct dma_buf_attachment *attach)
{
	struct hwi_import *imp = attach->importer_priv;
	struct hwi_session *s = imp->session;

	dma_resv_assert_held(attach->dmabuf->resv);

	if (imp->sgt) {
		dma_buf_unmap_attachment(attach, imp->sgt, DMA_BIDIRECTIONAL);
		imp->sgt = NULL;
	}
	WRITE_ONCE(imp->invalidate_count, imp->invalidate_count + 1);
	/* Pairs with smp_rmb() in hwi_ioctl_wait: count visible before event. */
	smp_wmb();
	atomic_inc(&s->events);
	wake_up_all(&s->wq);
}

/* Mode 0: ib_umem_dmabuf_get() with a driver's invalidate callback. */
static const struct dma_buf_attach_ops hwi_ops_dynamic = {
	.allow_peer2peer = true,
	.invalidate_mappings = hwi_invalidate_mappings,
};

/* Mode 1: ib_umem_dmabuf_attach_pinned_ops; not revocable. */
static const struct dma_buf_attach_ops hwi_ops_pinned = {
	.allow_peer2peer = true,
};

/* Mode 2: an importer that cannot take peer (page-less) memory. */
static const struct dma_buf_attach_ops hwi_ops_no_p2p = {
	.allow_peer2peer = false,
	.invalidate_mappings = hwi_invalidate_mappings,
};

/* ---- helpers ----------------------------------------------------------- */

/* Userspace never sees ERESTARTSYS & co from a field; name them EINTR. */
static u32 hwi_errno(long err)
{
	if (err == -ERESTARTSYS || err == -ERESTARTNOINTR ||
	    err == -ERESTARTNOHAND || err == -ERESTART_RESTARTBLOCK)
		err = -EINTR;
	return (u32)-err;
}

static struct hwi_import *hwi_lookup(struct hwi_session *s, u32 handle)
{
	int i;

	lockdep_assert_held(&s->lock);
	if (!handle)
		return NULL;
	for (i = 0; i < HWLAB_IMPORTER_MAX_IMPORTS; i++)
		if (s->imports[i] && s->imports[i]->handle == handle)
			return s->imports[i];
	return NULL;
}

/* A NUL-terminated name field; "" means "not given". */
static int hwi_check_name(const char *name)
{
	return memchr(name, '\0', HWLAB_IMPORTER_BDF_LEN) ? 0 : -EINVAL;
}

/* "DDDD:BB:DD.F" or "BB:DD.F" -> referenced pci_dev. */
static int hwi_get_pci_dev(const char *name, struct pci_dev **out)
{
	unsigned int dom = 0, bus, slot, fn;
	int n = 0;

	if (!(sscanf(name, "%x:%x:%x.%x%n", &dom, &bus, &slot, &fn, &n) == 4 &&
	      name[n] == '\0')) {
		dom = 0;
		n = 0;
		if (!(sscanf(name, "%x:%x.%x%n", &bus, &slot, &fn, &n) == 3 &&
		      name[n] == '\0'))
			return -EINVAL;
	}
	if (dom > 0xffff || bus > 0xff || slot > 0x1f || fn > 7)
		return -EINVAL;
	/* ENXIO, not ENODEV: ENODEV is the exporter's "revoked". */
	*out = pci_get_domain_bus_and_slot(dom, bus, PCI_DEVFN(slot, fn));
	return *out ? 0 : -ENXIO;
}

/*
 * Only a device without a driver: its mask is otherwise the driver's to set.
 * device_lock keeps a driver from binding while we change it.
 */
static int hwi_set_dma_mask(struct pci_dev *pdev, u32 bits)
{
	int ret;

	device_lock(&pdev->dev);
	if (pdev->dev.driver)
		ret = -EBUSY;
	else
		ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(bits));
	device_unlock(&pdev->dev);
	return ret;
}

/* ---- the importer device's DMA engine (edu) ----------------------------- */

/* Not for a device with a driver: its enable count and bus mastering are the driver's. */
static struct hwi_engine *hwi_engine_create(struct pci_dev *pdev)
{
	struct hwi_engine *eng;
	int ret;

	if (pdev->vendor != HWI_EDU_VENDOR || pdev->device != HWI_EDU_DEVICE)
		return ERR_PTR(-EOPNOTSUPP);
	if (!(pci_resource_flags(pdev, 0) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 0) < HWI_EDU_REGS_LEN)
		return ERR_PTR(-EIO);

	eng = kzalloc_obj(*eng);
	if (!eng)
		return ERR_PTR(-ENOMEM);
	mutex_init(&eng->lock);

	device_lock(&pdev->dev);
	if (pdev->dev.driver) {
		ret = -EBUSY;
		goto err_unlock;
	}
	ret = pci_enable_device(pdev);
	if (ret)
		goto err_unlock;
	eng->regs = pci_iomap(pdev, 0, HWI_EDU_REGS_LEN);
	if (!eng->regs) {
		ret = -EIO;
		goto err_disable;
	}
	/* An ID match with other registers would be programmed blindly. */
	if ((readl(eng->regs + HWI_EDU_REG_IDENT) & 0xff) != 0xed) {
		ret = -EIO;
		goto err_unmap;
	}
	eng->bounce = dma_alloc_coherent(&pdev->dev, HWI_EDU_BUF_SIZE,
					 &eng->bounce_dma, GFP_KERNEL);
	if (!eng->bounce) {
		ret = -ENOMEM;
		goto err_unmap;
	}
	pci_set_master(pdev);
	device_unlock(&pdev->dev);
	eng->pdev = pci_dev_get(pdev);
	eng->users = 1;
	return eng;

err_unmap:
	pci_iounmap(pdev, eng->regs);
err_disable:
	pci_disable_device(pdev);
err_unlock:
	device_unlock(&pdev->dev);
	mutex_destroy(&eng->lock);
	kfree(eng);
	return ERR_PTR(ret);
}

static void hwi_engine_destroy(struct hwi_engine *eng)
{
	struct pci_dev *pdev = eng->pdev;

	/* First: a transfer that timed out must not land in the freed bounce. */
	pci_clear_master(pdev);
	dma_free_coherent(&pdev->dev, HWI_EDU_BUF_SIZE, eng->bounce,
			  eng->bounce_dma);
	pci_iounmap(pdev, eng->regs);
	pci_disable_device(pdev);
	pci_dev_put(pdev);
	mutex_destroy(&eng->lock);
	kfree(eng);
}

/* The engine of pdev, set up at its first user. */
static int hwi_engine_get(struct pci_dev *pdev, struct hwi_engine **out)
{
	struct hwi_engine *eng;

	mutex_lock(&hwi_engines_lock);
	list_for_each_entry(eng, &hwi_engines, node) {
		if (eng->pdev == pdev) {
			eng->users++;
			goto found;
		}
	}
	eng = hwi_engine_create(pdev);
	if (IS_ERR(eng)) {
		mutex_unlock(&hwi_engines_lock);
		return PTR_ERR(eng);
	}
	list_add(&eng->node, &hwi_engines);
found:
	mutex_unlock(&hwi_engines_lock);
	*out = eng;
	return 0;
}

static void hwi_engine_put(struct hwi_engine *eng)
{
	if (!eng)
		return;
	mutex_lock(&hwi_engines_lock);
	if (!--eng->users) {
		list_del(&eng->node);
		hwi_engine_destroy(eng);
	}
	mutex_unlock(&hwi_engines_lock);
}

/*
 * Registers written while edu is busy are silently ignored, so every transfer
 * starts from idle. A transfer that does not finish may still run later:
 * bus mastering goes off until the engine is idle again (hwi_engine_ready).
 */
static int hwi_edu_wait_idle(struct hwi_engine *eng)
{
	u64 cmd;
	int ret;

	lockdep_assert_held(&eng->lock);
	ret = readq_poll_timeout(eng->regs + HWI_EDU_REG_DMA_CMD, cmd,
				 !(cmd & HWI_EDU_CMD_RUN), HWI_EDU_POLL_US,
				 HWI_EDU_TIMEOUT_MS * USEC_PER_MSEC);
	if (ret && !eng->stalled) {
		pci_clear_master(eng->pdev);
		eng->stalled = true;
		pci_warn(eng->pdev, "hwlab_importer: edu DMA did not finish in %d ms; bus mastering off\n",
			 HWI_EDU_TIMEOUT_MS);
	}
	return ret;
}

/* Re-enable an engine whose late transfer has finished meanwhile. */
static int hwi_engine_ready(struct hwi_engine *eng)
{
	int ret;

	lockdep_assert_held(&eng->lock);
	if (!eng->stalled)
		return 0;
	ret = hwi_edu_wait_idle(eng);
	if (ret)
		return ret;
	pci_set_master(eng->pdev);
	eng->stalled = false;
	return 0;
}

/* One transfer between edu's buffer at edu_off and the bus address ram. */
static int hwi_edu_xfer(struct hwi_engine *eng, dma_addr_t ram, u32 edu_off,
			u32 cnt, bool to_ram)
{
	u64 edu = HWI_EDU_BUF_ADDR + edu_off;
	int ret;

	/* QEMU aborts the VM on a bad edu range: it must never be written. */
	if (WARN_ON_ONCE(!cnt || edu_off >= HWI_EDU_WINDOW ||
			 cnt > HWI_EDU_WINDOW - edu_off))
		return -EINVAL;
	ret = hwi_edu_wait_idle(eng);
	if (ret)
		return ret;
	writeq(to_ram ? edu : ram, eng->regs + HWI_EDU_REG_DMA_SRC);
	writeq(to_ram ? ram : edu, eng->regs + HWI_EDU_REG_DMA_DST);
	writeq(cnt, eng->regs + HWI_EDU_REG_DMA_CNT);
	writeq(HWI_EDU_CMD_RUN | (to_ram ? HWI_EDU_CMD_TO_RAM : 0),
	       eng->regs + HWI_EDU_REG_DMA_CMD);
	return hwi_edu_wait_idle(eng);
}

/*
 * Tear an import down. Caller holds session->lock or is ->release (no other
 * user of the session left), and has already removed imp from imports[].
 */
static void hwi_import_destroy(struct hwi_import *imp)
{
	struct dma_buf *dmabuf = imp->dmabuf;

	dma_resv_lock(dmabuf->resv, NULL);
	if (imp->sgt) {
		dma_buf_unmap_attachment(imp->attach, imp->sgt,
					 DMA_BIDIRECTIONAL);
		imp->sgt = NULL;
	}
	if (imp->pinned) {
		dma_buf_unpin(imp->attach);
		imp->pinned = false;
	}
	dma_resv_unlock(dmabuf->resv);

	/* After this no invalidate_mappings can reach imp. */
	dma_buf_detach(dmabuf, imp->attach);
	dma_buf_put(dmabuf);
	hwi_engine_put(imp->engine);
	/* attach->dev was used by the exporter's unmap/detach: put it last. */
	pci_dev_put(imp->exporter);
	pci_dev_put(imp->importer);
	kfree(imp);
}

/* ---- IMPORT ------------------------------------------------------------ */

static long hwi_do_import(struct hwi_session *s,
			  struct hwlab_importer_import *a, int *slot_out)
{
	const struct dma_buf_attach_ops *ops;
	struct dma_buf_attachment *attach;
	struct hwi_import *imp;
	struct dma_buf *dmabuf;
	int slot, ret;

	lockdep_assert_held(&s->lock);
	a->stage = HWLAB_IMPORTER_STAGE_ARGS;

	switch (a->mode) {
	case HWLAB_IMPORTER_MODE_DYNAMIC:
		ops = &hwi_ops_dynamic;
		break;
	case HWLAB_IMPORTER_MODE_PINNED:
		ops = &hwi_ops_pinned;
		break;
	case HWLAB_IMPORTER_MODE_NO_P2P:
		ops = &hwi_ops_no_p2p;
		break;
	default:
		return -EINVAL;
	}
	if (a->flags || a->dma_mask_bits > 64 ||
	    hwi_check_name(a->importer_bdf) || hwi_check_name(a->exporter_bdf))
		return -EINVAL;
	if (a->exporter_bdf[0] && a->exporter_bar >= PCI_STD_NUM_BARS)
		return -EINVAL;

	for (slot = 0; slot < HWLAB_IMPORTER_MAX_IMPORTS; slot++)
		if (!s->imports[slot])
			break;
	if (slot == HWLAB_IMPORTER_MAX_IMPORTS)
		return -ENOSPC;

	imp = kzalloc_obj(*imp);
	if (!imp)
		return -ENOMEM;
	imp->session = s;
	imp->mode = a->mode;
	imp->exporter_bar = a->exporter_bar;

	a->stage = HWLAB_IMPORTER_STAGE_IMPORTER_DEV;
	if (a->importer_bdf[0]) {
		ret = hwi_get_pci_dev(a->importer_bdf, &imp->importer);
		if (ret)
			goto err_free;
	} else {
		imp->importer = pci_get_device(HWI_EDU_VENDOR, HWI_EDU_DEVICE,
					       NULL);
		if (!imp->importer) {
			ret = -ENXIO;
			goto err_free;
		}
	}

	if (a->exporter_bdf[0]) {
		a->stage = HWLAB_IMPORTER_STAGE_EXPORTER_DEV;
		ret = hwi_get_pci_dev(a->exporter_bdf, &imp->exporter);
		if (ret)
			goto err_put_pci;
	}

	imp->dma_reach = HWI_EDU_DEFAULT_REACH;
	if (a->dma_mask_bits) {
		a->stage = HWLAB_IMPORTER_STAGE_DMA_MASK;
		ret = hwi_set_dma_mask(imp->importer, a->dma_mask_bits);
		if (ret)
			goto err_put_pci;
		imp->dma_reach = DMA_BIT_MASK(a->dma_mask_bits);
	}

	a->stage = HWLAB_IMPORTER_STAGE_DMA_BUF_GET;
	dmabuf = dma_buf_get(a->dmabuf_fd);
	if (IS_ERR(dmabuf)) {
		ret = PTR_ERR(dmabuf);
		goto err_put_pci;
	}
	imp->dmabuf = dmabuf;
	a->dmabuf_size = dmabuf->size;

	/*
	 * imp is complete except for ->attach before it is published to the
	 * exporter: invalidate_mappings may run as soon as the attachment is
	 * on the dma-buf's list, before dma_buf_dynamic_attach returns.
	 */
	a->stage = HWLAB_IMPORTER_STAGE_ATTACH;
	attach = dma_buf_dynamic_attach(dmabuf, &imp->importer->dev, ops, imp);
	if (IS_ERR(attach)) {
		ret = PTR_ERR(attach);
		goto err_put_buf;
	}
	imp->attach = attach;

	if (a->mode == HWLAB_IMPORTER_MODE_PINNED) {
		/* As ib_umem_dmabuf_get_pinned_and_lock: pin under resv. */
		a->stage = HWLAB_IMPORTER_STAGE_PIN;
		dma_resv_lock(dmabuf->resv, NULL);
		ret = dma_buf_pin(attach);
		if (!ret)
			imp->pinned = true;
		dma_resv_unlock(dmabuf->resv);
		if (ret)
			goto err_detach;
	}

	/* Handles are never reused within a session; 0 is never a handle. */
	if (!++s->next_handle)
		++s->next_handle;
	imp->handle = s->next_handle;
	s->imports[slot] = imp;
	*slot_out = slot;
	a->handle = imp->handle;
	a->stage = HWLAB_IMPORTER_STAGE_NONE;
	return 0;

err_detach:
	dma_buf_detach(dmabuf, attach);
err_put_buf:
	dma_buf_put(dmabuf);
err_put_pci:
	pci_dev_put(imp->exporter);
	pci_dev_put(imp->importer);
err_free:
	kfree(imp);
	return ret;
}

static long hwi_ioctl_import(struct hwi_session *s, void __user *uarg)
{
	struct hwlab_importer_import a;
	int slot = -1;
	long ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	a.handle = 0;
	a.error = 0;
	a.dmabuf_size = 0;

	mutex_lock(&s->lock);
	ret = hwi_do_import(s, &a, &slot);
	if (ret)
		a.error = hwi_errno(ret);
	if (copy_to_user(uarg, &a, sizeof(a))) {
		/* Userspace cannot learn the handle: undo the import. */
		if (!ret) {
			struct hwi_import *imp = s->imports[slot];

			s->imports[slot] = NULL;
			hwi_import_destroy(imp);
		}
		ret = -EFAULT;
	}
	mutex_unlock(&s->lock);
	return ret;
}

/* ---- MAP / UNMAP / REMAP ----------------------------------------------- */

static void hwi_sgt_totals(struct sg_table *sgt, u32 *nents, u64 *len)
{
	struct scatterlist *sg;
	u64 total = 0;
	int i;

	*nents = 0;
	*len = 0;
	if (!sgt)
		return;
	for_each_sgtable_dma_sg(sgt, sg, i)
		total += sg_dma_len(sg);
	*nents = sgt->nents;
	*len = total;
}

/*
 * Map under resv, then wait for the exporter's kernel fences as
 * ib_umem_dmabuf_map_pages does (a dynamic importer must). Returns 0 or a
 * negative errno; on failure nothing stays mapped.
 */
static long hwi_map_locked(struct hwi_import *imp)
{
	struct dma_resv *resv = imp->dmabuf->resv;
	struct sg_table *sgt;
	long ret;

	dma_resv_assert_held(resv);

	sgt = dma_buf_map_attachment(imp->attach, DMA_BIDIRECTIONAL);
	if (IS_ERR(sgt))
		return PTR_ERR(sgt);

	ret = dma_resv_wait_timeout(resv, DMA_RESV_USAGE_KERNEL, true,
				    MAX_SCHEDULE_TIMEOUT);
	if (ret <= 0) {
		dma_buf_unmap_attachment(imp->attach, sgt, DMA_BIDIRECTIONAL);
		return ret ? ret : -ETIMEDOUT;
	}
	imp->sgt = sgt;
	return 0;
}

static long hwi_ioctl_map(struct hwi_session *s, unsigned int cmd,
			  void __user *uarg)
{
	struct hwlab_importer_map a;
	struct hwi_import *imp;
	struct dma_resv *resv;
	long ret = 0, map_err = 0;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.flags)
		return -EINVAL;
	a.error = 0;

	mutex_lock(&s->lock);
	imp = hwi_lookup(s, a.handle);
	if (!imp) {
		ret = -ENOENT;
		goto out_unlock;
	}
	resv = imp->dmabuf->resv;
	ret = dma_resv_lock_interruptible(resv, NULL);
	if (ret)
		goto out_unlock;

	a.was_mapped = !!imp->sgt;
	if (cmd == HWLAB_IMPORTER_IOCTL_MAP && imp->sgt) {
		ret = -EBUSY;	/* REMAP replaces a mapping; MAP does not */
		goto out_report;
	}
	if (imp->sgt && cmd != HWLAB_IMPORTER_IOCTL_MAP) {
		dma_buf_unmap_attachment(imp->attach, imp->sgt,
					 DMA_BIDIRECTIONAL);
		imp->sgt = NULL;
	}
	if (cmd != HWLAB_IMPORTER_IOCTL_UNMAP) {
		map_err = hwi_map_locked(imp);
		imp->last_map_error = map_err ? hwi_errno(map_err) : 0;
		if (!map_err)
			imp->map_count++;
		a.error = imp->last_map_error;
		ret = map_err;
	}

out_report:
	a.mapped = !!imp->sgt;
	hwi_sgt_totals(imp->sgt, &a.nents, &a.total_len);
	a.invalidate_count = imp->invalidate_count;
	dma_resv_unlock(resv);
	mutex_unlock(&s->lock);
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return ret == -ERESTARTSYS ? -EINTR : ret;

out_unlock:
	mutex_unlock(&s->lock);
	return ret;
}

/* ---- REPORT ------------------------------------------------------------ */

static bool hwi_in_range(u64 addr, u64 len, u64 start, u64 size)
{
	return size && addr >= start && len <= size && addr - start <= size - len;
}

/* pci_bridge_has_acs_redir() of drivers/pci/p2pdma.c, which is static. */
static bool hwi_acs_redirects(struct pci_dev *pdev)
{
	u16 ctrl;

	if (!pdev->acs_cap)
		return false;
	pci_read_config_word(pdev, pdev->acs_cap + PCI_ACS_CTRL, &ctrl);
	return ctrl & (PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_EC);
}

/*
 * The topology half of calc_map_type_and_dist() (drivers/pci/p2pdma.c):
 * is there a common upstream bridge, and is ACS redirect set on the path.
 * pci_p2pdma_map_type() itself is not exported. No references are taken on
 * bridges: we hold the two leaf devices, which hold their parents.
 */
static u32 hwi_topology_facts(struct pci_dev *provider, struct pci_dev *client)
{
	struct pci_dev *a, *bb;
	bool acs = false;

	for (a = provider; a; a = pci_upstream_bridge(a)) {
		if (hwi_acs_redirects(a))
			acs = true;
		for (bb = client; bb; bb = pci_upstream_bridge(bb))
			if (a == bb)
				goto common;
	}
	return acs ? HWLAB_IMPORTER_FACT_ACS_REDIRECT : 0;

common:
	for (bb = client; bb && bb != a; bb = pci_upstream_bridge(bb))
		if (hwi_acs_redirects(bb))
			acs = true;
	return HWLAB_IMPORTER_FACT_COMMON_BRIDGE |
	       (acs ? HWLAB_IMPORTER_FACT_ACS_REDIRECT : 0);
}

/*
 * Which of pci_p2pdma_map_type()'s answers the sg table looks like. On x86
 * bus and CPU addresses of a BAR coincide, so a bus-address and a direct
 * mapping are told apart by topology, an IOVA by not pointing at the BAR.
 */
static u32 hwi_guess(u32 facts, bool mapped)
{
	bool direct_path = (facts & HWLAB_IMPORTER_FACT_COMMON_BRIDGE) &&
			   !(facts & HWLAB_IMPORTER_FACT_ACS_REDIRECT);

	if (!mapped || !(facts & HWLAB_IMPORTER_FACT_HAS_EXPORTER))
		return HWLAB_IMPORTER_MAP_UNKNOWN;
	if ((facts & HWLAB_IMPORTER_FACT_IN_BAR_BUS) && direct_path)
		return HWLAB_IMPORTER_MAP_BUS_ADDR;
	if ((facts & HWLAB_IMPORTER_FACT_IOMMU_DMA) &&
	    !(facts & (HWLAB_IMPORTER_FACT_IN_BAR_BUS |
		       HWLAB_IMPORTER_FACT_IN_BAR_PHYS)))
		return HWLAB_IMPORTER_MAP_HOST_BRIDGE_IOVA;
	if ((facts & HWLAB_IMPORTER_FACT_IN_BAR_PHYS) && !direct_path)
		return HWLAB_IMPORTER_MAP_HOST_BRIDGE_DIRECT;
	return HWLAB_IMPORTER_MAP_UNKNOWN;
}

static long hwi_ioctl_report(struct hwi_session *s, void __user *uarg)
{
	struct hwlab_importer_sg_entry *ents = NULL;
	struct hwlab_importer_report a;
	struct pci_dev *importer;
	struct hwi_import *imp;
	struct scatterlist *sg;
	u32 ncopy, copied = 0;
	bool in_bus, in_phys;
	long ret;
	int i;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.pad)
		return -EINVAL;
	ncopy = min_t(u32, a.max_entries, HWLAB_IMPORTER_MAX_REPORT);
	/* Allocated before any lock: nothing sleeps in reclaim under resv. */
	if (ncopy) {
		ents = kvmalloc_array(ncopy, sizeof(*ents), GFP_KERNEL);
		if (!ents)
			return -ENOMEM;
	}

	mutex_lock(&s->lock);
	imp = hwi_lookup(s, a.handle);
	if (!imp) {
		ret = -ENOENT;
		goto out_unlock;
	}
	importer = imp->importer;

	a.facts = 0;
	a.bar_bus_start = a.bar_phys_start = a.bar_len = 0;
	if (imp->exporter) {
		a.facts |= HWLAB_IMPORTER_FACT_HAS_EXPORTER;
		a.bar_bus_start = pci_bus_address(imp->exporter,
						  imp->exporter_bar);
		a.bar_phys_start = pci_resource_start(imp->exporter,
						      imp->exporter_bar);
		a.bar_len = pci_resource_len(imp->exporter, imp->exporter_bar);
	}

	ret = dma_resv_lock_interruptible(imp->dmabuf->resv, NULL);
	if (ret)
		goto out_unlock;
	a.mapped = !!imp->sgt;
	hwi_sgt_totals(imp->sgt, &a.nents, &a.total_len);
	a.invalidate_count = imp->invalidate_count;
	in_bus = in_phys = imp->exporter && imp->sgt && a.nents;
	if (imp->sgt) {
		for_each_sgtable_dma_sg(imp->sgt, sg, i) {
			u64 addr = sg_dma_address(sg), len = sg_dma_len(sg);

			if (copied < ncopy) {
				ents[copied].dma_addr = addr;
				ents[copied].len = len;
				copied++;
			}
			in_bus &= hwi_in_range(addr, len, a.bar_bus_start,
					       a.bar_len);
			in_phys &= hwi_in_range(addr, len, a.bar_phys_start,
						a.bar_len);
		}
	}
	dma_resv_unlock(imp->dmabuf->resv);

	if (in_bus)
		a.facts |= HWLAB_IMPORTER_FACT_IN_BAR_BUS;
	if (in_phys)
		a.facts |= HWLAB_IMPORTER_FACT_IN_BAR_PHYS;
	if (use_dma_iommu(&importer->dev))
		a.facts |= HWLAB_IMPORTER_FACT_IOMMU_DMA;
	if (READ_ONCE(importer->dev.driver))
		a.facts |= HWLAB_IMPORTER_FACT_HAS_DRIVER;
	if (imp->pinned)
		a.facts |= HWLAB_IMPORTER_FACT_PINNED;
	a.p2p_distance = -1;
	if (imp->exporter) {
		struct device *client = &importer->dev;

		a.facts |= hwi_topology_facts(imp->exporter, importer);
		a.p2p_distance = pci_p2pdma_distance_many(imp->exporter,
							  &client, 1, false);
	}
	a.map_type_guess = hwi_guess(a.facts, a.mapped);
	a.mode = imp->mode;
	a.dmabuf_size = imp->dmabuf->size;
	a.map_count = imp->map_count;
	a.last_map_error = imp->last_map_error;
	a.importer_dma_mask = dma_get_mask(&importer->dev);
	strscpy_pad(a.importer_bdf, pci_name(importer));
	mutex_unlock(&s->lock);

	ret = 0;
	if (copied && copy_to_user(u64_to_user_ptr(a.entries), ents,
				   array_size(copied, sizeof(*ents))))
		ret = -EFAULT;
	else if (copy_to_user(uarg, &a, sizeof(a)))
		ret = -EFAULT;
	kvfree(ents);
	return ret;

out_unlock:
	mutex_unlock(&s->lock);
	kvfree(ents);
	return ret;
}

/* ---- RELEASE / WAIT ---------------------------------------------------- */

static long hwi_ioctl_release(struct hwi_session *s, void __user *uarg)
{
	struct hwlab_importer_release a;
	struct hwi_import *imp = NULL;
	int i;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.pad)
		return -EINVAL;

	mutex_lock(&s->lock);
	for (i = 0; a.handle && i < HWLAB_IMPORTER_MAX_IMPORTS; i++) {
		if (s->imports[i] && s->imports[i]->handle == a.handle) {
			imp = s->imports[i];
			s->imports[i] = NULL;
			break;
		}
	}
	if (imp) {
		hwi_import_destroy(imp);
		/* Let WAITers on this handle see it is gone. */
		atomic_inc(&s->events);
		wake_up_all(&s->wq);
	}
	mutex_unlock(&s->lock);
	return imp ? 0 : -ENOENT;
}

static long hwi_ioctl_wait(struct hwi_session *s, void __user *uarg)
{
	struct hwlab_importer_wait a;
	struct hwi_import *imp;
	long remaining, ret;
	int ev;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	remaining = msecs_to_jiffies(a.timeout_ms);

	mutex_lock(&s->lock);
	for (;;) {
		imp = hwi_lookup(s, a.handle);
		if (!imp) {
			ret = -ENOENT;
			break;
		}
		ev = atomic_read(&s->events);
		/*
		 * events before the count (pairs with smp_wmb() in
		 * hwi_invalidate_mappings): an invalidate after this read
		 * changes events, so the sleep below cannot miss it.
		 */
		smp_rmb();
		a.invalidate_count = READ_ONCE(imp->invalidate_count);
		if (a.invalidate_count > a.after_count) {
			ret = 0;
			break;
		}
		if (remaining <= 0) {
			ret = -ETIMEDOUT;
			break;
		}
		/* imp may be released while we sleep: re-look it up after. */
		mutex_unlock(&s->lock);
		remaining = wait_event_interruptible_timeout(s->wq,
				atomic_read(&s->events) != ev, remaining);
		if (remaining < 0)
			return -EINTR;
		mutex_lock(&s->lock);
	}
	mutex_unlock(&s->lock);
	if (ret != -ENOENT && copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return ret;
}

/* ---- DMA ---------------------------------------------------------------- */

/*
 * The piece of the mapping at byte pos (sg segments concatenated in order):
 * its bus address and length, at most len. false if pos is past the mapping.
 */
static bool hwi_sgt_piece(struct sg_table *sgt, u64 pos, u64 len,
			  dma_addr_t *addr, u64 *piece)
{
	struct scatterlist *sg;
	u64 seg_start = 0;
	int i;

	for_each_sgtable_dma_sg(sgt, sg, i) {
		u64 seg_len = sg_dma_len(sg);

		if (pos - seg_start < seg_len) {
			*addr = sg_dma_address(sg) + (pos - seg_start);
			*piece = min(len, seg_len - (pos - seg_start));
			return true;
		}
		seg_start += seg_len;
	}
	return false;
}

static bool hwi_reaches(u64 addr, u64 len, u64 reach)
{
	return addr <= reach && len - 1 <= reach - addr;
}

/*
 * The whole request is checked before anything is programmed, so a refused
 * call moves no byte: covered by the mapping (EINVAL), every bus address
 * within the engine's reach (ERANGE: edu would truncate it and DMA elsewhere).
 */
static long hwi_dma_check(struct hwi_import *imp, u64 offset, u64 len)
{
	struct hwi_engine *eng = imp->engine;
	dma_addr_t addr;
	u64 pos, piece;

	if (!hwi_reaches(eng->bounce_dma, HWI_EDU_WINDOW, imp->dma_reach))
		return -ERANGE;
	for (pos = 0; pos < len; pos += piece) {
		if (!hwi_sgt_piece(imp->sgt, offset + pos, len - pos, &addr,
				   &piece))
			return -EINVAL;
		if (!hwi_reaches(addr, piece, imp->dma_reach))
			return -ERANGE;
	}
	return 0;
}

/*
 * Moves a->len bytes between data and the mapping, in windows of at most
 * HWI_EDU_WINDOW bytes. A window's pieces (one per sg segment it touches) sit
 * at their offsets in edu's buffer, which one transfer moves to or from the
 * bounce buffer. Runs under resv: the mapping cannot go away meanwhile.
 */
static long hwi_dma_locked(struct hwi_import *imp,
			   const struct hwlab_importer_dma *a, u8 *data)
{
	bool to_buf = a->direction == HWLAB_IMPORTER_DMA_TO_BUF;
	struct hwi_engine *eng = imp->engine;
	u64 done, window, pos, piece;
	dma_addr_t addr;
	long ret;

	dma_resv_assert_held(imp->dmabuf->resv);
	ret = hwi_dma_check(imp, a->offset, a->len);
	if (ret)
		return ret;

	ret = mutex_lock_interruptible(&eng->lock);
	if (ret)
		return ret;
	ret = hwi_engine_ready(eng);
	for (done = 0; !ret && done < a->len; done += window) {
		window = min_t(u64, a->len - done, HWI_EDU_WINDOW);
		if (to_buf) {
			memcpy(eng->bounce, data + done, window);
			ret = hwi_edu_xfer(eng, eng->bounce_dma, 0, window,
					   false);
		}
		for (pos = 0; !ret && pos < window; pos += piece) {
			/* hwi_dma_check walked the same pieces */
			if (WARN_ON_ONCE(!hwi_sgt_piece(imp->sgt,
							a->offset + done + pos,
							window - pos, &addr,
							&piece))) {
				ret = -EINVAL;
				break;
			}
			ret = hwi_edu_xfer(eng, addr, pos, piece, to_buf);
		}
		if (!ret && !to_buf) {
			ret = hwi_edu_xfer(eng, eng->bounce_dma, 0, window, true);
			if (!ret)
				memcpy(data + done, eng->bounce, window);
		}
	}
	mutex_unlock(&eng->lock);
	return ret;
}

static long hwi_ioctl_dma(struct hwi_session *s, void __user *uarg)
{
	struct hwlab_importer_dma a;
	struct hwi_import *imp;
	struct dma_resv *resv;
	void __user *ubuf;
	u8 *data;
	long ret;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if (a.pad || a.direction > HWLAB_IMPORTER_DMA_TO_BUF || !a.len ||
	    a.len > HWLAB_IMPORTER_DMA_MAX)
		return -EINVAL;
	ubuf = u64_to_user_ptr(a.buf);

	/* User bytes are staged here: nothing may fault under resv. */
	data = kmalloc(a.len, GFP_KERNEL);
	if (!data)
		return -ENOMEM;
	if (a.direction == HWLAB_IMPORTER_DMA_TO_BUF &&
	    copy_from_user(data, ubuf, a.len)) {
		ret = -EFAULT;
		goto out_free;
	}

	mutex_lock(&s->lock);
	imp = hwi_lookup(s, a.handle);
	if (!imp) {
		ret = -ENOENT;
		goto out_unlock;
	}
	if (a.offset > imp->dmabuf->size ||
	    a.len > imp->dmabuf->size - a.offset) {
		ret = -EINVAL;
		goto out_unlock;
	}
	if (!imp->engine) {
		ret = hwi_engine_get(imp->importer, &imp->engine);
		if (ret)
			goto out_report;
	}
	resv = imp->dmabuf->resv;
	ret = dma_resv_lock_interruptible(resv, NULL);
	if (ret)
		goto out_report;
	/* Never mapped, unmapped, or dropped by invalidate_mappings (revoke). */
	if (!imp->sgt)
		ret = -ENODEV;
	else
		ret = hwi_dma_locked(imp, &a, data);
	dma_resv_unlock(resv);

out_report:
	mutex_unlock(&s->lock);
	if (!ret && a.direction == HWLAB_IMPORTER_DMA_FROM_BUF &&
	    copy_to_user(ubuf, data, a.len))
		ret = -EFAULT;
	a.error = ret ? hwi_errno(ret) : 0;
	ret = -(long)a.error;
	if (copy_to_user(uarg, &a, sizeof(a)))
		ret = -EFAULT;
	kfree(data);
	return ret;

out_unlock:
	mutex_unlock(&s->lock);
out_free:
	kfree(data);
	return ret;
}

/* ---- file operations ---------------------------------------------------- */

static long hwi_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct hwi_session *s = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case HWLAB_IMPORTER_IOCTL_IMPORT:
		return hwi_ioctl_import(s, uarg);
	case HWLAB_IMPORTER_IOCTL_MAP:
	case HWLAB_IMPORTER_IOCTL_UNMAP:
	case HWLAB_IMPORTER_IOCTL_REMAP:
		return hwi_ioctl_map(s, cmd, uarg);
	case HWLAB_IMPORTER_IOCTL_REPORT:
		return hwi_ioctl_report(s, uarg);
	case HWLAB_IMPORTER_IOCTL_RELEASE:
		return hwi_ioctl_release(s, uarg);
	case HWLAB_IMPORTER_IOCTL_WAIT:
		return hwi_ioctl_wait(s, uarg);
	case HWLAB_IMPORTER_IOCTL_DMA:
		return hwi_ioctl_dma(s, uarg);
	default:
		return -ENOTTY;
	}
}

static int hwi_open(struct inode *inode, struct file *file)
{
	struct hwi_session *s;

	s = kzalloc_obj(*s);
	if (!s)
		return -ENOMEM;
	mutex_init(&s->lock);
	init_waitqueue_head(&s->wq);
	atomic_set(&s->events, 0);
	file->private_data = s;
	return nonseekable_open(inode, file);
}

/* Last reference to the file: no ioctl can be running, hence no waiter. */
static int hwi_release(struct inode *inode, struct file *file)
{
	struct hwi_session *s = file->private_data;
	int i;

	mutex_lock(&s->lock);
	for (i = 0; i < HWLAB_IMPORTER_MAX_IMPORTS; i++) {
		struct hwi_import *imp = s->imports[i];

		if (imp) {
			s->imports[i] = NULL;
			hwi_import_destroy(imp);
		}
	}
	mutex_unlock(&s->lock);
	mutex_destroy(&s->lock);
	kfree(s);
	return 0;
}

static const struct file_operations hwi_fops = {
	.owner = THIS_MODULE,
	.open = hwi_open,
	.release = hwi_release,
	.unlocked_ioctl = hwi_ioctl,
	/* Layouts are identical for 32-bit callers (u64s are 8-aligned). */
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice hwi_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "hwlab_importer",
	.fops = &hwi_fops,
	.mode = 0600,
};

static int __init hwi_init(void)
{
	return misc_register(&hwi_misc);
}

/*
 * Open files pin the module (fops.owner), so no session outlives it, nor an
 * engine (held only by imports).
 */
static void __exit hwi_exit(void)
{
	misc_deregister(&hwi_misc);
	WARN_ON(!list_empty(&hwi_engines));
}

module_init(hwi_init);
module_exit(hwi_exit);

MODULE_DESCRIPTION("hwlab dma-buf importer keeping the RDMA umem_dmabuf contract");
MODULE_AUTHOR("hwlab");
MODULE_LICENSE("GPL");
MODULE_VERSION("1");
