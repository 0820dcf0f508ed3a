/* SPDX-License-Identifier: MIT */
/* Zeroing and discard while the caller (zero.c) holds the in-flight
 * record over the range: the L2 changes, and the pieces left to the
 * write path.  Below zero.c and compress-write.c, which both zero
 * ranges this way (compress-write.c for QCOW2_DETECT_ZEROES).
 *
 * qcow2_zero and qcow2_discard make guest ranges read as zeros, or
 * give their clusters back, mostly by changing L2 entries.
 *
 * Whole clusters are metadata only: on version 3 images the zero flag
 * (with QCOW2_MAY_UNMAP the host cluster goes too; without it the
 * allocation stays, as a preallocated zero cluster), with extended L2 the
 * zero bits of the subcluster bitmap, which also lets whole subclusters
 * inside a partial cluster be zeroed without I/O.  What is left, the
 * partial clusters (and every cluster of a version 2 image, which has no
 * zero flag, unless it can simply be deallocated), is zeroed through the
 * write path with zeros as the data: in place, or allocated with COW.
 * Such a piece is skipped when it already reads as zeros, and
 * QCOW2_FAST_ZERO fails with -ENOTSUP before anything changed if any
 * piece would need that.  Through QEMU's compress filter
 * (QCOW2_COMPRESSED) the partial clusters are instead written as whole
 * compressed clusters (compress-write.c), as QEMU's block layer widens
 * them to the filter's alignment.
 *
 * Discard works on whole clusters only and leaves partial clusters
 * alone.  As in QEMU, a discarded cluster that was allocated (or under
 * which a backing file would show through) becomes a zero cluster with
 * no host cluster, and one that was not stays as it is; version 2
 * images have no zero flag, so there discard unallocates, or does
 * nothing where a backing file would show through (qcow2.h).
 *
 * Both hold an in-flight record over the whole range for the whole call,
 * so they are ordered against writes that allocate in it.  Host clusters
 * given back are released with deferred decrements: they are reusable
 * only once the L2 change is durable (qcow2/ORDERING.md).
 *
 * A range may be huge (an NBD client with extended headers zeroes a
 * 1 TiB disk in one request): the metadata lock is taken for
 * LOCK_CHUNK_CLUSTERS clusters at a time, so readers and other writers
 * of the image wait milliseconds, not seconds, and between chunks a
 * grown backlog of freed clusters is committed (flush_backlog), so its
 * memory stays bounded.  The in-flight record keeps the range to
 * ourselves meanwhile; other requests may see it partly done, as they
 * may see any write in progress. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

#define ZERO_BITS (UINT64_C (0xffffffff) << 32)

/* Clusters handled per hold of the metadata lock: 4 L2 tables of 64 KiB
 * clusters, some 10 ms of L2 updates. */
#define LOCK_CHUNK_CLUSTERS 32768

/* Between chunks: let the others have the lock, and commit the freed
 * clusters if many wait. */
static void
lock_breather (struct qcow2_image *img, struct qcow2_layer *layer)
{
  bool backlog = release_backlog_locked (layer);

  rwlock_unlock_checked (&layer->lock);
  if (backlog)
    flush_backlog (img);
  rwlock_wrlock_checked (&layer->lock);
}

/* A range the write path must fill with zeros. */
struct zpiece {
  uint64_t offset, length;
};

struct zplan {
  struct zpiece *p;
  size_t n, cap;
};

static int
add_zpiece (struct zplan *zp, uint64_t offset, uint64_t length)
{
  if (length == 0)
    return 0;
  if (zp->n > 0 && zp->p[zp->n - 1].offset + zp->p[zp->n - 1].length ==
      offset) {
    zp->p[zp->n - 1].length += length;
    return 0;
  }
  if (zp->n == zp->cap) {
    size_t cap = zp->cap ? zp->cap * 2 : 8;
    struct zpiece *q = realloc (zp->p, cap * sizeof *q);

    if (q == NULL)
      return -errno;
    zp->p = q;
    zp->cap = cap;
  }
  zp->p[zp->n++] = (struct zpiece) { offset, length };
  return 0;
}

