/* SPDX-License-Identifier: MIT */
/* The write path: qcow2_write_begin/qcow2_write_end.
 *
 * A write runs in three steps.  Begin, under the top layer's lock held
 * exclusively: look at the L2 entry of every cluster of the range; a
 * normal cluster with COPIED (refcount 1) is written in place, any other
 * (unallocated, zero, compressed, shared with a snapshot) gets a new host
 * cluster, allocated in contiguous runs; the L2 tables that will change
 * are made ours first.  Then, with the lock dropped, begin reads what
 * copy-on-write needs (the rest of each partially written new cluster, as
 * the guest sees it now: through qcow2_map, so backing files, compressed
 * clusters and zero clusters all come out right) and returns the host
 * writes.  The caller writes them; end, under the lock again, links the
 * new L2 entries (data before metadata) and drops the references the old
 * entries held, or undoes the allocations if the data write failed.
 *
 * Between begin and end the guest clusters of the range are covered by an
 * in-flight record (inflight.c), so that nothing overlapping allocates,
 * frees or links the same clusters meanwhile.
 *
 * Extended L2: COW stops at subcluster boundaries, and a new cluster for
 * a range that was unallocated keeps its other subclusters unallocated or
 * zero, so it needs no COW at all when the write is subcluster aligned.
 *
 * See qcow2/ORDERING.md for what reaches the disk before what. */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* ---- The write handle -------------------------------------------------- */

/* One cluster whose L2 entry changes at write_end. */
struct write_link {
  uint64_t cluster;             /* guest cluster index */
  uint64_t old_l2e, old_bitmap;
  uint64_t new_l2e, new_bitmap; /* host filled in once allocated */
  bool alloc;                   /* needs (has) a new host cluster */
  bool release_old;             /* drop the old entry's references */
  size_t piece_first, piece_end;  /* alloc: its pieces, whose host
                                   * offsets are relative until then */
  /* A compressed stream of CLEN bytes at CHOST (compress-write.c): its
   * references are undone with l2_unref_stream_locked. */
  bool compressed;
  uint64_t chost;
  uint32_t clen;
};

/* One host range of the write, before COW is resolved. */
struct write_piece {
  uint64_t host;
  uint64_t length;
  bool cow;                     /* fill from the guest's current contents */
  uint64_t guest;               /* cow: guest offset; else src offset */
};

struct qcow2_write {
  struct qcow2_image *img;
  uint64_t offset, length;      /* the guest range, for the bitmaps */
  struct inflight *rec;         /* NULL: the caller holds the record */
  bool zeros;                   /* the guest part is zeros */
  /* Not NULL: the guest part comes from this buffer (owned by the
   * handle, indexed from 'offset') instead of the caller's data. */
  const uint8_t *data;
  struct write_link *links;
  size_t nlinks, links_cap;
  struct write_piece *pieces;
  size_t npieces, pieces_cap;
  struct qcow2_seg *segs;
  size_t nsegs, segs_cap;
  void **bufs;
  size_t nbufs, bufs_cap;
};

struct qcow2_write *
write_new (struct qcow2_image *img, uint64_t offset, uint64_t length)
{
  struct qcow2_write *w = calloc (1, sizeof *w);

  if (w == NULL)
    return NULL;
  w->img = img;
  w->offset = offset;
  w->length = length;
  return w;
}

void
write_attach_record (struct qcow2_write *w, struct inflight *rec)
{
  w->rec = rec;
}

void
write_free (struct qcow2_write *w)
{
  if (w == NULL)
    return;
  for (size_t i = 0; i < w->nbufs; i++)
    free (w->bufs[i]);
  free (w->bufs);
  free (w->links);
  free (w->pieces);
  free (w->segs);
  free (w);
}

static int
grow_array (void **p, size_t *cap, size_t need, size_t elem)
{
  size_t n;
  void *q;

  if (need <= *cap)
    return 0;
  n = *cap ? *cap * 2 : 16;
  while (n < need)
    n *= 2;
  q = realloc (*p, n * elem);
  if (q == NULL)
    return -errno;
  *p = q;
  *cap = n;
  return 0;
}

