/* SPDX-License-Identifier: MIT */
/* A writable raw top layer: the file is the disk, byte for byte, so a
 * guest write is one host write at the same offset (write.c makes that
 * segment), and zeroing and discarding act on the file itself, the way
 * QEMU's file driver does: with leave to unmap, zeroing first tries to
 * punch a hole (the range then reads as zeros and takes no space), then
 * FALLOC_FL_ZERO_RANGE, and only then writes zeros, which a fast zero
 * request refuses instead; a discard punches a hole or, where the file
 * system cannot, does nothing (it is advice).  There is no metadata, so
 * nothing to order and no in-flight records: overlapping requests land
 * in whatever order the host completes them, as with QEMU. */

#include <config.h>

#include <errno.h>

#include "common/rounding.h"
#include "qcow2/internal.h"

/* The file system cannot do this fallocate mode (QEMU's list). */
static bool
unsupported (int r)
{
  return r == -ENOTSUP || r == -EOPNOTSUPP || r == -EINVAL || r == -EBUSY
    || r == -ENOSYS;
}

static const uint8_t zeros[65536];

int
raw_zero (struct qcow2_image *img, uint64_t offset, uint64_t length,
          unsigned flags)
{
  struct qcow2_layer *layer = img->layers[0];
  int fd = img->files[layer->file].fd;
  int r;

  if ((flags & QCOW2_MAY_UNMAP) && img->io->punch) {
    r = img->io->punch (img->io_opaque, fd, offset, length);
    if (!unsupported (r))
      return r;
  }
  if (img->io->zero_range) {
    r = img->io->zero_range (img->io_opaque, fd, offset, length);
    if (!unsupported (r))
      return r;
  }
  if (flags & QCOW2_FAST_ZERO)
    return -ENOTSUP;
  for (uint64_t done = 0; done < length;) {
    size_t n = MIN (length - done, sizeof zeros);

    r = img->io->pwrite (img->io_opaque, fd, zeros, n, offset + done);
    if (r < 0)
      return r;
    done += n;
  }
  return 0;
}

int
raw_discard (struct qcow2_image *img, uint64_t offset, uint64_t length)
{
  struct qcow2_layer *layer = img->layers[0];
  int r;

  if (img->io->punch == NULL)
    return 0;
  r = img->io->punch (img->io_opaque, img->files[layer->file].fd,
                           offset, length);
  return unsupported (r) ? 0 : r;
}
