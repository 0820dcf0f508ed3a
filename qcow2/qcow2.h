/* SPDX-License-Identifier: MIT */
/* libqcow2: the public interface of the QCOW2 core.
 *
 * The library maps guest ranges of a QCOW2 image (and its backing chain)
 * to host I/O and keeps the metadata consistent.  It knows nothing of NBD,
 * sockets, TLS, nbdkit or io_uring.  Metadata I/O goes through an ops table
 * the caller supplies; data I/O is the caller's: it asks qcow2_map() where
 * the bytes of a guest range live and reads them itself (in parallel,
 * through its own ring), or uses the synchronous qcow2_pread() built on the
 * same calls.
 *
 * Every call returns 0 (or a documented non-negative value) on success and
 * a negative errno on failure.  The library never prints and never exits:
 * messages go to the log callback given at open time.
 *
 * Thread safety: after qcow2_open() returns, every call may be made from
 * any number of threads at once (the image has its own reader-writer lock),
 * except qcow2_close(), which must be the last call. */
#ifndef QCOW2_QCOW2_H
#define QCOW2_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qcow2_image;   /* an open image with its whole backing chain */
struct qcow2_layer;   /* one layer of the chain: a qcow2 or raw file */

/* ---- I/O ops (io.c) ---------------------------------------------------- */

/* File I/O the library needs.  The server passes qcow2_posix_io; the
 * fuzzer passes memory-backed ops.  Each returns 0 or -errno. */
struct qcow2_io_ops {
  /* Open PATH read-only (writable false) or read-write; return an fd
   * (any non-negative handle) or -errno. */
  int (*open) (void *opaque, const char *path, bool writable);
  void (*close) (void *opaque, int fd);
  /* Read exactly LEN bytes at OFF.  Bytes past the end of the file read
   * as zeros (as QEMU's file driver does). */
  int (*pread) (void *opaque, int fd, void *buf, size_t len, uint64_t off);
  int (*pwrite) (void *opaque, int fd, const void *buf, size_t len,
                 uint64_t off);
  int (*flush) (void *opaque, int fd);
  /* Make [off, off+len) read as zeros, with FALLOC_FL_ZERO_RANGE or
   * FALLOC_FL_PUNCH_HOLE semantics (allocation may go).  May be NULL or
   * return -ENOTSUP: the library then writes zeros. */
  int (*zero_range) (void *opaque, int fd, uint64_t off, uint64_t len);
  /* Deallocate [off, off+len) (FALLOC_FL_PUNCH_HOLE, keeping the file
   * size): the range reads as zeros and its space goes back to the file
   * system.  Used for clusters a guest discarded.  May be NULL or fail
   * (-ENOTSUP): the space is then kept, nothing else changes. */
  int (*punch) (void *opaque, int fd, uint64_t off, uint64_t len);
  int (*get_size) (void *opaque, int fd, uint64_t *size);
  /* Bytes the file occupies on its file system (st_blocks * 512).  May be
   * NULL: the file is then taken as fully allocated. */
  int (*get_allocated) (void *opaque, int fd, uint64_t *bytes);
};

/* Plain POSIX open/pread/pwrite/fdatasync/fstat/fallocate. */
extern const struct qcow2_io_ops qcow2_posix_io;

/* ---- Opening (open.c) -------------------------------------------------- */

enum qcow2_log_level {
  QCOW2_LOG_ERROR,      /* why an open failed, corruption found */
  QCOW2_LOG_WARNING,    /* served, but something is off */
  QCOW2_LOG_DEBUG,
};

typedef void (*qcow2_log_fn) (void *opaque, enum qcow2_log_level level,
                              const char *msg);

/* The format of the top image (backing files name their own format). */
enum qcow2_format {
  QCOW2_FORMAT_QCOW2 = 0,
  QCOW2_FORMAT_RAW,                /* the file is the disk, byte for byte */
};

/* Why qcow2_open failed, for a caller that words its own message (the
 * qemu-nbd front end words them as QEMU does); the log has the library's
 * own message in every case. */
enum qcow2_open_error_kind {
  QCOW2_OPEN_ERROR_OTHER,
  QCOW2_OPEN_ERROR_OPEN,           /* a file could not be opened (err) */
  QCOW2_OPEN_ERROR_NOT_QCOW2,      /* the top image has no qcow2 magic */
  QCOW2_OPEN_ERROR_LOCK,           /* another process holds a lock */
};

