/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the input is a qcow2 file.  It is opened read-only
 * through memory-backed I/O ops (only the name "image" exists, so backing
 * and data files named by the input fail to open, which exercises those
 * error paths too), then a bounded amount of it is read through qcow2_map
 * and qcow2_pread: the first few MiB of the guest and a few offsets chosen
 * by the input itself, so that the fuzzer can steer reads into the tables
 * it corrupts.  Build with clang -fsanitize=fuzzer,address (README.md), or
 * link driver.c to replay files. */
#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

struct mem_file {
  const uint8_t *data;
  size_t size;
};

static int
mem_open (void *opaque, const char *path, bool writable)
{
  if (writable)
    return -EROFS;
  return strcmp (path, "image") == 0 ? 0 : -ENOENT;
}

static void
mem_close (void *opaque, int fd)
{
}

static int
mem_pread (void *opaque, int fd, void *buf, size_t len, uint64_t off)
{
  const struct mem_file *m = opaque;
  size_t n = 0;

  if (fd != 0)
    return -EBADF;
  /* Past the end reads as zeros, as the io ops contract says. */
  if (off < m->size) {
    n = m->size - off < len ? m->size - off : len;
    memcpy (buf, m->data + off, n);
  }
  memset ((uint8_t *) buf + n, 0, len - n);
  return 0;
}

static int
mem_pwrite (void *opaque, int fd, const void *buf, size_t len, uint64_t off)
{
  return -EROFS;
}

static int
mem_flush (void *opaque, int fd)
{
  return 0;
}

static int
mem_get_size (void *opaque, int fd, uint64_t *size)
{
  const struct mem_file *m = opaque;

  *size = m->size;
  return 0;
}

static const struct qcow2_io_ops mem_io = {
  .open = mem_open,
  .close = mem_close,
  .pread = mem_pread,
  .pwrite = mem_pwrite,
  .flush = mem_flush,
  .get_size = mem_get_size,
};

#define READ_CHUNK (64 * 1024)
#define READ_PREFIX (4 * 1024 * 1024)
#define RANDOM_READS 16

/* Deterministic pseudo-random offsets from the input (FNV-1a, then
 * xorshift): the same input always does the same reads. */
static uint64_t
seed_of (const uint8_t *data, size_t size)
{
  uint64_t h = UINT64_C (0xcbf29ce484222325);
  size_t i;

  for (i = 0; i < size; i += 1 + size / 4096) {
    h ^= data[i];
    h *= UINT64_C (0x100000001b3);
  }
  return h | 1;
}

static uint64_t
next_rand (uint64_t *s)
{
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct mem_file m = { data, size };
  struct qcow2_open_opts opts = {
    .writable = false,
    .l2_cache_size = QCOW2_MIN_L2_CACHE_SIZE,   /* force evictions */
    .io = &mem_io,
    .io_opaque = &m,
  };
  struct qcow2_image *img;
  struct qcow2_extent ext[8];
  static uint8_t buf[READ_CHUNK];
  uint64_t vsize, off, s;
  size_t n;
  int i;

  if (qcow2_open ("image", &opts, &img) < 0)
    return 0;
  vsize = qcow2_virtual_size (img);
  (void) qcow2_is_corrupt (img);
  (void) qcow2_chain_depth (img);
  for (n = 0; n < qcow2_file_count (img); n++)
    (void) qcow2_file_name (img, n);

  for (off = 0; off < vsize && off < READ_PREFIX; off += READ_CHUNK) {
    size_t len = vsize - off < READ_CHUNK ? vsize - off : READ_CHUNK;

    qcow2_pread (img, buf, len, off);
  }

  s = seed_of (data, size);
  for (i = 0; i < RANDOM_READS && vsize > 0; i++) {
    uint64_t r = next_rand (&s);
    size_t len = 1 + r % READ_CHUNK;

    off = next_rand (&s) % vsize;
    if (len > vsize - off)
      len = vsize - off;
    if (r & 1)
      qcow2_pread (img, buf, len, off);
    else if (qcow2_map (img, off, len, ext, sizeof ext / sizeof ext[0],
                        &n) == 0) {
      /* The contract: at least one extent, in order, without gaps, inside
       * the range.  Breaking it is a bug the fuzzer must see. */
      uint64_t pos = off;
      size_t j;

      if (n == 0 || n > sizeof ext / sizeof ext[0])
        abort ();
      for (j = 0; j < n; j++) {
        if (ext[j].offset != pos || ext[j].length == 0 ||
            ext[j].length > off + len - pos)
          abort ();
        pos += ext[j].length;
      }
    }
  }

  qcow2_close (img);
  return 0;
}
