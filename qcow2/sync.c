/* SPDX-License-Identifier: MIT */
/* The synchronous convenience layer: qcow2_pread, and qcow2_pwrite and
 * qcow2_pwrite_compressed on top of qcow2_write_begin/end and
 * qcow2_write_compressed_begin, for the nbdkit plugin, the tests and the
 * fuzzers, over sync-io.c's primitives.  The server does the same work
 * asynchronously through its own ring; keep the two in step. */

#include <config.h>

#include <errno.h>

#include "common/checked-overflow.h"
#include "qcow2/internal.h"

int
qcow2_pread (struct qcow2_image *img, void *buf, size_t len,
             uint64_t offset)
{
  if (!range_fits (offset, len, qcow2_virtual_size (img)))
    return -EINVAL;
  return sync_read_disk (img, buf, len, offset + img->window);
}

/* Writes are split in pieces no larger than qcow2_write_begin takes. */
#define SYNC_WRITE_MAX QCOW2_MAX_WRITE

/* qcow2_pwrite and qcow2_pwrite_compressed: in pieces that begin takes,
 * each ending on a cluster boundary of the disk when COMPRESSED (a
 * piece ending inside a cluster would make the next one read that
 * cluster back, find it compressed and be refused). */
static int
pwrite_pieces (struct qcow2_image *img, const uint8_t *p, size_t len,
               uint64_t offset, bool compressed)
{
  uint64_t cs = qcow2_cluster_size (img);
  int r;

  if (!range_fits (offset, len, qcow2_virtual_size (img)))
    return -EINVAL;
  if (compressed && cs == 0)
    return -ENOTSUP;
  while (len > 0) {
    uint64_t lim = SYNC_WRITE_MAX;
    size_t n;
    struct qcow2_write *w;
    const struct qcow2_seg *segs;
    size_t nsegs;
    int e;

    if (compressed)
      lim = ((img->window + offset + SYNC_WRITE_MAX) & ~(cs - 1))
        - img->window - offset;
    n = len < lim ? len : lim;
    if (compressed)
      r = qcow2_write_compressed_begin (img, offset, n, p, QCOW2_WAIT, &w,
                                        &segs, &nsegs);
    else
      r = qcow2_write_begin (img, offset, n, QCOW2_WAIT, &w, &segs, &nsegs);
    if (r < 0)
      return r;
    if (r == QCOW2_BLOCKED)
      return -EIO;      /* QCOW2_WAIT never blocks; never trust that */
    r = sync_write_segs (img, segs, nsegs, p);
    e = qcow2_write_end (w, r);
    if (r == 0)
      r = e;
    if (r < 0)
      return r;
    p += n;
    offset += n;
    len -= n;
  }
  return 0;
}

int
qcow2_pwrite (struct qcow2_image *img, const void *buf, size_t len,
              uint64_t offset, bool fua)
{
  int r = pwrite_pieces (img, buf, len, offset, false);

  return r == 0 && fua ? qcow2_flush (img) : r;
}

int
qcow2_pwrite_compressed (struct qcow2_image *img, const void *buf,
                         size_t len, uint64_t offset)
{
  return pwrite_pieces (img, buf, len, offset, true);
}
