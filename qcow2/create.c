/* SPDX-License-Identifier: MIT */
/* qcow2_create: write a new, empty image from scratch, so CI can make
 * throwaway overlays without qemu-img.  The image is laid out as QEMU
 * lays out its own (header cluster, refcount table, refcount blocks, L1
 * table), every metadata cluster has refcount 1 and nothing else is
 * allocated, so `qemu-img check` finds neither errors nor leaks.  All
 * options are validated, and the backing file opened, before the file is
 * created; the file is created with O_EXCL (never overwriting anything),
 * removed again on any error, and the header is written last so that a
 * crash half-way leaves no file that looks like a valid image. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

#define DEFAULT_CLUSTER_SIZE 65536
#define DEFAULT_REFCOUNT_BITS 16
/* Header length we write for version 3: the minimum, or with the
 * compression type byte (padded to a multiple of 8, as QEMU does). */
#define V3_HEADER_LENGTH_COMPRESSION 112
/* QEMU's images are whole 512-byte sectors. */
#define SECTOR_SIZE 512
/* Zeros for the L1 table are written in chunks of at most this. */
#define ZERO_CHUNK (UINT64_C (1) << 20)

/* The feature name table, as QEMU writes it ("Feature name table"), so
 * tools can name the bits of images we made. */
static const struct {
  uint8_t type, bit;
  const char *name;
} feature_names[] = {
  { QCOW2_FEATURE_TYPE_INCOMPATIBLE, 0, "dirty bit" },
  { QCOW2_FEATURE_TYPE_INCOMPATIBLE, 1, "corrupt bit" },
  { QCOW2_FEATURE_TYPE_INCOMPATIBLE, 2, "external data file" },
  { QCOW2_FEATURE_TYPE_INCOMPATIBLE, 3, "compression type" },
  { QCOW2_FEATURE_TYPE_INCOMPATIBLE, 4, "extended L2 entries" },
  { QCOW2_FEATURE_TYPE_COMPATIBLE, 0, "lazy refcounts" },
  { QCOW2_FEATURE_TYPE_AUTOCLEAR, 0, "bitmaps" },
  { QCOW2_FEATURE_TYPE_AUTOCLEAR, 1, "raw external data" },
};
#define NR_FEATURES (sizeof feature_names / sizeof feature_names[0])

/* Where the caller's messages go. */
struct logger {
  qcow2_log_fn fn;
  void *opaque;
};

