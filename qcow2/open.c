/* SPDX-License-Identifier: MIT */
/* Opening an image: read and validate the header of every layer, its
 * header extensions, the placement of its tables, and walk down the
 * backing chain.  Everything here treats the file as hostile: each field
 * is range-checked with overflow-proof comparisons before it is used, and
 * a failure logs one line saying why before returning -EINVAL (not a
 * valid image), -ENOTSUP (valid, but uses something we don't implement)
 * or the host's -errno.
 *
 * Per-entry checks of L1/L2 entries are not done here: like QEMU we load
 * the L1 table as it is and let map.c report a bad entry as corruption
 * (EIO) for the range it covers, so one bad table doesn't make the rest of
 * the disk unreadable.
 *
 * Backing files: the name is a file name, never a URL or JSON; relative
 * names are resolved against the directory of the image that names them;
 * the format comes only from the backing format extension.  We never
 * probe: an image without the extension is refused with a message saying
 * how to add it (qemu-img rebase -u -F), because probing lets a guest who
 * writes a qcow2 header into a raw backing file read any host file.  The
 * top image's format is the caller's (qcow2_open_opts.format); a caller
 * that probes does so itself, and guards what it probed.
 *
 * The top image may be raw (written in place, raw.c), may be opened
 * without its backing file, and may be served through a window; the
 * window is applied by the public calls (qcow2_map, qcow2_write_begin,
 * qcow2_zero, qcow2_discard), never inside the library. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

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

/* Open-time refusals and names from the file, in messages (log.c). */
#define fail qcow2_fail
#define printable qcow2_printable

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

/* One counter for the process: a reopened image whose layer lands at a
 * freed layer's address must not match the servers' caches of
 * decompressed clusters. */
uint64_t
stream_gen_next (void)
{
  static _Atomic uint64_t next = 1;

  return atomic_fetch_add (&next, 1);
}

/* Resolve NAME, found in the image at REFERRER, as QEMU does: absolute
 * names are used as-is, relative ones against REFERRER's directory. */
char *
open_resolve_name (const char *referrer, const char *name)
{
  const char *slash = strrchr (referrer, '/');
  size_t dirlen, namelen = strlen (name);
  char *r;

  if (name[0] == '/' || slash == NULL)
    return strdup (name);
  dirlen = slash - referrer + 1;
  r = malloc (dirlen + namelen + 1);
  if (!r)
    return NULL;
  memcpy (r, referrer, dirlen);
  memcpy (r + dirlen, name, namelen + 1);
  return r;
}

/* Open PATH through the io ops and append it to the file table; set
 * *INDEX.  WHAT says what the file is and REFERRER (NULL for the top
 * image) which image named it, for the message. */
static int
add_file (struct qcow2_image *img, const char *path, bool writable,
          const char *what, const char *referrer, unsigned *index)
{
  struct qcow2_file *files;
  char pbuf[256], rbuf[256];
  uint64_t size;
  int fd, r;

  files = realloc (img->files, (img->nr_files + 1) * sizeof *files);
  if (!files)
    return fail (img, -ENOMEM, "out of memory");
  img->files = files;

  fd = img->io->open (img->io_opaque, path, writable);
  if (fd < 0 && img->open_error) {
    struct qcow2_open_error *e = img->open_error;

    e->kind = QCOW2_OPEN_ERROR_OPEN;
    e->err = -fd;
    e->depth = img->nr_layers;
    snprintf (e->file, sizeof e->file, "%s", path);
  }
  if (fd < 0)
    return fail (img, fd, "%s%scannot open %s '%s': %s",
                 referrer ? printable (referrer, rbuf, sizeof rbuf) : "",
                 referrer ? ": " : "", what,
                 printable (path, pbuf, sizeof pbuf), strerror (-fd));
  r = img->io->get_size (img->io_opaque, fd, &size);
  if (r < 0) {
    img->io->close (img->io_opaque, fd);
    return fail (img, r, "cannot get the size of %s '%s': %s", what,
                 printable (path, pbuf, sizeof pbuf), strerror (-r));
  }
  files[img->nr_files].name = strdup (path);
  if (!files[img->nr_files].name) {
    img->io->close (img->io_opaque, fd);
    return fail (img, -ENOMEM, "out of memory");
  }
  files[img->nr_files].fd = fd;
  files[img->nr_files].writable = writable;
  files[img->nr_files].size = size;
  *index = img->nr_files++;
  return 0;
}