static int
add_piece (struct qcow2_write *w, uint64_t host, uint64_t length, bool cow,
           uint64_t guest)
{
  int r;

  if (length == 0)
    return 0;
  r = grow_array ((void **) &w->pieces, &w->pieces_cap, w->npieces + 1,
                  sizeof *w->pieces);
  if (r < 0)
    return r;
  w->pieces[w->npieces++] = (struct write_piece) {
    .host = host, .length = length, .cow = cow, .guest = guest,
  };
  return 0;
}

int
write_add_seg (struct qcow2_write *w, uint64_t host, uint64_t length,
               enum qcow2_seg_source source, uint64_t src_offset,
               const void *buf)
{
  unsigned file = w->img->layers[0]->data_file;
  int r;

  r = grow_array ((void **) &w->segs, &w->segs_cap, w->nsegs + 1,
                  sizeof *w->segs);
  if (r < 0)
    return r;
  w->segs[w->nsegs++] = (struct qcow2_seg) {
    .file = file, .host_offset = host, .length = length, .source = source,
    .src_offset = src_offset, .buf = buf,
  };
  return 0;
}

void *
write_add_buf (struct qcow2_write *w, size_t size)
{
  void *b;

  if (grow_array ((void **) &w->bufs, &w->bufs_cap, w->nbufs + 1,
                  sizeof *w->bufs) < 0)
    return NULL;
  b = malloc (size ? size : 1);
  if (b != NULL)
    w->bufs[w->nbufs++] = b;
  return b;
}

void *
write_data_buffer (struct qcow2_write *w, size_t size)
{
  uint8_t *b = write_add_buf (w, size);

  if (b != NULL)
    w->data = b;
  return b;
}

/* The pieces of a write into [A, B) of a whole new (or wholly rewritten)
 * cluster at host BASE whose guest cluster starts at GBASE: COW of the
 * head, the data from SRC, COW of the tail up to CEND. */
static int
add_cluster_pieces (struct qcow2_write *w, uint64_t base, uint64_t gbase,
                    uint64_t a, uint64_t b, uint64_t cend, uint64_t src)
{
  int r;

  r = add_piece (w, base, a, true, gbase);
  if (r == 0)
    r = add_piece (w, base + a, b - a, false, src);
  if (r == 0)
    r = add_piece (w, base + b, cend - b, true, gbase + b);
  return r;
}

/* Bits FIRST..LAST of a subcluster bitmap. */
static uint32_t
sc_mask (uint32_t first, uint32_t last)
{
  uint64_t m = ((UINT64_C (1) << (last - first + 1)) - 1) << first;
  return (uint32_t) m;
}

/* Plan one cluster: decide in place or new, record the link, and add the
 * pieces (host offsets of new clusters are filled in after allocation:
 * pieces of a new cluster hold offsets relative to it, fixed later).
 * A = in-cluster start of the write, B = its end, CEND = in-cluster end
 * of the guest disk (cluster size except in the last cluster). */
