/* SPDX-License-Identifier: MIT */
/* qcow2_map: where the bytes of a guest range live.
 *
 * Walks the L2 entries of the range slice by slice (one shared lock of
 * the layer per slice in the cache-hit case), classifies every cluster or
 * subcluster as DATA, ZERO, COMPRESSED or unallocated, and coalesces
 * neighbours into extents.  Unallocated runs are resolved in the backing
 * layer, after dropping this layer's lock (a thread never holds two
 * layers' locks), recursively down the chain; past the end of a shorter
 * backing layer, and below the bottom of the chain, they are UNALLOCATED.
 *
 * What counts as corruption (-EIO through qcow2_corrupt, for the range
 * that touches it only): reserved bits set in an L1 or L2 entry, a data
 * or L2 table offset that is not cluster aligned, an L2 table past the
 * end of its file, a compressed cluster in an image with an external data
 * file, and with extended L2: a subcluster both allocated and zero,
 * allocated subclusters in a cluster with no host offset, or a compressed
 * cluster with a non-zero bitmap.  A data cluster past the end of its
 * file is NOT corruption: as in QEMU it reads as zeros (the io op's job),
 * and a data file that grows under us (external data files, preallocation
 * racing with a writer) makes "end of file" a moving target anyway. */

#include <config.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

struct map_out {
  struct qcow2_extent *ext;
  size_t max;
  size_t n;
};

/* Append E to the output, merging it into the previous extent where the
 * contract allows.  Returns false when the array is full. */
static bool
emit (struct map_out *o, const struct qcow2_extent *e)
{
  if (o->n > 0) {
    struct qcow2_extent *p = &o->ext[o->n - 1];

    assert (p->offset + p->length == e->offset);
    if (p->type == e->type && p->depth == e->depth) {
      switch (e->type) {
      case QCOW2_EXTENT_DATA:
        if (p->file == e->file &&
            p->host_offset + p->length == e->host_offset) {
          p->length += e->length;
          return true;
        }
        break;
      case QCOW2_EXTENT_ZERO:
      case QCOW2_EXTENT_UNALLOCATED:
        p->length += e->length;
        return true;
      case QCOW2_EXTENT_COMPRESSED:
        break;
      }
    }
  }
  if (o->n == o->max)
    return false;
  o->ext[o->n++] = *e;
  return true;
}

static bool
emit_simple (struct map_out *o, uint64_t offset, uint64_t length,
             enum qcow2_extent_type type, const struct qcow2_layer *layer)
{
  struct qcow2_extent e = {
    .offset = offset, .length = length, .type = type,
    .depth = type == QCOW2_EXTENT_UNALLOCATED ? 0 : layer->depth,
    .layer = type == QCOW2_EXTENT_UNALLOCATED ? NULL : layer,
  };
  return emit (o, &e);
}

static bool
emit_data (struct map_out *o, uint64_t offset, uint64_t length,
           const struct qcow2_layer *layer, unsigned file, uint64_t host)
{
  struct qcow2_extent e = {
    .offset = offset, .length = length, .type = QCOW2_EXTENT_DATA,
    .depth = layer->depth, .file = file, .host_offset = host,
    .layer = layer,
  };
  return emit (o, &e);
}

/* Each returns 0 when the range was described, 1 when the output filled
 * up first, or -errno. */
static int map_layer (struct qcow2_layer *layer, uint64_t offset,
                      uint64_t length, struct map_out *o);

/* A range that LAYER does not allocate: its backing layer's, as far as
 * that reaches, then UNALLOCATED.  Called with no lock held. */
static int
map_backing (struct qcow2_layer *layer, uint64_t offset, uint64_t length,
             struct map_out *o)
{
  struct qcow2_layer *b = layer->backing;

  if (b != NULL && offset < b->size) {
    uint64_t n = MIN (length, b->size - offset);
    int r = map_layer (b, offset, n, o);

    if (r != 0)
      return r;
    offset += n;
    length -= n;
  }
  if (length == 0)
    return 0;
  return emit_simple (o, offset, length, QCOW2_EXTENT_UNALLOCATED, NULL)
    ? 0 : 1;
}

static int
map_raw (struct qcow2_layer *layer, uint64_t offset, uint64_t length,
         struct map_out *o)
{
  uint64_t n = 0;

  if (offset < layer->size) {
    n = MIN (length, layer->size - offset);
    if (!emit_data (o, offset, n, layer, layer->file, offset))
      return 1;
  }
  if (n == length)
    return 0;
  return emit_simple (o, offset + n, length - n, QCOW2_EXTENT_UNALLOCATED,
                      NULL) ? 0 : 1;
}

/* What one L2 entry says about the piece of its cluster starting
 * IN_CLUSTER bytes in and at most *LEN long.  Shortens *LEN to the part
 * of one kind (a run of like subclusters with extended L2).  Called with
 * the layer's lock held. */
enum map_piece_kind {
  PIECE_DATA, PIECE_ZERO, PIECE_COMPRESSED, PIECE_BACKING
};