/* The L2 entry of CLUSTER (0 without a table), its host offset checked
 * as far as zeroing and discarding rely on it. */
static int
get_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                  uint64_t *l2e, uint64_t *bitmap)
{
  bool has_table, exclusive = true;
  int r;

  r = l2_read_entry_locked (layer, cluster, l2e, bitmap, &has_table,
                            &exclusive);
  if (r < 0)
    return r;
  /* The same checks as a write: zeroing or discarding an entry that
   * points at the header or past the image would release a cluster that
   * is not the guest's. */
  return l2_check_entry_locked (layer, cluster, *l2e, *bitmap);
}

/* Replace the entry of CLUSTER by L2E/BITMAP (no-op when equal),
 * releasing the old host clusters when RELEASE. */
static int
set_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                  uint64_t old_l2e, uint64_t old_bitmap,
                  uint64_t l2e, uint64_t bitmap, bool release)
{
  const uint32_t se = l2_cache_slice_entries (layer);
  uint64_t l1_index = cluster / layer->l2_entries;
  uint32_t l2_index = cluster % layer->l2_entries;
  uint8_t *slice, *ent;
  int r;

  if (l2e == old_l2e && (!layer->extended_l2 || bitmap == old_bitmap))
    return 0;
  r = header_mark_dirty_locked (layer);
  if (r == 0)
    r = l2_table_prepare_locked (layer, l1_index);
  if (r == 0)
    r = l2_cache_get_dirty_locked (layer, l1_index, l2_index / se, &slice);
  if (r < 0)
    return r;
  if (slice == NULL)
    return -EIO;
  ent = slice + (size_t) (l2_index % se) * layer->l2_entry_size;
  store_be64 (ent, l2e);
  if (layer->extended_l2)
    store_be64 (ent + 8, bitmap);
  if (release)
    /* The guest gave the data up: its host space may go too. */
    return l2_release_entry_locked (layer, old_l2e,
                                    layer->img->punch_discarded);
  return 0;
}

static bool
has_host (uint64_t l2e)
{
  return (l2e & QCOW_OFLAG_COMPRESSED) || (l2e & L2E_OFFSET_MASK) != 0;
}

/* Zero whole cluster CLUSTER by metadata, or add it to ZP. */
static int
zero_cluster_locked (struct qcow2_layer *layer, uint64_t cluster,
                     uint64_t gbase, uint64_t glen, unsigned flags,
                     bool dry_run, struct zplan *zp)
{
  const bool unmap = flags & QCOW2_MAY_UNMAP;
  const bool backing = layer->backing != NULL;
  uint64_t l2e, bitmap;
  int r;

  r = get_entry_locked (layer, cluster, &l2e, &bitmap);
  if (r < 0)
    return r;

  if (layer->extended_l2) {
    bool compressed = l2e & QCOW_OFLAG_COMPRESSED;
    bool drop = has_host (l2e) && (unmap || compressed);

    if (dry_run)
      return 0;
    return set_entry_locked (layer, cluster, l2e, bitmap,
                             drop ? 0 : l2e, ZERO_BITS, drop);
  }
  if (layer->version >= 3) {
    uint64_t n;

    if (dry_run)
      return 0;
    if ((l2e & QCOW_OFLAG_COMPRESSED) ||
        (unmap && (l2e & L2E_OFFSET_MASK) != 0))
      return set_entry_locked (layer, cluster, l2e, 0, QCOW_OFLAG_ZERO, 0,
                               true);
    /* An unallocated cluster gets the flag too, backing file or not:
     * QEMU's zeroing always leaves it, and block status then says the
     * top layer holds the zeros (qemu:allocation-depth 1). */
    n = l2e | QCOW_OFLAG_ZERO;
    return set_entry_locked (layer, cluster, l2e, 0, n, 0, false);
  }
  /* Version 2: no zero flag.  Deallocate when allowed and nothing shows
   * through; otherwise write zeros. */
  if (unmap && !backing) {
    if (dry_run)
      return 0;
    return set_entry_locked (layer, cluster, l2e, 0, 0, 0, has_host (l2e));
  }
  return add_zpiece (zp, gbase, glen);
}