struct qcow2_open_error {
  enum qcow2_open_error_kind kind;
  int err;                         /* positive errno */
  unsigned depth;                  /* layer of the file: 1 = top image */
  char file[4096];                 /* the file concerned, as opened */
  const char *perm;                /* LOCK: "write", "consistent read"... */
  bool shared;                     /* LOCK: a permission we deny others */
};

struct qcow2_open_opts {
  bool writable;                   /* open read-write */
  /* Host clusters the guest gives back (qcow2_discard, and qcow2_zero
   * deallocating) are punched out of the file (io->punch) as soon as no
   * reference can reach them, as QEMU's discard=unmap passes discards
   * down: the file's allocated size follows what the guest trimmed. */
  bool punch_discarded;
  uint64_t l2_cache_size;          /* bytes per qcow2 layer; 0: default */
  unsigned max_backing_depth;      /* 0: QCOW2_DEFAULT_MAX_BACKING_DEPTH */
  const struct qcow2_io_ops *io;   /* NULL: qcow2_posix_io */
  void *io_opaque;
  qcow2_log_fn log;                /* NULL: messages are dropped */
  void *log_opaque;
  /* Called, from any thread and with no library lock held, when an
   * in-flight allocation that made a call return QCOW2_BLOCKED has ended:
   * the caller should retry its blocked calls.  May be NULL (then use
   * QCOW2_WAIT). */
  void (*wakeup) (void *opaque);
  void *wakeup_opaque;
  enum qcow2_format format;        /* of the top image */
  /* Do not open the top image's backing file (QEMU's backing=null):
   * what it would show through reads as unallocated zeros. */
  bool no_backing;
  /* Take no image locks (QEMU's file.locking=off). */
  bool no_locks;
  /* Serve only a window of the disk (QEMU's raw offset and size, and
   * qemu-nbd --offset): guest offset 0 is OFFSET in the disk; the window
   * is SIZE bytes when HAS_SIZE, else it runs to the end of the disk.
   * Every offset the library takes or returns is then one of the window
   * and qcow2_virtual_size() its size. */
  uint64_t offset, size;
  bool has_size;
  /* Filled in when qcow2_open fails, if not NULL. */
  struct qcow2_open_error *error;
  /* Serve an internal snapshot instead of the active layer (read-only
   * opens only; snapshot.c), as qemu-nbd -l does: SNAPSHOT is an ID or a
   * name, looked up by ID first, then by name; or SNAPSHOT_ID and/or
   * SNAPSHOT_NAME, all of those given must match (qemu-nbd's
   * snapshot.id= and snapshot.name=).  All NULL: the active layer. */
  const char *snapshot;
  const char *snapshot_id;
  const char *snapshot_name;
};

#define QCOW2_DEFAULT_L2_CACHE_SIZE (4u << 20)
#define QCOW2_MIN_L2_CACHE_SIZE (64u << 10)
#define QCOW2_DEFAULT_MAX_BACKING_DEPTH 16

/* Open the image at PATH (qcow2 unless opts->format says raw) and its
 * whole backing chain.  On failure returns -errno and has logged a
 * message saying why (unsupported feature, encrypted image, corrupt
 * header, missing backing file, ...): -ENOTSUP for valid images using
 * features we don't implement, -EINVAL for images that are not valid
 * qcow2 (and for a window outside the disk), -EBUSY when another process
 * holds a conflicting image lock, -errno from the host otherwise.  An
 * image with the corrupt bit set opens read-only (opts->writable is then
 * refused with -EROFS).  A raw top image is written in place: no
 * metadata, so every write is as durable as the file's. */
int qcow2_open (const char *path, const struct qcow2_open_opts *opts,
                struct qcow2_image **imgp);
void qcow2_close (struct qcow2_image *img);

/* Guest size in bytes (of the window, when the open options set one). */
uint64_t qcow2_virtual_size (const struct qcow2_image *img);

/* Has corruption been found, at open (corrupt bit) or since? */
bool qcow2_is_corrupt (const struct qcow2_image *img);