/* Allocate a layer and append it to img->layers, so that qcow2_close
 * frees it whatever happens next. */
static int
new_layer (struct qcow2_image *img, unsigned depth,
           struct qcow2_layer **layerp)
{
  struct qcow2_layer **layers, *layer;

  layers = realloc (img->layers, (img->nr_layers + 1) * sizeof *layers);
  if (!layers)
    return fail (img, -ENOMEM, "out of memory");
  img->layers = layers;
  layer = calloc (1, sizeof *layer);
  if (!layer)
    return fail (img, -ENOMEM, "out of memory");
  if (pthread_rwlock_init (&layer->lock, NULL) != 0) {
    free (layer);
    return fail (img, -ENOMEM, "cannot create a lock");
  }
  layer->img = img;
  layer->depth = depth;
  layer->stream_gen = stream_gen_next ();
  img->layers[img->nr_layers++] = layer;
  *layerp = layer;
  return 0;
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

/* Load L's L1 table (L1_BYTES long) whole, in host byte order. */
static int
load_l1 (struct qcow2_image *img, struct qcow2_layer *l, const char *name,
         uint64_t l1_bytes)
{
  const int fd = img->files[l->file].fd;
  int r;

  l->l1 = malloc (l1_bytes ? l1_bytes : 1);
  if (!l->l1)
    return fail (img, -ENOMEM, "out of memory");
  if (l1_bytes) {
    r = img->io->pread (img->io_opaque, fd, l->l1, l1_bytes,
                        l->l1_table_offset);
    if (r < 0)
      return fail (img, r, "%s: reading the L1 table: %s", name,
                   strerror (-r));
    for (size_t i = 0; i < l->l1_size; i++)
      l->l1[i] = load_be64 (&l->l1[i]);
  }
  return 0;
}

/* Open the external data file L names, like a backing file. */
static int
open_data_file (struct qcow2_image *img, struct qcow2_layer *l,
                const char *name, bool writable)
{
  int r;

  if (l->data_file_name) {
    CLEANUP_FREE char *path = open_resolve_name (name, l->data_file_name);

    if (!path)
      return fail (img, -ENOMEM, "out of memory");
    r = add_file (img, path, writable, "external data file", name,
                  &l->data_file);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Parse and validate the qcow2 header of layer L (its file is already
 * open), load its L1 table and create its L2 cache. */
static int
open_qcow2_layer (struct qcow2_image *img, struct qcow2_layer *l,
                  bool writable, uint64_t cache_size)
{
  CLEANUP_PARSE_STATE struct parse_state ps = { 0 };
  /* Copies, not a pointer into img->files: add_file reallocates it. */
  const char *name = img->files[l->file].name;
  struct header_rest rh = { 0 };
  bool have_crypto_ext = false;
  uint64_t l1_bytes = 0;
  int r;

  r = read_fixed_header (img, l, name, &rh);
  if (r == 0)
    r = read_header_cluster (img, l, name, &rh, &ps, &have_crypto_ext);
  if (r == 0)
    r = check_features (img, l, name, &rh, &ps, have_crypto_ext, writable);
  if (r == 0)
    r = set_entry_layout (img, l, name);
  if (r == 0)
    r = check_tables (img, l, name, &l1_bytes);
  if (r == 0)
    r = load_l1 (img, l, name, l1_bytes);
  if (r == 0)
    r = open_data_file (img, l, name, writable);
  if (r < 0)
    return r;

  r = refcount_detect_metadata_prealloc (l);
  if (r < 0)
    return fail (img, r, "%s: reading refcounts: %s", name, strerror (-r));

  r = l2_cache_create (l, cache_size);
  if (r < 0)
    return fail (img, r, "%s: cannot create the L2 cache: %s", name,
                 strerror (-r));
  r = inflight_init (l);
  if (r < 0)
    return fail (img, r, "%s: cannot create the in-flight records: %s",
                 name, strerror (-r));
  return 0;
}

/* The window of the disk the caller serves, checked as QEMU's raw
 * driver checks its offset and size options (and worded alike). */
static int
set_window (struct qcow2_image *img, const struct qcow2_open_opts *opts)
{
  uint64_t disk = img->layers[0]->size;

  if (opts->offset > disk)
    return fail (img, -EINVAL, "Offset (%" PRIu64 ") cannot be greater "
                 "than size of the containing file (%" PRIu64 ")",
                 opts->offset, disk);
  if (opts->has_size && disk - opts->offset < opts->size)
    return fail (img, -EINVAL, "The sum of offset (%" PRIu64 ") and size "
                 "(%" PRIu64 ") has to be smaller or equal to the  actual "
                 "size of the containing file (%" PRIu64 ")",
                 opts->offset, opts->size, disk);
  if (opts->has_size && !IS_ALIGNED (opts->size, 512))
    return fail (img, -EINVAL, "Specified size is not multiple of 512");
  img->window = opts->offset;
  img->view_size = opts->has_size ? opts->size : disk - opts->offset;
  return 0;
}

/* A new image with the options of OPTS (not NULL), no files or layers
 * yet.  NULL when out of memory. */
static struct qcow2_image *
new_image (const struct qcow2_open_opts *opts)
{
  struct qcow2_image *img = calloc (1, sizeof *img);

  if (!img)
    return NULL;
  img->io = opts->io ? opts->io : &qcow2_posix_io;
  img->io_opaque = opts->io_opaque;
  img->log = opts->log;
  img->log_opaque = opts->log_opaque;
  img->writable = opts->writable;
  img->punch_discarded = opts->punch_discarded;
  img->wakeup = opts->wakeup;
  img->wakeup_opaque = opts->wakeup_opaque;
  img->open_error = opts->error;
  img->no_locks = opts->no_locks;
  if (opts->error)
    memset (opts->error, 0, sizeof *opts->error);
  atomic_init (&img->corrupt, false);
  return img;
}

/* The writable open of a qcow2 top layer: image lock, allocator,
 * dirty-image repair, autoclear bits, dirty bit, bitmaps in use, in that
 * order (ORDERING.md). */
static int
open_writable_steps (struct qcow2_layer *layer)
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
    r = repair_dirty_locked (layer);
    free (layer->repair_counts);
    layer->repair_counts = NULL;
    layer->repair_nr = 0;
    if (r < 0) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: repairing the dirty image "
                 "failed: %s", name, strerror (-r));
      return r;
    }
  }

  r = header_clear_autoclear (layer);
  if (r < 0)
    return r;

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