/* Zero the whole subclusters [s0, s1] of CLUSTER by metadata when the
 * cluster is not compressed, else add the range to ZP. */
static int
zero_subclusters_locked (struct qcow2_layer *layer, uint64_t cluster,
                         uint32_t s0, uint32_t s1, bool dry_run,
                         struct zplan *zp)
{
  uint64_t gbase = cluster << layer->cluster_bits;
  uint64_t l2e, bitmap, m;
  int r;

  r = get_entry_locked (layer, cluster, &l2e, &bitmap);
  if (r < 0)
    return r;
  if (l2e & QCOW_OFLAG_COMPRESSED)
    return add_zpiece (zp, gbase + ((uint64_t) s0 << layer->subcluster_bits),
                       (uint64_t) (s1 - s0 + 1) << layer->subcluster_bits);
  if (dry_run)
    return 0;
  m = ((UINT64_C (1) << (s1 - s0 + 1)) - 1) << s0;
  return set_entry_locked (layer, cluster, l2e, bitmap, l2e,
                           (bitmap & ~m) | m << 32,
                           false);
}

/* Does the guest range read as zeros now? */
static int
reads_as_zero (struct qcow2_image *img, uint64_t offset, uint64_t length,
               bool *zero)
{
  struct qcow2_extent ext[16];

  *zero = true;
  while (length > 0) {
    size_t n;
    int r = map_image (img, offset, length, ext, 16, &n);

    if (r < 0)
      return r;
    if (n == 0)
      return -EIO;
    for (size_t i = 0; i < n; i++) {
      if (ext[i].type != QCOW2_EXTENT_ZERO &&
          ext[i].type != QCOW2_EXTENT_UNALLOCATED) {
        *zero = false;
        return 0;
      }
      offset += ext[i].length;
      length -= ext[i].length;
    }
  }
  return 0;
}

/* One pass over the range: metadata changes (unless DRY_RUN) and the
 * pieces the write path must zero, in ZP. */
static int
zero_pass (struct qcow2_image *img, uint64_t offset, uint64_t length,
           unsigned flags, bool dry_run, struct zplan *zp)
{
  struct qcow2_layer *layer = img->layers[0];
  const uint64_t cs = layer->cluster_size;
  const uint64_t end = offset + length;
  uint64_t done = 0;
  int r = 0;

  {
    WRLOCK_FOR_SCOPE (&layer->lock);

    for (uint64_t pos = offset; pos < end && r == 0;) {
      uint64_t cluster = pos >> layer->cluster_bits;

      if (++done % LOCK_CHUNK_CLUSTERS == 0)
        lock_breather (img, layer);
      uint64_t gbase = cluster << layer->cluster_bits;
      uint64_t cend = MIN (gbase + cs, layer->size);
      uint64_t n = MIN (end, cend) - pos;

      if (pos == gbase && pos + n == cend)
        r = zero_cluster_locked (layer, cluster, gbase, n, flags, dry_run, zp);
      else if (layer->extended_l2) {
        /* Whole subclusters by metadata, the edges by writing. */
        const uint64_t sc = UINT64_C (1) << layer->subcluster_bits;
        uint64_t a = ROUND_UP (pos, sc);
        uint64_t b = pos + n == cend ? cend : ROUND_DOWN (pos + n, sc);

        if (a < b) {
          r = add_zpiece (zp, pos, a - pos);
          if (r == 0)
            r = zero_subclusters_locked (layer, cluster,
                                         (a - gbase) >> layer->subcluster_bits,
                                         (b - 1 - gbase)
                                         >> layer->subcluster_bits,
                                         dry_run, zp);
          if (r == 0)
            r = add_zpiece (zp, b, pos + n - b);
        }
        else
          r = add_zpiece (zp, pos, n);
      }
      else
        r = add_zpiece (zp, pos, n);
      pos += n;
    }
  }
  return r;
}