/* 0, or the -errno of the sync (fdatasync) that failed and put the image
 * into its failed state: a failed sync may have dropped writes that were
 * not durable yet, so no later sync can prove them durable.  Every
 * write, zeroing, discard and flush since fails with -EIO; reads go on.
 * Reopening the image (after the cause is fixed) is the only way out.
 * See qcow2/ORDERING.md, "A failed sync". */
int qcow2_sync_error (const struct qcow2_image *img);

/* The files the chain reads from, for callers doing their own data I/O:
 * extents name a file by its index here.  Index 0 is the top image. */
size_t qcow2_file_count (const struct qcow2_image *img);
int qcow2_file_fd (const struct qcow2_image *img, size_t index);
const char *qcow2_file_name (const struct qcow2_image *img, size_t index);
/* Was the file opened for writing?  The bytes of one that was not never
 * change while the image is open (the image locks keep other writers
 * out), so a caller may hand out references to its page cache. */
bool qcow2_file_writable (const struct qcow2_image *img, size_t index);
/* The file's size when it was opened: still its size unless writable. */
uint64_t qcow2_file_size (const struct qcow2_image *img, size_t index);

/* Number of layers in the chain (1 for an image without backing file). */
unsigned qcow2_chain_depth (const struct qcow2_image *img);

/* ---- Mapping (map.c) --------------------------------------------------- */

enum qcow2_extent_type {
  QCOW2_EXTENT_DATA,        /* bytes live in file 'file' at 'host_offset' */
  QCOW2_EXTENT_ZERO,        /* zero cluster/subcluster: reads as zeros */
  QCOW2_EXTENT_COMPRESSED,  /* part of one compressed cluster */
  QCOW2_EXTENT_UNALLOCATED, /* allocated in no layer, or past the end of a
                             * shorter backing file: reads as zeros */
};

struct qcow2_extent {
  uint64_t offset;             /* guest offset */
  uint64_t length;
  enum qcow2_extent_type type;
  /* Allocation depth as qemu:allocation-depth defines it: 1 for the top
   * image, 2 for its backing file, ...; 0 for UNALLOCATED. */
  unsigned depth;
  /* DATA, COMPRESSED: index into the file table. */
  unsigned file;
  /* DATA: host offset of 'offset'.  DATA extents are coalesced: host
   * contiguous clusters of one file come back as one extent.
   * COMPRESSED: host offset of the first byte of the compressed stream. */
  uint64_t host_offset;
  /* COMPRESSED: bytes to read at host_offset (may run past the end of the
   * file; such bytes read as zeros), and the offset of 'offset' inside
   * the decompressed cluster.  A COMPRESSED extent never spans two
   * clusters. */
  uint32_t compressed_length;
  uint32_t cluster_offset;
  const struct qcow2_layer *layer;   /* COMPRESSED: for qcow2_decompress */
  /* COMPRESSED: host bytes that held one stream may hold another later
   * (compressed writes pack streams into space freed before), but never
   * with the same stream_gen: a cache of decompressed clusters keyed by
   * (layer, host_offset) must key by this too.  Never reused in the
   * process, even by a layer of another image opened at the address of
   * a closed one. */
  uint64_t stream_gen;
};

/* Describe where the bytes of the guest range [offset, offset+length)
 * live.  Fills at most MAX extents, in guest order and without gaps,
 * covering a prefix of the range (at least one extent when length > 0 and
 * max > 0), and sets *N to their number.  Resolves the backing chain.
 * The range must lie inside the virtual size (-EINVAL otherwise).
 * Returns -EIO when corruption is found (it has been reported and the
 * image marked corrupt); -errno on metadata read errors. */
int qcow2_map (struct qcow2_image *img, uint64_t offset, uint64_t length,
               struct qcow2_extent *ext, size_t max, size_t *n);

/* How block status should report holes in the host file under a DATA
 * extent of LAYER, to agree with QEMU (qemu-nbd, qemu-img map):
 *   DATA: the cluster is allocated data; host holes are not looked for
 *     (QEMU looks only where metadata preallocation left them);
 *   ZERO: a qcow2 layer made with preallocation=metadata: host holes are
 *     allocated clusters that read as zeros;
 *   UNALLOCATED: a raw layer: host holes are holes (read as zeros). */
