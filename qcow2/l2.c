/* SPDX-License-Identifier: MIT */
/* The L2 entries of a writable layer, shared by the write path
 * (write.c, compress-write.c) and zeroing and discard (zero-held.c):
 * reading an entry through the L2 cache, checking one before it is
 * written through, zeroed or discarded, storing a new one, releasing the
 * host clusters an old one held (or, at once, those of a stream no
 * entry names yet), and making an L2 table exist and be ours alone (new,
 * or copied from a table shared with a snapshot) before any entry in it
 * changes.
 *
 * Everything here runs under the layer lock (the _locked names); what
 * reaches the disk before what follows qcow2/ORDERING.md ("L2 table
 * allocation"). */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

int
l2_table_prepare_locked (struct qcow2_layer *layer, uint64_t l1_index)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  uint64_t l1e, old, table, got;
  int r;

  if (l1_index >= layer->l1_size) {
    /* A valid image's L1 table covers its virtual size; growing it is
     * for the odd ones.  What the new table will point at must be
     * durable first (ORDERING.md, rule 1): new L2 tables already are. */
    r = l1_grow_locked (layer, l1_index + 1);
    if (r < 0)
      return r;
    if (l1_index >= layer->l1_size)
      return -EIO;
  }
  l1e = layer->l1[l1_index];
  old = l1e & L1E_OFFSET_MASK;
  if (l1e & L1E_RESERVED_MASK)
    return qcow2_corrupt (layer, "L1 entry %" PRIu64 " (%#" PRIx64 ") has "
                          "reserved bits set", l1_index, l1e);
  if (!IS_ALIGNED (old, layer->cluster_size))
    return qcow2_corrupt (layer, "L2 table offset %#" PRIx64 " in L1 entry %"
                          PRIu64 " is not cluster aligned", old, l1_index);
  if (old != 0 && (l1e & QCOW_OFLAG_COPIED))
    return 0;

  r = header_mark_dirty_locked (layer);
  if (r < 0)
    return r;
  r = alloc_clusters_locked (layer, 1, 1, &table, &got);
  if (r < 0)
    return r;

  {
    CLEANUP_FREE uint8_t *buf = calloc (1, layer->cluster_size);

    if (buf == NULL)
      r = -errno;
    /* A table shared with a snapshot is copied as it is: the refcounts
     * of the clusters it names count the L1 tables that reach them (as
     * QEMU's snapshot code and qemu-img check count them), and one L1
     * table still reaches each of them, through the copy.  We never
     * change a shared table, so the file has its current contents. */
    else if (old != 0)
      r = img->io->pread (img->io_opaque, fd, buf, layer->cluster_size, old);
    if (r == 0)
      r = img->io->pwrite (img->io_opaque, fd, buf, layer->cluster_size,
                           table);
  }
  if (r < 0) {
    refcount_adjust_locked (layer, table, 1, -1);
    return r;
  }
  refcount_note_end_locked (layer, table + layer->cluster_size);
  l2_cache_forget_table_locked (layer, table);

  /* The table and its refcount are durable before the L1 entry names
   * it (ORDERING.md, "L2 table allocation"). */
  r = refcount_writeback_locked (layer);
  if (r < 0) {
    /* Nothing names the table: its count goes back to 0 (the block
     * stays dirty, written back with the next writeback). */
    refcount_adjust_locked (layer, table, 1, -1);
    return r;
  }
  r = sync_layer (layer);
  if (r < 0)
    return r;   /* the image is failed and marked dirty (corrupt.c) */

  layer->l1[l1_index] = table | QCOW_OFLAG_COPIED;
  r = l1_write_entry_locked (layer, l1_index);
  if (r < 0) {
    /* The entry may or may not be on disk: keep the old one in memory
     * and put it back on disk.  Once that write has landed nothing can
     * name the new table, which is then freed as any dropped reference
     * is, at the flush that makes the drop durable (release.c): a clean
     * close leaks nothing.  If it fails too, the table leaks rather
     * than risk a dangling reference. */
    layer->l1[l1_index] = l1e;
    if (l1_write_entry_locked (layer, l1_index) == 0)
      release_clusters_locked (layer, table, 1, false);
    return r;
  }
  if (old != 0)
    return release_clusters_locked (layer, old, 1, false);
  return 0;
}