struct map_piece {
  enum map_piece_kind kind;
  uint64_t host;                /* DATA: host offset of the piece;
                                 * COMPRESSED: of the stream */
  uint32_t compressed_length;   /* COMPRESSED */
};

static int
classify_locked (struct qcow2_layer *layer, uint64_t cluster,
                 uint64_t l2e, uint64_t bitmap, uint64_t in_cluster,
                 uint64_t *len, struct map_piece *p)
{
  uint64_t host;
  bool has_host;

  if (l2e & QCOW_OFLAG_COMPRESSED) {
    uint64_t desc = l2e & ~(QCOW_OFLAG_COMPRESSED | QCOW_OFLAG_COPIED);
    uint64_t coffset = desc & layer->coffset_mask;
    uint64_t nsect = (desc >> layer->csize_shift) & layer->csize_mask;

    if (layer->extended_l2 && bitmap != 0)
      return qcow2_corrupt (layer, "compressed cluster %" PRIu64 " has "
                            "a non-zero subcluster bitmap (%#" PRIx64 ")",
                            cluster, bitmap);
    if (layer->data_file != layer->file)
      return qcow2_corrupt (layer, "compressed cluster %" PRIu64 " in an "
                            "image with an external data file", cluster);
    p->kind = PIECE_COMPRESSED;
    p->host = coffset;
    /* At most (2^(cluster_bits - 8)) * 512 <= 4 MiB: fits. */
    p->compressed_length = (nsect + 1) * QCOW2_COMPRESSED_SECTOR_SIZE
      - (coffset & (QCOW2_COMPRESSED_SECTOR_SIZE - 1));
    return 0;
  }

  host = l2e & L2E_OFFSET_MASK;
  if (l2e & L2E_STD_RESERVED_MASK)
    return qcow2_corrupt (layer, "L2 entry %#" PRIx64 " of cluster %"
                          PRIu64 " has reserved bits set", l2e, cluster);
  if (!IS_ALIGNED (host, layer->cluster_size))
    return qcow2_corrupt (layer, "data offset %#" PRIx64 " of cluster %"
                          PRIu64 " is not cluster aligned", host, cluster);

  /* Offset 0 normally means "no cluster"; in an external data file it is
   * a valid offset, told apart by COPIED, which every cluster of a data
   * file carries (their refcount is always 1), as in QEMU. */
  has_host = host != 0 ||
    (layer->data_file != layer->file && (l2e & QCOW_OFLAG_COPIED));

  if (!layer->extended_l2) {
    /* QEMU honours the zero flag in version 2 images too (where the bit
     * is reserved); so do we, to read what it reads. */
    if (l2e & QCOW_OFLAG_ZERO)
      p->kind = PIECE_ZERO;
    else if (!has_host)
      p->kind = PIECE_BACKING;
    else {
      p->kind = PIECE_DATA;
      p->host = host + in_cluster;
    }
    return 0;
  }

  /* Extended L2: bit 0 of the entry is unused (QEMU ignores it too). */
  {
    uint32_t alloc = bitmap & 0xffffffff;
    uint32_t zero = bitmap >> 32;
    uint32_t sc_bits = layer->subcluster_bits;
    uint32_t sc = in_cluster >> sc_bits;
    uint32_t last = (in_cluster + *len - 1) >> sc_bits;
    uint32_t a, z;

    if (alloc & zero)
      return qcow2_corrupt (layer, "cluster %" PRIu64 " has subclusters "
                            "both allocated and zero (bitmap %#" PRIx64 ")",
                            cluster, bitmap);
    if (alloc != 0 && !has_host)
      return qcow2_corrupt (layer, "cluster %" PRIu64 " has allocated "
                            "subclusters but no host offset (bitmap %#"
                            PRIx64 ")", cluster, bitmap);
    a = alloc >> sc & 1;
    z = zero >> sc & 1;
    /* Extend over following subclusters of the same kind. */
    while (sc < last &&
           (alloc >> (sc + 1) & 1) == a && (zero >> (sc + 1) & 1) == z)
      sc++;
    if (sc < last)
      *len = ((uint64_t) (sc + 1) << sc_bits) - in_cluster;
    if (a) {
      p->kind = PIECE_DATA;
      p->host = host + in_cluster;
    }
    else if (z)
      p->kind = PIECE_ZERO;
    else
      p->kind = PIECE_BACKING;
    return 0;
  }
}

/* Map the guest bytes from *OFFSET on, at most SPAN of them, from the
 * L2 slice SLICE (its entry I maps *OFFSET), with layer->lock held.
 * Extents go to O; a run that reads from the backing file is only
 * gathered into *BACK_OFFSET and *BACK_LEN, and the walk stops at its end,
 * so the caller resolves it before going on.  *OFFSET and *LENGTH
 * advance over what was mapped.  Returns 0, 1 (O is full) or -errno. */