static int
open_writable (struct qcow2_layer *layer)
{
  int r = open_writable_steps (layer);

  /* Without its allocator, a layer that failed to open is never flushed
   * or marked clean by qcow2_close. */
  if (r < 0)
    refcount_destroy (layer);
  return r;
}

/* Open layer L (at DEPTH) from the file CUR as FORMAT: the file, the
 * header and tables (qcow2), the snapshot asked for (top layer), and the
 * image locks as QEMU takes them; the writable top layer also gets its
 * allocator, autoclear bits and dirty-bit repair. */
static int
open_layer (struct qcow2_image *img, struct qcow2_layer *l, const char *cur,
            enum layer_format format, const char *prev_name,
            const struct qcow2_open_opts *opts, uint64_t cache_size)
{
  const unsigned depth = l->depth;
  bool writable = opts->writable && depth == 1;
  int r;

  r = add_file (img, cur, writable, depth == 1 ? "image" : "backing file",
                prev_name, &l->file);
  if (r < 0)
    return r;
  l->data_file = l->file;

  if (format == LAYER_RAW) {
    l->format = LAYER_RAW;
    /* As QEMU sees a file: whole sectors, the tail of the last one
     * past the end of the file reading as zeros (io ops' pread). */
    l->size = ROUND_UP (img->files[l->file].size, 512);
    return header_lock_layer (l, writable);
  }
  r = open_qcow2_layer (img, l, writable, cache_size);
  if (r == 0 && depth == 1)
    r = snapshot_select (l, opts);
  if (r < 0)
    return r;
  return writable ? open_writable (l) : header_lock_layer (l, false);
}

