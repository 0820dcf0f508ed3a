/* SPDX-License-Identifier: MIT */
/* Reading refcounts.  The read-only engine needs them for one thing:
 * telling whether a layer was made with preallocation=metadata, the one
 * case in which QEMU reports host-file holes under allocated clusters as
 * zeros (qcow2_layer_host_holes).  The write engine will grow this file
 * into the refcount updates, with the ordering rules written next to
 * them. */
#include <config.h>

#include <errno.h>
#include <stdlib.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* The refcount of entry I of a refcount block, 2^order bits wide;
 * narrower than a byte they pack from the least significant bit. */
static uint64_t
refcount_entry (const unsigned char *block, uint32_t order, uint64_t i)
{
  switch (order) {
  case 0: case 1: case 2: {
    unsigned bits = 1u << order;
    uint64_t bit = i * bits;
    return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
  }
  case 3: return block[i];
  case 4: return load_be16 (block + 2 * i);
  case 5: return load_be32 (block + 4 * i);
  default: return load_be64 (block + 8 * i);
  }
}

/* QEMU's rule (qcow2_detect_metadata_preallocation): the layer counts as
 * metadata-preallocated when the clusters with a nonzero refcount number
 * at least max(real * 10/9, real + 2), where 'real' is the clusters the
 * host file really occupies.  A fully allocated file cannot qualify, so
 * the refcount scan only happens for sparse files and stops at the
 * threshold. */
int
refcount_detect_metadata_prealloc (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const struct qcow2_file *f = &img->files[layer->file];
  uint64_t allocated, real, threshold, end_cluster, count = 0;
  uint64_t entries_per_block, nr_table;
  int r;

  layer->metadata_prealloc = false;
  if (layer->format != LAYER_QCOW2 || img->io->get_allocated == NULL)
    return 0;
  if (img->io->get_allocated (img->io_opaque, f->fd, &allocated) < 0)
    return 0;                   /* unknown: take the file as allocated */
  if (allocated >= f->size)
    return 0;

  real = allocated >> layer->cluster_bits;
  threshold = MAX (real * 10 / 9, real + 2);
  end_cluster = DIV_ROUND_UP (f->size, (uint64_t) layer->cluster_size);
  entries_per_block = ((uint64_t) layer->cluster_size * 8)
    >> layer->refcount_order;
  nr_table = ((uint64_t) layer->refcount_table_clusters
              << layer->cluster_bits) / 8;

  CLEANUP_FREE unsigned char *block = malloc (layer->cluster_size);
  if (block == NULL)
    return -ENOMEM;

  for (uint64_t t = 0; t < nr_table && count < threshold; t++) {
    uint64_t first = t * entries_per_block;
    unsigned char e[8];

    if (first >= end_cluster)
      break;
    r = img->io->pread (img->io_opaque, f->fd, e, 8,
                        layer->refcount_table_offset + 8 * t);
    if (r < 0)
      return r;
    uint64_t off = load_be64 (e) & REFT_OFFSET_MASK;
    if (off == 0)
      continue;
    /* open.c validated the table's place, not its entries: a bad entry
     * ends the scan (the answer only tunes block status). */
    if (!IS_ALIGNED (off, layer->cluster_size) ||
        !range_fits (off, layer->cluster_size, f->size))
      break;
    r = img->io->pread (img->io_opaque, f->fd, block, layer->cluster_size,
                        off);
    if (r < 0)
      return r;
    for (uint64_t i = 0; i < entries_per_block && count < threshold; i++) {
      if (first + i >= end_cluster)
        break;
      count += refcount_entry (block, layer->refcount_order, i) != 0;
    }
  }
  layer->metadata_prealloc = count >= threshold;
  if (layer->metadata_prealloc)
    qcow2_log (img, QCOW2_LOG_DEBUG,
               "%s: metadata-preallocated image (host holes read as zeros)",
               f->name);
  return 0;
}