static int
plan_cluster_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                     uint64_t cluster, uint64_t a, uint64_t b, uint64_t cend,
                     uint64_t src, bool *need_table, bool *is_new)
{
  const uint64_t cs = layer->cluster_size;
  const uint64_t gbase = cluster << layer->cluster_bits;
  uint64_t l2e, bitmap, host;
  struct write_link lk = { .cluster = cluster, .piece_first = w->npieces };
  bool has_table, in_place, exclusive = true;
  int r;

  r = l2_read_entry_locked (layer, cluster, &l2e, &bitmap, &has_table,
                            &exclusive);
  if (r < 0)
    return r;
  r = l2_check_entry_locked (layer, cluster, l2e, bitmap);
  if (r < 0)
    return r;
  host = l2e & L2E_OFFSET_MASK;
  /* COPIED in a table that is itself shared would be a lie (the
   * snapshot's table names the cluster too): copy then as well. */
  in_place = !(l2e & QCOW_OFLAG_COMPRESSED) && host != 0 &&
    (l2e & QCOW_OFLAG_COPIED) &&
    (layer->l1[cluster / layer->l2_entries] & QCOW_OFLAG_COPIED);
  lk.old_l2e = l2e;
  lk.old_bitmap = bitmap;
  *is_new = false;
  *need_table = false;

  if (!layer->extended_l2) {
    if (in_place) {
      if (l2e & QCOW_OFLAG_ZERO) {
        /* Preallocated zero cluster: the rest of it must become real
         * zeros (COW reads them as zeros) before the flag goes. */
        r = add_cluster_pieces (w, host, gbase, a, b, cend, src);
        lk.new_l2e = l2e & ~QCOW_OFLAG_ZERO;
        *need_table = true;
      }
      else
        return add_piece (w, host + a, b - a, false, src);
    }
    else {
      r = add_cluster_pieces (w, 0, gbase, a, b, cend, src);
      lk.alloc = true;
      lk.release_old = (l2e & QCOW_OFLAG_COMPRESSED) || host != 0;
      lk.new_l2e = QCOW_OFLAG_COPIED;
      *need_table = true;
      *is_new = true;
    }
  }
  else {
    const uint32_t scb = layer->subcluster_bits;
    uint32_t alloc = bitmap & 0xffffffff, zero = bitmap >> 32;
    uint32_t s0 = a >> scb, s1 = (b - 1) >> scb;
    uint32_t m = sc_mask (s0, s1);
    uint64_t head = (uint64_t) s0 << scb;
    uint64_t tail = MIN (((uint64_t) s1 + 1) << scb, cend);

    if (in_place) {
      if (!(alloc >> s0 & 1))
        r = add_piece (w, host + head, a - head, true, gbase + head);
      if (r == 0)
        r = add_piece (w, host + a, b - a, false, src);
      if (r == 0 && !(alloc >> s1 & 1) && b < tail)
        r = add_piece (w, host + b, tail - b, true, gbase + b);
      if (r < 0)
        return r;
      if ((alloc & m) == m && (zero & m) == 0)
        return 0;       /* no metadata change */
      lk.new_l2e = l2e;
      lk.new_bitmap = (uint64_t) (alloc | m) | (uint64_t) (zero & ~m) << 32;
      *need_table = true;
    }
    else if (host == 0 && !(l2e & QCOW_OFLAG_COMPRESSED)) {
      /* Nothing allocated here: only the touched subclusters become
       * allocated; the others keep reading as they do now. */
      r = add_piece (w, head, a - head, true, gbase + head);
      if (r == 0)
        r = add_piece (w, a, b - a, false, src);
      if (r == 0 && b < tail)
        r = add_piece (w, b, tail - b, true, gbase + b);
      lk.alloc = true;
      lk.new_l2e = QCOW_OFLAG_COPIED;
      lk.new_bitmap = (uint64_t) m | (uint64_t) (zero & ~m) << 32;
      *need_table = true;
      *is_new = true;
    }
    else {
      /* Shared or compressed: copy the whole cluster as the guest sees
       * it; every subcluster of the copy is allocated. */
      r = add_cluster_pieces (w, 0, gbase, a, b, cend, src);
      lk.alloc = true;
      lk.release_old = true;
      lk.new_l2e = QCOW_OFLAG_COPIED;
      lk.new_bitmap = cend == cs ? 0xffffffff
        : sc_mask (0, (uint32_t) ((cend - 1) >> scb));
      *need_table = true;
      *is_new = true;
    }
  }
  if (r < 0)
    return r;
  lk.piece_end = w->npieces;
  r = grow_array ((void **) &w->links, &w->links_cap, w->nlinks + 1,
                  sizeof *w->links);
  if (r < 0)
    return r;
  w->links[w->nlinks++] = lk;
  return 0;
}