/* Where the chain goes after layer L, opened from CUR (not the bottom:
 * it names a backing file): check the depth (MAX_DEPTH backing files at
 * most) and the backing format, resolve the name into *NEXTP (the
 * caller's to free) and its format into *FORMAT, and refuse a simple
 * loop. */
static int
chain_next (struct qcow2_image *img, struct qcow2_layer *l, const char *cur,
            unsigned max_depth, char **nextp, enum layer_format *format)
{
  CLEANUP_FREE char *next = NULL;
  char pbuf[256], nbuf[256];

  if (l->depth > max_depth)
    return fail (img, -EINVAL, "%s: backing chain deeper than %u backing "
                 "files (a loop?)", printable (cur, pbuf, sizeof pbuf),
                 max_depth);
  if (!l->backing_format)
    return fail (img, -ENOTSUP, "%s: backing file '%s' has no backing "
                 "format, and probing it is unsafe; set one with 'qemu-img "
                 "rebase -u -b NAME -F raw|qcow2 IMAGE'",
                 printable (cur, pbuf, sizeof pbuf),
                 printable (l->backing_name, nbuf, sizeof nbuf));
  if (strcmp (l->backing_format, "qcow2") == 0)
    *format = LAYER_QCOW2;
  else if (strcmp (l->backing_format, "raw") == 0)
    *format = LAYER_RAW;
  else
    return fail (img, -ENOTSUP, "%s: unsupported backing format '%s' (only "
                 "qcow2 and raw)", printable (cur, pbuf, sizeof pbuf),
                 printable (l->backing_format, nbuf, sizeof nbuf));
  next = open_resolve_name (cur, l->backing_name);
  if (!next)
    return fail (img, -ENOMEM, "out of memory");
  /* Catch the simple loops (a -> b -> a with consistent names) with a
   * clear message; the depth cap catches the rest. */
  for (size_t i = 0; i < img->nr_files; i++) {
    if (strcmp (img->files[i].name, next) == 0)
      return fail (img, -EINVAL, "%s: backing file loop: '%s' is already "
                   "in the chain",
                   printable (img->files[l->file].name, pbuf, sizeof pbuf),
                   printable (next, nbuf, sizeof nbuf));
  }
  *nextp = next;
  next = NULL;
  return 0;
}

/* An image qcow2_open has not handed on yet: closing it frees every
 * layer and file opened so far, and a half-built layer too (new_layer
 * puts it in the image before anything else).  The caller's error
 * struct is not written after qcow2_open returned. */
static void
close_half_open (struct qcow2_image **imgp)
{
  if (*imgp) {
    (*imgp)->open_error = NULL;
    qcow2_close (*imgp);
  }
}
#define CLEANUP_HALF_OPEN __attribute__ ((cleanup (close_half_open)))

int
qcow2_open (const char *path, const struct qcow2_open_opts *opts,
            struct qcow2_image **imgp)
{
  static const struct qcow2_open_opts defaults = { 0 };
  CLEANUP_HALF_OPEN struct qcow2_image *img = NULL;
  struct qcow2_layer *prev = NULL;
  CLEANUP_FREE char *owned_path = NULL;
  enum layer_format format;
  const char *cur = path;
  uint64_t cache_size;
  unsigned max_depth, depth;
  int r;

  *imgp = NULL;
  if (!opts)
    opts = &defaults;
  img = new_image (opts);
  if (!img)
    return -ENOMEM;
  format = opts->format == QCOW2_FORMAT_RAW ? LAYER_RAW : LAYER_QCOW2;

  cache_size = opts->l2_cache_size ? opts->l2_cache_size
    : QCOW2_DEFAULT_L2_CACHE_SIZE;
  if (cache_size < QCOW2_MIN_L2_CACHE_SIZE)
    cache_size = QCOW2_MIN_L2_CACHE_SIZE;
  /* max_backing_depth counts backing files below the top image. */
  max_depth = opts->max_backing_depth ? opts->max_backing_depth
    : QCOW2_DEFAULT_MAX_BACKING_DEPTH;