enum qcow2_host_holes {
  QCOW2_HOST_HOLES_DATA,
  QCOW2_HOST_HOLES_ZERO,
  QCOW2_HOST_HOLES_UNALLOCATED,
};
enum qcow2_host_holes qcow2_layer_host_holes (const struct qcow2_layer *layer);

/* ---- Compression (compress.c) ------------------------------------------ */

/* Size of one cluster of LAYER, the output size of qcow2_decompress. */
uint32_t qcow2_layer_cluster_size (const struct qcow2_layer *layer);

/* Decompress one cluster of LAYER (zlib raw deflate or zstd, as its header
 * says) from IN[0..in_len) into OUT, which holds exactly one cluster.
 * Trailing input is ignored.  Returns -EIO (after reporting corruption)
 * when the stream is invalid or does not fill the cluster. */
int qcow2_decompress (const struct qcow2_layer *layer, const void *in,
                      size_t in_len, void *out);
/* The same for the first OUT_LEN bytes of the cluster only (0 < OUT_LEN
 * <= cluster size): decoding stops there, so a small read near the start
 * of a cluster costs a fraction of a whole one.  Corruption past OUT_LEN
 * goes unnoticed until a read reaches it.  -EINVAL for a bad OUT_LEN. */
int qcow2_decompress_part (const struct qcow2_layer *layer, const void *in,
                           size_t in_len, void *out, uint32_t out_len);

/* ---- Writing (write.c, zero.c, flush.c) --------------------------------
 *
 * A guest write is split in two around the caller's own data I/O:
 * qcow2_write_begin() finds or allocates the clusters (under the lock,
 * short), registers an in-flight allocation record for the range, reads
 * what copy-on-write needs, and returns the host writes to perform;
 * the caller performs them (through its ring, in parallel); then
 * qcow2_write_end() links the new L2 entries under the lock and drops the
 * record.  No data I/O is done under the metadata lock.
 *
 * Calls that would have to wait for an overlapping in-flight allocation
 * return QCOW2_BLOCKED without doing anything unless QCOW2_WAIT is given:
 * an event-loop caller must not sleep on an allocation its own loop has
 * to complete.  It retries after the wakeup callback (qcow2_open_opts). */

#define QCOW2_BLOCKED 1

/* Flags of the write, zero and discard calls. */
#define QCOW2_WAIT       (1u << 0)   /* sleep instead of QCOW2_BLOCKED */
#define QCOW2_MAY_UNMAP  (1u << 1)   /* zero: may deallocate (no NO_HOLE) */
#define QCOW2_FAST_ZERO  (1u << 2)   /* zero: -ENOTSUP rather than writing
                                      * zeros to the data clusters */
#define QCOW2_COMPRESSED (1u << 3)   /* zero: as through QEMU's compress
                                      * filter (qcow2_write_compressed_begin) */
