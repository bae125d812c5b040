/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * hwlab_importer UAPI: a dma-buf importer that keeps the RDMA core's
 * (ib_umem_dmabuf) importer contract, driven through /dev/hwlab_importer.
 *
 * Every struct is little-endian x86_64 with naturally aligned fixed-width
 * fields and explicit padding, so userspace can encode it by byte offset.
 * The offsets are written next to each field and checked by
 * test/unit/importer-structs.test.ts against this header. README.md beside
 * this file documents the semantics.
 *
 * Conventions: "in" fields are read by the kernel, "out" fields written.
 * Error fields ("error") hold a positive errno (0 = success). Reserved and
 * padding fields must be zero on input (else EINVAL).
 */
#ifndef _UAPI_HWLAB_IMPORTER_H
#define _UAPI_HWLAB_IMPORTER_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define HWLAB_IMPORTER_DEVICE		"/dev/hwlab_importer"
#define HWLAB_IMPORTER_IOC_MAGIC	0xB9	/* unassigned in ioctl-number.rst */
#define HWLAB_IMPORTER_ABI_VERSION	2	/* 2: DMA */

/* Imports one session (open file) may hold at once. */
#define HWLAB_IMPORTER_MAX_IMPORTS	16
/* REPORT copies at most this many sg entries per call. */
#define HWLAB_IMPORTER_MAX_REPORT	4096
/* Length of the PCI name fields, including the terminating NUL. */
#define HWLAB_IMPORTER_BDF_LEN		16

/* import modes */
enum hwlab_importer_mode {
	/*
	 * dma_buf_dynamic_attach with allow_peer2peer and invalidate_mappings:
	 * the RDMA dynamic (mlx5 dmabuf) contract. Revocable.
	 */
	HWLAB_IMPORTER_MODE_DYNAMIC = 0,
	/*
	 * allow_peer2peer but no invalidate_mappings, dma_buf_pin at import:
	 * ib_umem_dmabuf_get_pinned. Not revocable.
	 */
	HWLAB_IMPORTER_MODE_PINNED = 1,
	/* as DYNAMIC but allow_peer2peer = false. */
	HWLAB_IMPORTER_MODE_NO_P2P = 2,
};

/* hwlab_importer_import.stage: the step that failed */
enum hwlab_importer_stage {
	HWLAB_IMPORTER_STAGE_NONE = 0,		/* success */
	HWLAB_IMPORTER_STAGE_ARGS = 1,		/* argument check, session full */
	HWLAB_IMPORTER_STAGE_IMPORTER_DEV = 2,	/* importer PCI device lookup */
	HWLAB_IMPORTER_STAGE_EXPORTER_DEV = 3,	/* exporter PCI device lookup */
	HWLAB_IMPORTER_STAGE_DMA_MASK = 4,	/* dma_set_mask_and_coherent */
	HWLAB_IMPORTER_STAGE_DMA_BUF_GET = 5,	/* dma_buf_get(fd) */
	HWLAB_IMPORTER_STAGE_ATTACH = 6,	/* dma_buf_dynamic_attach */
	HWLAB_IMPORTER_STAGE_PIN = 7,		/* dma_buf_pin (PINNED mode) */
};

/*
 * IMPORT: take a dma-buf fd and attach to it on behalf of a PCI device.
 * importer_bdf "" = the first QEMU edu device (1234:11e8).
 * exporter_bdf "" = unknown exporter (REPORT then cannot guess a map type).
 * size 72
 */
struct hwlab_importer_import {
	__s32 dmabuf_fd;			/*  0 in */
	__u32 mode;				/*  4 in: enum hwlab_importer_mode */
	char importer_bdf[HWLAB_IMPORTER_BDF_LEN]; /*  8 in: "DDDD:BB:DD.F" or "BB:DD.F" */
	char exporter_bdf[HWLAB_IMPORTER_BDF_LEN]; /* 24 in: optional */
	__u32 exporter_bar;			/* 40 in: BAR index 0-5 if exporter_bdf */
	__u32 dma_mask_bits;			/* 44 in: 0 = leave, 1-64 = set (driverless device only) */
	__u32 flags;				/* 48 in: must be 0 */
	__u32 handle;				/* 52 out */
	__u32 error;				/* 56 out: errno of the failed step */
	__u32 stage;				/* 60 out: enum hwlab_importer_stage */
	__u64 dmabuf_size;			/* 64 out */
};

