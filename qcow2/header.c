/* SPDX-License-Identifier: MIT */
/* The header of a writable layer: QEMU-compatible image locks, the
 * autoclear bits we don't maintain, the dirty bit (set for lazy_refcounts
 * images while open, cleared on a clean close) and the repair of an image
 * left dirty: its refcounts are rebuilt from every reference before
 * anything is allocated.  Writes of the incompatible-features field go
 * through one function and one mutex, so that the corrupt bit (set by
 * qcow2_corrupt without a layer lock) is never lost to a concurrent
 * update of the dirty bit.  Ordering: qcow2/ORDERING.md. */
#include <config.h>

#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* ---- Image locking -----------------------------------------------------
 *
 * QEMU (block/file-posix.c) takes OFD read locks on single bytes: byte
 * 100 + bit for each permission it holds, byte 200 + bit for each
 * permission it does not let others have.  A new user tests with a write
 * lock that nobody holds byte 200 + bit of the permissions it wants nor
 * byte 100 + bit of the permissions it denies.  Permission bits (QEMU's
 * BLK_PERM_*): */
#define PERM_CONSISTENT_READ 0x1
#define PERM_WRITE           0x2
#define PERM_WRITE_UNCHANGED 0x4
#define PERM_RESIZE          0x8
#define PERM_ALL             0xf
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

static const char *
perm_name (unsigned bit)
{
  switch (bit) {
  case PERM_CONSISTENT_READ: return "consistent read";
  case PERM_WRITE: return "write";
  case PERM_WRITE_UNCHANGED: return "write unchanged";
  default: return "resize";
  }
}

static int
ofd_lock (int fd, short type, off_t start, int cmd, struct flock *out)
{
  struct flock fl = {
    .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1,
  };

  if (fcntl (fd, cmd, &fl) == -1)
    return -errno;
  if (out)
    *out = fl;
  return 0;
}

/* Check that no other user holds lock byte OFF of FD, which stands for
 * permission BIT (WHAT: "" for a permission held, "shared " for one
 * denied, as QEMU words the message).  -EBUSY (logged) when one does. */
static int
check_byte_free (struct qcow2_image *img, int fd, const char *name,
                 off_t off, const char *what, unsigned bit)
{
  struct flock fl = { .l_type = F_UNLCK };   /* filled by F_OFD_GETLK */
  int r;

  r = ofd_lock (fd, F_WRLCK, off, F_OFD_GETLK, &fl);
  if (r < 0)
    return r;
  if (fl.l_type != F_UNLCK) {
    if (img->open_error) {
      struct qcow2_open_error *e = img->open_error;

      e->kind = QCOW2_OPEN_ERROR_LOCK;
      e->err = EBUSY;
      e->depth = img->nr_layers;
      e->perm = perm_name (bit);
      e->shared = what[0] != '\0';
      snprintf (e->file, sizeof e->file, "%s", name);
    }
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: failed to get %s\"%s\" lock: "
               "is another process using the image?", name, what,
               perm_name (bit));
    return -EBUSY;
  }
  return 0;
}

/* Take the lock bytes of FD as QEMU would for a user holding PERM and
 * sharing SHARED, then check nobody conflicts.  NAME is for the message.
 * -EBUSY (logged) on conflict. */