/* Zero the pieces through the write path (the record is held). */
static int
zero_pieces (struct qcow2_image *img, const struct zplan *zp)
{
  for (size_t i = 0; i < zp->n; i++) {
    uint64_t off = zp->p[i].offset, len = zp->p[i].length;

    while (len > 0) {
      /* Whole clusters per round keep each begin bounded. */
      uint64_t n = MIN (len, UINT64_C (16) << 20);
      struct qcow2_write *w;
      const struct qcow2_seg *segs;
      size_t nsegs;
      bool zero;
      int r;

      r = reads_as_zero (img, off, n, &zero);
      if (r < 0)
        return r;
      if (!zero) {
        r = write_begin_held (img, off, n, true, &w, &segs, &nsegs);
        if (r < 0)
          return r;
        r = sync_write_segs (img, segs, nsegs, NULL);
        {
          int e = qcow2_write_end (w, r);

          if (r == 0)
            r = e;
        }
        if (r < 0)
          return r;
      }
      off += n;
      len -= n;
    }
  }
  return 0;
}

int
zero_held (struct qcow2_image *img, uint64_t offset, uint64_t length,
           unsigned flags)
{
  struct zplan zp = { 0 };
  int r = 0;

  /* Dirty whatever the outcome, FAST_ZERO refusals included: QEMU does. */
  bitmap_set_dirty (img, offset, length);

  if (flags & QCOW2_FAST_ZERO) {
    r = zero_pass (img, offset, length, flags, true, &zp);
    for (size_t i = 0; r == 0 && i < zp.n; i++) {
      bool zero;

      r = reads_as_zero (img, zp.p[i].offset, zp.p[i].length, &zero);
      if (r == 0 && !zero)
        r = -ENOTSUP;
    }
    zp.n = 0;
  }
  if (r == 0)
    r = zero_pass (img, offset, length, flags, false, &zp);
  if (r == 0)
    r = zero_pieces (img, &zp);
  free (zp.p);
  return r;
}

/* The L2 changes of a discard of guest clusters [FIRST, END) of the
 * qcow2 top layer (qcow2_discard holds the record); *BACKLOG says
 * whether freed clusters wait to be committed. */
int
discard_held (struct qcow2_image *img, uint64_t first, uint64_t end,
              bool *backlog)
{
  struct qcow2_layer *layer = img->layers[0];
  WRLOCK_FOR_SCOPE (&layer->lock);
  int r = 0;

  for (uint64_t c = first; c < end && r == 0; c++) {
    uint64_t l2e, bitmap, new_l2e = 0, new_bitmap = 0;

    if ((c - first + 1) % LOCK_CHUNK_CLUSTERS == 0)
      lock_breather (img, layer);
    r = get_entry_locked (layer, c, &l2e, &bitmap);
    if (r < 0)
      break;
    /* As QEMU: a cluster that was allocated, or that would let a
     * backing file show through, becomes a zero cluster (all its
     * subclusters zero); one that was not stays as it is.  Version 2
     * has no zero flag (and qcow2_discard returned early when a backing
     * file would show through). */
    if (layer->version < 3)
      new_l2e = new_bitmap = 0;
    else if (layer->backing != NULL || has_host (l2e)) {
      if (layer->extended_l2)
        new_bitmap = ZERO_BITS;
      else
        new_l2e = QCOW_OFLAG_ZERO;
    }
    else
      continue;
    r = set_entry_locked (layer, c, l2e, bitmap, new_l2e, new_bitmap,
                          has_host (l2e));
  }
  *backlog = release_backlog_locked (layer);
  return r;
}
