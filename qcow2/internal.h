/* SPDX-License-Identifier: MIT */
/* libqcow2 internals: the in-memory image and layer, and the table of
 * contents of the library, one group per source file.
 *
 *   header (cluster 0) -> l1_table_offset -> L1 table (u64 per entry)
 *        L1 entry -> L2 table (one cluster; u64 entries, or u128 with
 *                     extended L2: entry word + subcluster bitmap)
 *           L2 entry -> data cluster (or compressed stream, or zero)
 *   header -> refcount_table_offset -> refcount table (u64 per entry)
 *        entry -> refcount block (one cluster of 2^refcount_order-bit
 *                 counts, one per host cluster)
 *
 * Locking: each qcow2 layer has one reader-writer lock, 'lock', guarding
 * its L2 cache and every mutable field marked "lock".  Cache hits take it
 * shared; loading or evicting a slice takes it exclusive.  A thread never
 * holds the locks of two layers at once: map() drops a layer's lock before
 * descending into its backing file. */
#ifndef QCOW2_INTERNAL_H
#define QCOW2_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "qcow2/qcow2.h"
#include "qcow2/format.h"

enum layer_format { LAYER_QCOW2, LAYER_RAW };

struct l2_cache;      /* cache.c */

/* One open file of the chain. */
struct qcow2_file {
  int fd;
  char *name;         /* path as opened (resolved) */
  uint64_t size;      /* size at open time */
};

struct qcow2_layer {
  struct qcow2_image *img;     /* the chain this layer belongs to */
  unsigned depth;              /* 1 = top */
  enum layer_format format;
  unsigned file;               /* metadata file (raw: the data) */
  unsigned data_file;          /* == file unless external data file */
  uint64_t size;               /* virtual size (raw: file size) */
  struct qcow2_layer *backing; /* NULL at the bottom */

  /* Header, validated at open; constant afterwards. */
  uint32_t version;
  uint32_t cluster_bits;
  uint32_t cluster_size;
  uint64_t incompatible, compatible, autoclear;
  uint32_t refcount_order;
  uint32_t header_length;
  uint8_t compression_type;    /* QCOW2_COMPRESSION_* */
  bool extended_l2;            /* 128-bit L2 entries, 32 subclusters */
  bool data_file_raw;
  uint32_t l2_entry_size;      /* 8 or 16 */
  uint32_t l2_entries;         /* entries per L2 table */
  uint32_t subcluster_bits;    /* cluster_bits - 5 with extended L2 */
  uint32_t csize_shift, csize_mask;   /* compressed descriptor layout */
  uint64_t coffset_mask;
  uint64_t refcount_table_offset;
  uint32_t refcount_table_clusters;
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  char *backing_name;          /* as stored in the header, or NULL */
  char *backing_format;        /* from the extension, or NULL */
  char *data_file_name;        /* external data file extension, or NULL */

  /* L1 table, loaded whole at open, host byte order. */
  uint64_t *l1;
  uint32_t l1_size;
  uint64_t l1_table_offset;

  /* Created with preallocation=metadata (detected as QEMU does): its
   * allocated clusters may be host holes that read as zeros. */
  bool metadata_prealloc;

  pthread_rwlock_t lock;
  struct l2_cache *l2_cache;   /* lock */
};

struct qcow2_image {
  const struct qcow2_io_ops *io;
  void *io_opaque;
  qcow2_log_fn log;
  void *log_opaque;
  bool writable;

  struct qcow2_file *files;    /* constant after open */
  size_t nr_files;
  struct qcow2_layer **layers; /* layers[0] is the top; constant */
  unsigned nr_layers;

  atomic_bool corrupt;         /* set once, never cleared */
};

/* ---- open.c: header parsing, validation, backing chain ---------------- */

/* (file-local) */

/* ---- refcount.c: reading refcounts ----------------------------------- */

/* Decide layer->metadata_prealloc from the refcounts and the host file's
 * allocated size.  Returns 0 or -errno (a refcount block that cannot be
 * read); an invalid refcount table entry just ends the scan. */
int refcount_detect_metadata_prealloc (struct qcow2_layer *layer);

/* ---- alloc.c, refcount.c, l1.c, header.c: the allocator --------------
 * (engineer "qcow2-alloc"; every _locked function is called with
 * layer->lock held exclusively.  Ordering rules: qcow2/ORDERING.md.) */