static int
lock_file (struct qcow2_image *img, int fd, const char *name,
           unsigned perm, unsigned shared)
{
  unsigned bit;
  int r;

  for (bit = 1; bit & PERM_ALL; bit <<= 1) {
    unsigned i = __builtin_ctz (bit);

    if (perm & bit) {
      r = ofd_lock (fd, F_RDLCK, LOCK_PERM_BASE + i, F_OFD_SETLK, NULL);
      if (r < 0)
        goto lock_failed;
    }
    if (!(shared & bit)) {
      r = ofd_lock (fd, F_RDLCK, LOCK_SHARED_BASE + i, F_OFD_SETLK, NULL);
      if (r < 0)
        goto lock_failed;
    }
  }
  for (bit = 1; bit & PERM_ALL; bit <<= 1) {
    unsigned i = __builtin_ctz (bit);

    r = 0;
    if (perm & bit)
      r = check_byte_free (img, fd, name, LOCK_SHARED_BASE + i, "", bit);
    if (r == 0 && !(shared & bit))
      r = check_byte_free (img, fd, name, LOCK_PERM_BASE + i, "shared ",
                           bit);
    if (r < 0)
      return r;
  }
  return 0;

 lock_failed:
  /* File systems without OFD locks: QEMU goes on without locking too. */
  if (r == -ENOTSUP || r == -ENOLCK || r == -EINVAL) {
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: cannot lock the image (%s); "
               "going on without", name, strerror (-r));
    return 0;
  }
  return r;
}

int
header_lock_layer (struct qcow2_layer *layer, bool writable)
{
  struct qcow2_image *img = layer->img;
  /* Like QEMU for a qcow2 file: a writer holds consistent read, write
   * and resize; every user (reader too) denies others write and resize,
   * since the metadata must not change under it. */
  unsigned perm = PERM_CONSISTENT_READ | (writable ? PERM_WRITE |
                                          PERM_RESIZE : 0);
  unsigned shared = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE);
  int r;

  /* A raw file, as qemu-nbd locks it: the served image holds consistent
   * read (and write when writable) and denies only resize, since the
   * export's size is fixed; a raw backing file holds consistent read
   * and denies nothing. */
  if (layer->format == LAYER_RAW) {
    perm = PERM_CONSISTENT_READ | (writable ? PERM_WRITE : 0);
    shared = layer->depth == 1 ? PERM_ALL & ~PERM_RESIZE : PERM_ALL;
  }

  /* Only real file descriptors can carry OFD locks. */
  if (img->io != &qcow2_posix_io || img->no_locks)
    return 0;
  r = lock_file (img, img->files[layer->file].fd,
                 img->files[layer->file].name, perm, shared);
  if (r == 0 && layer->data_file != layer->file)
    r = lock_file (img, img->files[layer->data_file].fd,
                   img->files[layer->data_file].name, perm, shared);
  if (r == 0)
    layer->image_locked = true;
  return r;
}

/* ---- Header fields -----------------------------------------------------*/

/* Serialises writes of the incompatible-features field (and of
 * layer->incompatible), including the one from qcow2_corrupt, which runs
 * with or without a layer lock held. */
static pthread_mutex_t incompat_lock = PTHREAD_MUTEX_INITIALIZER;

int
header_write_incompatible (struct qcow2_layer *layer, uint64_t set,
                           uint64_t clear)
{
  struct qcow2_image *img = layer->img;
  unsigned char b[8];
  uint64_t v;
  int r;

  if (layer->version < 3)
    return 0;                   /* v2 has no feature fields */
  {
    LOCK_FOR_SCOPE (&incompat_lock);
    v = (layer->incompatible | set) & ~clear;
    if (atomic_load (&img->corrupt))
      v |= QCOW2_INCOMPAT_CORRUPT;
    store_be64 (b, v);
    r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd, b,
                         sizeof b, QCOW2_HDR_INCOMPATIBLE_FEATURES);
    if (r < 0)
      return r;
    layer->incompatible = v;
  }
  return img->io->flush (img->io_opaque, img->files[layer->file].fd);
}

int
header_mark_dirty_locked (struct qcow2_layer *layer)
{
  bool dirty;

  if (!(layer->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS))
    return 0;
  {
    /* incompatible is guarded by incompat_lock, not layer->lock:
     * qcow2_corrupt writes it from threads holding the layer lock only
     * shared. */
    LOCK_FOR_SCOPE (&incompat_lock);
    dirty = layer->incompatible & QCOW2_INCOMPAT_DIRTY;
  }
  if (dirty)
    return 0;
  return header_write_incompatible (layer, QCOW2_INCOMPAT_DIRTY, 0);
}

