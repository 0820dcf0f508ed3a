/* SPDX-License-Identifier: MIT */
/* Compressed writes: what QEMU 7.2's compress filter does with a write
 * to the qcow2 node under it (block/filter-compress.c, and in qcow2
 * qcow2_co_pwritev_compressed_part/_task, qcow2-cluster.c's
 * qcow2_alloc_compressed_cluster_offset, qcow2-refcount.c's
 * qcow2_alloc_bytes), for qemu-nbd --image-opts driver=compress,... as
 * virt-v2v -oo compressed and nbdcopy to a compressed qcow2 use it.
 *
 * The filter's request alignment is the cluster size, so QEMU's block
 * layer widens every write to whole clusters, reading the added head and
 * tail from the current guest view (zeros past the end of the disk), and
 * hands the qcow2 driver whole clusters.  Each is compressed (QEMU's
 * parameters, compress.c); a stream that is not shorter than a cluster
 * is written uncompressed through the ordinary write path; any other is
 * stored compressed, but only where the cluster's L2 entry has no host
 * offset (unallocated, or a zero cluster without one): "compression
 * can't overwrite anything", so an allocated cluster fails the write
 * with EIO.  QEMU writes the clusters of one request in parallel and
 * may have written some before one fails; we check every cluster first
 * and change nothing when one would fail.
 *
 * Streams are packed as qcow2_alloc_bytes packs them: each starts where
 * the last one ended, in the same host cluster while it fits, running on
 * into the next cluster when that is the next free one, else starting a
 * new cluster; every host cluster a stream touches holds one reference
 * for it.  The L2 entry is the compressed descriptor (host byte offset,
 * extra 512-byte sectors), without COPIED, with an all-zero subcluster
 * bitmap on extended L2 images.  The order of it all (stream written
 * before the entry, increments before the entry, undo, and when the byte
 * allocator must leave its cluster) is in ORDERING.md, "Compressed
 * clusters".
 *
 * Compression runs with no lock held; only the L2 checks, the byte
 * allocation and the planning of uncompressed clusters take the layer
 * lock, and the in-flight record over the widened range orders the call
 * against every other write, zeroing and discard that touches its
 * clusters (QEMU serialises a widened request the same way). */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/iszero.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* QEMU's qcow2_alloc_bytes: SIZE (1 .. cluster_size - 1) bytes for one
 * stream, each host cluster it touches getting one reference.  Sets
 * *HOST.  -ENOSPC, -EIO, -errno. */
static int
alloc_bytes_locked (struct qcow2_layer *layer, uint32_t size, uint64_t *host)
{
  const uint64_t cs = layer->cluster_size;
  uint64_t off = layer->free_byte_offset, cur = off & ~(cs - 1);
  uint64_t rc = 0, fresh, got;
  int r;

  if (off != 0) {
    r = refcount_get_locked (layer, cur, &rc);
    if (r < 0)
      return r;
    /* 0 cannot be (refcount.c resets the offset), but a free cluster
     * must never be appended to; a full refcount cannot take one more
     * stream (QEMU's rule). */
    if (rc == 0 || rc >= refcount_max (layer))
      off = 0;
  }

  if (off != 0 && cs - (off - cur) >= size) {
    r = refcount_adjust_locked (layer, cur, 1, 1);
    if (r < 0)
      return r;
  }
  else {
    r = alloc_clusters_locked (layer, 1, 1, &fresh, &got);
    if (r < 0)
      return r;
    if (got != 1) {
      refcount_adjust_locked (layer, fresh, got, -1);
      return -EIO;
    }
    if (off != 0 && fresh == cur + cs) {
      /* The next free cluster follows: the stream starts in the current
       * one and runs on into it (which alloc_clusters_locked gave the
       * stream's reference already). */
      r = refcount_adjust_locked (layer, cur, 1, 1);
      if (r < 0) {
        refcount_adjust_locked (layer, fresh, 1, -1);
        return r;
      }
    }
    else
      off = fresh;
  }

  *host = off;
  layer->free_byte_offset = (off + size) & (cs - 1) ? off + size : 0;
  atomic_store (&layer->stream_gen, stream_gen_next ());
  return 0;
}

