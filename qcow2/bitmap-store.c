/* SPDX-License-Identifier: MIT */
/* Persistent dirty bitmaps on disk, for a writable image: what a
 * writable open does to them (load and check every consistent bitmap,
 * then mark it in use), what a clean close does (write the bits of the
 * bitmaps that changed into new clusters, point the directory at them,
 * clear the in-use flags, give the old clusters back), and the
 * dirty-image repair's view of them (their clusters are references like
 * any other).  The order of the writes is qcow2/ORDERING.md's
 * "Persistent dirty bitmaps" section, and is QEMU's: while the image is
 * open the bitmaps are in use on disk, so a crash leaves them
 * inconsistent, never silently clean; FLUSH writes nothing for them.
 *
 * The directory is rewritten in place: only the flags and table offsets
 * of entries change.  Every other write goes to clusters the allocator
 * just handed out, and the clusters given back at close are checked at
 * open to be bitmap clusters only (refcount at least 1, used once, not
 * other metadata), so a hostile directory cannot make us free or
 * overwrite anything else. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Owners of a cluster in the overlap check: other metadata (header, L1
 * and refcount tables, refcount blocks, snapshot table) sorts first, then
 * the directory, then bitmap I as OWNER_BITMAP + I. */
#define OWNER_META   0u
#define OWNER_DIR    1u
#define OWNER_BITMAP 2u

struct use {
  uint64_t cluster;
  uint32_t owner;
};

struct uses {
  struct use *v;
  size_t n, cap;
};

static int
add_uses (struct uses *u, uint64_t off, uint64_t len, uint32_t cbits,
          uint32_t owner)
{
  uint64_t first = off >> cbits, last;

  if (len == 0)
    return 0;
  last = (off + len - 1) >> cbits;
  for (uint64_t c = first; c <= last; c++) {
    if (u->n == u->cap) {
      size_t cap = u->cap ? 2 * u->cap : 256;
      struct use *v = realloc (u->v, cap * sizeof *v);

      if (v == NULL)
        return -ENOMEM;
      u->v = v;
      u->cap = cap;
    }
    u->v[u->n++] = (struct use) { c, owner };
  }
  return 0;
}

static int
cmp_use (const void *a, const void *b)
{
  const struct use *x = a, *y = b;

  if (x->cluster != y->cluster)
    return x->cluster < y->cluster ? -1 : 1;
  return x->owner < y->owner ? -1 : x->owner > y->owner;
}

static uint64_t
table_clusters (const struct qcow2_layer *l, const struct qcow2_bitmap *bm)
{
  return DIV_ROUND_UP ((uint64_t) bm->table_size * 8, l->cluster_size);
}

static const char *
owner_name (const struct qcow2_layer *l, uint32_t owner, char *buf,
            size_t n)
{
  char nbuf[128];

  if (owner == OWNER_DIR)
    return "the bitmap directory";
  if (owner == OWNER_META)
    return "other metadata";
  snprintf (buf, n, "bitmap '%s'",
            qcow2_printable (l->bitmaps->v[owner - OWNER_BITMAP].name, nbuf,
                             sizeof nbuf));
  return buf;
}

/* Every cluster the directory and the consistent bitmaps use: each must
 * be used once, by them only, and have a refcount (else the allocator
 * could hand it out, or close would free someone else's cluster). */