int
l2_release_entry_locked (struct qcow2_layer *layer, uint64_t l2e,
                         bool give_back)
{
  if (l2e & QCOW_OFLAG_COMPRESSED) {
    uint64_t desc = l2e & ~(QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_COPIED);
    uint64_t coffset = desc & layer->coffset_mask;
    uint64_t nsect = (desc >> layer->csize_shift) & layer->csize_mask;
    uint64_t start = coffset & ~(uint64_t) (QCOW2_COMPRESSED_SECTOR_SIZE - 1);
    uint64_t end = start + (nsect + 1) * QCOW2_COMPRESSED_SECTOR_SIZE;
    uint64_t first = start >> layer->cluster_bits;
    uint64_t last = (end - 1) >> layer->cluster_bits;

    /* Each host cluster the stream touches holds one reference for it
     * (QEMU's qcow2_free_any_cluster frees the sector range). */
    return release_clusters_locked (layer, first << layer->cluster_bits,
                                    last - first + 1, give_back);
  }
  if ((l2e & L2E_OFFSET_MASK) != 0)
    return release_clusters_locked (layer, l2e & L2E_OFFSET_MASK, 1,
                                    give_back);
  return 0;
}

/* Host clusters [first, last] a stream of LEN bytes at HOST touches. */
static void
stream_clusters (const struct qcow2_layer *layer, uint64_t host,
                 uint32_t len, uint64_t *first, uint64_t *n)
{
  uint64_t a = host >> layer->cluster_bits;
  uint64_t b = (host + len - 1) >> layer->cluster_bits;

  *first = a << layer->cluster_bits;
  *n = b - a + 1;
}

void
l2_unref_stream_locked (struct qcow2_layer *layer, uint64_t host,
                        uint32_t len)
{
  uint64_t first, n;

  stream_clusters (layer, host, len, &first, &n);
  /* Nothing names the stream: the decrement is immediate (rule 5).  A
   * cluster this leaves at 0 stops being the byte allocator's
   * (refcount.c). */
  refcount_adjust_locked (layer, first, n, -1);
}

int
l2_read_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                      uint64_t *l2e, uint64_t *bitmap, bool *has_table,
                      bool *exclusive)
{
  const uint32_t slice_entries = l2_cache_slice_entries (layer);
  uint64_t l1_index = cluster / layer->l2_entries;
  uint32_t l2_index = cluster % layer->l2_entries;
  const uint8_t *slice, *ent;
  int r;

  *l2e = *bitmap = 0;
  *has_table = false;
  r = l2_cache_get_locked (layer, l1_index, l2_index / slice_entries,
                           exclusive, &slice);
  if (r < 0 || slice == NULL)
    return r;
  *has_table = true;
  ent = slice + (size_t) (l2_index % slice_entries) * layer->l2_entry_size;
  *l2e = load_be64 (ent);
  if (layer->extended_l2)
    *bitmap = load_be64 (ent + 8);
  return 0;
}

