/* SPDX-License-Identifier: MIT */
/* qcow2_posix_io: the default I/O ops, plain open/pread/pwrite/fdatasync,
 * fstat and fallocate.  pread loops over short reads and EINTR and reads
 * past the end of the file as zeros, as QEMU's file driver does, so that a table
 * or cluster straddling EOF of a truncated image reads like QEMU reads it
 * (the callers check offsets against the file size where that matters). */
#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "qcow2/qcow2.h"

static int
posix_open (void *opaque, const char *path, bool writable)
{
  int fd;

  do
    fd = open (path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  while (fd == -1 && errno == EINTR);
  return fd == -1 ? -errno : fd;
}

static void
posix_close (void *opaque, int fd)
{
  /* On Linux the fd is gone even when close fails with EINTR: never
   * retry, or we might close an fd another thread just got. */
  close (fd);
}

static int
posix_pread (void *opaque, int fd, void *buf, size_t len, uint64_t off)
{
  char *p = buf;

  if (off > INT64_MAX || len > INT64_MAX - off)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = pread (fd, p, len, (off_t) off);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0) {             /* end of file: the rest reads as zeros */
      memset (p, 0, len);
      return 0;
    }
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

static int
posix_pwrite (void *opaque, int fd, const void *buf, size_t len,
              uint64_t off)
{
  const char *p = buf;

  if (off > INT64_MAX || len > INT64_MAX - off)
    return -EINVAL;
  while (len > 0) {
    ssize_t r = pwrite (fd, p, len, (off_t) off);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)               /* no progress and no error: don't spin */
      return -EIO;
    p += r;
    len -= r;
    off += r;
  }
  return 0;
}

static int
posix_flush (void *opaque, int fd)
{
  return fdatasync (fd) == -1 ? -errno : 0;
}

static int
posix_punch (void *opaque, int fd, uint64_t off, uint64_t len)
{
  if (off > INT64_MAX || len > INT64_MAX - off)
    return -EINVAL;
  if (fallocate (fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 (off_t) off, (off_t) len) == -1)
    return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
  return 0;
}

static int
posix_zero_range (void *opaque, int fd, uint64_t off, uint64_t len)
{
  if (off > INT64_MAX || len > INT64_MAX - off)
    return -EINVAL;
  if (fallocate (fd, FALLOC_FL_ZERO_RANGE, (off_t) off, (off_t) len) == -1)
    return errno == EOPNOTSUPP ? -ENOTSUP : -errno;
  return 0;
}

static int
posix_get_size (void *opaque, int fd, uint64_t *size)
{
  struct stat st;

  if (fstat (fd, &st) == -1)
    return -errno;
  if (S_ISBLK (st.st_mode)) {
    /* st_size is 0 for block devices; their size is where SEEK_END
     * lands. */
    off_t end = lseek (fd, 0, SEEK_END);

    if (end == -1)
      return -errno;
    *size = (uint64_t) end;
    return 0;
  }
  if (st.st_size < 0)
    return -EINVAL;
  *size = (uint64_t) st.st_size;
  return 0;
}

static int
posix_get_allocated (void *opaque, int fd, uint64_t *bytes)
{
  struct stat st;

  if (fstat (fd, &st) == -1)
    return -errno;
  if (!S_ISREG (st.st_mode))
    return -ENOTSUP;
  *bytes = (uint64_t) st.st_blocks * 512;
  return 0;
}

const struct qcow2_io_ops qcow2_posix_io = {
  .open = posix_open,
  .close = posix_close,
  .pread = posix_pread,
  .pwrite = posix_pwrite,
  .flush = posix_flush,
  .zero_range = posix_zero_range,
  .punch = posix_punch,
  .get_size = posix_get_size,
  .get_allocated = posix_get_allocated,
};
