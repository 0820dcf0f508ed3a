/* SPDX-License-Identifier: MIT */
/* qcow2_zero and qcow2_discard: the public calls, which check the range,
 * hand a raw top layer to raw.c, hold an in-flight record over the range
 * for the whole call and do the work through zero-held.c (how zeroing
 * and discard change L2 entries is described there).  Through QEMU's
 * compress filter (QCOW2_COMPRESSED) the partial clusters of a zeroing
 * are written as whole compressed clusters instead (compress-write.c),
 * as QEMU's block layer widens them to the filter's alignment. */
#include <config.h>

#include <errno.h>

#include "common/rounding.h"
#include "qcow2/internal.h"

/* One partial cluster, [offset, offset+length), zeroed as QEMU's
 * compress filter zeroes it: the widened cluster written compressed. */
static int
zero_compressed_piece (struct qcow2_image *img, uint64_t offset,
                       uint64_t length)
{
  struct qcow2_write *w;
  const struct qcow2_seg *segs;
  size_t nsegs;
  int r, e;

  r = write_compressed_held (img, offset, length, NULL, 0, &w, &segs,
                             &nsegs);
  if (r < 0)
    return r;
  r = sync_write_segs (img, segs, nsegs, NULL);
  e = qcow2_write_end (w, r);
  return r < 0 ? r : e;
}

/* QCOW2_COMPRESSED: QEMU's block layer zeroes whole clusters through the
 * compress filter, and writes the partial clusters at either end as
 * whole clusters with their head or tail read back, which the filter
 * compresses; FAST_ZERO refuses a range that needs that. */
static int
zero_compressed_held (struct qcow2_image *img, uint64_t offset,
                      uint64_t length, unsigned flags)
{
  const uint64_t cs = img->layers[0]->cluster_size;
  uint64_t end = offset + length;
  uint64_t ms = ROUND_UP (offset, cs), me = end & ~(cs - 1);
  int r = 0;

  flags &= ~QCOW2_COMPRESSED;
  if (ms > me)
    /* Inside one cluster: one widened write. */
    return zero_compressed_piece (img, offset, length);
  if (offset < ms)
    r = zero_compressed_piece (img, offset, ms - offset);
  if (r == 0 && ms < me)
    r = zero_held (img, ms, me - ms, flags);
  if (r == 0 && me < end)
    r = zero_compressed_piece (img, me, end - me);
  return r;
}

int
qcow2_zero (struct qcow2_image *img, uint64_t offset, uint64_t length,
            unsigned flags)
{
  struct qcow2_layer *layer = img->layers[0];
  uint64_t rec_offset, rec_length;
  struct inflight *rec;
  int r;

  r = write_public_args (img, &offset, length, 0);
  if (r < 0 || length == 0)
    return r;
  if (layer->format == LAYER_RAW)
    return raw_zero (img, offset, length, flags);

  rec_offset = offset;
  rec_length = length;
  if (flags & QCOW2_COMPRESSED) {
    const uint64_t cs = layer->cluster_size;

    /* QEMU refuses before it starts (block/io.c: an unaligned request
     * cannot be fast). */
    if ((flags & QCOW2_FAST_ZERO) && ((offset | length) & (cs - 1)))
      return -ENOTSUP;
    /* The partial clusters are read back: hold all of them. */
    rec_offset = offset & ~(cs - 1);
    rec_length = offset + length - rec_offset;
  }
  r = inflight_enter (img, rec_offset, rec_length, flags, &rec);
  if (r != 0)
    return r;
  if (flags & QCOW2_COMPRESSED)
    r = zero_compressed_held (img, offset, length, flags);
  else
    r = zero_held (img, offset, length, flags);
  inflight_leave (img, rec);
  flush_backlog (img);
  return r;
}

int
qcow2_discard (struct qcow2_image *img, uint64_t offset, uint64_t length,
               unsigned flags)
{
  struct qcow2_layer *layer = img->layers[0];
  const uint64_t cs = layer->cluster_size;
  struct inflight *rec;
  uint64_t first, end;
  bool backlog;
  int r;

  r = write_public_args (img, &offset, length, 0);
  if (r < 0 || length == 0)
    return r;
  /* The whole range is dirty, even where nothing is deallocated: QEMU
   * dirties a discard's range whatever its driver did. */
  bitmap_set_dirty (img, offset, length);
  if (layer->format == LAYER_RAW)
    return raw_discard (img, offset, length);
  /* Whole clusters only; the last one counts as whole when the range
   * reaches the end of the disk. */
  first = DIV_ROUND_UP (offset, cs);
  end = offset + length == layer->size ? DIV_ROUND_UP (layer->size, cs)
    : (offset + length) / cs;
  if (first >= end)
    return 0;
  if (layer->version < 3 && layer->backing != NULL && !layer->extended_l2)
    return 0;           /* nothing to show but the backing file's data */

  r = inflight_enter (img, offset, length, flags, &rec);
  if (r != 0)
    return r;
  r = discard_held (img, first, end, &backlog);
  inflight_leave (img, rec);
  if (backlog)
    flush_backlog (img);
  return r;
}
