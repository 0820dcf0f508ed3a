/* SPDX-License-Identifier: MIT */
/* Persistent dirty bitmaps in memory: the bitmaps extension and its
 * directory, checked at open like every other structure of a hostile
 * file (qcow2.txt "Bitmaps extension", "Bitmap directory", "Bitmaps"),
 * the bits of a bitmap loaded from its table, the bits a write sets, and
 * the runs of like bits qemu:dirty-bitmap extents are made of.  What
 * reaches the disk and when (in-use flags at open, the bits at close) is
 * bitmap-store.c's, ordered as qcow2/ORDERING.md says.
 *
 * What we refuse is what QEMU refuses when it loads bitmaps (it fails
 * the whole open, read-only too): a directory that does not add up to
 * nb_bitmaps entries, extra data, reserved flags, an unknown type, a
 * granularity outside 512 B .. 2 GiB, an over-long name, two bitmaps of
 * one name, a table that is empty, unaligned, outside the file, larger
 * than QEMU's limits, or (for a consistent bitmap) not exactly the size
 * the disk needs; and what the spec forbids besides: an empty name.
 * Names holding a NUL byte are refused too (QEMU would cut them there).
 * Table entries are checked when a table is loaded: for every
 * consistent bitmap of a writable image, or when qcow2_bitmap_get asks
 * for one.
 *
 * Bits are set with atomic ORs from any thread (a word already set is
 * only read, so rewriting a hot range costs no cache-line bouncing) and
 * read with atomic loads; no lock is taken on the write path. */
#include <config.h>

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

#define ALL_BITS (~UINT64_C (0))

/* ---- The directory ------------------------------------------------------ */

static void
free_dir (struct bitmap_dir *d, uint32_t n)
{
  if (d == NULL)
    return;
  for (uint32_t i = 0; d->v && i < n; i++) {
    free (d->v[i].name);
    free (d->v[i].table);
    free (d->v[i].words);
  }
  free (d->v);
  free (d->track);
  free (d->raw);
  pthread_mutex_destroy (&d->lock);
  free (d);
}

void
bitmap_free (struct qcow2_layer *l)
{
  free_dir (l->bitmaps, l->nb_bitmaps);
  l->bitmaps = NULL;
}

static int
cmp_names (const void *a, const void *b)
{
  const struct qcow2_bitmap *const *x = a, *const *y = b;

  return strcmp ((*x)->name, (*y)->name);
}

/* Names are looked up by name: QEMU cannot load two of one name. */
static int
check_unique (struct qcow2_layer *l, struct bitmap_dir *d)
{
  CLEANUP_FREE struct qcow2_bitmap **by_name = NULL;
  char nbuf[128];

  by_name = malloc (l->nb_bitmaps * sizeof *by_name);
  if (by_name == NULL)
    return qcow2_error (l, -ENOMEM, "out of memory");
  for (uint32_t i = 0; i < l->nb_bitmaps; i++)
    by_name[i] = &d->v[i];
  qsort (by_name, l->nb_bitmaps, sizeof *by_name, cmp_names);
  for (uint32_t i = 1; i < l->nb_bitmaps; i++)
    if (strcmp (by_name[i - 1]->name, by_name[i]->name) == 0)
      return qcow2_error (l, -EINVAL, "bitmap directory: two bitmaps are "
                          "named '%s'",
                          qcow2_printable (by_name[i]->name, nbuf,
                                           sizeof nbuf));
  return 0;
}

/* Check the entry at RAW + POS (AVAIL bytes left in the directory) and
 * fill BM from it; *LEN is the entry's size with padding. */
