/* SPDX-License-Identifier: MIT */
/* The cluster allocator of a writable layer: finds runs of free host
 * clusters in the metadata file (refcount 0, which also rules out
 * clusters whose freeing is not yet durable: their decrement is still
 * deferred, see ORDERING.md), scanning from a hint and otherwise past the
 * end of the file, and takes them by raising their refcounts in the
 * refcount cache.  Allocation only changes refcounts in memory; the
 * caller's data write is what grows the file and what meets ENOSPC, and
 * a failed write is undone with refcount_adjust_locked (..., -1).
 *
 * Locking: layer->lock, exclusive, in every function here. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>

#include "common/checked-overflow.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Does [cl, cl+1) hold metadata the layer has in memory (header, L1
 * table, refcount table, refcount blocks)?  Such a cluster with a zero
 * refcount means the refcounts are corrupt: handing it out would
 * overwrite live metadata. */
static bool
is_live_metadata (const struct qcow2_layer *layer, uint64_t cl)
{
  uint64_t off = cl << layer->cluster_bits;
  uint64_t l1_bytes = (uint64_t) layer->l1_size * QCOW2_L1E_SIZE;
  uint64_t rt_bytes = (uint64_t) layer->refcount_table_clusters
    << layer->cluster_bits;

  if (cl == 0)
    return true;
  if (l1_bytes && off >= layer->l1_table_offset &&
      off - layer->l1_table_offset < l1_bytes)
    return true;
  if (off >= layer->refcount_table_offset &&
      off - layer->refcount_table_offset < rt_bytes)
    return true;
  if (layer->nb_snapshots && off == layer->snapshots_offset)
    return true;
  for (uint64_t t = 0; t < layer->reftable_entries; t++)
    if ((layer->reftable[t] & REFT_OFFSET_MASK) == off)
      return true;
  return false;
}

/* Is cluster index CL free: refcount 0, counting clusters without a
 * refcount block (yet) as 0?  Creates nothing. */
static int
cluster_free (struct qcow2_layer *layer, uint64_t cl, bool *is_free)
{
  uint64_t rc;
  int r;

  *is_free = false;
  r = refcount_get_locked (layer, cl << layer->cluster_bits, &rc);
  if (r < 0)
    return r;
  if (rc != 0)
    return 0;
  /* Past host_end nothing in memory can live (every table we know of was
   * placed inside it), so only look below. */
  if ((cl << layer->cluster_bits) < layer->host_end &&
      is_live_metadata (layer, cl))
    return qcow2_corrupt (layer, "metadata cluster %#" PRIx64 " has "
                          "refcount 0", cl << layer->cluster_bits);
  *is_free = true;
  return 0;
}

int
alloc_clusters_locked (struct qcow2_layer *layer, uint64_t min,
                       uint64_t max, uint64_t *host, uint64_t *got)
{
  /* Host offsets live in bits 9-55 of L1/L2 entries. */
  const uint64_t limit = UINT64_C (1) << (56 - layer->cluster_bits);
  uint64_t cl = layer->free_hint, start = 0, len = 0;
  int r;

  *host = 0;
  *got = 0;
  if (min == 0 || min > max || layer->refcount_cache == NULL)
    return -EINVAL;
  if (atomic_load (&layer->img->corrupt))
    return -EIO;
  r = header_mark_dirty_locked (layer);
  if (r < 0)
    return r;

  while (len < max) {
    bool is_free;

    if (cl >= limit)
      return -ENOSPC;
    r = cluster_free (layer, cl, &is_free);
    if (r < 0)
      return r;
    if (is_free) {
      if (len == 0)
        start = cl;
      len++;
    }
    else if (len >= min)
      break;
    else
      len = 0;
    cl++;
  }

  /* Refcount blocks for the run, placed outside it (a block inside its
   * own range, or past the run when the run spans the whole range). */
  layer->avoid_lo = start;
  layer->avoid_hi = start + len;
  for (uint64_t i = 0; i < len; i++) {
    r = refcount_ensure_block_locked (layer, start + i);
    if (r < 0)
      break;
  }
  layer->avoid_lo = layer->avoid_hi = 0;
  if (r < 0)
    return r;
  r = refcount_adjust_locked (layer, start << layer->cluster_bits, len, 1);
  if (r < 0)
    return r;
  layer->free_hint = start + len;
  refcount_note_end_locked (layer, (start + len) << layer->cluster_bits);
  *host = start << layer->cluster_bits;
  *got = len;
  return 0;
}