  for (depth = 1;; depth++) {
    struct qcow2_layer *l = NULL;
    /* Names are separate strings: they outlive reallocations of
     * img->files. */
    const char *prev_name = prev ? img->files[prev->file].name : NULL;
    char *next = NULL;

    r = new_layer (img, depth, &l);
    if (r < 0)
      return r;
    if (prev)
      prev->backing = l;
    prev = l;

    r = open_layer (img, l, cur, format, prev_name, opts, cache_size);
    if (r < 0)
      return r;
    if (l->format == LAYER_RAW || !l->backing_name ||
        (depth == 1 && opts->no_backing))
      break;
    r = chain_next (img, l, cur, max_depth, &next, &format);
    if (r < 0)
      return r;
    free (owned_path);     /* cur may point here: resolved first */
    cur = owned_path = next;
  }

  r = set_window (img, opts);
  if (r < 0)
    return r;
  img->open_error = NULL;
  *imgp = img;
  img = NULL;
  return 0;
}

void
qcow2_close (struct qcow2_image *img)
{
  size_t i;

  if (!img)
    return;
  /* A clean close leaves a clean image: bitmaps written back, then
   * everything durable, then the dirty bit cleared (ORDERING.md).  After
   * a failed flush the image stays dirty, to be repaired at the next
   * writable open; after a failed sync nothing is written at all (the
   * bitmaps stay in use, so inconsistent). */
  if (img->writable && img->nr_layers > 0 &&
      img->layers[0]->refcount_cache != NULL &&
      !atomic_load (&img->corrupt) && !qcow2_sync_error (img)) {
    bitmap_close (img);
    if (flush_final (img) == 0)
      header_close_writable (img->layers[0]);
  }
  /* A raw file has no dirty state, but its writes should be durable
   * once the image is closed, as with QEMU. */
  if (img->writable && img->nr_layers > 0
      && img->layers[0]->format == LAYER_RAW)
    qcow2_flush (img);
  for (i = 0; i < img->nr_layers; i++) {
    struct qcow2_layer *l = img->layers[i];

    refcount_destroy (l);
    bitmap_free (l);
    if (l->format == LAYER_QCOW2 && l->l2_cache)
      l2_cache_destroy (l);
    inflight_destroy (l);
    pthread_rwlock_destroy (&l->lock);
    free (l->backing_name);
    free (l->backing_format);
    free (l->data_file_name);
    free (l->l1);
    free (l);
  }
  free (img->layers);
  for (i = 0; i < img->nr_files; i++) {
    img->io->close (img->io_opaque, img->files[i].fd);
    free (img->files[i].name);
  }
  free (img->files);
  free (img);
}

uint64_t
qcow2_virtual_size (const struct qcow2_image *img)
{
  return img->view_size;
}

uint32_t
qcow2_cluster_size (const struct qcow2_image *img)
{
  const struct qcow2_layer *top = img->layers[0];

  return top->format == LAYER_QCOW2 ? top->cluster_size : 0;
}

uint32_t
qcow2_layer_cluster_size (const struct qcow2_layer *layer)
{
  return layer->cluster_size;
}

size_t
qcow2_file_count (const struct qcow2_image *img)
{
  return img->nr_files;
}

/* Returns the fd, or -EINVAL for an index out of range. */
int
qcow2_file_fd (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files ? img->files[index].fd : -EINVAL;
}

bool
qcow2_file_writable (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files && img->files[index].writable;
}

uint64_t
qcow2_file_size (const struct qcow2_image *img, size_t index)
{
  /* Only the metadata file of a writable layer grows while open, so
   * for the others this is exact. */
  return index < img->nr_files ? img->files[index].size : 0;
}

/* Returns NULL for an index out of range. */
const char *
qcow2_file_name (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files ? img->files[index].name : NULL;
}

unsigned
qcow2_chain_depth (const struct qcow2_image *img)
{
  return img->nr_layers;
}