/* ---- Repair of a dirty image ------------------------------------------- */

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
    /* open.c bounded these sizes when it walked the table. */
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

/* Rebuild every refcount of a dirty image (lazy refcounts, or a crash of
 * a writer that used them) from the references, write them back, sync,
 * clear the dirty bit, sync. */
static int
repair_dirty (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  const uint32_t bb = layer->cluster_bits + 3 - layer->refcount_order;
  const uint64_t maxv = layer->refcount_order == 6 ? UINT64_MAX
    : (UINT64_C (1) << (1u << layer->refcount_order)) - 1;
  uint64_t file_clusters, limit;
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
  if (r < 0) {
    if (r == -EINVAL)
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: the dirty image's metadata "
                 "is inconsistent; cannot repair it safely (try "
                 "'qemu-img check -r all')", name);
    return r;
  }
  for (uint64_t c = 0; c < layer->repair_nr; c++)
    if (layer->repair_counts[c] > maxv) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot repair: cluster %#"
                 PRIx64 " needs refcount %u, more than %u-bit refcounts "
                 "hold", name, c << layer->cluster_bits,
                 layer->repair_counts[c], 1u << layer->refcount_order);
      return -EINVAL;
    }

  /* Write the counts: every cluster a block covers (zeroing stale
   * counts), and every counted cluster (creating blocks as needed). */
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

/* ---- Open and close ----------------------------------------------------*/

static int open_writable (struct qcow2_layer *layer);

int
header_open_writable (struct qcow2_layer *layer)
{
  int r = open_writable (layer);

  /* Without its allocator, a layer that failed to open is never flushed
   * or marked clean by qcow2_close. */
  if (r < 0)
    refcount_destroy (layer);
  return r;
}

static int
open_writable (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int r;

  r = header_lock_layer (layer, true);
  if (r < 0)
    return r;
  r = refcount_init (layer, 0);
  if (r < 0) {
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: reading the refcount table: %s",
               name, strerror (-r));
    return r;
  }

  if (layer->incompatible & QCOW2_INCOMPAT_DIRTY) {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = repair_dirty (layer);
    free (layer->repair_counts);
    layer->repair_counts = NULL;
    layer->repair_nr = 0;
    if (r < 0) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: repairing the dirty image "
                 "failed: %s", name, strerror (-r));
      return r;
    }
  }

  /* Autoclear bits: keep only those we maintain (data_file_raw, and
   * bitmaps: bitmap.c keeps them). */
  if (layer->version >= 3 &&
      (layer->autoclear & ~(QCOW2_AUTOCLEAR_DATA_FILE_RAW |
                            QCOW2_AUTOCLEAR_BITMAPS))) {
    unsigned char b[8];
    uint64_t v = layer->autoclear & (QCOW2_AUTOCLEAR_DATA_FILE_RAW |
                                     QCOW2_AUTOCLEAR_BITMAPS);

    store_be64 (b, v);
    r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd, b,
                         sizeof b, QCOW2_HDR_AUTOCLEAR_FEATURES);
    if (r == 0)
      r = img->io->flush (img->io_opaque, img->files[layer->file].fd);
    if (r < 0) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: clearing autoclear feature "
                 "bits: %s", name, strerror (-r));
      return r;
    }
    layer->autoclear = v;
  }

  /* lazy_refcounts: dirty while open (ORDERING.md). */
  {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = header_mark_dirty_locked (layer);
  }
  if (r < 0) {
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: setting the dirty bit: %s",
               name, strerror (-r));
    return r;
  }
  /* Persistent bitmaps: in use on disk while open (ORDERING.md). */
  return bitmap_open_writable (layer);
}

int
header_close_writable (struct qcow2_layer *layer)
{
  int r = 0;

  if ((layer->incompatible & QCOW2_INCOMPAT_DIRTY) &&
      !atomic_load (&layer->img->corrupt))
    r = header_write_incompatible (layer, 0, QCOW2_INCOMPAT_DIRTY);
  /* The OFD locks go with the last descriptor of each file. */
  return r;
}
