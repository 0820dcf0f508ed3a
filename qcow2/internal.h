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
 * shared; loading or evicting a slice, and every metadata change, take it
 * exclusive.  A thread never holds the locks of two layers at once:
 * map() drops a layer's lock before descending into its backing file.
 * Lock order: layer->lock, then either header.c's incompat_lock or
 * inflight.c's inflight_state.lock (both leaf locks).  Every field below says
 * what guards it; "const" means set during qcow2_open (one thread) and
 * never changed afterwards. */
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

struct l2_cache;              /* l2-cache.c */
struct refcount_cache;        /* refcount.c */
struct release_list;          /* release.c */
struct inflight_state;        /* inflight.c */
struct inflight;              /* inflight.c */
struct bitmap_dir;            /* bitmap.c */

/* One open file of the chain. */
struct qcow2_file {
  int fd;                     /* const */
  char *name;                 /* const: path as opened (resolved) */
  bool writable;              /* const: opened for writing */
  uint64_t size;              /* size at open time; const, except the
                               * metadata file of a writable top layer:
                               * grown by refcount_note_end_locked under
                               * that layer's lock (exclusive), so the
                               * L2 offset checks of l2-cache.c accept new
                               * tables */
};

struct qcow2_layer {
  struct qcow2_image *img;     /* const: the chain this layer belongs to */
  unsigned depth;              /* const: 1 = top */
  enum layer_format format;    /* const */
  unsigned file;               /* const: metadata file (raw: the data) */
  unsigned data_file;          /* const: == file unless external data file */
  uint64_t size;               /* const: virtual size (raw: file size) */
  struct qcow2_layer *backing; /* const: NULL at the bottom */

  /* Header, validated at open; const unless marked otherwise (the
   * marked ones change only in a writable top layer). */
  uint32_t version;
  uint32_t cluster_bits;
  uint32_t cluster_size;
  uint64_t incompatible;       /* header.c's incompat_lock (qcow2_corrupt
                                * sets a bit holding no layer lock) */
  uint64_t compatible;
  uint64_t autoclear;          /* const once the writable open, still
                                * inside qcow2_open, has cleared bits */
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
  uint64_t refcount_table_offset;     /* lock (refcount.c grows it) */
  uint32_t refcount_table_clusters;   /* lock */
  uint32_t nb_snapshots;
  uint64_t snapshots_offset;
  /* Bitmaps extension; nb_bitmaps is 0 without one, or when it is stale
   * (autoclear bit 0 clear) and ignored. */
  uint32_t nb_bitmaps;
  uint64_t bitmap_dir_offset, bitmap_dir_size;
  struct bitmap_dir *bitmaps;  /* bitmap.c: the parsed directory (NULL
                                * without bitmaps); its fields say what
                                * guards them */
  char *backing_name;          /* as stored in the header, or NULL */
  char *backing_format;        /* from the extension, or NULL */
  char *data_file_name;        /* external data file extension, or NULL */

  /* L1 table, loaded whole at open, host byte order; l1.c grows it and
   * write.c sets entries in a writable layer. */
  uint64_t *l1;                /* lock */
  uint32_t l1_size;            /* lock */
  uint64_t l1_table_offset;    /* lock */

  /* const: created with preallocation=metadata (detected as QEMU does):
   * its allocated clusters may be host holes that read as zeros. */
  bool metadata_prealloc;

  pthread_rwlock_t lock;
  struct l2_cache *l2_cache;   /* const pointer; its contents: lock */
  /* const pointer (qcow2 layers; only the top one's is used); its
   * contents: its own lock, see inflight.c */
  struct inflight_state *inflight;

