/* SPDX-License-Identifier: MIT */
/* Reading and checking the header of a qcow2 layer, for open.c: the
 * fixed header (versions 2 and 3), the rest of cluster 0 (compression
 * type, backing file name, header extensions), the feature bits, the L2
 * entry layout, and the place of every table the header names (L1,
 * refcount table, snapshot table, bitmap directory) and that none
 * overlaps another.  The file is hostile: each field is range-checked
 * with overflow-proof comparisons before it is used, and a failure logs
 * one line saying why before returning -EINVAL (not a valid image),
 * -ENOTSUP (valid, but uses something we don't implement) or the host's
 * -errno.  Nothing is loaded here but the header cluster: open.c loads
 * the L1 table and opens the files the header names. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Refusals and names from the file, in messages (log.c). */
#define fail qcow2_fail
#define printable qcow2_printable

/* Feature name table entries, kept only while the header is parsed, to
 * name unknown incompatible bits. */
struct feature_name {
  uint8_t type;
  uint8_t bit;
  char name[QCOW2_FEATURE_NAME_SIZE + 1];
};

struct parse_state {
  struct feature_name *features;
  size_t nr_features;
};

static void
free_parse_state (struct parse_state *ps)
{
  free (ps->features);
}
#define CLEANUP_PARSE_STATE __attribute__ ((cleanup (free_parse_state)))

/* Copy LEN bytes of a name stored on disk into a NUL-terminated string.
 * Returns NULL (with errno) on allocation failure or, with errno EINVAL,
 * if the name holds a NUL byte. */
static char *
dup_name (const uint8_t *p, size_t len)
{
  char *s;

  if (memchr (p, '\0', len) != NULL) {
    errno = EINVAL;
    return NULL;
  }
  s = malloc (len + 1);
  if (!s)
    return NULL;
  memcpy (s, p, len);
  s[len] = '\0';
  return s;
}

/* Name the incompatible feature BIT for a message: from the feature name
 * table if it has an entry, otherwise by number. */
static void
feature_name (const struct parse_state *ps, unsigned bit,
              char *buf, size_t n)
{
  size_t i;

  for (i = 0; i < ps->nr_features; i++) {
    if (ps->features[i].type == QCOW2_FEATURE_TYPE_INCOMPATIBLE &&
        ps->features[i].bit == bit && ps->features[i].name[0]) {
      printable (ps->features[i].name, buf, n);
      return;
    }
  }
  snprintf (buf, n, "unknown incompatible feature bit %u", bit);
}