/*
 * MAP, REMAP, UNMAP: one struct. All run under the dma-buf's reservation lock.
 * size 40
 */
struct hwlab_importer_map {
	__u32 handle;				/*  0 in */
	__u32 flags;				/*  4 in: must be 0 */
	__u32 nents;				/*  8 out: sg entries of the mapping (0 if unmapped) */
	__u32 error;				/* 12 out: errno of map / fence wait (MAP, REMAP) */
	__u64 total_len;			/* 16 out: sum of sg_dma_len */
	__u64 invalidate_count;			/* 24 out */
	__u32 mapped;				/* 32 out: 1 if mapped after the call */
	__u32 was_mapped;			/* 36 out: 1 if mapped before the call */
};

/* One DMA segment of the current mapping. size 16 */
struct hwlab_importer_sg_entry {
	__u64 dma_addr;				/*  0 */
	__u64 len;				/*  8 */
};

/* map_type_guess values; numbering follows the contract's table */
enum hwlab_importer_map_type {
	HWLAB_IMPORTER_MAP_UNKNOWN = 0,
	HWLAB_IMPORTER_MAP_BUS_ADDR = 1,	/* PCI bus address, through a common switch */
	HWLAB_IMPORTER_MAP_HOST_BRIDGE_IOVA = 2, /* through the host bridge, IOMMU-translated */
	HWLAB_IMPORTER_MAP_HOST_BRIDGE_DIRECT = 3, /* through the host bridge, untranslated */
};

/* hwlab_importer_report.facts bits: the inputs of map_type_guess */
#define HWLAB_IMPORTER_FACT_HAS_EXPORTER	(1U << 0) /* exporter_bdf was given */
#define HWLAB_IMPORTER_FACT_IN_BAR_BUS		(1U << 1) /* every segment inside the BAR's bus range */
#define HWLAB_IMPORTER_FACT_IN_BAR_PHYS		(1U << 2) /* every segment inside the BAR's CPU physical range */
#define HWLAB_IMPORTER_FACT_COMMON_BRIDGE	(1U << 3) /* exporter and importer share an upstream bridge */
#define HWLAB_IMPORTER_FACT_ACS_REDIRECT	(1U << 4) /* ACS P2P redirect/egress control on the path */
#define HWLAB_IMPORTER_FACT_IOMMU_DMA		(1U << 5) /* importer uses IOMMU-translated DMA API */
#define HWLAB_IMPORTER_FACT_HAS_DRIVER		(1U << 6) /* importer device is bound to a driver */
#define HWLAB_IMPORTER_FACT_PINNED		(1U << 7) /* attachment is pinned (PINNED mode) */

/*
 * REPORT: state of one import and a copy of its sg table.
 * entries: user pointer to max_entries struct hwlab_importer_sg_entry;
 * min(nents, max_entries, HWLAB_IMPORTER_MAX_REPORT) are written.
 * size 128
 */