  /* alloc.c, refcount.c, l1.c, header.c: the allocator of a writable
   * top layer (all NULL/0 in read-only layers).  Guarded by 'lock',
   * exclusive to change. */
  struct refcount_cache *refcount_cache;  /* lock */
  uint64_t *reftable;          /* lock: refcount table, host order */
  uint64_t reftable_entries;   /* lock */
  struct release_list *pending;           /* lock: deferred decrements */
  uint64_t host_end;           /* lock: bytes; no cluster at or past it is
                                * in use (file end at open, then grown) */
  uint64_t free_hint;          /* lock: cluster index to search from */
  uint64_t avoid_lo, avoid_hi; /* lock: clusters an allocation in progress
                                * is taking: new refcount metadata goes
                                * elsewhere */
  /* compress-write.c: where the next compressed stream goes, inside the
   * host cluster the last one ended in (0: start a new cluster);
   * refcount.c resets it when that cluster's refcount drops to 0. */
  uint64_t free_byte_offset;   /* lock */
  /* Set anew (with the lock held exclusively) whenever host bytes are
   * given to a compressed stream, before any L2 entry names them: a
   * cache of decompressed clusters keyed by host offset keys by this
   * too (qcow2_extent.stream_gen).  Values come from stream_gen_next,
   * unique in the process, so a layer opened where a closed one was in
   * memory never matches what was cached of the old one. */
  _Atomic uint64_t stream_gen;
  uint32_t *repair_counts;     /* repair.c, inside qcow2_open */
  uint64_t repair_nr;          /* (one thread); NULL/0 afterwards */
  bool image_locked;           /* const: header.c took OFD lock bytes */
};

struct qcow2_image {
  const struct qcow2_io_ops *io;  /* const */
  void *io_opaque;                /* const */
  qcow2_log_fn log;               /* const */
  void *log_opaque;               /* const */
  bool writable;                  /* const */
  bool punch_discarded;           /* const: qcow2_open_opts */

  struct qcow2_file *files;    /* const array (see qcow2_file.size) */
  size_t nr_files;             /* const */
  struct qcow2_layer **layers; /* const: layers[0] is the top */
  unsigned nr_layers;          /* const */

  atomic_bool corrupt;         /* atomic: set once, never cleared */
  /* atomic: 0, or the -errno of the first sync that failed (corrupt.c's
   * sync_failed); set once, never cleared.  From then on the image is
   * failed: no write, zeroing, discard or flush succeeds. */
  atomic_int sync_error;

  /* const: the window qcow2_open_opts asked for.  The public calls add
   * 'window' to the offsets they take and subtract it from those they
   * return; everything inside the library works on disk offsets. */
  uint64_t window;
  uint64_t view_size;

  bool no_locks;                  /* const: qcow2_open_opts.no_locks */

  /* qcow2_open_opts.error, or NULL; only used inside qcow2_open. */
  struct qcow2_open_error *open_error;

  /* const: qcow2_open_opts.wakeup, called by inflight.c when an in-flight
   * record someone got QCOW2_BLOCKED on ends. */
  void (*wakeup) (void *opaque);
  void *wakeup_opaque;
};

/* Every function named _locked is called with layer->lock held: the
 * ones that change metadata with it exclusive, following
 * qcow2/ORDERING.md. */

/* ---- io.c: qcow2_posix_io, the default I/O ops (qcow2.h) ------------- */

/* ---- log.c: messages to the caller's log callback -------------------- */