/* Walk the header extensions in C0[START..END), all in cluster 0. */
static int
parse_extensions (struct qcow2_image *img, struct qcow2_layer *l,
                  struct parse_state *ps, const char *name,
                  const uint8_t *c0, uint64_t start, uint64_t end,
                  uint64_t file_size, bool *have_crypto_ext)
{
  uint64_t off = start;

  while (end - off >= QCOW2_EXT_HEADER_SIZE) {
    uint32_t type = load_be32 (c0 + off);
    uint32_t len = load_be32 (c0 + off + 4);
    const uint8_t *data = c0 + off + QCOW2_EXT_HEADER_SIZE;
    uint64_t avail = end - off - QCOW2_EXT_HEADER_SIZE;

    if (type == QCOW2_EXT_END)
      return 0;
    if (len > avail)
      return fail (img, -EINVAL,
                   "%s: invalid header extension 0x%08x: its length %u "
                   "runs past the end of the header area (%" PRIu64
                   " bytes left)", name, type, len, avail);

    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
      if (len > QCOW2_MAX_BACKING_NAME)
        return fail (img, -EINVAL, "%s: backing format extension too long "
                     "(%u bytes)", name, len);
      free (l->backing_format);
      l->backing_format = dup_name (data, len);
      if (!l->backing_format)
        return fail (img, errno == EINVAL ? -EINVAL : -ENOMEM,
                     "%s: invalid backing format extension", name);
      break;

    case QCOW2_EXT_FEATURE_TABLE: {
      size_t n = len / QCOW2_FEATURE_ENTRY_SIZE, i;

      free (ps->features);
      ps->features = calloc (n ? n : 1, sizeof *ps->features);
      if (!ps->features)
        return fail (img, -ENOMEM, "out of memory");
      ps->nr_features = n;
      for (i = 0; i < n; i++) {
        const uint8_t *e = data + i * QCOW2_FEATURE_ENTRY_SIZE;

        ps->features[i].type = e[0];
        ps->features[i].bit = e[1];
        memcpy (ps->features[i].name, e + 2, QCOW2_FEATURE_NAME_SIZE);
        ps->features[i].name[QCOW2_FEATURE_NAME_SIZE] = '\0';
      }
      break;
    }

    case QCOW2_EXT_BITMAPS: {
      int r = bitmap_parse_ext (l, name, data, len, file_size);

      if (r < 0)
        return r;
      break;
    }

    case QCOW2_EXT_CRYPTO: {
      uint64_t hdr_off, hdr_len;

      if (len != QCOW2_CRYPTO_EXT_SIZE)
        return fail (img, -EINVAL, "%s: encryption header extension has "
                     "length %u, expected %u", name, len,
                     QCOW2_CRYPTO_EXT_SIZE);
      hdr_off = load_be64 (data);
      hdr_len = load_be64 (data + 8);
      if (!IS_ALIGNED (hdr_off, l->cluster_size) || hdr_off == 0 ||
          !range_fits (hdr_off, hdr_len, file_size))
        return fail (img, -EINVAL, "%s: encryption header at 0x%" PRIx64
                     " (%" PRIu64 " bytes) is unaligned or outside the file",
                     name, hdr_off, hdr_len);
      *have_crypto_ext = true;
      break;
    }

    case QCOW2_EXT_DATA_FILE:
      if (len > QCOW2_MAX_BACKING_NAME || len == 0)
        return fail (img, -EINVAL, "%s: external data file name has "
                     "invalid length %u", name, len);
      free (l->data_file_name);
      l->data_file_name = dup_name (data, len);
      if (!l->data_file_name)
        return fail (img, errno == EINVAL ? -EINVAL : -ENOMEM,
                     "%s: invalid external data file name", name);
      break;

    default:
      /* Unknown extensions are skipped ("Header extensions"). */
      break;
    }

    /* Data is padded to 8 bytes; off + 8 + len <= end <= cluster size,
     * so this cannot overflow. */
    off += QCOW2_EXT_HEADER_SIZE + ROUND_UP ((uint64_t) len, 8);
    if (off > end)
      break;
  }
  return 0;
}

/* Walk the snapshot table: we don't serve snapshots, but a table that
 * runs off the file or is absurdly large marks an image we don't trust. */