static int
check_clusters_locked (struct qcow2_layer *l)
{
  struct bitmap_dir *d = l->bitmaps;
  const uint32_t cb = l->cluster_bits;
  struct uses u = { 0 };
  char b1[160], b2[160];
  int r = 0;

  r = add_uses (&u, 0, l->cluster_size, cb, OWNER_META);
  if (r == 0)
    r = add_uses (&u, l->l1_table_offset, (uint64_t) l->l1_size * 8, cb,
                  OWNER_META);
  if (r == 0)
    r = add_uses (&u, l->refcount_table_offset,
                  (uint64_t) l->refcount_table_clusters << cb, cb,
                  OWNER_META);
  for (uint64_t t = 0; r == 0 && t < l->reftable_entries; t++)
    if (l->reftable[t] & REFT_OFFSET_MASK)
      r = add_uses (&u, l->reftable[t] & REFT_OFFSET_MASK, 1, cb,
                    OWNER_META);
  if (r == 0 && l->nb_snapshots)
    r = add_uses (&u, l->snapshots_offset, 1, cb, OWNER_META);
  if (r == 0)
    r = add_uses (&u, l->bitmap_dir_offset, l->bitmap_dir_size, cb,
                  OWNER_DIR);
  for (uint32_t i = 0; r == 0 && i < l->nb_bitmaps; i++) {
    const struct qcow2_bitmap *bm = &d->v[i];

    if (bm->table == NULL)
      continue;                 /* inconsistent: never written */
    r = add_uses (&u, bm->table_offset, (uint64_t) bm->table_size * 8, cb,
                  OWNER_BITMAP + i);
    for (uint32_t j = 0; r == 0 && j < bm->table_size; j++)
      r = add_uses (&u, bm->table[j] & QCOW2_BMT_OFFSET_MASK,
                    (bm->table[j] & QCOW2_BMT_OFFSET_MASK) ? 1 : 0, cb,
                    OWNER_BITMAP + i);
  }
  if (r < 0) {
    free (u.v);
    return qcow2_error (l, r, "checking the bitmaps: %s", strerror (-r));
  }

  qsort (u.v, u.n, sizeof *u.v, cmp_use);
  for (size_t i = 0; r == 0 && i < u.n; i++) {
    const struct use *x = &u.v[i];
    uint64_t rc;

    if (x->owner == OWNER_META)
      continue;
    /* Sorted by owner too: whatever else uses the cluster sorts before
     * the second user, and other metadata before anything. */
    if (i > 0 && u.v[i - 1].cluster == x->cluster) {
      r = qcow2_error (l, -EINVAL, "%s and %s both use cluster %#" PRIx64,
                       owner_name (l, u.v[i - 1].owner, b1, sizeof b1),
                       owner_name (l, x->owner, b2, sizeof b2),
                       x->cluster << cb);
      break;
    }
    r = refcount_get_locked (l, x->cluster << cb, &rc);
    if (r < 0)
      r = qcow2_error (l, r, "reading refcounts: %s", strerror (-r));
    else if (rc == 0)
      r = qcow2_error (l, -EINVAL, "%s uses cluster %#" PRIx64 ", whose "
                       "refcount is 0 (repair the image with 'qemu-img "
                       "check -r all')",
                       owner_name (l, x->owner, b1, sizeof b1),
                       x->cluster << cb);
  }
  free (u.v);
  return r;
}

/* Write the directory in place and sync. */
static int
write_dir (struct qcow2_layer *l)
{
  struct qcow2_image *img = l->img;
  int r;

  r = img->io->pwrite (img->io_opaque, img->files[l->file].fd,
                       l->bitmaps->raw, l->bitmap_dir_size,
                       l->bitmap_dir_offset);
  if (r == 0)
    r = sync_layer (l);
  if (r < 0)
    return qcow2_error (l, r, "writing the bitmap directory: %s",
                        strerror (-r));
  return 0;
}

static void
set_flags (struct qcow2_layer *l, bool in_use)
{
  struct bitmap_dir *d = l->bitmaps;

  for (uint32_t i = 0; i < l->nb_bitmaps; i++) {
    struct qcow2_bitmap *bm = &d->v[i];
    uint8_t *f = d->raw + bm->dir_pos + QCOW2_BME_FLAGS;

    if (bm->marked)
      store_be32 (f, in_use ? load_be32 (f) | QCOW2_BME_FLAG_IN_USE
                  : load_be32 (f) & ~QCOW2_BME_FLAG_IN_USE);
  }
}

