/* SPDX-License-Identifier: MIT */
/* Synchronous I/O primitives of the library: read the guest view of a
 * range through the whole chain (qcow2_map, the io ops, decompression),
 * and perform a write plan's segments through the io ops.  Under
 * qcow2_pread/qcow2_pwrite (sync.c), and what the write paths need for
 * themselves: the head and tail a compressed write reads back
 * (compress-write.c), the pieces a zeroing writes (zero-held.c).  Below
 * all of those: nothing here plans or changes metadata. */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/rounding.h"
#include "qcow2/internal.h"

static const uint8_t zero_buf[65536];

int
sync_write_segs (struct qcow2_image *img, const struct qcow2_seg *segs,
                 size_t nsegs, const void *data)
{
  for (size_t i = 0; i < nsegs; i++) {
    const struct qcow2_seg *s = &segs[i];
    int fd = img->files[s->file].fd;
    int r = -ENOTSUP;

    switch (s->source) {
    case QCOW2_SEG_GUEST:
      r = img->io->pwrite (img->io_opaque, fd,
                           (const uint8_t *) data + s->src_offset,
                           s->length, s->host_offset);
      break;
    case QCOW2_SEG_BUFFER:
      r = img->io->pwrite (img->io_opaque, fd, s->buf, s->length,
                           s->host_offset);
      break;
    case QCOW2_SEG_ZERO:
      if (img->io->zero_range)
        r = img->io->zero_range (img->io_opaque, fd, s->host_offset,
                                 s->length);
      if (r == -ENOTSUP || r == -EOPNOTSUPP) {
        r = 0;
        for (uint64_t done = 0; done < s->length && r == 0;) {
          size_t n = MIN (s->length - done, sizeof zero_buf);

          r = img->io->pwrite (img->io_opaque, fd, zero_buf, n,
                               s->host_offset + done);
          done += n;
        }
      }
      break;
    }
    if (r < 0)
      return r;
  }
  return 0;
}

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