/* qsort order of segments: by file, then host offset. */
static int
seg_cmp (const void *pa, const void *pb)
{
  const struct qcow2_seg *a = pa, *b = pb;

  if (a->file != b->file)
    return a->file < b->file ? -1 : 1;
  if (a->host_offset != b->host_offset)
    return a->host_offset < b->host_offset ? -1 : 1;
  return 0;
}

/* Read COW data for the guest range [guest, guest+len) into host HOST
 * onwards: data as segments of buffers, zeros as zero segments.  Called
 * with no lock held, under the in-flight record. */
static int
resolve_cow (struct qcow2_write *w, uint64_t host, uint64_t guest,
             uint64_t len)
{
  struct qcow2_image *img = w->img;
  struct qcow2_extent ext[16];
  CLEANUP_FREE void *cin = NULL;
  CLEANUP_FREE void *cout = NULL;

  while (len > 0) {
    size_t n;
    int r = map_image (img, guest, len, ext, 16, &n);

    if (r < 0)
      return r;
    if (n == 0)
      return -EIO;
    for (size_t i = 0; i < n; i++) {
      const struct qcow2_extent *e = &ext[i];
      void *buf;

      switch (e->type) {
      case QCOW2_EXTENT_ZERO:
      case QCOW2_EXTENT_UNALLOCATED:
        r = write_add_seg (w, host, e->length, QCOW2_SEG_ZERO, 0, NULL);
        break;
      case QCOW2_EXTENT_DATA:
        buf = write_add_buf (w, e->length);
        if (buf == NULL)
          return -ENOMEM;
        r = img->io->pread (img->io_opaque, img->files[e->file].fd, buf,
                            e->length, e->host_offset);
        if (r == 0)
          r = write_add_seg (w, host, e->length, QCOW2_SEG_BUFFER, 0, buf);
        break;
      case QCOW2_EXTENT_COMPRESSED: {
        uint32_t csize = qcow2_layer_cluster_size (e->layer);

        if (e->cluster_offset > csize ||
            e->length > csize - e->cluster_offset)
          return -EIO;
        free (cin);
        cin = malloc (e->compressed_length ? e->compressed_length : 1);
        if (cout == NULL)
          cout = malloc (UINT32_C (1) << 21);   /* the largest cluster */
        buf = write_add_buf (w, e->length);
        if (cin == NULL || cout == NULL || buf == NULL)
          return -ENOMEM;
        r = img->io->pread (img->io_opaque, img->files[e->file].fd, cin,
                            e->compressed_length, e->host_offset);
        if (r == 0)
          r = qcow2_decompress (e->layer, cin, e->compressed_length, cout);
        if (r == 0) {
          memcpy (buf, (uint8_t *) cout + e->cluster_offset, e->length);
          r = write_add_seg (w, host, e->length, QCOW2_SEG_BUFFER, 0, buf);
        }
        break;
      }
      }
      if (r < 0)
        return r;
      host += e->length;
      guest += e->length;
      len -= e->length;
    }
  }
  return 0;
}

/* Undo the allocations of links [from, nlinks) (never linked). */
static void
undo_allocs_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                    size_t from)
{
  for (size_t i = from; i < w->nlinks; i++) {
    const struct write_link *lk = &w->links[i];

    if (lk->compressed)
      l2_unref_stream_locked (layer, lk->chost, lk->clen);
    else if (lk->alloc && (lk->new_l2e & L2E_OFFSET_MASK))
      refcount_adjust_locked (layer, lk->new_l2e & L2E_OFFSET_MASK, 1, -1);
  }
}

void
write_undo_locked (struct qcow2_layer *layer, struct qcow2_write *w)
{
  undo_allocs_locked (layer, w, 0);
}

