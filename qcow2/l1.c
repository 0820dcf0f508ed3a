/* SPDX-License-Identifier: MIT */
/* The L1 table of a writable layer: writing one entry, and growing the
 * table (a new table is written and synced before the header switches to
 * it, and the old one is freed only once that switch is durable; see
 * ORDERING.md).  layer->l1 is the table in host byte order.
 *
 * Locking: layer->lock, exclusive, in every function here. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

int
l1_write_entry_locked (struct qcow2_layer *layer, uint32_t index)
{
  struct qcow2_image *img = layer->img;
  unsigned char e[8];

  if (index >= layer->l1_size)
    return -EINVAL;
  store_be64 (e, layer->l1[index]);
  return img->io->pwrite (img->io_opaque, img->files[layer->file].fd, e,
                          sizeof e, layer->l1_table_offset
                          + (uint64_t) index * QCOW2_L1E_SIZE);
}

int
l1_grow_locked (struct qcow2_layer *layer, uint64_t min_entries)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  const uint64_t max_entries = QCOW2_MAX_L1_BYTES / QCOW2_L1E_SIZE;
  uint64_t new_size, bytes, nclusters, host, got;
  uint64_t old_off = layer->l1_table_offset;
  uint64_t old_clusters;
  CLEANUP_FREE uint64_t *table = NULL;
  CLEANUP_FREE uint64_t *be = NULL;
  unsigned char hdr[12];
  int r, sync_r;

  if (min_entries <= layer->l1_size)
    return 0;
  if (min_entries > max_entries)
    return -EFBIG;
  /* Grow by half again, like QEMU, and fill the last cluster. */
  new_size = MAX (min_entries, (uint64_t) layer->l1_size
                  + layer->l1_size / 2);
  bytes = ROUND_UP (new_size * QCOW2_L1E_SIZE,
                    (uint64_t) layer->cluster_size);
  new_size = MIN (bytes / QCOW2_L1E_SIZE, max_entries);
  bytes = new_size * QCOW2_L1E_SIZE;
  nclusters = DIV_ROUND_UP (bytes, (uint64_t) layer->cluster_size);
  old_clusters = DIV_ROUND_UP ((uint64_t) layer->l1_size * QCOW2_L1E_SIZE,
                               (uint64_t) layer->cluster_size);

  table = calloc (new_size, QCOW2_L1E_SIZE);
  be = calloc (nclusters, layer->cluster_size);
  if (table == NULL || be == NULL)
    return -ENOMEM;
  memcpy (table, layer->l1, (size_t) layer->l1_size * QCOW2_L1E_SIZE);
  for (uint64_t i = 0; i < new_size; i++)
    store_be64 (&be[i], table[i]);

  r = alloc_clusters_locked (layer, nclusters, nclusters, &host, &got);
  if (r < 0)
    return r;
  r = img->io->pwrite (img->io_opaque, fd, be,
                       nclusters * layer->cluster_size, host);
  if (r == 0)
    r = refcount_writeback_locked (layer);
  if (r == 0)
    r = sync_layer (layer);
  if (r < 0) {
    /* Nothing on disk points at the new table: undo at once. */
    refcount_adjust_locked (layer, host, nclusters, -1);
    return r;
  }

  /* l1_size (u32 at 36) and l1_table_offset (u64 at 40) are adjacent:
   * one write switches both. */
  store_be32 (hdr, new_size);
  store_be64 (hdr + 4, host);
  r = img->io->pwrite (img->io_opaque, fd, hdr, sizeof hdr,
                       QCOW2_HDR_L1_SIZE);
  if (r < 0) {
    refcount_adjust_locked (layer, host, nclusters, -1);
    return r;
  }
  sync_r = sync_layer (layer);

  /* From here the file (at least its page cache) names the new table:
   * use it.  If the sync failed we cannot know what is durable, so the
   * old table stays allocated (at worst a leak). */
  free (layer->l1);
  layer->l1 = table;
  table = NULL;
  layer->l1_size = new_size;
  layer->l1_table_offset = host;
  qcow2_log (img, QCOW2_LOG_DEBUG, "L1 table grown to %" PRIu64
             " entries at %#" PRIx64, new_size, host);

  if (sync_r < 0)
    return sync_r;
  /* The header switch is durable: the old table can go at once. */
  if (old_clusters && old_off)
    return refcount_adjust_locked (layer, old_off, old_clusters, -1);
  return 0;
}
