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
  int (*get_size) (void *opaque, int fd, uint64_t *size);
  /* Bytes the file occupies on its file system (st_blocks * 512).  May be
   * NULL: the file is then taken as fully allocated. */
  int (*get_allocated) (void *opaque, int fd, uint64_t *bytes);
};

/* Plain POSIX open/pread/pwrite/fdatasync/fstat. */
extern const struct qcow2_io_ops qcow2_posix_io;

/* ---- Opening (open.c) -------------------------------------------------- */

enum qcow2_log_level {
  QCOW2_LOG_ERROR,      /* why an open failed, corruption found */
  QCOW2_LOG_WARNING,    /* served, but something is off */
  QCOW2_LOG_DEBUG,
};

typedef void (*qcow2_log_fn) (void *opaque, enum qcow2_log_level level,
                              const char *msg);

struct qcow2_open_opts {
  bool writable;                   /* open read-write (later issues) */
  uint64_t l2_cache_size;          /* bytes per qcow2 layer; 0: default */
  unsigned max_backing_depth;      /* 0: QCOW2_DEFAULT_MAX_BACKING_DEPTH */
  const struct qcow2_io_ops *io;   /* NULL: qcow2_posix_io */
  void *io_opaque;
  qcow2_log_fn log;                /* NULL: messages are dropped */
  void *log_opaque;
};

#define QCOW2_DEFAULT_L2_CACHE_SIZE (4u << 20)
#define QCOW2_MIN_L2_CACHE_SIZE (64u << 10)
#define QCOW2_DEFAULT_MAX_BACKING_DEPTH 16

/* Open the qcow2 image at PATH and its whole backing chain.  On failure
 * returns -errno and has logged a message saying why (unsupported
 * feature, encrypted image, corrupt header, missing backing file, ...):
 * -ENOTSUP for valid images using features we don't implement, -EINVAL
 * for images that are not valid qcow2, -errno from the host otherwise.
 * An image with the corrupt bit set opens read-only (opts->writable is
 * then refused with -EROFS). */
int qcow2_open (const char *path, const struct qcow2_open_opts *opts,
                struct qcow2_image **imgp);
void qcow2_close (struct qcow2_image *img);

/* Guest size in bytes. */
uint64_t qcow2_virtual_size (const struct qcow2_image *img);

/* Has corruption been found, at open (corrupt bit) or since? */
bool qcow2_is_corrupt (const struct qcow2_image *img);

/* The files the chain reads from, for callers doing their own data I/O:
 * extents name a file by its index here.  Index 0 is the top image. */
size_t qcow2_file_count (const struct qcow2_image *img);
int qcow2_file_fd (const struct qcow2_image *img, size_t index);
const char *qcow2_file_name (const struct qcow2_image *img, size_t index);

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

/* ---- Synchronous convenience layer (sync.c) ---------------------------- */

/* Read [offset, offset+len) of the guest through qcow2_map and the io
 * ops.  For the nbdkit plugin, the tests and the fuzzers. */
int qcow2_pread (struct qcow2_image *img, void *buf, size_t len,
                 uint64_t offset);

#endif /* QCOW2_QCOW2_H */