static int
check_snapshots (struct qcow2_image *img, struct qcow2_layer *l,
                 const char *name, uint64_t file_size,
                 uint64_t *table_len)
{
  uint64_t pos = l->snapshots_offset, total = 0;
  uint32_t i;
  int fd = img->files[l->file].fd;

  *table_len = 0;
  if (l->nb_snapshots == 0)
    return 0;
  if (l->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
    return fail (img, -EINVAL, "%s: too many snapshots (%u; at most %u)",
                 name, l->nb_snapshots, QCOW2_MAX_SNAPSHOTS);
  if (!IS_ALIGNED (l->snapshots_offset, l->cluster_size) ||
      l->snapshots_offset == 0 ||
      !range_fits (l->snapshots_offset, QCOW2_SN_HEADER_SIZE, file_size))
    return fail (img, -EINVAL, "%s: snapshot table offset 0x%" PRIx64
                 " is unaligned or outside the file", name,
                 l->snapshots_offset);

  for (i = 0; i < l->nb_snapshots; i++) {
    uint8_t h[QCOW2_SN_HEADER_SIZE];
    uint64_t entry_len;
    uint32_t extra;
    int r;

    if (!range_fits (pos, QCOW2_SN_HEADER_SIZE, file_size))
      return fail (img, -EINVAL, "%s: snapshot table entry %u runs past "
                   "the end of the file", name, i);
    r = img->io->pread (img->io_opaque, fd, h, sizeof h, pos);
    if (r < 0)
      return fail (img, r, "%s: reading the snapshot table: %s", name,
                   strerror (-r));
    extra = load_be32 (h + QCOW2_SN_EXTRA_DATA_SIZE);
    if (extra > QCOW2_MAX_SNAPSHOT_EXTRA_DATA)
      return fail (img, -EINVAL, "%s: snapshot table entry %u has too "
                   "much extra data (%u bytes)", name, i, extra);
    entry_len = QCOW2_SN_HEADER_SIZE + (uint64_t) extra +
      load_be16 (h + QCOW2_SN_ID_STR_SIZE) +
      load_be16 (h + QCOW2_SN_NAME_SIZE);
    if (!range_fits (pos, entry_len, file_size))
      return fail (img, -EINVAL, "%s: snapshot table entry %u runs past "
                   "the end of the file", name, i);
    /* Entries are padded to 8 bytes, but QEMU does not write the padding
     * of the last one: the file may end right after it. */
    entry_len = ROUND_UP (entry_len, 8);   /* small: cannot overflow */
    pos += entry_len;
    total += entry_len;
    if (total > QCOW2_MAX_SNAPSHOTS_BYTES)
      return fail (img, -EINVAL, "%s: snapshot table too large", name);
  }
  *table_len = total;
  return 0;
}

struct region {
  const char *what;
  uint64_t off, len;
};

/* The header cluster, L1 table, refcount table and snapshot table must
 * not overlap: QEMU would open such an image, but its metadata means two
 * things at once and its first write would corrupt it further. */
static int
check_overlaps (struct qcow2_image *img, const char *name,
                const struct region *r, size_t n)
{
  size_t i, j;

  for (i = 0; i < n; i++) {
    if (r[i].len == 0)
      continue;
    for (j = i + 1; j < n; j++) {
      if (r[j].len == 0)
        continue;
      /* Both ranges were checked to lie inside the file, so off + len
       * does not overflow. */
      if (r[i].off < r[j].off + r[j].len && r[j].off < r[i].off + r[i].len)
        return fail (img, -EINVAL, "%s: the %s overlaps the %s", name,
                     r[j].what, r[i].what);
    }
  }
  return 0;
}

/* What the fixed header says that the later steps of open_qcow2_layer
 * check, but the layer does not keep. */
struct header_rest {
  uint64_t backing_off;
  uint32_t backing_size;
  uint32_t crypt_method;
};

/* Read and check the fixed part of L's header (versions 2 and 3) into
 * L, and the rest into RH. */
static int
read_fixed_header (struct qcow2_image *img, struct qcow2_layer *l,
                   const char *name, struct header_rest *rh)
{
  const int fd = img->files[l->file].fd;
  const uint64_t file_size = img->files[l->file].size;
  uint8_t h[QCOW2_V3_HEADER_LENGTH + 8];
  int r;

  if (file_size < QCOW2_V2_HEADER_LENGTH)
    return fail (img, -EINVAL, "%s: file too small to be a qcow2 image "
                 "(%" PRIu64 " bytes)", name, file_size);
  r = img->io->pread (img->io_opaque, fd, h, sizeof h, 0);
  if (r < 0)
    return fail (img, r, "%s: reading the header: %s", name, strerror (-r));
  if (load_be32 (h + QCOW2_HDR_MAGIC) != QCOW2_MAGIC) {
    if (img->open_error) {
      img->open_error->kind = QCOW2_OPEN_ERROR_NOT_QCOW2;
      img->open_error->depth = l->depth;
      snprintf (img->open_error->file, sizeof img->open_error->file, "%s",
                name);
    }
    return fail (img, -EINVAL, "%s: not a qcow2 image (bad magic)", name);
  }

  l->format = LAYER_QCOW2;
  l->version = load_be32 (h + QCOW2_HDR_VERSION);
  if (l->version != 2 && l->version != 3)
    return fail (img, -ENOTSUP, "%s: unsupported qcow2 version %u",
                 name, l->version);
  l->cluster_bits = load_be32 (h + QCOW2_HDR_CLUSTER_BITS);
  if (l->cluster_bits < QCOW2_MIN_CLUSTER_BITS ||
      l->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
    return fail (img, -EINVAL, "%s: invalid cluster_bits %u (cluster size "
                 "must be 512 B to 2 MiB)", name, l->cluster_bits);
  l->cluster_size = UINT32_C (1) << l->cluster_bits;

  l->size = load_be64 (h + QCOW2_HDR_SIZE);
  rh->crypt_method = load_be32 (h + QCOW2_HDR_CRYPT_METHOD);
  l->l1_size = load_be32 (h + QCOW2_HDR_L1_SIZE);
  l->l1_table_offset = load_be64 (h + QCOW2_HDR_L1_TABLE_OFFSET);
  l->refcount_table_offset = load_be64 (h + QCOW2_HDR_REFCOUNT_TABLE_OFFSET);
  l->refcount_table_clusters =
    load_be32 (h + QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS);
  l->nb_snapshots = load_be32 (h + QCOW2_HDR_NB_SNAPSHOTS);
  l->snapshots_offset = load_be64 (h + QCOW2_HDR_SNAPSHOTS_OFFSET);
  rh->backing_off = load_be64 (h + QCOW2_HDR_BACKING_FILE_OFFSET);
  rh->backing_size = load_be32 (h + QCOW2_HDR_BACKING_FILE_SIZE);

  if (l->version == 2) {
    l->incompatible = l->compatible = l->autoclear = 0;
    l->refcount_order = 4;
    l->header_length = QCOW2_V2_HEADER_LENGTH;
  }
  else {
    l->incompatible = load_be64 (h + QCOW2_HDR_INCOMPATIBLE_FEATURES);
    l->compatible = load_be64 (h + QCOW2_HDR_COMPATIBLE_FEATURES);
    l->autoclear = load_be64 (h + QCOW2_HDR_AUTOCLEAR_FEATURES);
    l->refcount_order = load_be32 (h + QCOW2_HDR_REFCOUNT_ORDER);
    l->header_length = load_be32 (h + QCOW2_HDR_HEADER_LENGTH);
    if (l->header_length < QCOW2_V3_HEADER_LENGTH)
      return fail (img, -EINVAL, "%s: invalid header_length %u (at least "
                   "%u in version 3)", name, l->header_length,
                   QCOW2_V3_HEADER_LENGTH);
    if (!IS_ALIGNED (l->header_length, 8))
      return fail (img, -EINVAL, "%s: invalid header_length %u (not a "
                   "multiple of 8)", name, l->header_length);
    /* The header and its extensions live in cluster 0. */
    if (l->header_length > l->cluster_size)
      return fail (img, -EINVAL, "%s: invalid header_length %u (larger "
                   "than a cluster)", name, l->header_length);
    if (l->refcount_order > QCOW2_MAX_REFCOUNT_ORDER)
      return fail (img, -EINVAL, "%s: invalid refcount_order %u (at most "
                   "%u)", name, l->refcount_order, QCOW2_MAX_REFCOUNT_ORDER);
  }
  return 0;
}

/* Read cluster 0 and parse what follows the fixed header: the
 * compression type, the backing file name and the header extensions
 * (feature names into PS; *HAVE_CRYPTO_EXT). */
static int
read_header_cluster (struct qcow2_image *img, struct qcow2_layer *l,
                     const char *name, const struct header_rest *rh,
                     struct parse_state *ps, bool *have_crypto_ext)
{
  const int fd = img->files[l->file].fd;
  const uint64_t file_size = img->files[l->file].size;
  CLEANUP_FREE uint8_t *c0 = NULL;
  uint64_t ext_end;
  int r;

  /* Read the whole header cluster once; everything else in it is parsed
   * from memory, checked against its end. */
  c0 = malloc (l->cluster_size);
  if (!c0)
    return fail (img, -ENOMEM, "out of memory");
  r = img->io->pread (img->io_opaque, fd, c0, l->cluster_size, 0);
  if (r < 0)
    return fail (img, r, "%s: reading the header: %s", name, strerror (-r));

  l->compression_type = QCOW2_COMPRESSION_ZLIB;
  if (l->header_length > QCOW2_HDR_COMPRESSION_TYPE)
    l->compression_type = c0[QCOW2_HDR_COMPRESSION_TYPE];
  if ((l->compression_type != QCOW2_COMPRESSION_ZLIB) !=
      !!(l->incompatible & QCOW2_INCOMPAT_COMPRESSION))
    return fail (img, -EINVAL, "%s: compression type %u does not match "
                 "the compression type feature bit", name,
                 l->compression_type);

  /* Backing file name: inside cluster 0, after the header. */
  ext_end = l->cluster_size;
  if (rh->backing_off != 0) {
    if (rh->backing_size > QCOW2_MAX_BACKING_NAME)
      return fail (img, -EINVAL, "%s: backing file name too long (%u "
                   "bytes; at most %u)", name, rh->backing_size,
                   QCOW2_MAX_BACKING_NAME);
    if (rh->backing_off < l->header_length ||
        !range_fits (rh->backing_off, rh->backing_size, l->cluster_size))
      return fail (img, -EINVAL, "%s: backing file name at offset %" PRIu64
                   " (%u bytes) is outside the header cluster", name,
                   rh->backing_off, rh->backing_size);
    ext_end = rh->backing_off;
    if (rh->backing_size > 0) {
      l->backing_name = dup_name (c0 + rh->backing_off, rh->backing_size);
      if (!l->backing_name)
        return fail (img, errno == EINVAL ? -EINVAL : -ENOMEM,
                     "%s: invalid backing file name", name);
    }
  }

  r = parse_extensions (img, l, ps, name, c0, l->header_length, ext_end,
                        file_size, have_crypto_ext);
  return r;
}

/* Refuse what we do not support (unknown incompatible features, named;
 * encryption; other compression types) and act on the corrupt and dirty
 * bits. */
static int
check_features (struct qcow2_image *img, struct qcow2_layer *l,
                const char *name, const struct header_rest *rh,
                const struct parse_state *ps, bool have_crypto_ext,
                bool writable)
{
  uint64_t unknown;
  int r;

  /* Unknown incompatible features: refuse, naming each of them. */
  unknown = l->incompatible & ~QCOW2_INCOMPAT_MASK;
  if (unknown) {
    char list[768] = "", one[64];
    size_t used = 0;
    unsigned bit;

    for (bit = 0; bit < 64; bit++) {
      if (!(unknown & (UINT64_C (1) << bit)))
        continue;
      feature_name (ps, bit, one, sizeof one);
      r = snprintf (list + used, sizeof list - used, "%s%s",
                    used ? ", " : "", one);
      if (r < 0 || (size_t) r >= sizeof list - used)
        break;
      used += r;
    }
    return fail (img, -ENOTSUP, "%s: unsupported incompatible feature: %s",
                 name, list);
  }

  if (rh->crypt_method != QCOW2_CRYPT_NONE)
    return fail (img, -ENOTSUP, "%s: image is encrypted (crypt_method %u: "
                 "%s); encrypted images are not supported", name,
                 rh->crypt_method,
                 rh->crypt_method == QCOW2_CRYPT_AES ? "AES" :
                 rh->crypt_method == QCOW2_CRYPT_LUKS ? "LUKS" : "unknown");
  if (have_crypto_ext)
    return fail (img, -EINVAL, "%s: encryption header extension in an "
                 "unencrypted image", name);

  if (l->compression_type != QCOW2_COMPRESSION_ZLIB &&
      l->compression_type != QCOW2_COMPRESSION_ZSTD)
    return fail (img, -ENOTSUP, "%s: unsupported compression type %u "
                 "(only zlib and zstd)", name, l->compression_type);

  if (l->incompatible & QCOW2_INCOMPAT_CORRUPT) {
    if (writable)
      return fail (img, -EROFS, "%s: image is marked corrupt; it can only "
                   "be opened read-only (repair it with 'qemu-img check "
                   "-r all')", name);
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: image is marked corrupt; "
               "serving it read-only", name);
    atomic_store (&img->corrupt, true);
  }
  if (l->incompatible & QCOW2_INCOMPAT_DIRTY) {
    /* Refcounts may be stale (lazy refcounts); reading needs none, and
     * a writable open repairs them (open_writable). */
    if (!writable)
      qcow2_log (img, QCOW2_LOG_WARNING, "%s: image is dirty (not closed "
               "cleanly); refcounts may be stale, reading is safe", name);
  }
  return 0;
}

/* The L2 entry layout (extended L2 or not) and its derived fields; the
 * external data file's name kept only when the feature bit is set. */
static int
set_entry_layout (struct qcow2_image *img, struct qcow2_layer *l,
                  const char *name)
{
  l->extended_l2 = (l->incompatible & QCOW2_INCOMPAT_EXTL2) != 0;
  if (l->extended_l2 && l->cluster_bits < QCOW2_EXTL2_MIN_CLUSTER_BITS)
    return fail (img, -EINVAL, "%s: extended L2 entries need a cluster size "
                 "of at least 16 KiB (cluster size is %u)", name,
                 l->cluster_size);
  l->l2_entry_size = l->extended_l2 ? QCOW2_EXTL2E_SIZE : QCOW2_L2E_SIZE;
  l->l2_entries = l->cluster_size / l->l2_entry_size;
  l->subcluster_bits = l->extended_l2 ? l->cluster_bits - 5 : l->cluster_bits;
  l->csize_shift = 62 - (l->cluster_bits - 8);
  l->csize_mask = (UINT32_C (1) << (l->cluster_bits - 8)) - 1;
  l->coffset_mask = (UINT64_C (1) << l->csize_shift) - 1;

  if (l->incompatible & QCOW2_INCOMPAT_DATA_FILE) {
    if (!l->data_file_name)
      return fail (img, -EINVAL, "%s: image uses an external data file but "
                   "does not name it", name);
    l->data_file_raw = (l->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) != 0;
  }
  else if (l->data_file_name) {
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: ignoring external data file "
               "name: the external data file feature bit is clear", name);
    free (l->data_file_name);
    l->data_file_name = NULL;
  }
  return 0;
}