/* Allocate between MIN and MAX host clusters, contiguous, in LAYER's
 * metadata file (refcounts 0 -> 1, in the refcount cache).  Sets *HOST
 * and *GOT.  Never returns a cluster whose freeing is not yet durable or
 * that metadata in memory still references.  -ENOSPC, -EIO, -errno. */
int alloc_clusters_locked (struct qcow2_layer *layer, uint64_t min,
                           uint64_t max, uint64_t *host, uint64_t *got);

/* Drop one reference to each of the N clusters at HOST.  The decrement
 * is deferred: it is applied by refcount_flush_done_locked() once the
 * metadata that dropped the reference is durable. */
int refcount_release_locked (struct qcow2_layer *layer, uint64_t host,
                             uint64_t n);

/* Add DELTA (may be negative, applied at once: only for references not
 * yet visible on disk, e.g. undoing a failed allocation) to the refcount
 * of each of the N clusters at HOST. */
int refcount_adjust_locked (struct qcow2_layer *layer, uint64_t host,
                            uint64_t n, int64_t delta);

/* Current refcount of the cluster at HOST. */
int refcount_get_locked (struct qcow2_layer *layer, uint64_t host,
                         uint64_t *refcount);

/* Write dirty refcount blocks (and a grown refcount table) to the file,
 * without syncing. */
int refcount_writeback_locked (struct qcow2_layer *layer);

/* Called by qcow2_flush after everything up to now is durable: apply the
 * deferred decrements (the clusters become reusable once those are
 * written back in turn). */
int refcount_flush_done_locked (struct qcow2_layer *layer);

/* Make the L1 table hold at least MIN_ENTRIES entries (new table, sync,
 * switch the header fields, sync, free the old one). */
int l1_grow_locked (struct qcow2_layer *layer, uint64_t min_entries);

/* Write L1 entry INDEX (from layer->l1) to the file, without syncing. */
int l1_write_entry_locked (struct qcow2_layer *layer, uint32_t index);

/* Writable open and clean close: image lock, autoclear bits, dirty-bit
 * repair (open), dirty bit cleared after a final flush (close). */
int header_open_writable (struct qcow2_layer *layer);
int header_close_writable (struct qcow2_layer *layer);
/* Mark the image dirty before the first metadata change when
 * lazy_refcounts is on (no-op otherwise or when already dirty). */
int header_mark_dirty_locked (struct qcow2_layer *layer);

/* ---- write.c, zero.c, flush.c: the write path ------------------------
 * (engineer "qcow2-write") */

/* Write back LAYER's dirty L2 slices (cache.c), without syncing. */
int l2_cache_writeback_locked (struct qcow2_layer *layer);

/* ---- corrupt.c: the one path for corruption found at run time -------- */

/* Log "corruption in LAYER: <message>", mark the image corrupt and return
 * -EIO, so callers can 'return qcow2_corrupt (...)'. */
int qcow2_corrupt (struct qcow2_layer *layer, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* Send a formatted message to the image's log callback. */
void qcow2_log (struct qcow2_image *img, enum qcow2_log_level level,
                const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* ---- cache.c: the L2 slice cache -------------------------------------- */

/* Create/destroy LAYER's cache, holding at most CACHE_SIZE bytes of L2
 * slices (rounded to whole slices, at least a few). */
int l2_cache_create (struct qcow2_layer *layer, uint64_t cache_size);
void l2_cache_destroy (struct qcow2_layer *layer);

/* L2 entries in one cache slice (a slice is min(cluster_size, 4096)
 * bytes of an L2 table). */
uint32_t l2_cache_slice_entries (const struct qcow2_layer *layer);

/* Find slice SLICE_INDEX of the L2 table named by L1 entry L1_INDEX
 * (validated here: corruption -> -EIO through qcow2_corrupt).  The caller
 * holds layer->lock, exclusive iff *EXCLUSIVE.  On a miss with the lock
 * shared, this drops it, takes it exclusive and sets *EXCLUSIVE, then
 * loads the slice.  Returns 0 with *SLICE pointing at the slice's raw
 * (big-endian) entries, valid until the lock is released, or *SLICE ==
 * NULL when the L1 entry has no L2 table (index past the L1 table too);
 * -EIO on corruption; -errno on read errors. */
int l2_cache_get_locked (struct qcow2_layer *layer, uint64_t l1_index,
                         uint32_t slice_index, bool *exclusive,
                         const uint8_t **slice);

/* ---- map.c, compress.c, sync.c: see qcow2.h --------------------------- */

#endif /* QCOW2_INTERNAL_H */