int
write_add_compressed (struct qcow2_write *w, uint64_t cluster,
                      uint64_t old_l2e, uint64_t old_bitmap,
                      uint64_t desc, uint64_t chost, uint32_t clen)
{
  int r;

  r = grow_array ((void **) &w->links, &w->links_cap, w->nlinks + 1,
                  sizeof *w->links);
  if (r < 0)
    return r;
  w->links[w->nlinks++] = (struct write_link) {
    .cluster = cluster, .old_l2e = old_l2e, .old_bitmap = old_bitmap,
    .new_l2e = desc, .new_bitmap = 0,
    .compressed = true, .chost = chost, .clen = clen,
    .piece_first = w->npieces, .piece_end = w->npieces,
  };
  return 0;
}

/* The common case, under the lock held shared (or exclusive, once
 * l2_read_entry_locked needed a slice loaded: *EXCLUSIVE): every cluster
 * of the range is ours alone (COPIED, in a COPIED table) and already
 * reads its host data where the write lands, so the write goes in place
 * with no metadata change.  Returns 1 with the pieces added, 0 when some
 * cluster needs more, or -errno. */
static int
plan_in_place_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                      uint64_t offset, uint64_t length, bool *exclusive)
{
  const uint64_t cs = layer->cluster_size;
  uint64_t first = offset >> layer->cluster_bits;
  uint64_t last = (offset + length - 1) >> layer->cluster_bits;
  int r;

  for (uint64_t c = first; c <= last; c++) {
    uint64_t gbase = c << layer->cluster_bits;
    uint64_t a = c == first ? offset - gbase : 0;
    uint64_t b = MIN (offset + length - gbase, cs);
    uint64_t l2e, bitmap, host;
    bool has_table;

    r = l2_read_entry_locked (layer, c, &l2e, &bitmap, &has_table,
                              exclusive);
    if (r < 0)
      return r;
    host = l2e & L2E_OFFSET_MASK;
    if ((l2e & QCOW_OFLAG_COMPRESSED) || host == 0 ||
        !(l2e & QCOW_OFLAG_COPIED) ||
        !(layer->l1[c / layer->l2_entries] & QCOW_OFLAG_COPIED))
      return 0;
    if (layer->extended_l2) {
      uint32_t m = sc_mask (a >> layer->subcluster_bits,
                            (b - 1) >> layer->subcluster_bits);

      if ((bitmap & m) != m)
        return 0;
    }
    else if (l2e & QCOW_OFLAG_ZERO)
      return 0;
    r = l2_check_entry_locked (layer, c, l2e, bitmap);
    if (r < 0)
      return r;
    r = add_piece (w, host + a, b - a, false, gbase + a - offset);
    if (r < 0)
      return r;
  }
  return 1;
}

/* plan_in_place_locked under the lock; nothing added unless it
 * returns 1. */
static int
plan_in_place (struct qcow2_layer *layer, struct qcow2_write *w,
               uint64_t offset, uint64_t length)
{
  bool exclusive = false;
  int r;

  {
    RDLOCK_FOR_SCOPE (&layer->lock);
    r = plan_in_place_locked (layer, w, offset, length, &exclusive);
  }
  if (r <= 0)
    w->npieces = 0;
  return r;
}