static int
parse_entry (struct qcow2_layer *l, const uint8_t *raw, size_t pos,
             uint64_t avail, struct qcow2_bitmap *bm, uint64_t *len)
{
  const uint8_t *e = raw + pos;
  const uint64_t cs = l->cluster_size;
  uint32_t extra, name_size, type;
  uint64_t phys, gran, needed;
  char nbuf[128];

  if (avail < QCOW2_BME_HEADER_SIZE)
    return qcow2_error (l, -EINVAL, "bitmap directory is broken: entry at "
                        "byte %zu runs past its end", pos);
  extra = load_be32 (e + QCOW2_BME_EXTRA_DATA_SIZE);
  name_size = load_be16 (e + QCOW2_BME_NAME_SIZE);
  *len = ROUND_UP ((uint64_t) QCOW2_BME_HEADER_SIZE + extra + name_size, 8);
  if (*len > avail)
    return qcow2_error (l, -EINVAL, "bitmap directory is broken: entry at "
                        "byte %zu runs past its end", pos);
  if (extra != 0)
    return qcow2_error (l, -ENOTSUP, "bitmap directory: entry at byte %zu has "
                        "extra data, which is not supported", pos);
  if (name_size == 0 || name_size > QCOW2_BME_MAX_NAME_SIZE)
    return qcow2_error (l, -EINVAL, "bitmap directory: entry at byte %zu "
                        "has an invalid name size %u", pos, name_size);
  if (memchr (e + QCOW2_BME_HEADER_SIZE, '\0', name_size) != NULL)
    return qcow2_error (l, -EINVAL, "bitmap directory: the name of the "
                        "entry at byte %zu holds a NUL byte", pos);
  bm->name = strndup ((const char *) e + QCOW2_BME_HEADER_SIZE, name_size);
  if (bm->name == NULL)
    return qcow2_error (l, -ENOMEM, "out of memory");
  qcow2_printable (bm->name, nbuf, sizeof nbuf);

  bm->layer = l;
  bm->dir_pos = pos;
  bm->table_offset = load_be64 (e + QCOW2_BME_TABLE_OFFSET);
  bm->table_size = load_be32 (e + QCOW2_BME_TABLE_SIZE);
  bm->flags = load_be32 (e + QCOW2_BME_FLAGS);
  bm->granularity_bits = e[QCOW2_BME_GRANULARITY];
  type = e[QCOW2_BME_TYPE];
  atomic_init (&bm->modified, false);

  if (type != QCOW2_BME_TYPE_DIRTY_TRACKING)
    return qcow2_error (l, -EINVAL, "bitmap '%s' has unknown type %u", nbuf,
                        type);
  if (bm->flags & QCOW2_BME_RESERVED_FLAGS)
    return qcow2_error (l, -EINVAL, "bitmap '%s' has reserved flags set (%#x)",
                        nbuf, bm->flags);
  if (bm->granularity_bits < QCOW2_BME_MIN_GRANULARITY_BITS ||
      bm->granularity_bits > QCOW2_BME_MAX_GRANULARITY_BITS)
    return qcow2_error (l, -EINVAL, "bitmap '%s' has invalid "
                        "granularity_bits %u (%u to %u)", nbuf,
                        bm->granularity_bits,
                        QCOW2_BME_MIN_GRANULARITY_BITS,
                        QCOW2_BME_MAX_GRANULARITY_BITS);
  phys = (uint64_t) bm->table_size * cs;
  if (bm->table_size == 0 || bm->table_size > QCOW2_BME_MAX_TABLE_SIZE ||
      phys > QCOW2_BME_MAX_PHYS_SIZE)
    return qcow2_error (l, -EINVAL, "bitmap '%s' has an invalid table size %u",
                        nbuf, bm->table_size);
  if (bm->table_offset == 0 || !IS_ALIGNED (bm->table_offset, cs) ||
      !range_fits (bm->table_offset, (uint64_t) bm->table_size * 8,
                   l->img->files[l->file].size))
    return qcow2_error (l, -EINVAL, "bitmap '%s': its table at %#" PRIx64
                        " (%u entries) is unaligned or outside the file", nbuf,
                        bm->table_offset, bm->table_size);

  gran = UINT64_C (1) << bm->granularity_bits;
  bm->nbits = l->size / gran + (l->size % gran != 0);
  bm->nwords = DIV_ROUND_UP (bm->nbits, 64);
  needed = DIV_ROUND_UP (bm->nbits, cs * 8);
  /* QEMU loads a consistent bitmap only if its table is exactly the
   * disk's size; an inconsistent one may be stale after a resize. */
  if (!(bm->flags & QCOW2_BME_FLAG_IN_USE) && bm->table_size != needed)
    return qcow2_error (l, -EINVAL, "bitmap '%s' has %u table entries, "
                        "the disk size needs %" PRIu64, nbuf,
                        bm->table_size, needed);
  return 0;
}