static int say (const struct logger *lg, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* Log an error and return ERR, so callers can 'return say (...)'. */
static int
say (const struct logger *lg, int err, const char *fmt, ...)
{
  char buf[1536];
  va_list ap;

  if (lg->fn) {
    va_start (ap, fmt);
    vsnprintf (buf, sizeof buf, fmt, ap);
    va_end (ap);
    lg->fn (lg->opaque, QCOW2_LOG_ERROR, buf);
  }
  return err;
}

/* The validated options and the layout derived from them. */
struct plan {
  uint64_t size;
  uint32_t version;
  uint32_t cluster_bits, cluster_size;
  uint32_t refcount_order;
  uint64_t incompatible, compatible;
  uint32_t header_length;
  uint8_t compression_type;
  const char *backing_file, *backing_format;

  uint64_t l1_size;              /* entries */
  uint64_t reftable_clusters, refblocks, l1_clusters, total_clusters;
  uint64_t reftable_offset, refblock_offset, l1_offset;
};

static unsigned
log2_exact (uint64_t v)
{
  return (unsigned) __builtin_ctzll (v);
}

/* The backing file must open as the format given (a qcow2 image opens
 * with its whole chain); set *SIZE to its virtual size, rounded up to
 * whole sectors as QEMU sees a raw file. */
static int
check_backing (const struct logger *lg, const char *path,
               const struct plan *p, uint64_t *size)
{
  /* Relative to the new image's directory, as open.c will resolve it. */
  CLEANUP_FREE char *resolved = open_resolve_name (path, p->backing_file);
  CLEANUP_CLOSE int fd = -1;
  struct stat st;
  uint64_t sz;

  if (resolved == NULL)
    return say (lg, -ENOMEM, "out of memory");

  fd = open (resolved, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    int err = errno;

    if (strcmp (resolved, p->backing_file) == 0)
      return say (lg, -err, "backing file '%s': %s", p->backing_file,
                  strerror (err));
    return say (lg, -err, "backing file '%s' (%s): %s", p->backing_file,
                resolved, strerror (err));
  }
  if (fstat (fd, &st) == -1) {
    int err = errno;
    return say (lg, -err, "backing file '%s': fstat: %s", p->backing_file,
                strerror (err));
  }

  if (strcmp (p->backing_format, "raw") == 0) {
    if (S_ISBLK (st.st_mode)) {
      off_t end = lseek (fd, 0, SEEK_END);
      if (end == -1) {
        int err = errno;
        return say (lg, -err, "backing file '%s': %s", p->backing_file,
                    strerror (err));
      }
      sz = end;
    }
    else if (S_ISREG (st.st_mode))
      sz = st.st_size;
    else
      return say (lg, -EINVAL, "backing file '%s' is not a regular file or "
                  "block device", p->backing_file);
    *size = ROUND_UP (sz, (uint64_t) SECTOR_SIZE);
    return 0;
  }

  /* qcow2: let the library say whether it can be served as one. */
  struct qcow2_open_opts oo = {
    .writable = false,
    .l2_cache_size = QCOW2_MIN_L2_CACHE_SIZE,
    .log = lg->fn,
    .log_opaque = lg->opaque,
  };
  struct qcow2_image *img;
  int r;

  r = qcow2_open (resolved, &oo, &img);
  if (r < 0)
    return say (lg, r, "backing file '%s' cannot be opened as qcow2: %s",
                p->backing_file, strerror (-r));
  *size = qcow2_virtual_size (img);
  qcow2_close (img);
  return 0;
}

/* The version, cluster size and refcount width. */
static int
plan_format (const struct logger *lg, const struct qcow2_create_opts *o,
             struct plan *p)
{
  uint32_t cs, rb;

  p->version = o->version ? o->version : 3;
  if (p->version != 2 && p->version != 3)
    return say (lg, -EINVAL, "unsupported qcow2 version %u (only 2, "
                "compat 0.10, and 3, compat 1.1)", p->version);

  cs = o->cluster_size ? o->cluster_size : DEFAULT_CLUSTER_SIZE;
  if (!is_power_of_2 (cs) || cs < (1u << QCOW2_MIN_CLUSTER_BITS) ||
      cs > (1u << QCOW2_MAX_CLUSTER_BITS))
    return say (lg, -EINVAL, "cluster size %" PRIu32 " must be a power of "
                "two between 512 and 2M", cs);
  p->cluster_size = cs;
  p->cluster_bits = log2_exact (cs);

  rb = o->refcount_bits ? o->refcount_bits : DEFAULT_REFCOUNT_BITS;
  if (!is_power_of_2 (rb) || rb > 64)
    return say (lg, -EINVAL, "refcount width %" PRIu32 " must be a power "
                "of two from 1 to 64", rb);
  if (p->version == 2 && rb != 16)
    return say (lg, -EINVAL, "refcount widths other than 16 bits need "
                "version 3 (compat 1.1)");
  p->refcount_order = log2_exact (rb);
  return 0;
}

/* The compression type, the header length that follows from it, and
 * the feature bits (extended L2, lazy refcounts). */
static int
plan_features (const struct logger *lg, const struct qcow2_create_opts *o,
               struct plan *p)
{
  p->compression_type = QCOW2_COMPRESSION_ZLIB;
  if (o->compression_type) {
    if (strcmp (o->compression_type, "zstd") == 0)
      p->compression_type = QCOW2_COMPRESSION_ZSTD;
    else if (strcmp (o->compression_type, "zlib") != 0)
      return say (lg, -EINVAL, "unknown compression type '%s' (zlib or "
                  "zstd)", o->compression_type);
    if (p->compression_type != QCOW2_COMPRESSION_ZLIB && p->version < 3)
      return say (lg, -EINVAL, "compression type %s needs version 3 "
                  "(compat 1.1)", o->compression_type);
  }
  if (p->compression_type != QCOW2_COMPRESSION_ZLIB)
    p->incompatible |= QCOW2_INCOMPAT_COMPRESSION;
  if (p->version == 3)
    p->header_length = o->compression_type ? V3_HEADER_LENGTH_COMPRESSION
      : QCOW2_V3_HEADER_LENGTH;
  else
    p->header_length = QCOW2_V2_HEADER_LENGTH;

  if (o->extended_l2) {
    if (p->version < 3)
      return say (lg, -EINVAL, "extended L2 entries need version 3 "
                  "(compat 1.1)");
    if (p->cluster_bits < QCOW2_EXTL2_MIN_CLUSTER_BITS)
      return say (lg, -EINVAL, "extended L2 entries need a cluster size of "
                  "at least %u (not %" PRIu32 ")",
                  1u << QCOW2_EXTL2_MIN_CLUSTER_BITS,
                  p->cluster_size);
    p->incompatible |= QCOW2_INCOMPAT_EXTL2;
  }
  if (o->lazy_refcounts) {
    if (p->version < 3)
      return say (lg, -EINVAL, "lazy refcounts need version 3 "
                  "(compat 1.1)");
    p->compatible |= QCOW2_COMPAT_LAZY_REFCOUNTS;
  }
  return 0;
}

/* The backing file's name and format, checked as names. */
static int
plan_backing (const struct logger *lg, const struct qcow2_create_opts *o,
              struct plan *p)
{
  if (o->backing_file) {
    size_t len = strlen (o->backing_file);

    if (len == 0)
      return say (lg, -EINVAL, "empty backing file name");
    if (len > QCOW2_MAX_BACKING_NAME)
      return say (lg, -EINVAL, "backing file name longer than %u bytes",
                  QCOW2_MAX_BACKING_NAME);
    if (o->backing_format == NULL)
      return say (lg, -EINVAL, "a backing file needs its format "
                  "(qcow2 or raw)");
    if (strcmp (o->backing_format, "qcow2") != 0 &&
        strcmp (o->backing_format, "raw") != 0)
      return say (lg, -EINVAL, "unsupported backing format '%s' (qcow2 or "
                  "raw)", o->backing_format);
    p->backing_file = o->backing_file;
    p->backing_format = o->backing_format;
  }
  else if (o->backing_format)
    return say (lg, -EINVAL, "backing format given without a backing file");
  return 0;
}

/* The virtual size: given, or the backing file's (which check_backing
 * opens), in whole sectors. */
static int
plan_size (const struct logger *lg, const char *path,
           const struct qcow2_create_opts *o, struct plan *p)
{
  p->size = o->size;
  if (p->backing_file) {
    uint64_t bsize = 0;   /* set by check_backing; gcc -O2 cannot tell */
    int r = check_backing (lg, path, p, &bsize);

    if (r < 0)
      return r;
    if (p->size == 0)
      p->size = bsize;
  }
  if (p->size == 0)
    return say (lg, -EINVAL, "image size must be greater than 0");
  /* Whole sectors, rounded up as qemu-img create does. */
  if (p->size > UINT64_MAX - (SECTOR_SIZE - 1))
    return say (lg, -EFBIG, "image size %" PRIu64 " is too large",
                p->size);
  p->size = ROUND_UP (p->size, (uint64_t) SECTOR_SIZE);
  return 0;
}

/* Validate the options into P.  Everything a user can get wrong is
 * caught here, before any file exists. */
static int
plan_options (const struct logger *lg, const char *path,
              const struct qcow2_create_opts *o, struct plan *p)
{
  int r;

  memset (p, 0, sizeof *p);
  if (path == NULL || *path == '\0')
    return say (lg, -EINVAL, "no image file name given");
  r = plan_format (lg, o, p);
  if (r == 0)
    r = plan_features (lg, o, p);
  if (r == 0)
    r = plan_backing (lg, o, p);
  if (r == 0)
    r = plan_size (lg, path, o, p);
  return r;
}

/* Lay the metadata out: header, refcount table, refcount blocks, L1.
 * The refcount blocks must count every one of these clusters, themselves
 * included, and the table must have room for every block: grow both
 * until they cover the whole (a few rounds at most). */
static int
plan_layout (const struct logger *lg, struct plan *p)
{
  uint64_t cs = p->cluster_size;
  uint64_t l2_entries = cs / ((p->incompatible & QCOW2_INCOMPAT_EXTL2)
                              ? QCOW2_EXTL2E_SIZE : QCOW2_L2E_SIZE);
  uint64_t per_l1 = cs * l2_entries;      /* at most 2^39 */
  uint64_t refs_per_block = (cs * 8) >> p->refcount_order;
  uint64_t max_l1 = QCOW2_MAX_L1_BYTES / QCOW2_L1E_SIZE;

  p->l1_size = p->size / per_l1 + (p->size % per_l1 != 0);
  if (p->l1_size > max_l1)
    return say (lg, -EFBIG, "image size %" PRIu64 " is too large for "
                "%" PRIu64 "-byte clusters (at most %" PRIu64 " bytes, as "
                "in QEMU)", p->size, cs, max_l1 * per_l1);
  p->l1_clusters = DIV_ROUND_UP (p->l1_size * QCOW2_L1E_SIZE, cs);

  p->reftable_clusters = 1;
  p->refblocks = 1;
  for (;;) {
    uint64_t total = 1 + p->reftable_clusters + p->refblocks
      + p->l1_clusters;
    uint64_t need_blocks = DIV_ROUND_UP (total, refs_per_block);
    uint64_t need_table = DIV_ROUND_UP (need_blocks * 8, cs);

    if (need_blocks <= p->refblocks && need_table <= p->reftable_clusters) {
      p->total_clusters = total;
      break;
    }
    p->refblocks = MAX (p->refblocks, need_blocks);
    p->reftable_clusters = MAX (p->reftable_clusters, need_table);
  }
  /* Bounded by the L1 limit above; checked so a change there cannot make
   * us write a table QEMU (and open.c) refuse. */
  if (p->reftable_clusters * cs > QCOW2_MAX_REFTABLE_BYTES)
    return say (lg, -EFBIG, "refcount table would be too large");

  p->reftable_offset = cs;
  p->refblock_offset = p->reftable_offset + p->reftable_clusters * cs;
  p->l1_offset = p->refblock_offset + p->refblocks * cs;
  return 0;
}

/* Append one header extension at *POS of cluster 0 (the caller checked
 * it fits). */
static void
put_ext (unsigned char *c0, size_t *pos, uint32_t type, const void *data,
         uint32_t len)
{
  store_be32 (c0 + *pos, type);
  store_be32 (c0 + *pos + 4, len);
  if (len)
    memcpy (c0 + *pos + QCOW2_EXT_HEADER_SIZE, data, len);
  *pos += QCOW2_EXT_HEADER_SIZE + ROUND_UP ((size_t) len, 8);
}

/* Fill cluster 0: the header, the header extensions, the backing file
 * name.  The feature name table is optional: like QEMU, leave it out
 * when it does not fit next to the rest (512-byte clusters). */
static int
build_header (const struct logger *lg, const struct plan *p,
              unsigned char *c0)
{
  size_t pos = p->header_length;
  size_t name_len = p->backing_file ? strlen (p->backing_file) : 0;
  size_t fmt_len = p->backing_format ? strlen (p->backing_format) : 0;
  size_t table_len = NR_FEATURES * QCOW2_FEATURE_ENTRY_SIZE;
  size_t needed;

  needed = pos + QCOW2_EXT_HEADER_SIZE + name_len;
  if (p->backing_file)
    needed += QCOW2_EXT_HEADER_SIZE + ROUND_UP (fmt_len, 8);
  if (needed > p->cluster_size)
    return say (lg, -EINVAL, "backing file name too long for %" PRIu32
                "-byte clusters", p->cluster_size);

  store_be32 (c0 + QCOW2_HDR_MAGIC, QCOW2_MAGIC);
  store_be32 (c0 + QCOW2_HDR_VERSION, p->version);
  store_be32 (c0 + QCOW2_HDR_CLUSTER_BITS, p->cluster_bits);
  store_be64 (c0 + QCOW2_HDR_SIZE, p->size);
  store_be32 (c0 + QCOW2_HDR_CRYPT_METHOD, QCOW2_CRYPT_NONE);
  store_be32 (c0 + QCOW2_HDR_L1_SIZE, (uint32_t) p->l1_size);
  store_be64 (c0 + QCOW2_HDR_L1_TABLE_OFFSET, p->l1_offset);
  store_be64 (c0 + QCOW2_HDR_REFCOUNT_TABLE_OFFSET, p->reftable_offset);
  store_be32 (c0 + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS,
              (uint32_t) p->reftable_clusters);
  if (p->version >= 3) {
    store_be64 (c0 + QCOW2_HDR_INCOMPATIBLE_FEATURES, p->incompatible);
    store_be64 (c0 + QCOW2_HDR_COMPATIBLE_FEATURES, p->compatible);
    store_be32 (c0 + QCOW2_HDR_REFCOUNT_ORDER, p->refcount_order);
    store_be32 (c0 + QCOW2_HDR_HEADER_LENGTH, p->header_length);
    if (p->header_length > QCOW2_HDR_COMPRESSION_TYPE)
      c0[QCOW2_HDR_COMPRESSION_TYPE] = p->compression_type;
  }

  if (p->backing_file)
    put_ext (c0, &pos, QCOW2_EXT_BACKING_FORMAT, p->backing_format,
             (uint32_t) fmt_len);
  if (p->version >= 3
      && needed + QCOW2_EXT_HEADER_SIZE + table_len <= p->cluster_size) {
    unsigned char table[NR_FEATURES * QCOW2_FEATURE_ENTRY_SIZE];

    memset (table, 0, sizeof table);
    for (size_t i = 0; i < NR_FEATURES; i++) {
      unsigned char *e = table + i * QCOW2_FEATURE_ENTRY_SIZE;

      e[0] = feature_names[i].type;
      e[1] = feature_names[i].bit;
      memcpy (e + 2, feature_names[i].name, strlen (feature_names[i].name));
    }
    put_ext (c0, &pos, QCOW2_EXT_FEATURE_TABLE, table, sizeof table);
  }
  put_ext (c0, &pos, QCOW2_EXT_END, NULL, 0);

  if (p->backing_file) {
    memcpy (c0 + pos, p->backing_file, name_len);
    store_be64 (c0 + QCOW2_HDR_BACKING_FILE_OFFSET, pos);
    store_be32 (c0 + QCOW2_HDR_BACKING_FILE_SIZE, (uint32_t) name_len);
  }
  return 0;
}

/* Refcount of cluster I in BLOCK := 1.  Widths below 8 bits pack from
 * the least significant bit of each byte; wider ones are big-endian. */
static void
refcount_set_one (unsigned char *block, uint32_t order, uint64_t i)
{
  if (order < 3) {
    uint64_t bit = i << order;

    block[bit / 8] |= (unsigned char) (1u << (bit % 8));
  }
  else {
    uint64_t width = UINT64_C (1) << (order - 3);

    block[i * width + width - 1] = 1;
  }
}

/* The file is ours, created just now: plain POSIX I/O, through the
 * library's own loop over short writes and EINTR. */
static int
write_all (int fd, const void *buf, size_t len, uint64_t off)
{
  return qcow2_posix_io.pwrite (NULL, fd, buf, len, off);
}

/* Write every metadata cluster of the plan to FD and make it durable.
 * The header goes last: until it is written the file is not an image. */
static int
write_image (const struct logger *lg, const char *path, int fd,
             const struct plan *p)
{
  uint64_t cs = p->cluster_size;
  uint64_t refs_per_block = (cs * 8) >> p->refcount_order;
  uint64_t l1_bytes = p->l1_clusters * cs;
  int r;

  CLEANUP_FREE unsigned char *c0 = calloc (1, cs);
  CLEANUP_FREE unsigned char *table = calloc (p->reftable_clusters, cs);
  CLEANUP_FREE unsigned char *blocks = calloc (p->refblocks, cs);
  CLEANUP_FREE unsigned char *zeros = calloc (1, MIN (l1_bytes, ZERO_CHUNK));
  if (!c0 || !table || !blocks || !zeros)
    return say (lg, -ENOMEM, "out of memory");

  r = build_header (lg, p, c0);
  if (r < 0)
    return r;
  for (uint64_t b = 0; b < p->refblocks; b++)
    store_be64 (table + b * 8, p->refblock_offset + b * cs);
  for (uint64_t i = 0; i < p->total_clusters; i++)
    refcount_set_one (blocks + (i / refs_per_block) * cs, p->refcount_order,
                      i % refs_per_block);

  r = write_all (fd, table, p->reftable_clusters * cs, p->reftable_offset);
  if (r == 0)
    r = write_all (fd, blocks, p->refblocks * cs, p->refblock_offset);
  /* Real zeros, not a hole, for the L1 table: QEMU writes it too, and a
   * sparse metadata area would look like preallocation=metadata. */
  for (uint64_t done = 0; r == 0 && done < l1_bytes; ) {
    uint64_t n = MIN (l1_bytes - done, ZERO_CHUNK);

    r = write_all (fd, zeros, n, p->l1_offset + done);
    done += n;
  }
  if (r == 0)
    r = write_all (fd, c0, cs, 0);
  if (r < 0)
    return say (lg, r, "%s: write: %s", path, strerror (-r));
  if (fsync (fd) == -1) {
    r = -errno;
    return say (lg, r, "%s: fsync: %s", path, strerror (-r));
  }
  return 0;
}

/* Make the new directory entry durable too. */
static void
sync_parent_dir (const char *path)
{
  const char *slash = strrchr (path, '/');
  CLEANUP_FREE char *dir = NULL;
  int fd;

  if (slash == NULL)
    dir = strdup (".");
  else if (slash == path)
    dir = strdup ("/");
  else
    dir = strndup (path, slash - path);
  if (dir == NULL)
    return;
  fd = open (dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return;
  /* Best effort: some file systems refuse fsync on directories. */
  (void) fsync (fd);
  close (fd);
}

int
qcow2_create (const char *path, const struct qcow2_create_opts *opts,
              qcow2_log_fn log, void *log_opaque)
{
  const struct logger lg = { log, log_opaque };
  struct plan p;
  int fd, r;

  if (opts == NULL)
    return say (&lg, -EINVAL, "no options given");
  r = plan_options (&lg, path, opts, &p);
  if (r < 0)
    return r;
  r = plan_layout (&lg, &p);
  if (r < 0)
    return r;

  fd = open (path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd == -1) {
    r = -errno;
    if (r == -EEXIST)
      return say (&lg, r, "%s: file exists (refusing to overwrite it)",
                  path);
    return say (&lg, r, "%s: %s", path, strerror (-r));
  }

  r = write_image (&lg, path, fd, &p);
  if (close (fd) == -1 && r == 0) {
    r = -errno;
    say (&lg, r, "%s: close: %s", path, strerror (-r));
  }
  if (r < 0) {
    unlink (path);
    return r;
  }
  sync_parent_dir (path);
  return 0;
}