/* Check the tables the header names: the L1 table (large enough, not
 * absurdly large, aligned, inside the file), the refcount table, the
 * snapshot table, and that none overlaps another.  Sets *L1_BYTESP. */
static int
check_tables (struct qcow2_image *img, struct qcow2_layer *l,
              const char *name, uint64_t *l1_bytesp)
{
  const uint64_t file_size = img->files[l->file].size;
  uint64_t l1_bytes, needed, max_l1, sn_len;
  uint32_t l2_bits;
  int r;

  /* L1 table: large enough for the virtual size, not absurdly large,
   * cluster aligned, inside the file.  One L1 entry maps 2^l2_bits
   * bytes (at most 2^39), so needed is computed without overflow. */
  l2_bits = l->cluster_bits + (l->cluster_bits - (l->extended_l2 ? 4 : 3));
  needed = (l->size >> l2_bits) +
    ((l->size & ((UINT64_C (1) << l2_bits) - 1)) != 0);
  max_l1 = QCOW2_MAX_L1_BYTES / QCOW2_L1E_SIZE;
  if (l->l1_size > max_l1)
    return fail (img, -EINVAL, "%s: L1 table too large (%u entries; at most "
                 "%" PRIu64 ")", name, l->l1_size, max_l1);
  if (needed > l->l1_size)
    return fail (img, -EINVAL, "%s: L1 table too small (%u entries) for the "
                 "virtual size %" PRIu64 " (needs %" PRIu64 ")", name,
                 l->l1_size, l->size, needed);
  l1_bytes = (uint64_t) l->l1_size * QCOW2_L1E_SIZE;
  *l1_bytesp = l1_bytes;
  if (l->l1_size > 0) {
    if (!IS_ALIGNED (l->l1_table_offset, l->cluster_size))
      return fail (img, -EINVAL, "%s: L1 table offset 0x%" PRIx64 " is not "
                   "cluster aligned", name, l->l1_table_offset);
    if (!range_fits (l->l1_table_offset, l1_bytes, file_size))
      return fail (img, -EINVAL, "%s: L1 table at 0x%" PRIx64 " (%" PRIu64
                   " bytes) runs past the end of the file", name,
                   l->l1_table_offset, l1_bytes);
  }

  /* Refcount table: we only read today, but a table that cannot exist
   * means the image is not what it claims to be. */
  if (l->refcount_table_clusters == 0)
    return fail (img, -EINVAL, "%s: image has no refcount table", name);
  if (l->refcount_table_clusters >
      QCOW2_MAX_REFTABLE_BYTES >> l->cluster_bits)
    return fail (img, -EINVAL, "%s: refcount table too large (%u clusters)",
                 name, l->refcount_table_clusters);
  if (!IS_ALIGNED (l->refcount_table_offset, l->cluster_size))
    return fail (img, -EINVAL, "%s: refcount table offset 0x%" PRIx64
                 " is not cluster aligned", name, l->refcount_table_offset);
  if (!range_fits (l->refcount_table_offset,
                   (uint64_t) l->refcount_table_clusters << l->cluster_bits,
                   file_size))
    return fail (img, -EINVAL, "%s: refcount table at 0x%" PRIx64 " runs "
                 "past the end of the file", name, l->refcount_table_offset);

  r = check_snapshots (img, l, name, file_size, &sn_len);
  if (r < 0)
    return r;

  {
    const struct region regions[] = {
      { "header", 0, l->cluster_size },
      { "L1 table", l->l1_table_offset, l1_bytes },
      { "refcount table", l->refcount_table_offset,
        (uint64_t) l->refcount_table_clusters << l->cluster_bits },
      { "snapshot table", l->snapshots_offset, sn_len },
      { "bitmap directory", l->bitmap_dir_offset, l->bitmap_dir_size },
    };
    r = check_overlaps (img, name, regions,
                        sizeof regions / sizeof regions[0]);
    if (r < 0)
      return r;
  }
  return 0;
}

int
header_parse (struct qcow2_image *img, struct qcow2_layer *l,
              const char *name, bool writable, uint64_t *l1_bytes)
{
  CLEANUP_PARSE_STATE struct parse_state ps = { 0 };
  struct header_rest rh = { 0 };
  bool have_crypto_ext = false;
  int r;

  r = read_fixed_header (img, l, name, &rh);
  if (r == 0)
    r = read_header_cluster (img, l, name, &rh, &ps, &have_crypto_ext);
  if (r == 0)
    r = check_features (img, l, name, &rh, &ps, have_crypto_ext, writable);
  if (r == 0)
    r = set_entry_layout (img, l, name);
  if (r == 0)
    r = check_tables (img, l, name, l1_bytes);
  return r;
}