/* Read the directory and check every entry. */
static int
load_dir (struct qcow2_layer *l)
{
  struct qcow2_image *img = l->img;
  struct bitmap_dir *d;
  uint64_t pos = 0;
  uint32_t i = 0;
  int r;

  d = calloc (1, sizeof *d);
  if (d == NULL)
    return qcow2_error (l, -ENOMEM, "out of memory");
  if (pthread_mutex_init (&d->lock, NULL) != 0) {
    free (d);
    return qcow2_error (l, -ENOMEM, "cannot create a lock");
  }
  l->bitmaps = d;
  d->v = calloc (l->nb_bitmaps, sizeof *d->v);
  d->raw = malloc (l->bitmap_dir_size);
  if (d->v == NULL || d->raw == NULL)
    return qcow2_error (l, -ENOMEM, "out of memory");
  r = img->io->pread (img->io_opaque, img->files[l->file].fd, d->raw,
                      l->bitmap_dir_size, l->bitmap_dir_offset);
  if (r < 0)
    return qcow2_error (l, r, "reading the bitmap directory: %s",
                        strerror (-r));

  while (pos < l->bitmap_dir_size) {
    uint64_t len = 0;

    if (i == l->nb_bitmaps)
      return qcow2_error (l, -EINVAL, "bitmap directory holds more "
                          "bitmaps than the extension says (%u)",
                          l->nb_bitmaps);
    r = parse_entry (l, d->raw, pos, l->bitmap_dir_size - pos, &d->v[i],
                     &len);
    if (r < 0)
      return r;
    pos += len;
    i++;
  }
  if (i != l->nb_bitmaps)
    return qcow2_error (l, -EINVAL, "bitmap directory holds %u bitmaps, the "
                        "extension says %u", i, l->nb_bitmaps);
  return check_unique (l, d);
}