int
write_plan_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                   uint64_t offset, uint64_t length)
{
  const uint64_t cs = layer->cluster_size;
  const uint64_t vsize = layer->size;
  uint64_t first = offset >> layer->cluster_bits;
  uint64_t last = (offset + length - 1) >> layer->cluster_bits;
  uint64_t nalloc = 0, last_table = UINT64_MAX;
  uint64_t host = 0, got = 0;
  size_t first_link = w->nlinks;
  int r;

  for (uint64_t c = first; c <= last; c++) {
    uint64_t gbase = c << layer->cluster_bits;
    uint64_t a = c == first ? offset - gbase : 0;
    uint64_t b = MIN (offset + length - gbase, cs);
    uint64_t cend = MIN (vsize - gbase, cs);
    bool need_table, is_new;

    r = plan_cluster_locked (layer, w, c, a, b, cend, gbase + a - w->offset,
                             &need_table, &is_new);
    if (r < 0)
      return r;
    if (is_new)
      nalloc++;
    if (need_table && c / layer->l2_entries != last_table) {
      last_table = c / layer->l2_entries;
      r = l2_table_prepare_locked (layer, last_table);
      if (r < 0)
        return r;
    }
  }
  if (nalloc == 0)
    return 0;

  r = header_mark_dirty_locked (layer);
  if (r < 0)
    return r;
  /* New data clusters, in as few contiguous runs as the allocator
   * finds, handed out in guest order (only this call's links: those
   * of an earlier call already have theirs). */
  for (size_t i = first_link; i < w->nlinks; i++) {
    struct write_link *lk = &w->links[i];

    if (!lk->alloc)
      continue;
    if (got == 0) {
      r = alloc_clusters_locked (layer, 1, nalloc, &host, &got);
      if (r < 0) {
        undo_allocs_locked (layer, w, first_link);
        return r;
      }
      if (got == 0 || got > nalloc) {
        undo_allocs_locked (layer, w, first_link);
        return -EIO;
      }
    }
    lk->new_l2e |= host;
    for (size_t p = lk->piece_first; p < lk->piece_end; p++)
      w->pieces[p].host += host;
    host += cs;
    got--;
    nalloc--;
  }
  return 0;
}

int
write_finish_plan (struct qcow2_write *w, const struct qcow2_seg **segs,
                   size_t *nsegs)
{
  struct qcow2_layer *layer = w->img->layers[0];
  int r = 0;

  *segs = NULL;
  *nsegs = 0;
  /* Data I/O, outside the lock: read what COW needs. */
  for (size_t i = 0; i < w->npieces && r == 0; i++) {
    const struct write_piece *p = &w->pieces[i];

    if (p->cow)
      r = resolve_cow (w, p->host, p->guest, p->length);
    else if (w->zeros)
      r = write_add_seg (w, p->host, p->length, QCOW2_SEG_ZERO, 0, NULL);
    else if (w->data)
      r = write_add_seg (w, p->host, p->length, QCOW2_SEG_BUFFER, 0,
                         w->data + p->guest);
    else
      r = write_add_seg (w, p->host, p->length, QCOW2_SEG_GUEST, p->guest,
                         NULL);
  }
  if (r < 0) {
    WRLOCK_FOR_SCOPE (&layer->lock);
    undo_allocs_locked (layer, w, 0);
    return r;
  }

  /* Host order, then merge neighbours the caller can write as one. */
  qsort (w->segs, w->nsegs, sizeof *w->segs, seg_cmp);
  {
    size_t o = 0;

    for (size_t i = 0; i < w->nsegs; i++) {
      struct qcow2_seg *s = &w->segs[i];

      if (o > 0) {
        struct qcow2_seg *p = &w->segs[o - 1];

        if (p->file == s->file && p->source == s->source &&
            p->host_offset + p->length == s->host_offset &&
            (s->source == QCOW2_SEG_ZERO ||
             (s->source == QCOW2_SEG_GUEST &&
              p->src_offset + p->length == s->src_offset))) {
          p->length += s->length;
          continue;
        }
      }
      w->segs[o++] = *s;
    }
    w->nsegs = o;
  }
  *segs = w->segs;
  *nsegs = w->nsegs;
  return 0;
}