/* The L2 entry of a stream of LEN bytes at HOST ("Compressed Clusters
 * Descriptor"): the offset, and the 512-byte sectors after the first
 * that the stream reaches into. */
static uint64_t
descriptor (const struct qcow2_layer *layer, uint64_t host, uint32_t len)
{
  uint64_t nsect = (host + len - 1) / QCOW2_COMPRESSED_SECTOR_SIZE
    - host / QCOW2_COMPRESSED_SECTOR_SIZE;

  return QCOW_OFLAG_COMPRESSED | host | nsect << layer->csize_shift;
}

/* Per cluster of the widened range: its stream (NULL: write it
 * uncompressed) and the stream's length. */
struct cplan {
  const uint8_t *stream;
  uint32_t len;
};

/* Check, then allocate and plan, every cluster of [astart, astart +
 * n clusters) into W, under the lock. */
static int
plan_clusters_locked (struct qcow2_layer *layer, struct qcow2_write *w,
                      uint64_t astart, uint64_t n, const struct cplan *cp)
{
  const uint64_t cs = layer->cluster_size;
  uint64_t first = astart >> layer->cluster_bits;
  int r = 0;

  /* First every refusal, so that a refused write changes nothing. */
  for (uint64_t i = 0; i < n; i++) {
    uint64_t l2e, bitmap;
    bool has_table, exclusive = true;

    if (cp[i].stream == NULL)
      continue;
    r = l2_read_entry_locked (layer, first + i, &l2e, &bitmap, &has_table,
                              &exclusive);
    if (r == 0)
      r = l2_check_entry_locked (layer, first + i, l2e, bitmap);
    if (r < 0)
      return r;
    /* "Compression can't overwrite anything" (QEMU). */
    if (l2e & L2E_OFFSET_MASK)
      return -EIO;
  }

  for (uint64_t i = 0; i < n && r == 0; i++) {
    uint64_t c = first + i, gbase = c << layer->cluster_bits;
    uint64_t l2e = 0, bitmap = 0, host = 0;
    bool has_table, exclusive = true;

    if (cp[i].stream == NULL) {
      r = write_plan_locked (layer, w, gbase, MIN (cs, layer->size - gbase));
      continue;
    }
    r = l2_table_prepare_locked (layer, c / layer->l2_entries);
    if (r == 0)
      r = l2_read_entry_locked (layer, c, &l2e, &bitmap, &has_table,
                                &exclusive);
    if (r == 0)
      r = alloc_bytes_locked (layer, cp[i].len, &host);
    if (r < 0)
      break;
    if (host + cp[i].len - 1 > layer->coffset_mask) {
      /* Past what a descriptor can name (QEMU's allocator stops
       * there). */
      l2_unref_stream_locked (layer, host, cp[i].len);
      r = -ENOSPC;
      break;
    }
    r = write_add_compressed (w, c, l2e, bitmap,
                              descriptor (layer, host, cp[i].len), host,
                              cp[i].len);
    if (r < 0) {
      l2_unref_stream_locked (layer, host, cp[i].len);
      break;
    }
    r = write_add_seg (w, host, cp[i].len, QCOW2_SEG_BUFFER, 0,
                       cp[i].stream);
  }
  if (r < 0)
    write_undo_locked (layer, w);
  return r;
}