int
bitmap_parse_ext (struct qcow2_layer *l, const char *name,
                  const uint8_t *data, uint32_t len, uint64_t file_size)
{
  uint32_t nb, reserved;
  uint64_t dir_size, dir_off;
  int r;

  /* As in QEMU: with the autoclear bit clear, some writer that does not
   * know bitmaps has touched the image, so the extension is stale and
   * not even looked at. */
  if (!(l->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
    qcow2_log (l->img, QCOW2_LOG_DEBUG, "%s: ignoring stale bitmaps "
               "extension (autoclear bit 0 clear)", name);
    return 0;
  }
  if (l->bitmaps != NULL)
    return qcow2_error (l, -EINVAL, "two bitmaps extensions");
  if (len != QCOW2_BITMAPS_EXT_SIZE)
    return qcow2_error (l, -EINVAL, "bitmaps extension has length %u, "
                        "expected %u", len, QCOW2_BITMAPS_EXT_SIZE);
  nb = load_be32 (data);
  reserved = load_be32 (data + 4);
  dir_size = load_be64 (data + 8);
  dir_off = load_be64 (data + 16);
  if (reserved != 0)
    return qcow2_error (l, -EINVAL, "bitmaps extension: reserved field is not "
                        "zero");
  if (nb == 0 || nb > QCOW2_MAX_BITMAPS)
    return qcow2_error (l, -EINVAL, "bitmaps extension: invalid number of "
                        "bitmaps %u", nb);
  if (dir_size == 0 || dir_size > QCOW2_MAX_BITMAP_DIRECTORY_SIZE)
    return qcow2_error (l, -EINVAL, "bitmaps extension: invalid directory "
                        "size %" PRIu64, dir_size);
  if (!IS_ALIGNED (dir_off, l->cluster_size) || dir_off == 0 ||
      !range_fits (dir_off, dir_size, file_size))
    return qcow2_error (l, -EINVAL, "bitmaps extension: directory at %#"
                        PRIx64 " (%" PRIu64 " bytes) is unaligned or outside "
                        "the file", dir_off, dir_size);
  l->nb_bitmaps = nb;
  l->bitmap_dir_offset = dir_off;
  l->bitmap_dir_size = dir_size;
  r = load_dir (l);
  if (r < 0) {
    bitmap_free (l);
    l->nb_bitmaps = 0;
    l->bitmap_dir_offset = l->bitmap_dir_size = 0;
  }
  return r;
}

/* ---- Loading tables and bits ------------------------------------------ */

/* Account BYTES more of memory held by L's bitmaps. */
static int
charge (struct qcow2_layer *l, struct qcow2_bitmap *bm, uint64_t bytes)
{
  struct bitmap_dir *d = l->bitmaps;
  char nbuf[128];

  if (bytes > QCOW2_MAX_BITMAP_MEMORY - d->loaded)
    return qcow2_error (l, -ENOMEM, "bitmap '%s': the bitmaps would take more "
                        "than %" PRIu64 " MiB of memory",
                        qcow2_printable (bm->name, nbuf, sizeof nbuf),
                        QCOW2_MAX_BITMAP_MEMORY >> 20);
  d->loaded += bytes;
  return 0;
}

static int
load_table_locked (struct qcow2_bitmap *bm)
{
  struct qcow2_layer *l = bm->layer;
  struct qcow2_image *img = l->img;
  const uint64_t file_size = img->files[l->file].size;
  const size_t bytes = (size_t) bm->table_size * 8;
  char nbuf[128];
  uint64_t *t;
  int r;

  if (bm->table != NULL)
    return 0;
  t = malloc (bytes);
  if (t == NULL)
    return qcow2_error (l, -ENOMEM, "out of memory");
  r = img->io->pread (img->io_opaque, img->files[l->file].fd, t, bytes,
                      bm->table_offset);
  if (r < 0) {
    free (t);
    return qcow2_error (l, r, "reading the table of bitmap '%s': %s",
                        qcow2_printable (bm->name, nbuf, sizeof nbuf),
                        strerror (-r));
  }
  for (uint32_t i = 0; i < bm->table_size; i++) {
    uint64_t e = load_be64 (&t[i]), off = e & QCOW2_BMT_OFFSET_MASK;

    t[i] = e;
    if ((e & QCOW2_BMT_RESERVED_MASK) ||
        (off != 0 && ((e & QCOW2_BMT_ALL_ONES) ||
                      !IS_ALIGNED (off, l->cluster_size) ||
                      !range_fits (off, l->cluster_size, file_size)))) {
      free (t);
      return qcow2_error (l, -EINVAL, "bitmap '%s': table entry %u (%#" PRIx64
                          ") is invalid", qcow2_printable (bm->name, nbuf,
                                                           sizeof nbuf), i, e);
    }
  }
  r = charge (l, bm, bytes);
  if (r < 0) {
    free (t);
    return r;
  }
  bm->table = t;
  return 0;
}

static int
load_bits_locked (struct qcow2_bitmap *bm)
{
  struct qcow2_layer *l = bm->layer;
  struct qcow2_image *img = l->img;
  const uint64_t words_per_cluster = l->cluster_size / 8;
  CLEANUP_FREE uint8_t *buf = NULL;
  _Atomic uint64_t *w;
  char nbuf[128];
  int r;

  if (bm->words != NULL)
    return 0;
  if (bm->nwords * 8 > QCOW2_MAX_BITMAP_MEMORY - l->bitmaps->loaded)
    return charge (l, bm, bm->nwords * 8);      /* fails, logged */
  w = calloc (bm->nwords ? bm->nwords : 1, sizeof *w);
  buf = malloc (l->cluster_size);
  if (w == NULL || buf == NULL) {
    free (w);
    return qcow2_error (l, -ENOMEM, "out of memory");
  }
  /* A consistent bitmap's table covers exactly nwords (parse_entry). */
  for (uint64_t i = 0; i < bm->table_size; i++) {
    uint64_t first = i * words_per_cluster;
    uint64_t off = bm->table[i] & QCOW2_BMT_OFFSET_MASK;
    uint64_t n;

    if (first >= bm->nwords)
      break;
    n = MIN (words_per_cluster, bm->nwords - first);
    if (off != 0) {
      r = img->io->pread (img->io_opaque, img->files[l->file].fd, buf,
                          l->cluster_size, off);
      if (r < 0) {
        free (w);
        return qcow2_error (l, r, "reading bitmap '%s': %s",
                            qcow2_printable (bm->name, nbuf, sizeof nbuf),
                            strerror (-r));
      }
      for (uint64_t k = 0; k < n; k++) {
        uint64_t v;

        memcpy (&v, buf + 8 * k, 8);
        atomic_init (&w[first + k], le64toh (v));
      }
    }
    else if (bm->table[i] & QCOW2_BMT_ALL_ONES)
      for (uint64_t k = 0; k < n; k++)
        atomic_init (&w[first + k], ALL_BITS);
  }
  /* Bits past the disk's end are not the guest's: keep them clear. */
  if (bm->nbits % 64)
    atomic_fetch_and (&w[bm->nwords - 1],
                      (UINT64_C (1) << (bm->nbits % 64)) - 1);
  bm->words = w;
  return charge (l, bm, bm->nwords * 8);        /* checked above */
}

int
bitmap_load_locked (struct qcow2_bitmap *bm, bool bits)
{
  int r = load_table_locked (bm);

  if (r == 0 && bits)
    r = load_bits_locked (bm);
  return r;
}

bool
bitmap_chunk (const struct qcow2_bitmap *bm, uint64_t chunk, uint8_t *buf)
{
  const uint64_t cs = bm->layer->cluster_size;
  const uint64_t per = cs / 8, first = chunk * per;
  uint64_t any = 0, n;

  memset (buf, 0, cs);
  if (first >= bm->nwords)
    return false;
  n = MIN (per, bm->nwords - first);
  for (uint64_t k = 0; k < n; k++) {
    uint64_t v = atomic_load_explicit (&bm->words[first + k],
                                       memory_order_relaxed);

    any |= v;
    v = htole64 (v);
    memcpy (buf + 8 * k, &v, 8);
  }
  return any != 0;
}

/* ---- Setting bits on writes ------------------------------------------- */

/* Set granules FIRST..LAST (inclusive) of W. */
static void
set_range (_Atomic uint64_t *w, uint64_t first, uint64_t last)
{
  for (uint64_t i = first / 64; i <= last / 64; i++) {
    unsigned lo = i == first / 64 ? first % 64 : 0;
    unsigned hi = i == last / 64 ? last % 64 : 63;
    uint64_t mask = (ALL_BITS >> (63 - hi)) & (ALL_BITS << lo);

    if ((atomic_load_explicit (&w[i], memory_order_relaxed) & mask) != mask)
      atomic_fetch_or_explicit (&w[i], mask, memory_order_relaxed);
  }
}

void
bitmap_set_dirty (struct qcow2_image *img, uint64_t offset, uint64_t length)
{
  struct bitmap_dir *d = img->layers[0]->bitmaps;

  if (d == NULL || length == 0)
    return;
  for (size_t i = 0; i < d->ntrack; i++) {
    struct qcow2_bitmap *bm = d->track[i];
    uint64_t first = offset >> bm->granularity_bits;
    uint64_t last = (offset + length - 1) >> bm->granularity_bits;

    /* The callers checked the range against the virtual size. */
    if (bm->nbits == 0)
      continue;
    if (last >= bm->nbits)
      last = bm->nbits - 1;
    if (first > last)
      continue;
    set_range (bm->words, first, last);
    if (!atomic_load_explicit (&bm->modified, memory_order_relaxed))
      atomic_store_explicit (&bm->modified, true, memory_order_relaxed);
  }
}

/* ---- Reading: the public calls ---------------------------------------- */

int
qcow2_bitmap_get (struct qcow2_image *img, const char *name,
                  struct qcow2_bitmap **bmp)
{
  char nbuf[128];

  *bmp = NULL;
  for (unsigned i = 0; i < img->nr_layers; i++) {
    struct qcow2_layer *l = img->layers[i];
    struct bitmap_dir *d = l->bitmaps;

    if (d == NULL)
      continue;
    for (uint32_t j = 0; j < l->nb_bitmaps; j++) {
      struct qcow2_bitmap *bm = &d->v[j];
      int r;

      if (strcmp (bm->name, name) != 0)
        continue;
      /* Inconsistent: in use when found, i.e. not closed cleanly (the
       * ones we mark in use ourselves are consistent). */
      if (bm->flags & QCOW2_BME_FLAG_IN_USE)
        return qcow2_error (l, -EINVAL, "bitmap '%s' is inconsistent and "
                            "cannot be used (it was in use when the image "
                            "was last closed; 'qemu-img bitmap --remove' "
                            "deletes it)",
                            qcow2_printable (name, nbuf, sizeof nbuf));
      {
        LOCK_FOR_SCOPE (&d->lock);
        r = bitmap_load_locked (bm, true);
      }
      if (r < 0)
        return r;
      *bmp = bm;
      return 0;
    }
  }
  qcow2_log (img, QCOW2_LOG_ERROR, "%s: bitmap '%s' is not found",
             img->files[img->layers[0]->file].name,
             qcow2_printable (name, nbuf, sizeof nbuf));
  return -ENOENT;
}

uint64_t
qcow2_bitmap_granularity (const struct qcow2_bitmap *bm)
{
  return UINT64_C (1) << bm->granularity_bits;
}

/* The first granule in [FROM, TO) whose bit is VALUE, or TO. */
static uint64_t
find_bit (const _Atomic uint64_t *w, uint64_t from, uint64_t to, bool value)
{
  while (from < to) {
    uint64_t i = from / 64;
    uint64_t x = atomic_load_explicit (&w[i], memory_order_relaxed);

    if (!value)
      x = ~x;
    x &= ALL_BITS << (from % 64);
    if (x != 0)
      return MIN (i * 64 + __builtin_ctzll (x), to);
    from = (i + 1) * 64;
  }
  return to;
}

uint64_t
qcow2_bitmap_extent (const struct qcow2_bitmap *bm, uint64_t offset,
                     uint64_t length, bool *dirty)
{
  const uint32_t gb = bm->granularity_bits;
  uint64_t g = offset >> gb, limit, next, run_end;

  *dirty = false;
  if (length == 0 || g >= bm->nbits)
    return length;
  limit = MIN (bm->nbits, ((offset + length - 1) >> gb) + 1);
  *dirty = atomic_load_explicit (&bm->words[g / 64],
                                 memory_order_relaxed) >> (g % 64) & 1;
  next = find_bit (bm->words, g + 1, limit, !*dirty);
  /* Clean up to the bitmap's end means clean past it too. */
  if (next == bm->nbits && !*dirty)
    return length;
  run_end = next << gb;
  return MIN (run_end - offset, length);
}