int
l2_store_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                       uint64_t expect_l2e, uint64_t expect_bitmap,
                       uint64_t l2e, uint64_t bitmap)
{
  const uint32_t slice_entries = l2_cache_slice_entries (layer);
  uint64_t l1_index = cluster / layer->l2_entries;
  uint32_t l2_index = cluster % layer->l2_entries;
  uint8_t *slice, *ent;
  int r;

  if (l1_index >= layer->l1_size ||
      !(layer->l1[l1_index] & QCOW_OFLAG_COPIED))
    return -EIO;        /* prepared in begin; cannot happen */
  r = l2_cache_get_dirty_locked (layer, l1_index, l2_index / slice_entries,
                                 &slice);
  if (r < 0)
    return r;
  if (slice == NULL)
    return -EIO;
  ent = slice + (size_t) (l2_index % slice_entries) * layer->l2_entry_size;
  /* The in-flight record kept everyone else off this entry. */
  if (load_be64 (ent) != expect_l2e ||
      (layer->extended_l2 && load_be64 (ent + 8) != expect_bitmap))
    return qcow2_corrupt (layer, "L2 entry of cluster %" PRIu64 " changed "
                          "under an in-flight write", cluster);
  store_be64 (ent, l2e);
  if (layer->extended_l2)
    store_be64 (ent + 8, bitmap);
  return 0;
}

/* Does the host cluster at HOST hold the header, the L1 table or the
 * refcount table? */
static bool
overlaps_tables_locked (const struct qcow2_layer *layer, uint64_t host)
{
  uint64_t cs = layer->cluster_size;
  uint64_t l1_end = layer->l1_table_offset + (uint64_t) layer->l1_size * 8;
  uint64_t rt_end = layer->refcount_table_offset +
    ((uint64_t) layer->refcount_table_clusters << layer->cluster_bits);

  /* Offsets and sizes were validated at open: no overflow here. */
  return host < cs ||
    (host + cs > layer->l1_table_offset && host < l1_end) ||
    (host + cs > layer->refcount_table_offset && host < rt_end);
}

/* Check an L2 entry before it is written through, zeroed or discarded:
 * what map.c checks, plus that a host cluster lies inside the part of the
 * file the allocator accounts for (an entry pointing past it would let
 * the allocator hand the same cluster out again) and is not the header. */
int
l2_check_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                       uint64_t l2e, uint64_t bitmap)
{
  uint64_t host = l2e & L2E_OFFSET_MASK;

  if (l2e & QCOW_OFLAG_COMPRESSED) {
    if (layer->extended_l2 && bitmap != 0)
      return qcow2_corrupt (layer, "compressed cluster %" PRIu64 " has a "
                            "non-zero subcluster bitmap (%#" PRIx64 ")",
                            cluster, bitmap);
    return 0;
  }
  if (l2e & L2E_STD_RESERVED_MASK)
    return qcow2_corrupt (layer, "L2 entry %#" PRIx64 " of cluster %" PRIu64
                          " has reserved bits set", l2e, cluster);
  if (!IS_ALIGNED (host, layer->cluster_size))
    return qcow2_corrupt (layer, "data offset %#" PRIx64 " of cluster %"
                          PRIu64 " is not cluster aligned", host, cluster);
  if (layer->extended_l2) {
    uint32_t alloc = bitmap & 0xffffffff, zero = bitmap >> 32;

    if (alloc & zero)
      return qcow2_corrupt (layer, "cluster %" PRIu64 " has subclusters "
                            "both allocated and zero (bitmap %#" PRIx64 ")",
                            cluster, bitmap);
    if (alloc != 0 && host == 0)
      return qcow2_corrupt (layer, "cluster %" PRIu64 " has allocated "
                            "subclusters but no host offset", cluster);
  }
  /* Writing in place over the image's own tables would destroy it:
   * QEMU's overlap check refuses that too.  (L2 tables and refcount
   * blocks are not checked: that would cost a lookup per write.) */
  if (host != 0 && overlaps_tables_locked (layer, host))
    return qcow2_corrupt (layer, "data offset %#" PRIx64 " of cluster %"
                          PRIu64 " overlaps the header, the L1 table or "
                          "the refcount table", host, cluster);
  if (host != 0 && layer->host_end != 0 &&
      !range_fits (host, layer->cluster_size, layer->host_end))
    return qcow2_corrupt (layer, "data offset %#" PRIx64 " of cluster %"
                          PRIu64 " is past the end of the image", host,
                          cluster);
  return 0;
}