int
bitmap_open_writable (struct qcow2_layer *l)
{
  struct bitmap_dir *d = l->bitmaps;
  bool any = false;
  int r = 0;

  if (d == NULL)
    return 0;
  {
    LOCK_FOR_SCOPE (&d->lock);

    d->track = calloc (l->nb_bitmaps, sizeof *d->track);
    if (d->track == NULL)
      return qcow2_error (l, -ENOMEM, "out of memory");
    for (uint32_t i = 0; r == 0 && i < l->nb_bitmaps; i++) {
      struct qcow2_bitmap *bm = &d->v[i];
      bool enabled = bm->flags & QCOW2_BME_FLAG_AUTO;

      /* In use already: inconsistent, left alone (QEMU does too). */
      if (bm->flags & QCOW2_BME_FLAG_IN_USE)
        continue;
      r = bitmap_load_locked (bm, enabled);
      if (r == 0 && enabled)
        d->track[d->ntrack++] = bm;
    }
  }
  if (r < 0)
    return r;
  {
    WRLOCK_FOR_SCOPE (&l->lock);
    r = check_clusters_locked (l);
  }
  if (r < 0)
    return r;

  for (uint32_t i = 0; i < l->nb_bitmaps; i++)
    if (!(d->v[i].flags & QCOW2_BME_FLAG_IN_USE))
      any = d->v[i].marked = true;
  if (!any)
    return 0;
  set_flags (l, true);
  return write_dir (l);
}

/* ---- Clean close ------------------------------------------------------ */

/* A bitmap written out by bitmap_close: its new table. */
struct stored {
  struct qcow2_bitmap *bm;
  uint64_t table_offset;        /* 0: none allocated yet */
  uint64_t *table;              /* host order */
};

/* Give back the clusters of ST, which nothing on disk names yet (rule
 * 5 of ORDERING.md: an immediate decrement). */
static void
undo_stored_locked (struct qcow2_layer *l, struct stored *st)
{
  for (uint32_t i = 0; st->table && i < st->bm->table_size; i++)
    if (st->table[i])
      refcount_adjust_locked (l, st->table[i], 1, -1);
  if (st->table_offset)
    refcount_adjust_locked (l, st->table_offset, table_clusters (l, st->bm),
                            -1);
  free (st->table);
  st->table = NULL;
  st->table_offset = 0;
}

/* Write BM's bits to new clusters, one per chunk with a bit set, and a
 * new table naming them. */
static int
store_locked (struct qcow2_layer *l, struct stored *st)
{
  struct qcow2_image *img = l->img;
  const int fd = img->files[l->file].fd;
  const struct qcow2_bitmap *bm = st->bm;
  const uint64_t cs = l->cluster_size, tcl = table_clusters (l, bm);
  CLEANUP_FREE uint8_t *buf = NULL;
  uint64_t host, got;
  int r;

  buf = malloc (MAX (cs, tcl * cs));
  st->table = calloc (bm->table_size, sizeof *st->table);
  if (buf == NULL || st->table == NULL)
    return -ENOMEM;
  for (uint32_t i = 0; i < bm->table_size; i++) {
    if (!bitmap_chunk (bm, i, buf))
      continue;
    r = alloc_clusters_locked (l, 1, 1, &host, &got);
    if (r < 0)
      return r;
    st->table[i] = host;
    r = img->io->pwrite (img->io_opaque, fd, buf, cs, host);
    if (r < 0)
      return r;
  }
  r = alloc_clusters_locked (l, tcl, tcl, &host, &got);
  if (r < 0)
    return r;
  st->table_offset = host;
  memset (buf, 0, tcl * cs);
  for (uint32_t i = 0; i < bm->table_size; i++)
    store_be64 (buf + 8 * (size_t) i, st->table[i]);
  return img->io->pwrite (img->io_opaque, fd, buf, tcl * cs, host);
}

/* Drop the references BM's old table made (the directory no longer names
 * it, durably), and switch BM to the new one. */
static void
release_old_locked (struct qcow2_layer *l, struct stored *st)
{
  struct qcow2_bitmap *bm = st->bm;

  for (uint32_t i = 0; i < bm->table_size; i++)
    if (bm->table[i] & QCOW2_BMT_OFFSET_MASK)
      refcount_adjust_locked (l, bm->table[i] & QCOW2_BMT_OFFSET_MASK, 1,
                              -1);
  refcount_adjust_locked (l, bm->table_offset, table_clusters (l, bm), -1);
  free (bm->table);
  bm->table = st->table;
  bm->table_offset = st->table_offset;
  st->table = NULL;
}