/* Send a formatted message to the image's log callback. */
void qcow2_log (struct qcow2_image *img, enum qcow2_log_level level,
                const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* The same, PREFIX first, from a va_list; one line of at most 1023
 * bytes (longer ones are cut). */
void qcow2_vlog (struct qcow2_image *img, enum qcow2_log_level level,
                 const char *prefix, const char *fmt, va_list ap)
  __attribute__ ((format (printf, 4, 0)));

/* Log "<file of LAYER>: <message>" as an error and return ERR, so
 * callers can 'return qcow2_error (...)'. */
int qcow2_error (struct qcow2_layer *layer, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Log the message as an error and return ERR, so open-time checks can
 * 'return qcow2_fail (img, -EINVAL, ...)'. */
int qcow2_fail (struct qcow2_image *img, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Copy S into BUF (of size N) replacing bytes that could upset a
 * terminal or a log parser (names come from the file); returns BUF. */
const char *qcow2_printable (const char *s, char *buf, size_t n);

/* ---- corrupt.c: the one path for corruption; the sync and its failure */

/* Log "<file of LAYER>: corruption: <message>", mark the image corrupt
 * and return -EIO, so callers can 'return qcow2_corrupt (...)'. */
int qcow2_corrupt (struct qcow2_layer *layer, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* ORDERING.md's "sync": flush every file of LAYER (metadata file and
 * external data file).  0 or -errno; the first failure puts the image
 * into its failed state (qcow2_sync_error), logs why, and marks the
 * image dirty on disk so the next read-write open rebuilds its
 * refcounts; after it no sync is even tried (-EIO).  May be called
 * holding the layer lock (takes only header.c's mutex). */
int sync_layer (struct qcow2_layer *layer);

/* ---- header-parse.c: a qcow2 layer's header, checked ----------------- */

/* Read and check the header of qcow2 layer L (its file open, named NAME
 * for messages) into L: the fixed header, the rest of cluster 0 (backing
 * file name and format, header extensions, bitmaps), the feature bits
 * (WRITABLE: refuse a corrupt image), the L2 entry layout, and the place
 * of every table it names.  Sets *L1_BYTES, the L1 table's size.  0, or
 * -EINVAL/-ENOTSUP/-errno, logged. */
int header_parse (struct qcow2_image *img, struct qcow2_layer *l,
                  const char *name, bool writable, uint64_t *l1_bytes);

/* ---- open.c: opening the files, the backing chain, the writable open -- */

/* Resolve NAME, found in the image at REFERRER (a backing file or
 * external data file name), as QEMU does: absolute names as they are,
 * relative ones against REFERRER's directory.  NULL (errno) when out of
 * memory. */
char *open_resolve_name (const char *referrer, const char *name);

/* A stream generation never handed out before in this process
 * (qcow2_layer.stream_gen): a new layer takes one, and compressed
 * writes take another when they change a layer's streams. */
uint64_t stream_gen_next (void);

/* ---- refcount.c: refcounts, their cache, the end of the file -------- */

/* Decide layer->metadata_prealloc from the refcounts and the host file's
 * allocated size.  Returns 0 or -errno (a refcount block that cannot be
 * read); an invalid refcount table entry just ends the scan. */
int refcount_detect_metadata_prealloc (struct qcow2_layer *layer);

/* Set up / tear down the refcount machinery of a writable layer: load
 * the refcount table, create the refcount block cache (CACHE_SIZE bytes,
 * 0: default).  Destroy does not write anything back. */
int refcount_init (struct qcow2_layer *layer, uint64_t cache_size);
void refcount_destroy (struct qcow2_layer *layer);

/* Record that the file now extends to at least END bytes: new metadata
 * (here, l2.c) or clusters handed out (alloc.c) past the old end. */
void refcount_note_end_locked (struct qcow2_layer *layer, uint64_t end);

/* Current refcount of the cluster at HOST. */
int refcount_get_locked (struct qcow2_layer *layer, uint64_t host,
                         uint64_t *refcount);

/* Make sure a refcount block covers host cluster CLUSTER (by index):
 * create one inside its own range, or grow the refcount table.  Returns
 * 0 when it already existed, 1 when new metadata was placed (on clusters
 * that were free until now: a caller scanning for free clusters must
 * look again), -errno. */
int refcount_ensure_block_locked (struct qcow2_layer *layer,
                                  uint64_t cluster);

/* The largest refcount LAYER's refcount width holds. */
uint64_t refcount_max (const struct qcow2_layer *layer);

/* Add DELTA (may be negative, applied at once: only for references not
 * yet visible on disk, e.g. undoing a failed allocation) to the refcount
 * of each of the N clusters at HOST. */
int refcount_adjust_locked (struct qcow2_layer *layer, uint64_t host,
                            uint64_t n, int64_t delta);

/* Set the refcount of the cluster at HOST to VALUE (repair only);
 * creates refcount blocks (and grows the table) as needed.  -EINVAL
 * when VALUE does not fit the refcount width. */
int refcount_set_locked (struct qcow2_layer *layer, uint64_t host,
                         uint64_t value);

/* Write dirty refcount blocks (and a grown refcount table) to the file,
 * without syncing. */
int refcount_writeback_locked (struct qcow2_layer *layer);

/* ---- release.c: deferred decrements, host space given back ---------- */

/* Set up / tear down LAYER's list of deferred decrements (open.c, beside
 * refcount_init and refcount_destroy: release.c stands on refcount.c,
 * which knows nothing of it). */
int release_init (struct qcow2_layer *layer);
void release_destroy (struct qcow2_layer *layer);

/* Drop one reference to each of the N clusters at HOST.  The decrement
 * is deferred: release_commit_locked() applies it once the metadata
 * that dropped the reference is durable.  With GIVE_BACK (the guest
 * discarded the data: TRIM, or zeroing that may unmap), the host bytes
 * are punched out of the file as soon as no reference is left to them:
 * now for clusters whose only reference this was, at the commit for
 * the others. */
int release_clusters_locked (struct qcow2_layer *layer, uint64_t host,
                             uint64_t n, bool give_back);

/* So many decrements wait that the caller should flush (qcow2_flush)
 * once it has dropped the lock, to bound their memory. */
bool release_backlog_locked (const struct qcow2_layer *layer);

/* Optional, for a flush that drops the lock around its syncs: mark the
 * decrements recorded so far as the ones the coming L2 writeback makes
 * durable; release_commit_locked() then applies only those (without a
 * begin it applies every pending decrement).  See ORDERING.md. */
void release_commit_begin_locked (struct qcow2_layer *layer);

/* Called by qcow2_flush after everything up to now is durable: apply the
 * deferred decrements (the clusters become reusable once those are
 * written back in turn) and punch what they free where asked. */
int release_commit_locked (struct qcow2_layer *layer);

/* ---- l2-cache.c: the L2 slice cache ---------------------------------- */

/* Create/destroy LAYER's cache, holding at most CACHE_SIZE bytes of L2
 * slices (rounded to whole slices, at least a few). */
int l2_cache_create (struct qcow2_layer *layer, uint64_t cache_size);
void l2_cache_destroy (struct qcow2_layer *layer);

/* L2 entries in one cache slice (a slice is min(cluster_size, 4096)
 * bytes of an L2 table). */
uint32_t l2_cache_slice_entries (const struct qcow2_layer *layer);

/* Write back LAYER's dirty L2 slices, without syncing. */
int l2_cache_writeback_locked (struct qcow2_layer *layer);

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

/* Like l2_cache_get_locked, with the lock held exclusively, but the slice
 * is writable and marked dirty: change entries in it (big-endian) before
 * releasing the lock.  Only for tables whose L1 entry has COPIED. */
int l2_cache_get_dirty_locked (struct qcow2_layer *layer, uint64_t l1_index,
                               uint32_t slice_index, uint8_t **slice);

/* Drop every cached slice of the L2 table at HOST, dirty or not: a new
 * table is about to be written there. */
void l2_cache_forget_table_locked (struct qcow2_layer *layer, uint64_t host);

/* ---- map.c: qcow2_map (qcow2.h) -------------------------------------- */

/* qcow2_map on disk offsets (no window), for the library's own use. */
int map_image (struct qcow2_image *img, uint64_t offset, uint64_t length,
               struct qcow2_extent *ext, size_t max, size_t *n);

/* ---- compress.c: qcow2_decompress (qcow2.h), and compression --------- */

/* Compress the cluster IN (cluster_size bytes) of LAYER as QEMU does
 * into OUT (room for cluster_size - 1 bytes).  Returns the stream's
 * length (> 0); -ENOSPC when it would not be shorter than the cluster
 * (QEMU then writes the cluster uncompressed); -ENOMEM; -EIO when the
 * compressor failed otherwise (QEMU fails the write). */
int compress_cluster (const struct qcow2_layer *layer, const void *in,
                      void *out);

/* ---- compress-write.c: compressed writes (qcow2.h) ------------------- */

/* qcow2_write_compressed_begin for a caller already holding the
 * in-flight record over the clusters of the range (qcow2_zero): DATA
 * NULL writes zeros.  Flags: QCOW2_DETECT_ZEROES, QCOW2_MAY_UNMAP. */
int write_compressed_held (struct qcow2_image *img, uint64_t offset,
                           uint64_t length, const void *data, unsigned flags,
                           struct qcow2_write **wp,
                           const struct qcow2_seg **segs, size_t *nsegs);


/* ---- sync-io.c: synchronous reads of the guest view, segment writes -- */

/* qcow2_pread on disk offsets (no window), for the library's own use:
 * the guest view through the whole chain. */
int sync_read_disk (struct qcow2_image *img, void *buf, size_t len,
                    uint64_t offset);

/* Perform SEGS synchronously through the io ops; GUEST segments come from
 * DATA (for qcow2_pwrite and zero-held.c). */
int sync_write_segs (struct qcow2_image *img, const struct qcow2_seg *segs,
                     size_t nsegs, const void *data);

/* ---- alloc.c: the cluster allocator ---------------------------------- */

/* Allocate between MIN and MAX host clusters, contiguous, in LAYER's
 * metadata file (refcounts 0 -> 1, in the refcount cache).  Sets *HOST
 * and *GOT.  Never returns a cluster whose freeing is not yet durable or
 * that metadata in memory still references.  -ENOSPC, -EIO, -errno. */
int alloc_clusters_locked (struct qcow2_layer *layer, uint64_t min,
                           uint64_t max, uint64_t *host, uint64_t *got);

/* ---- l1.c: the L1 table of a writable layer -------------------------- */

/* Write L1 entry INDEX (from layer->l1) to the file, without syncing. */
int l1_write_entry_locked (struct qcow2_layer *layer, uint32_t index);

/* Make the L1 table hold at least MIN_ENTRIES entries (new table, sync,
 * switch the header fields, sync, free the old one). */
int l1_grow_locked (struct qcow2_layer *layer, uint64_t min_entries);

/* ---- header.c: image locks, feature bits, dirty bit ----------------- */

/* Take QEMU-compatible OFD image locks on LAYER's files (writer or
 * reader permissions, as QEMU takes them for the layer's format and
 * place in the chain); -EBUSY, logged with QEMU's wording, when another
 * process conflicts.  open.c's writable open does it for a qcow2 top
 * layer. */
int header_lock_layer (struct qcow2_layer *layer, bool writable);

/* Set and clear bits of the on-disk incompatible-features field (v3;
 * no-op on v2) with one write and a sync.  Takes no layer lock (a
 * mutex of its own), so qcow2_corrupt may call it. */
int header_write_incompatible (struct qcow2_layer *layer, uint64_t set,
                               uint64_t clear);

/* Mark the image dirty before the first metadata change when
 * lazy_refcounts is on (no-op otherwise or when already dirty). */
int header_mark_dirty_locked (struct qcow2_layer *layer);

/* Clear the autoclear bits we do not maintain, with one header write and
 * a sync (writable open).  0 or -errno, logged. */
int header_clear_autoclear (struct qcow2_layer *layer);

/* Clean close: the dirty bit cleared after a final flush. */
int header_close_writable (struct qcow2_layer *layer);

/* ---- repair.c: the repair of a dirty image ---------------------------- */

/* Rebuild every refcount of a dirty image from the references, write
 * them back, sync, then clear the dirty bit (with its own sync).  The
 * lock is held exclusively (inside qcow2_open).  0, -EINVAL when the
 * metadata is inconsistent, -errno; logged. */
int repair_dirty_locked (struct qcow2_layer *layer);

/* ---- inflight.c: in-flight records ---------------------------------- */

/* Set up / tear down LAYER's in-flight records (open.c, next to the L2
 * cache; destroy is a no-op when there are none). */
int inflight_init (struct qcow2_layer *layer);
void inflight_destroy (struct qcow2_layer *layer);

/* Register the guest clusters of [offset, offset+length) of the top
 * layer, or return QCOW2_BLOCKED (sleep instead with QCOW2_WAIT) while
 * an overlapping record exists.  *REC is then released with
 * inflight_leave, which wakes waiters.  Call with no layer lock held. */
int inflight_enter (struct qcow2_image *img, uint64_t offset,
                    uint64_t length, unsigned flags, struct inflight **rec);
void inflight_leave (struct qcow2_image *img, struct inflight *rec);

/* ---- l2.c: the L2 entries of a writable layer ------------------------ */

/* Make the L2 table of L1 entry L1_INDEX exist and be ours alone (COPIED):
 * grow the L1 table, allocate a zeroed table, or copy a table shared
 * with a snapshot, in the order qcow2/ORDERING.md gives. */
int l2_table_prepare_locked (struct qcow2_layer *layer, uint64_t l1_index);

/* Release the host clusters behind L2 entry L2E (normal, preallocated
 * zero or compressed; deferred decrements), giving their space back to
 * the host when GIVE_BACK (release_clusters_locked). */
int l2_release_entry_locked (struct qcow2_layer *layer, uint64_t l2e,
                             bool give_back);

/* Drop the references a compressed stream of LEN bytes at HOST holds
 * (one on each host cluster it touches), at once: only for a stream no
 * L2 entry on disk names (a failed write, ORDERING.md rule 5).  Here,
 * beside l2_release_entry_locked, because both the write path's undo
 * (write.c) and the compressed writer (compress-write.c) need it. */
void l2_unref_stream_locked (struct qcow2_layer *layer, uint64_t host,
                             uint32_t len);

/* Read the L2 entry (and bitmap) of guest cluster CLUSTER of LAYER, not
 * checked; *HAS_TABLE false when its L1 entry names no table (the entry
 * reads 0).  The lock is held shared or exclusive as *EXCLUSIVE says,
 * and may be upgraded (see l2_cache_get_locked). */
int l2_read_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                          uint64_t *l2e, uint64_t *bitmap, bool *has_table,
                          bool *exclusive);

/* Check the L2 entry of CLUSTER before writing through, zeroing or
 * discarding it: reserved bits, alignment, subcluster bitmap, and a host
 * cluster inside the image (not the header, not past host_end).  0, or
 * -EIO through qcow2_corrupt. */
int l2_check_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                           uint64_t l2e, uint64_t bitmap);

/* Store L2E/BITMAP as the entry of CLUSTER, whose table must be prepared
 * (COPIED), after checking that the entry still is EXPECT_L2E /
 * EXPECT_BITMAP (the in-flight record kept everyone else off it: a
 * change is corruption, -EIO through qcow2_corrupt). */
int l2_store_entry_locked (struct qcow2_layer *layer, uint64_t cluster,
                           uint64_t expect_l2e, uint64_t expect_bitmap,
                           uint64_t l2e, uint64_t bitmap);

/* ---- write.c: the write path (qcow2.h) ----------------------------- */

/* The checks every guest write, zeroing and discard makes first (disk
 * offsets): -EROFS, -EIO (image marked corrupt), -EINVAL (range past the
 * disk), -ENOTSUP (external data file); else 0.  write_public_args
 * first checks a public call's range against the window and its length
 * against MAX (0: none) (-EINVAL), and turns *OFFSET into a disk
 * offset. */
#define QCOW2_MAX_WRITE (UINT64_C (32) << 20)   /* qcow2_write_begin's */
int write_public_args (struct qcow2_image *img, uint64_t *offset,
                       uint64_t length, uint64_t max);
int write_check_args (struct qcow2_image *img, uint64_t offset,
                      uint64_t length);

/* qcow2_write_begin for a caller already holding the in-flight record
 * (qcow2_zero): ZEROS makes the guest part a QCOW2_SEG_ZERO segment. */
int write_begin_held (struct qcow2_image *img, uint64_t offset,
                      uint64_t length, bool zeros, struct qcow2_write **wp,
                      const struct qcow2_seg **segs, size_t *nsegs);

/* The write handle's parts, for compress-write.c, which plans its own
 * writes: a new handle for the guest range [offset, offset+length)
 * (what write_end dirties in the bitmaps); the in-flight record
 * write_end releases; a buffer freed with the handle; a buffer of SIZE
 * bytes, indexed from the handle's OFFSET, that the guest data of
 * ordinary pieces then comes from (instead of the caller's data); a
 * segment; a compressed stream's link (its L2 entry becomes DESC at
 * write_end; CHOST/CLEN are undone on failure). */
struct qcow2_write *write_new (struct qcow2_image *img, uint64_t offset,
                               uint64_t length);
void write_attach_record (struct qcow2_write *w, struct inflight *rec);
void write_free (struct qcow2_write *w);
void *write_add_buf (struct qcow2_write *w, size_t size);
void *write_data_buffer (struct qcow2_write *w, size_t size);
int write_add_seg (struct qcow2_write *w, uint64_t host, uint64_t length,
                   enum qcow2_seg_source source, uint64_t src_offset,
                   const void *buf);
int write_add_compressed (struct qcow2_write *w, uint64_t cluster,
                          uint64_t old_l2e, uint64_t old_bitmap,
                          uint64_t desc, uint64_t chost, uint32_t clen);

/* Plan an ordinary write of [offset, offset+length) (inside the disk)
 * into W: find or allocate its clusters and record links and pieces
 * (begin's metadata part).  On failure this call's allocations are
 * undone; earlier ones are the caller's. */
int write_plan_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                       uint64_t offset, uint64_t length);

/* Undo every allocation of W (never linked). */
void write_undo_locked (struct qcow2_layer *layer, struct qcow2_write *w);

/* After planning, with no lock held: read what COW needs and return the
 * segments, in host order.  On failure the allocations are undone (W is
 * still the caller's to free). */
int write_finish_plan (struct qcow2_write *w, const struct qcow2_seg **segs,
                       size_t *nsegs);

/* ---- zero-held.c: zeroing and discard under an in-flight record ----- */

/* qcow2_zero on disk offsets for a caller holding the in-flight record
 * over the range (zero.c, and compress-write.c's QCOW2_DETECT_ZEROES);
 * QCOW2_COMPRESSED is not taken here. */
int zero_held (struct qcow2_image *img, uint64_t offset, uint64_t length,
               unsigned flags);

/* The L2 changes of qcow2_discard over guest clusters [FIRST, END) of
 * the qcow2 top layer, for a caller holding the in-flight record; sets
 * *BACKLOG when freed clusters wait to be committed (flush_backlog).
 * 0 or -errno. */
int discard_held (struct qcow2_image *img, uint64_t first, uint64_t end,
                  bool *backlog);

/* ---- zero.c: qcow2_zero and qcow2_discard (qcow2.h) ------------------ */

/* ---- raw.c: a writable raw top layer --------------------------------- */

/* qcow2_zero and qcow2_discard of a raw top layer: the file itself is
 * zeroed (punching holes with QCOW2_MAY_UNMAP) or has holes punched
 * (discard); disk offsets, arguments already checked. */
int raw_zero (struct qcow2_image *img, uint64_t offset, uint64_t length,
              unsigned flags);
int raw_discard (struct qcow2_image *img, uint64_t offset, uint64_t length);

/* ---- flush.c: qcow2_flush (qcow2.h) --------------------------------- */

/* The last flush, for qcow2_close: qcow2_flush, then the refcount
 * decrements it committed written back and synced too, so a clean close
 * leaks nothing.  0 or -errno. */
int flush_final (struct qcow2_image *img);

/* When release_backlog_locked() says so, flush (takes the top layer's
 * lock: call with no lock held); a failure is logged and left for the
 * client's next FLUSH to report. */
void flush_backlog (struct qcow2_image *img);

/* ---- create.c: qcow2_create (qcow2.h) -------------------------------- */

/* ---- bitmap.c: persistent dirty bitmaps, in memory ------------------- */

/* One bitmap of a layer's directory.  The bits, one per granule of the
 * guest (bit 0 of word 0 first, as the bytes on disk), are in memory
 * only for bitmaps that track writes (enabled, in a writable top layer)
 * or that were asked for with qcow2_bitmap_get: their memory is the
 * bitmap's own size, DIV_ROUND_UP (virtual size, granularity) bits, not
 * a cache. */
struct qcow2_bitmap {
  struct qcow2_layer *layer;   /* const */
  char *name;                  /* const */
  size_t dir_pos;              /* const: its entry in bitmap_dir.raw */
  uint32_t flags;              /* const: QCOW2_BME_FLAG_*, as found */
  uint32_t granularity_bits;   /* const */
  uint32_t table_size;         /* const: entries */
  uint64_t table_offset;       /* const while open (bitmap_close moves
                                * it, the last call on the image) */
  uint64_t nbits, nwords;      /* const: granules of the virtual size */
  uint64_t *table;             /* bitmap_dir.lock: host order, checked;
                                * NULL until loaded */
  _Atomic uint64_t *words;     /* bitmap_dir.lock to load; once set the
                                * pointer is const and bits are only
                                * ever set, with atomic ORs */
  bool marked;                 /* const: in use on disk by us (writable
                                * open), cleared by bitmap_close */
  atomic_bool modified;        /* a bit was set since open */
};

struct bitmap_dir {
  uint8_t *raw;                /* the directory as on disk (open and
                                * close only: one thread) */
  struct qcow2_bitmap *v;      /* const: layer->nb_bitmaps entries */
  /* const after open: the bitmaps bitmap_set_dirty sets bits in */
  struct qcow2_bitmap **track;
  size_t ntrack;
  pthread_mutex_t lock;        /* loading tables and bits */
  uint64_t loaded;             /* lock: bytes of tables and bits held */
};

/* Parse the bitmaps extension DATA (LEN bytes) of layer L (FILE_SIZE
 * bytes) and read and check its directory.  A stale extension (autoclear
 * bit 0 clear) is ignored, as QEMU does.  0, or -errno after logging. */
int bitmap_parse_ext (struct qcow2_layer *l, const char *name,
                      const uint8_t *data, uint32_t len, uint64_t file_size);
void bitmap_free (struct qcow2_layer *l);

/* Load BM's table (checked) and, with BITS, its bits.  Called with
 * bitmap_dir.lock held.  0, or -errno after logging. */
int bitmap_load_locked (struct qcow2_bitmap *bm, bool bits);

/* Mark the guest range [offset, offset+length) dirty in every bitmap
 * that tracks writes (a no-op without one).  Called before a write, zero
 * or discard returns, whether it succeeded or not, as QEMU does. */
void bitmap_set_dirty (struct qcow2_image *img, uint64_t offset,
                       uint64_t length);

/* Serialise bits [chunk * cluster_size * 8, ...) of BM into BUF, one
 * cluster; returns whether any bit is set. */
bool bitmap_chunk (const struct qcow2_bitmap *bm, uint64_t chunk,
                   uint8_t *buf);

/* ---- bitmap-store.c: persistent dirty bitmaps on disk ---------------- */

/* Writable open, after the dirty-image repair: load and check every
 * consistent bitmap, then mark them in use on disk (ORDERING.md). */
int bitmap_open_writable (struct qcow2_layer *layer);

/* Clean close, before the final flush: write the bits of every bitmap
 * that changed and clear the in-use flags (ORDERING.md).  0 or -errno
 * (logged; the bitmaps then stay in use, reported inconsistent). */
int bitmap_close (struct qcow2_image *img);

/* Dirty-image repair: call COUNT for the directory, every bitmap table
 * and every bitmap data cluster. */
typedef int (*bitmap_count_fn) (struct qcow2_layer *layer, uint64_t off,
                                uint64_t len, const char *what);
int bitmap_count_refs (struct qcow2_layer *layer, bitmap_count_fn count);

/* ---- snapshot.c: internal snapshots, read-only ----------------------- */

/* When OPTS names a snapshot, switch the top layer L (before any read)
 * to it: its L1 table replaces the active one.  0 when none is named;
 * -EINVAL when the image is writable; -ENOENT (logged) when there is no
 * such snapshot; -EINVAL for a bad snapshot L1 table. */
int snapshot_select (struct qcow2_layer *l,
                     const struct qcow2_open_opts *opts);

#endif /* QCOW2_INTERNAL_H */