#define QCOW2_DETECT_ZEROES (1u << 4) /* compressed write: zeros become a
                                       * zeroing (QEMU's detect-zeroes) */

enum qcow2_seg_source {
  QCOW2_SEG_GUEST,      /* the caller's data, from src_offset */
  QCOW2_SEG_BUFFER,     /* 'buf' (copy-on-write data read by the library) */
  QCOW2_SEG_ZERO,       /* zeros: zero_range or written zeros */
};

/* One host write.  Segments come in host order; consecutive segments of
 * one file with adjacent host ranges form one run the caller should issue
 * as a single vectored write. */
struct qcow2_seg {
  unsigned file;                /* index into the file table */
  uint64_t host_offset;
  uint64_t length;
  enum qcow2_seg_source source;
  uint64_t src_offset;          /* GUEST: offset into the caller's data */
  const void *buf;              /* BUFFER: owned by the write handle */
};

struct qcow2_write;             /* a write between begin and end */

/* Begin writing [offset, offset+length) (inside the virtual size, else
 * -EINVAL; at most 32 MiB).  On success sets *WP and the segments to
 * write (valid until qcow2_write_end) and returns 0.  Returns
 * QCOW2_BLOCKED (see above), -EROFS on a read-only image, -ENOSPC when
 * the host cannot grow, -EIO on corruption, -errno otherwise. */
int qcow2_write_begin (struct qcow2_image *img, uint64_t offset,
                       uint64_t length, unsigned flags,
                       struct qcow2_write **wp,
                       const struct qcow2_seg **segs, size_t *nsegs);

/* End a write.  RESULT is 0 when every segment was written, else the
 * -errno of the failure: the allocation is then undone (the guest range
 * keeps its old contents or reads as before).  Frees W.  Returns 0 or
 * -errno (the guest range's state is then as after a failed write). */
int qcow2_write_end (struct qcow2_write *w, int result);

/* Make [offset, offset+length) read as zeros.  With QCOW2_MAY_UNMAP,
 * whole clusters may be deallocated (zero flag, or unallocated where no
 * backing file shows through); without it the allocation is kept.  With
 * QCOW2_FAST_ZERO, returns -ENOTSUP at once (nothing changed) if it would
 * have to write zeros into data clusters.  Partial clusters are zeroed in
 * place; with QCOW2_COMPRESSED (QEMU's compress filter) they are written
 * as compressed clusters instead, exactly as qcow2_write_compressed_begin
 * writes them (-EIO if one is allocated), and QCOW2_FAST_ZERO fails with
 * -ENOTSUP when the range is not cluster aligned.  Returns 0,
 * QCOW2_BLOCKED, or -errno. */
int qcow2_zero (struct qcow2_image *img, uint64_t offset, uint64_t length,
                unsigned flags);

/* Discard [offset, offset+length): the host clusters of whole clusters
 * are given back, and those clusters read as zeros: as in QEMU, a v3
 * cluster that was allocated, or under which a backing file would show
 * through, becomes a zero cluster, one that was not stays unallocated;
 * v2 images, which have no zero flag, unallocate (a no-op where a
 * backing file would show through).  Partial clusters are left alone.
 * Returns 0, QCOW2_BLOCKED, or -errno. */
int qcow2_discard (struct qcow2_image *img, uint64_t offset,
                   uint64_t length, unsigned flags);

/* ---- Compressed writes (compress-write.c) ------------------------------
 *
 * What QEMU's compress filter over a qcow2 node does with a write
 * (qemu-nbd --image-opts driver=compress,file.driver=qcow2,...): the
 * range is widened to whole clusters, the added head and tail read from
 * the current guest view (zeros past the end of the disk); each cluster
 * is compressed (compression_type of the image, QEMU's parameters) and
 * stored as a compressed cluster, its stream packed after the previous
 * one in shared host clusters.  A cluster whose stream would not be
 * shorter than a cluster is written uncompressed, like any write.
 * QEMU's refusals are kept: a cluster to store compressed whose L2 entry
 * has a host offset (data, compressed, or a preallocated zero cluster)
 * fails the whole write with -EIO, before anything changed. */

/* Begin a compressed write of DATA (LENGTH bytes, read during the call
 * only) at OFFSET; the rules otherwise as qcow2_write_begin (finish with
 * qcow2_write_end).  The segments are buffers the handle owns.  Flags:
 * QCOW2_WAIT; QCOW2_DETECT_ZEROES: if the widened range is all zeros, it
 * is zeroed instead (as qcow2_zero, with QCOW2_MAY_UNMAP if given) and
 * there is nothing to write.  Compression takes CPU time (a 64 KiB
 * cluster, about a millisecond): an event loop may call this from a
 * helper thread.  Returns 0, QCOW2_BLOCKED, -EIO (an allocated cluster,
 * or corruption), -ENOTSUP (a raw image, an external data file), -EROFS,
 * -EINVAL, -ENOSPC, -errno. */
int qcow2_write_compressed_begin (struct qcow2_image *img, uint64_t offset,
                                  uint64_t length, const void *data,
                                  unsigned flags, struct qcow2_write **wp,
                                  const struct qcow2_seg **segs,
                                  size_t *nsegs);

/* Size in bytes of the top image's clusters, the unit compressed writes
 * work in; 0 for a raw image. */
uint32_t qcow2_cluster_size (const struct qcow2_image *img);

/* Make every write that has ended (qcow2_write_end, zero, discard) and
 * the metadata that reaches it durable, in the order qcow2/ORDERING.md
 * rules: refcounts, then data and L2/L1, then deferred frees.  Covers
 * writes made through every thread.  Returns 0 or -errno. */
int qcow2_flush (struct qcow2_image *img);

/* ---- Persistent dirty bitmaps (bitmap.c, bitmap-store.c) ---------------
 *
 * Bitmaps stored in the image ("Bitmaps extension" in QEMU's qcow2.txt)
 * are kept as QEMU keeps them: an image opened read-write marks every
 * consistent bitmap in use on disk before qcow2_open returns; every write,
 * zero and discard sets the bits of the enabled ones (in memory) before
 * it returns; qcow2_close writes them back and clears the in-use flags.
 * After a crash they stay in use, and are then reported inconsistent by
 * QEMU and refused here, never silently clean.
 *
 * Memory: a bitmap held in memory takes DIV_ROUND_UP (virtual size,
 * granularity) bits (a 1 TiB disk at 64 KiB granularity: 2 MiB); the
 * bitmaps of one layer held at once (every enabled one of a writable
 * image, plus those asked for) may take at most QCOW2_MAX_BITMAP_MEMORY,
 * tables included, else the open or qcow2_bitmap_get fails with
 * -ENOMEM. */

#define QCOW2_MAX_BITMAP_MEMORY (UINT64_C (1) << 30)

struct qcow2_bitmap;

/* Find the bitmap NAME for reading, in the top image or else down the
 * backing chain (as qemu-nbd -B does), and load its bits if they are not
 * in memory yet.  Returns 0 and sets *BMP (valid until qcow2_close);
 * -ENOENT when there is none, -EINVAL when it is inconsistent (it was in
 * use when its image was last closed: a crash) or its table is invalid,
 * -ENOMEM, -errno; each logged. */
int qcow2_bitmap_get (struct qcow2_image *img, const char *name,
                      struct qcow2_bitmap **bmp);

/* Bytes per bit. */
uint64_t qcow2_bitmap_granularity (const struct qcow2_bitmap *bm);

/* The run of like bits starting at guest OFFSET: sets *DIRTY to the
 * state of the granule holding OFFSET and returns the length of the run
 * of granules in that state from OFFSET, at most LENGTH (and at least 1
 * when LENGTH > 0).  Runs begin and end at granule boundaries except
 * where OFFSET and OFFSET + LENGTH cut them, which is how qemu-nbd's
 * qemu:dirty-bitmap extents are cut.  Past the bitmap's own disk size
 * (a backing file smaller than the top image) everything is clean. */
uint64_t qcow2_bitmap_extent (const struct qcow2_bitmap *bm, uint64_t offset,
                              uint64_t length, bool *dirty);

/* ---- Creating images (create.c) ---------------------------------------- */

struct qcow2_create_opts {
  uint64_t size;                /* virtual size, bytes */
  unsigned version;             /* 2 or 3; 0: 3 */
  uint32_t cluster_size;        /* 0: 65536 */
  uint32_t refcount_bits;       /* 1..64, power of two; 0: 16 */
  const char *backing_file;     /* NULL: none */
  const char *backing_format;   /* "qcow2" or "raw"; required with backing */
  const char *compression_type; /* NULL, "zlib" or "zstd" */
  bool extended_l2;
  bool lazy_refcounts;
};

/* Create a new image at PATH (which must not exist).  Returns 0 or -errno
 * after logging why. */
int qcow2_create (const char *path, const struct qcow2_create_opts *opts,
                  qcow2_log_fn log, void *log_opaque);

/* ---- Synchronous convenience layer (sync.c) ---------------------------- */

/* Read [offset, offset+len) of the guest through qcow2_map and the io
 * ops.  For the nbdkit plugin, the tests and the fuzzers. */
int qcow2_pread (struct qcow2_image *img, void *buf, size_t len,
                 uint64_t offset);

/* Write, zero or discard through qcow2_write_begin/end with QCOW2_WAIT
 * and the io ops; with FUA, flush afterwards. */
int qcow2_pwrite (struct qcow2_image *img, const void *buf, size_t len,
                  uint64_t offset, bool fua);

/* The same through qcow2_write_compressed_begin (no FUA). */
int qcow2_pwrite_compressed (struct qcow2_image *img, const void *buf,
                             size_t len, uint64_t offset);

#endif /* QCOW2_QCOW2_H */