static int
close_locked (struct qcow2_layer *l, struct stored *st, size_t *nst)
{
  struct bitmap_dir *d = l->bitmaps;
  int r = 0;

  /* 1. The bits of every bitmap that changed, into new clusters. */
  for (size_t i = 0; i < d->ntrack; i++) {
    if (!atomic_load (&d->track[i]->modified))
      continue;
    st[*nst].bm = d->track[i];
    r = store_locked (l, &st[(*nst)++]);
    if (r < 0)
      break;
  }
  /* 2. Their refcounts, then everything durable. */
  if (r == 0 && *nst > 0)
    r = refcount_writeback_locked (l);
  if (r == 0 && *nst > 0)
    r = sync_layer (l);
  if (r < 0) {
    for (size_t i = 0; i < *nst; i++)
      undo_stored_locked (l, &st[i]);
    return qcow2_error (l, r, "writing the bitmaps: %s", strerror (-r));
  }
  /* 3. The directory names the new tables, still in use; sync. */
  if (*nst > 0) {
    for (size_t i = 0; i < *nst; i++)
      store_be64 (d->raw + st[i].bm->dir_pos + QCOW2_BME_TABLE_OFFSET,
                  st[i].table_offset);
    r = write_dir (l);
    if (r < 0)
      return r;       /* the new tables may be named: leaks at worst */
  }
  /* 4. Not in use any more; sync. */
  set_flags (l, false);
  r = write_dir (l);
  if (r < 0)
    return r;
  /* 5. The old tables and bits are free; the final flush writes the
   * refcounts. */
  for (size_t i = 0; i < *nst; i++)
    release_old_locked (l, &st[i]);
  for (uint32_t i = 0; i < l->nb_bitmaps; i++)
    d->v[i].marked = false;
  return 0;
}

int
bitmap_close (struct qcow2_image *img)
{
  struct qcow2_layer *l = img->layers[0];
  struct bitmap_dir *d = l->bitmaps;
  struct stored *st;
  size_t nst = 0;
  bool any = false;
  int r;

  if (!img->writable || d == NULL || l->refcount_cache == NULL ||
      atomic_load (&img->corrupt))
    return 0;
  for (uint32_t i = 0; i < l->nb_bitmaps; i++)
    any |= d->v[i].marked;
  if (!any)
    return 0;
  st = calloc (d->ntrack ? d->ntrack : 1, sizeof *st);
  if (st == NULL)
    return qcow2_error (l, -ENOMEM, "writing the bitmaps: out of memory");
  {
    WRLOCK_FOR_SCOPE (&l->lock);
    r = close_locked (l, st, &nst);
  }
  for (size_t i = 0; i < nst; i++)
    free (st[i].table);
  free (st);
  return r;
}

/* ---- Dirty-image repair ----------------------------------------------- */

int
bitmap_count_refs (struct qcow2_layer *l, bitmap_count_fn count)
{
  struct qcow2_image *img = l->img;
  struct bitmap_dir *d = l->bitmaps;
  int r;

  if (d == NULL)
    return 0;
  r = count (l, l->bitmap_dir_offset, l->bitmap_dir_size,
             "the bitmap directory");
  for (uint32_t i = 0; r == 0 && i < l->nb_bitmaps; i++) {
    const struct qcow2_bitmap *bm = &d->v[i];
    const size_t bytes = (size_t) bm->table_size * 8;
    CLEANUP_FREE uint64_t *t = malloc (bytes);

    if (t == NULL)
      return -ENOMEM;
    r = count (l, bm->table_offset, bytes, "a bitmap table");
    if (r == 0)
      r = img->io->pread (img->io_opaque, img->files[l->file].fd, t, bytes,
                          bm->table_offset);
    for (uint32_t j = 0; r == 0 && j < bm->table_size; j++) {
      uint64_t e = load_be64 (&t[j]), off = e & QCOW2_BMT_OFFSET_MASK;

      if ((e & QCOW2_BMT_RESERVED_MASK) ||
          (off && ((e & QCOW2_BMT_ALL_ONES) ||
                   !IS_ALIGNED (off, l->cluster_size)))) {
        /* Garbage in an inconsistent bitmap's table is no reference;
         * in a consistent one the image is broken. */
        if (bm->flags & QCOW2_BME_FLAG_IN_USE)
          continue;
        return -EINVAL;
      }
      if (off)
        r = count (l, off, l->cluster_size, "a bitmap data cluster");
    }
  }
  return r;
}