struct hwlab_importer_report {
	__u32 handle;				/*   0 in */
	__u32 max_entries;			/*   4 in */
	__u64 entries;				/*   8 in: user pointer, may be 0 if max_entries is 0 */
	__u32 nents;				/*  16 out: entries in the mapping */
	__u32 mapped;				/*  20 out */
	__u64 invalidate_count;			/*  24 out */
	__u64 total_len;			/*  32 out */
	__u32 map_type_guess;			/*  40 out: enum hwlab_importer_map_type */
	__u32 mode;				/*  44 out: mode given at IMPORT */
	__s32 p2p_distance;			/*  48 out: pci_p2pdma_distance(), -1 = not supported / no exporter */
	__u32 facts;				/*  52 out: HWLAB_IMPORTER_FACT_* */
	__u64 bar_bus_start;			/*  56 out: exporter BAR, PCI bus address */
	__u64 bar_phys_start;			/*  64 out: exporter BAR, CPU physical address */
	__u64 bar_len;				/*  72 out */
	__u64 dmabuf_size;			/*  80 out */
	__u64 map_count;			/*  88 out: successful maps so far */
	__u32 last_map_error;			/*  96 out: errno of the latest map attempt */
	__u32 pad;				/* 100 */
	__u64 importer_dma_mask;		/* 104 out */
	char importer_bdf[HWLAB_IMPORTER_BDF_LEN]; /* 112 out: device attached on behalf of */
};

/* RELEASE: unmap, unpin, detach, drop the dma-buf. size 8 */
struct hwlab_importer_release {
	__u32 handle;				/*  0 in */
	__u32 pad;				/*  4 */
};

/*
 * WAIT: sleep until invalidate_count > after_count, up to timeout_ms
 * (0 = just check). size 24
 */
struct hwlab_importer_wait {
	__u32 handle;				/*  0 in */
	__u32 timeout_ms;			/*  4 in */
	__u64 after_count;			/*  8 in */
	__u64 invalidate_count;			/* 16 out */
};

/* DMA directions */
enum hwlab_importer_dma_direction {
	HWLAB_IMPORTER_DMA_FROM_BUF = 0,	/* dma-buf -> user */
	HWLAB_IMPORTER_DMA_TO_BUF = 1,		/* user -> dma-buf */
};

/* DMA moves at most this many bytes per call (the size of edu's buffer). */
#define HWLAB_IMPORTER_DMA_MAX		4096

/*
 * DMA: copy between the current mapping of an import and userspace, using the
 * importer device's own DMA engine (QEMU edu), so the bytes really travel over
 * the DMA address the exporter's map_dma_buf returned. error: ENODEV = not
 * mapped (e.g. invalidated by a revoke), ERANGE = an address beyond the edu's
 * reach, ETIMEDOUT = engine did not finish, EOPNOTSUPP = importer device is
 * not an edu; README.md lists every case. size 40
 */
struct hwlab_importer_dma {
	__u32 handle;				/*  0 in */
	__u32 direction;			/*  4 in: enum hwlab_importer_dma_direction */
	__u64 offset;				/*  8 in: byte offset into the dma-buf (sg segments concatenated in order) */
	__u64 len;				/* 16 in: 1..HWLAB_IMPORTER_DMA_MAX; offset+len within the dma-buf */
	__u64 buf;				/* 24 in: user pointer to len bytes */
	__u32 error;				/* 32 out: errno of the failed step */
	__u32 pad;				/* 36 must be 0 */
};

#define HWLAB_IMPORTER_IOCTL_IMPORT	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 1, struct hwlab_importer_import)
#define HWLAB_IMPORTER_IOCTL_MAP	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 2, struct hwlab_importer_map)
#define HWLAB_IMPORTER_IOCTL_UNMAP	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 3, struct hwlab_importer_map)
#define HWLAB_IMPORTER_IOCTL_REMAP	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 4, struct hwlab_importer_map)
#define HWLAB_IMPORTER_IOCTL_REPORT	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 5, struct hwlab_importer_report)
#define HWLAB_IMPORTER_IOCTL_RELEASE	_IOW(HWLAB_IMPORTER_IOC_MAGIC, 6, struct hwlab_importer_release)
#define HWLAB_IMPORTER_IOCTL_WAIT	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 7, struct hwlab_importer_wait)
#define HWLAB_IMPORTER_IOCTL_DMA	_IOWR(HWLAB_IMPORTER_IOC_MAGIC, 8, struct hwlab_importer_dma)

#endif /* _UAPI_HWLAB_IMPORTER_H */