static int
map_slice_locked (struct qcow2_layer *layer, const uint8_t *slice,
                  uint32_t i, uint64_t span, uint64_t *offset,
                  uint64_t *length, uint64_t *back_offset,
                  uint64_t *back_len, struct map_out *o)
{
  const uint32_t cbits = layer->cluster_bits;
  const uint64_t csize = layer->cluster_size;
  const uint32_t esize = layer->l2_entry_size;
  const unsigned data_file = layer->data_file;
  uint64_t off = *offset;
  int r = 0;

  while (span > 0) {
    const uint8_t *ent = slice + (size_t) i * esize;
    uint64_t l2e = load_be64 (ent);
    uint64_t bitmap = esize == 16 ? load_be64 (ent + 8) : 0;
    uint64_t in_cluster = off & (csize - 1);
    uint64_t n = MIN (span, csize - in_cluster);
    struct map_piece p = { 0 };
    bool ok = true;

    r = classify_locked (layer, off >> cbits, l2e, bitmap, in_cluster, &n,
                         &p);
    if (r < 0)
      break;
    if (p.kind == PIECE_BACKING) {
      if (*back_len == 0)
        *back_offset = off;
      *back_len += n;
    }
    else if (*back_len > 0)
      break;            /* resolve the backing run before going on */
    else {
      switch (p.kind) {
      case PIECE_DATA:
        ok = emit_data (o, off, n, layer, data_file, p.host);
        break;
      case PIECE_ZERO:
        ok = emit_simple (o, off, n, QCOW2_EXTENT_ZERO, layer);
        break;
      case PIECE_COMPRESSED: {
        struct qcow2_extent e = {
          .offset = off, .length = n,
          .type = QCOW2_EXTENT_COMPRESSED, .depth = layer->depth,
          .file = layer->file, .host_offset = p.host,
          .compressed_length = p.compressed_length,
          .cluster_offset = in_cluster, .layer = layer,
          .stream_gen = atomic_load (&layer->stream_gen),
        };
        ok = emit (o, &e);
        break;
      }
      case PIECE_BACKING:
        abort ();
      }
      if (!ok) {
        r = 1;
        break;
      }
    }
    off += n;
    *length -= n;
    span -= n;
    if ((off & (csize - 1)) == 0)
      i++;
  }
  *offset = off;
  return r;
}

static int
map_qcow2 (struct qcow2_layer *layer, uint64_t offset, uint64_t length,
           struct map_out *o)
{
  const uint32_t cbits = layer->cluster_bits;
  const uint32_t slice_entries = l2_cache_slice_entries (layer);

  while (length > 0) {
    uint64_t cluster = offset >> cbits;
    uint64_t l1_index = cluster / layer->l2_entries;
    uint32_t l2_index = cluster % layer->l2_entries;
    uint32_t i = l2_index % slice_entries;
    /* Guest bytes from OFFSET to the end of this slice. */
    uint64_t slice_end = (cluster - i + slice_entries) << cbits;
    uint64_t todo = MIN (length, slice_end - offset);
    uint64_t back_offset = 0, back_len = 0;     /* pending backing run */
    const uint8_t *slice;
    bool exclusive = false;
    int r;

    {
      RDLOCK_FOR_SCOPE (&layer->lock);

      r = l2_cache_get_locked (layer, l1_index, l2_index / slice_entries,
                               &exclusive, &slice);
      if (r == 0 && slice == NULL) {
        back_offset = offset;
        back_len = todo;
        offset += todo;
        length -= todo;
      }
      else if (r == 0)
        r = map_slice_locked (layer, slice, i, todo, &offset, &length,
                              &back_offset, &back_len, o);
    }
    if (r != 0)
      return r;
    if (back_len > 0) {
      r = map_backing (layer, back_offset, back_len, o);
      if (r != 0)
        return r;
    }
  }
  return 0;
}

static int
map_layer (struct qcow2_layer *layer, uint64_t offset, uint64_t length,
           struct map_out *o)
{
  if (layer->format == LAYER_RAW)
    return map_raw (layer, offset, length, o);
  return map_qcow2 (layer, offset, length, o);
}

int
map_image (struct qcow2_image *img, uint64_t offset, uint64_t length,
           struct qcow2_extent *ext, size_t max, size_t *n)
{
  struct map_out o = { .ext = ext, .max = max, .n = 0 };
  int r;

  *n = 0;
  if (!range_fits (offset, length, img->layers[0]->size))
    return -EINVAL;
  if (length == 0 || max == 0)
    return 0;
  r = map_layer (img->layers[0], offset, length, &o);
  if (r < 0)
    return r;
  *n = o.n;
  return 0;
}

int
qcow2_map (struct qcow2_image *img, uint64_t offset, uint64_t length,
           struct qcow2_extent *ext, size_t max, size_t *n)
{
  int r;

  *n = 0;
  if (!range_fits (offset, length, img->view_size))
    return -EINVAL;
  r = map_image (img, offset + img->window, length, ext, max, n);
  if (r == 0 && img->window)
    for (size_t i = 0; i < *n; i++)
      ext[i].offset -= img->window;
  return r;
}

enum qcow2_host_holes
qcow2_layer_host_holes (const struct qcow2_layer *layer)
{
  if (layer->format == LAYER_RAW)
    return QCOW2_HOST_HOLES_UNALLOCATED;
  return layer->metadata_prealloc ? QCOW2_HOST_HOLES_ZERO
    : QCOW2_HOST_HOLES_DATA;
}
