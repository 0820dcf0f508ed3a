/* SPDX-License-Identifier: MIT */
/* The repair of an image left dirty (lazy refcounts, or a crash of a
 * writer that used them): before anything is allocated, every refcount
 * is rebuilt from the references the metadata makes, written back and
 * synced, and only then is the dirty bit cleared (qcow2/ORDERING.md,
 * "Dirty bit and lazy_refcounts").  Metadata that does not add up (a
 * table overlapping another, a count past the refcount width) is not
 * repaired: the open fails and 'qemu-img check -r all' is suggested.
 *
 * The counts live in layer->repair_counts while the repair runs, so that
 * the refcount code does not hand out, as new refcount blocks, clusters
 * the repair found in use.  A later check.c (qemu-img check) belongs
 * beside this. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Count one reference to every cluster of [off, off+len) (len > 0). */
static int
count_range (struct qcow2_layer *layer, uint64_t off, uint64_t len,
             const char *what)
{
  uint64_t first = off >> layer->cluster_bits;
  uint64_t last;

  if (len == 0 || off > UINT64_MAX - (len - 1))
    return -EINVAL;
  last = (off + len - 1) >> layer->cluster_bits;
  if (last >= layer->repair_nr) {
    qcow2_log (layer->img, QCOW2_LOG_ERROR, "%s: cannot repair: %s at %#"
               PRIx64 " is past the end of the file",
               layer->img->files[layer->file].name, what, off);
    return -EINVAL;
  }
  for (uint64_t c = first; c <= last; c++) {
    if (layer->repair_counts[c] == UINT32_MAX)
      return -EINVAL;
    layer->repair_counts[c]++;
  }
  return 0;
}

/* Count the references made by an L1 table of N entries (host order):
 * its L2 tables and everything they map. */
static int
count_l1 (struct qcow2_layer *layer, const uint64_t *l1, uint64_t n,
          unsigned char *l2)
{
  struct qcow2_image *img = layer->img;
  const bool external = layer->data_file != layer->file;
  int r;

  for (uint64_t i = 0; i < n; i++) {
    uint64_t l2_off = l1[i] & L1E_OFFSET_MASK;

    if (l2_off == 0)
      continue;
    if (!IS_ALIGNED (l2_off, layer->cluster_size))
      return -EINVAL;
    r = count_range (layer, l2_off, layer->cluster_size, "an L2 table");
    if (r < 0)
      return r;
    r = img->io->pread (img->io_opaque, img->files[layer->file].fd, l2,
                        layer->cluster_size, l2_off);
    if (r < 0)
      return r;
    for (uint32_t j = 0; j < layer->l2_entries; j++) {
      uint64_t e = load_be64 (l2 + (size_t) j * layer->l2_entry_size);

      if (e & QCOW_OFLAG_COMPRESSED) {
        uint64_t coff = e & layer->coffset_mask;
        uint64_t nsect = ((e >> layer->csize_shift) & layer->csize_mask) + 1;
        uint64_t len = nsect * QCOW2_COMPRESSED_SECTOR_SIZE
          - (coff & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));

        if (external)
          return -EINVAL;
        r = count_range (layer, coff, len, "a compressed cluster");
      }
      else {
        uint64_t off = e & L2E_OFFSET_MASK;

        if (off == 0 || external)
          continue;
        if (!IS_ALIGNED (off, layer->cluster_size))
          return -EINVAL;
        r = count_range (layer, off, layer->cluster_size, "a data cluster");
      }
      if (r < 0)
        return r;
    }
  }
  return 0;
}

/* Count the snapshot table and each snapshot's L1 table and tree. */
static int
count_snapshots (struct qcow2_layer *layer, unsigned char *l2)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  uint64_t pos = layer->snapshots_offset;
  int r;

  for (uint32_t i = 0; i < layer->nb_snapshots; i++) {
    unsigned char h[QCOW2_SN_HEADER_SIZE];
    uint64_t sl1_off, entry_len;
    uint32_t sl1_size;
    CLEANUP_FREE uint64_t *sl1 = NULL;

    r = img->io->pread (img->io_opaque, fd, h, sizeof h, pos);
    if (r < 0)
      return r;
    sl1_off = load_be64 (h + QCOW2_SN_L1_TABLE_OFFSET);
    sl1_size = load_be32 (h + QCOW2_SN_L1_SIZE);
    /* header-parse.c bounded these sizes when it walked the table. */
    entry_len = QCOW2_SN_HEADER_SIZE
      + (uint64_t) load_be32 (h + QCOW2_SN_EXTRA_DATA_SIZE)
      + load_be16 (h + QCOW2_SN_ID_STR_SIZE)
      + load_be16 (h + QCOW2_SN_NAME_SIZE);
    pos += ROUND_UP (entry_len, 8);

    if (sl1_size == 0)
      continue;
    if ((uint64_t) sl1_size * 8 > QCOW2_MAX_L1_BYTES ||
        !IS_ALIGNED (sl1_off, layer->cluster_size))
      return -EINVAL;
    r = count_range (layer, sl1_off, (uint64_t) sl1_size * 8,
                     "a snapshot L1 table");
    if (r < 0)
      return r;
    sl1 = malloc ((size_t) sl1_size * 8);
    if (sl1 == NULL)
      return -ENOMEM;
    r = img->io->pread (img->io_opaque, fd, sl1, (size_t) sl1_size * 8,
                        sl1_off);
    if (r < 0)
      return r;
    for (uint32_t j = 0; j < sl1_size; j++)
      sl1[j] = load_be64 (&sl1[j]);
    r = count_l1 (layer, sl1, sl1_size, l2);
    if (r < 0)
      return r;
  }
  /* The table itself, once (entries share clusters). */
  return count_range (layer, layer->snapshots_offset,
                      pos - layer->snapshots_offset, "the snapshot table");
}