static int
compressed_held (struct qcow2_image *img, uint64_t offset,
                 uint64_t length, const void *data, unsigned flags,
                 struct qcow2_write **wp,
                 const struct qcow2_seg **segs, size_t *nsegs)
{
  struct qcow2_layer *layer = img->layers[0];
  const uint64_t cs = layer->cluster_size;
  uint64_t astart, aend, dend, end, n;
  struct qcow2_write *w;
  CLEANUP_FREE struct cplan *cp = NULL;
  CLEANUP_FREE uint8_t *scratch = NULL;
  uint8_t *buf;
  int r = 0;

  *wp = NULL;
  *segs = NULL;
  *nsegs = 0;
  if (layer->format != LAYER_QCOW2)
    return -ENOTSUP;
  end = offset + length;
  astart = offset & ~(cs - 1);
  aend = ROUND_UP (end, cs);
  dend = MIN (aend, layer->size);
  n = (aend - astart) >> layer->cluster_bits;
  /* The guest range that changes: the widened one, as QEMU dirties. */
  w = write_new (img, astart, length ? dend - astart : 0);
  if (w == NULL)
    return -errno;
  if (length == 0) {
    *wp = w;
    return 0;
  }

  /* The widened range as it will read: head and tail as they read now
   * (the record keeps them so), the data, zeros past the disk. */
  buf = write_data_buffer (w, aend - astart);
  cp = calloc (n, sizeof *cp);
  scratch = malloc (cs);
  if (buf == NULL || cp == NULL || scratch == NULL) {
    write_free (w);
    return -ENOMEM;
  }
  if (offset > astart)
    r = sync_read_disk (img, buf, offset - astart, astart);
  if (r == 0 && end < dend)
    r = sync_read_disk (img, buf + (end - astart), dend - end, end);
  if (r < 0) {
    write_free (w);
    return r;
  }
  if (data)
    memcpy (buf + (offset - astart), data, length);
  else
    memset (buf + (offset - astart), 0, length);
  memset (buf + (dend - astart), 0, aend - dend);

  if ((flags & QCOW2_DETECT_ZEROES) && is_zero (buf, aend - astart)) {
    /* QEMU's detect-zeroes looks at the widened request. */
    r = zero_held (img, astart, dend - astart, flags & QCOW2_MAY_UNMAP);
    if (r < 0) {
      write_free (w);
      return r;
    }
    *wp = w;
    return 0;
  }

  for (uint64_t i = 0; i < n; i++) {
    r = compress_cluster (layer, buf + i * cs, scratch);
    if (r == -ENOSPC)
      continue;         /* written uncompressed */
    if (r < 0) {
      write_free (w);
      /* A failing compressor fails the write with EINVAL in QEMU. */
      return r == -EIO ? -EINVAL : r;
    }
    cp[i].len = r;
    cp[i].stream = write_add_buf (w, r);
    if (cp[i].stream == NULL) {
      write_free (w);
      return -ENOMEM;
    }
    memcpy ((uint8_t *) cp[i].stream, scratch, r);
  }

  {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = plan_clusters_locked (layer, w, astart, n, cp);
  }
  if (r == 0)
    r = write_finish_plan (w, segs, nsegs);
  if (r < 0) {
    write_free (w);
    return r;
  }
  *wp = w;
  return 0;
}

int
write_compressed_held (struct qcow2_image *img, uint64_t offset,
                       uint64_t length, const void *data, unsigned flags,
                       struct qcow2_write **wp,
                       const struct qcow2_seg **segs, size_t *nsegs)
{
  struct qcow2_layer *layer = img->layers[0];
  int r;

  r = compressed_held (img, offset, length, data, flags, wp, segs, nsegs);
  if (r < 0 && length > 0 && layer->format == LAYER_QCOW2) {
    /* QEMU dirties a write's (widened) range whatever became of it,
     * refusals included; write_end does it for the others. */
    uint64_t cs = layer->cluster_size, astart = offset & ~(cs - 1);

    bitmap_set_dirty (img, astart,
                      MIN (ROUND_UP (offset + length, cs), layer->size)
                      - astart);
  }
  return r;
}

int
qcow2_write_compressed_begin (struct qcow2_image *img, uint64_t offset,
                              uint64_t length, const void *data,
                              unsigned flags, struct qcow2_write **wp,
                              const struct qcow2_seg **segs, size_t *nsegs)
{
  struct qcow2_layer *top = img->layers[0];
  struct inflight *rec = NULL;
  int r;

  *wp = NULL;
  *segs = NULL;
  *nsegs = 0;
  r = write_public_args (img, &offset, length, QCOW2_MAX_WRITE);
  if (r < 0)
    return r;
  if (top->format != LAYER_QCOW2)
    return -ENOTSUP;
  if (length > 0) {
    uint64_t astart = offset & ~(uint64_t) (top->cluster_size - 1);

    r = inflight_enter (img, astart, offset + length - astart, flags, &rec);
    if (r != 0)
      return r;
  }
  r = write_compressed_held (img, offset, length, data, flags, wp, segs,
                             nsegs);
  if (r < 0) {
    inflight_leave (img, rec);
    return r;
  }
  write_attach_record (*wp, rec);
  return 0;
}