int
write_begin_held (struct qcow2_image *img, uint64_t offset, uint64_t length,
                  bool zeros, struct qcow2_write **wp,
                  const struct qcow2_seg **segs, size_t *nsegs)
{
  struct qcow2_layer *layer = img->layers[0];
  struct qcow2_write *w;
  int r;

  *wp = NULL;
  *segs = NULL;
  *nsegs = 0;
  w = write_new (img, offset, length);
  if (w == NULL)
    return -errno;
  w->zeros = zeros;
  if (length == 0) {
    *wp = w;
    return 0;
  }
  if (layer->format == LAYER_RAW) {
    /* The guest byte is the file byte. */
    r = write_add_seg (w, offset, length,
                       zeros ? QCOW2_SEG_ZERO : QCOW2_SEG_GUEST, 0, NULL);
    if (r < 0) {
      write_free (w);
      return r;
    }
    *wp = w;
    *segs = w->segs;
    *nsegs = w->nsegs;
    return 0;
  }

  r = plan_in_place (layer, w, offset, length);
  if (r == 0) {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = write_plan_locked (layer, w, offset, length);
  }
  if (r >= 0)
    r = write_finish_plan (w, segs, nsegs);
  if (r < 0) {
    write_free (w);
    return r;
  }
  *wp = w;
  return 0;
}

int
write_public_args (struct qcow2_image *img, uint64_t *offset,
                   uint64_t length, uint64_t max)
{
  if (!range_fits (*offset, length, img->view_size)
      || (max && length > max))
    return -EINVAL;
  *offset += img->window;
  return write_check_args (img, *offset, length);
}

int
write_check_args (struct qcow2_image *img, uint64_t offset,
                  uint64_t length)
{
  struct qcow2_layer *top = img->layers[0];

  if (!img->writable)
    return -EROFS;
  if (qcow2_is_corrupt (img) || qcow2_sync_error (img))
    return -EIO;
  if (!range_fits (offset, length, top->size))
    return -EINVAL;
  if (top->data_file != top->file)
    return -ENOTSUP;    /* external data files: not written (yet) */
  return 0;
}

int
qcow2_write_begin (struct qcow2_image *img, uint64_t offset,
                   uint64_t length, unsigned flags, struct qcow2_write **wp,
                   const struct qcow2_seg **segs, size_t *nsegs)
{
  struct inflight *rec = NULL;
  int r;

  *wp = NULL;
  *segs = NULL;
  *nsegs = 0;
  r = write_public_args (img, &offset, length, QCOW2_MAX_WRITE);
  if (r < 0)
    return r;
  /* A raw file has no metadata to keep consistent: nothing to order
   * overlapping writes against. */
  if (length > 0 && img->layers[0]->format == LAYER_QCOW2) {
    r = inflight_enter (img, offset, length, flags, &rec);
    if (r != 0)
      return r;
  }
  r = write_begin_held (img, offset, length, false, wp, segs, nsegs);
  if (r < 0) {
    inflight_leave (img, rec);
    return r;
  }
  write_attach_record (*wp, rec);
  return 0;
}

int
qcow2_write_end (struct qcow2_write *w, int result)
{
  struct qcow2_image *img = w->img;
  struct qcow2_layer *layer = img->layers[0];
  bool backlog = false;
  int r = 0;

  if (w->nlinks > 0) {
    WRLOCK_FOR_SCOPE (&layer->lock);

    if (result < 0)
      undo_allocs_locked (layer, w, 0);
    else {
      size_t i;

      for (i = 0; i < w->nlinks; i++) {
        struct write_link *lk = &w->links[i];

        r = l2_store_entry_locked (layer, lk->cluster, lk->old_l2e,
                                   lk->old_bitmap, lk->new_l2e,
                                   lk->new_bitmap);
        if (r < 0)
          break;
        if (lk->release_old) {
          /* Copy-on-write: the old cluster keeps its host space until
           * reused, as in QEMU (release.c). */
          r = l2_release_entry_locked (layer, lk->old_l2e, false);
          if (r < 0) {
            i++;        /* linked: its new cluster is in use */
            break;
          }
        }
      }
      if (r < 0)
        undo_allocs_locked (layer, w, i);
    }
    backlog = release_backlog_locked (layer);
  }
  /* Even a failed write may have changed data in place. */
  bitmap_set_dirty (img, w->offset, w->length);
  inflight_leave (img, w->rec);
  write_free (w);
  if (backlog)
    flush_backlog (img);
  return result < 0 ? 0 : r;
}