/* Count every reference the metadata makes: the header, the active L1
 * table and its trees, the snapshots, the bitmaps, the refcount table
 * and its blocks (which must each be counted exactly once).  L2 is a
 * cluster of scratch space.  -EINVAL when the metadata is inconsistent
 * (logged), -errno. */
static int
count_references (struct qcow2_layer *layer, unsigned char *l2)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int r;

  r = count_range (layer, 0, layer->cluster_size, "the header");
  if (r == 0 && layer->l1_size)
    r = count_range (layer, layer->l1_table_offset,
                     (uint64_t) layer->l1_size * 8, "the L1 table");
  if (r == 0)
    r = count_l1 (layer, layer->l1, layer->l1_size, l2);
  if (r == 0 && layer->nb_snapshots)
    r = count_snapshots (layer, l2);
  if (r == 0)
    r = bitmap_count_refs (layer, count_range);
  if (r == 0)
    r = count_range (layer, layer->refcount_table_offset,
                     (uint64_t) layer->refcount_table_clusters
                     << layer->cluster_bits, "the refcount table");
  for (uint64_t i = 0; r == 0 && i < layer->refcount_table_clusters; i++)
    if (layer->repair_counts[(layer->refcount_table_offset
                              >> layer->cluster_bits) + i] != 1) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot repair: the refcount "
                 "table overlaps other data", name);
      r = -EINVAL;
    }
  for (uint64_t t = 0; r == 0 && t < layer->reftable_entries; t++) {
    uint64_t e = layer->reftable[t], off = e & REFT_OFFSET_MASK;

    if (e == 0)
      continue;
    if ((e & REFT_RESERVED_MASK) || !IS_ALIGNED (off, layer->cluster_size) ||
        off >= layer->host_end) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot repair: refcount table "
                 "entry %" PRIu64 " is invalid", name, t);
      r = -EINVAL;
      break;
    }
    r = count_range (layer, off, layer->cluster_size, "a refcount block");
    if (r == 0 && layer->repair_counts[off >> layer->cluster_bits] != 1) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot repair: refcount block "
                 "%" PRIu64 " overlaps other data", name, t);
      r = -EINVAL;
    }
  }
  return r;
}

/* Every count must fit the refcount width: -EINVAL (logged) if not. */
static int
check_count_width (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  const uint64_t maxv = layer->refcount_order == 6 ? UINT64_MAX
    : (UINT64_C (1) << (1u << layer->refcount_order)) - 1;

  for (uint64_t c = 0; c < layer->repair_nr; c++)
    if (layer->repair_counts[c] > maxv) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot repair: cluster %#"
                 PRIx64 " needs refcount %u, more than %u-bit refcounts "
                 "hold", name, c << layer->cluster_bits,
                 layer->repair_counts[c], 1u << layer->refcount_order);
      return -EINVAL;
    }
  return 0;
}

/* Write the counts: every cluster a block covers (zeroing stale counts),
 * and every counted cluster (creating blocks as needed); then write the
 * blocks back and sync. */
static int
write_counts_locked (struct qcow2_layer *layer)
{
  const uint32_t bb = layer->cluster_bits + 3 - layer->refcount_order;
  uint64_t limit;
  int r;

  limit = MAX (layer->repair_nr, layer->reftable_entries << bb);
  for (uint64_t c = 0; c < limit; c++) {
    uint64_t t = c >> bb;
    bool has_block = t < layer->reftable_entries && layer->reftable[t];
    uint64_t v = c < layer->repair_nr ? layer->repair_counts[c] : 0;

    if (!has_block && v == 0) {
      /* Skip the rest of a range without a block. */
      if (c >= layer->repair_nr)
        c = ((t + 1) << bb) - 1;
      continue;
    }
    if (c >= layer->repair_nr && c >= (layer->host_end >> layer->cluster_bits))
      break;                    /* past everything: tables we just grew */
    r = refcount_set_locked (layer, c << layer->cluster_bits, v);
    if (r < 0)
      return r;
  }
  r = refcount_writeback_locked (layer);
  if (r == 0)
    r = sync_layer (layer);
  return r;
}

int
repair_dirty_locked (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  uint64_t file_clusters;
  CLEANUP_FREE unsigned char *l2 = NULL;
  int r;

  qcow2_log (img, QCOW2_LOG_WARNING, "%s: image is dirty (not closed "
             "cleanly); rebuilding its refcounts", name);

  file_clusters = layer->host_end >> layer->cluster_bits;
  /* A compressed stream may run a little past the end of the file. */
  layer->repair_nr = file_clusters + 2;
  layer->repair_counts = calloc (layer->repair_nr, sizeof (uint32_t));
  l2 = malloc (layer->cluster_size);
  if (layer->repair_counts == NULL || l2 == NULL)
    return -ENOMEM;

  r = count_references (layer, l2);
  if (r < 0) {
    if (r == -EINVAL)
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: the dirty image's metadata "
                 "is inconsistent; cannot repair it safely (try "
                 "'qemu-img check -r all')", name);
    return r;
  }
  r = check_count_width (layer);
  if (r == 0)
    r = write_counts_locked (layer);
  if (r < 0)
    return r;
  free (layer->repair_counts);
  layer->repair_counts = NULL;
  layer->repair_nr = 0;
  layer->free_hint = 0;
  r = header_write_incompatible (layer, 0, QCOW2_INCOMPAT_DIRTY);
  if (r < 0)
    return r;
  qcow2_log (img, QCOW2_LOG_WARNING, "%s: refcounts rebuilt, image is "
             "clean", name);
  return 0;
}
