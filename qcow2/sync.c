/* SPDX-License-Identifier: MIT */
/* The synchronous convenience layer: qcow2_pread on top of qcow2_map, the
 * io ops and qcow2_decompress, and qcow2_pwrite on top of
 * qcow2_write_begin/end, for the nbdkit plugin, the tests and the
 * fuzzers.  The server does the same work asynchronously through its own
 * ring; keep the two in step. */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked-overflow.h"
#include "qcow2/internal.h"

/* Extents asked of qcow2_map per round. */
#define SYNC_EXTENTS 64

/* Scratch space for compressed clusters, grown as needed and kept for
 * the whole call. */
struct scratch {
  void *in, *out;
  size_t in_size, out_size;
};

static int
grow (void **p, size_t *size, size_t want)
{
  void *n;

  if (*size >= want)
    return 0;
  n = realloc (*p, want);
  if (n == NULL)
    return -errno;
  *p = n;
  *size = want;
  return 0;
}

static int
read_compressed (struct qcow2_image *img, const struct qcow2_extent *e,
                 uint8_t *buf, struct scratch *s)
{
  uint32_t csize = qcow2_layer_cluster_size (e->layer);
  int r;

  if (e->cluster_offset > csize || e->length > csize - e->cluster_offset)
    return -EIO;        /* qcow2_map never does this */
  r = grow (&s->in, &s->in_size, e->compressed_length);
  if (r == 0)
    r = grow (&s->out, &s->out_size, csize);
  if (r < 0)
    return r;
  r = img->io->pread (img->io_opaque, img->files[e->file].fd, s->in,
                      e->compressed_length, e->host_offset);
  if (r < 0)
    return r;
  r = qcow2_decompress (e->layer, s->in, e->compressed_length, s->out);
  if (r < 0)
    return r;
  memcpy (buf, (uint8_t *) s->out + e->cluster_offset, e->length);
  return 0;
}

int
qcow2_pread (struct qcow2_image *img, void *buf, size_t len,
             uint64_t offset)
{
  if (!range_fits (offset, len, qcow2_virtual_size (img)))
    return -EINVAL;
  return sync_read_disk (img, buf, len, offset + img->window);
}

int
sync_read_disk (struct qcow2_image *img, void *buf, size_t len,
                uint64_t offset)
{
  struct qcow2_extent ext[SYNC_EXTENTS];
  struct scratch s = { 0 };
  uint8_t *p = buf;
  int r = 0;

  while (len > 0 && r == 0) {
    size_t n;

    r = map_image (img, offset, len, ext, SYNC_EXTENTS, &n);
    if (r < 0)
      break;
    for (size_t i = 0; i < n && r == 0; i++) {
      const struct qcow2_extent *e = &ext[i];

      switch (e->type) {
      case QCOW2_EXTENT_DATA:
        r = img->io->pread (img->io_opaque, img->files[e->file].fd, p,
                            e->length, e->host_offset);
        break;
      case QCOW2_EXTENT_ZERO:
      case QCOW2_EXTENT_UNALLOCATED:
        memset (p, 0, e->length);
        break;
      case QCOW2_EXTENT_COMPRESSED:
        r = read_compressed (img, e, p, &s);
        break;
      }
      p += e->length;
      offset += e->length;
      len -= e->length;
    }
  }
  free (s.in);
  free (s.out);
  return r;
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
    r = write_segs_sync (img, segs, nsegs, p);
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
