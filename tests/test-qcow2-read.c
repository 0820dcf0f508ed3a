/* SPDX-License-Identifier: MIT */
/* Read a whole image through libqcow2 and write the guest to a raw file,
 * optionally dumping qcow2_map's extents as JSON, so test-qcow2-read.sh
 * can compare both with qemu-img's view of the same image.  Also checks
 * qcow2_map's contract on the way (extents in order, without gaps,
 * covering a prefix, coalesced) and fails loudly when it is broken.
 *
 *   test-qcow2-read [-b CHUNK] [-c L2_CACHE] [-e MAX_EXTENTS]
 *                   [-m MAP.json] [-r START,LENGTH] IMAGE OUT.raw
 *
 * -r reads only that guest range (to the start of OUT.raw). */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"

static void
log_cb (void *opaque, enum qcow2_log_level level, const char *msg)
{
  static const char *names[] = { "error", "warning", "debug" };

  fprintf (stderr, "libqcow2 %s: %s\n", names[level], msg);
}

static const char *
type_name (enum qcow2_extent_type t)
{
  switch (t) {
  case QCOW2_EXTENT_DATA: return "data";
  case QCOW2_EXTENT_ZERO: return "zero";
  case QCOW2_EXTENT_COMPRESSED: return "compressed";
  case QCOW2_EXTENT_UNALLOCATED: return "unallocated";
  }
  return "?";
}

/* Could A and B have been one extent?  qcow2_map must have merged them. */
static int
mergeable (const struct qcow2_extent *a, const struct qcow2_extent *b)
{
  if (a->type != b->type || a->depth != b->depth)
    return 0;
  switch (a->type) {
  case QCOW2_EXTENT_DATA:
    return a->file == b->file && a->host_offset + a->length == b->host_offset;
  case QCOW2_EXTENT_ZERO:
  case QCOW2_EXTENT_UNALLOCATED:
    return 1;
  case QCOW2_EXTENT_COMPRESSED:
    return 0;
  }
  return 0;
}

static int
dump_map (struct qcow2_image *img, size_t max, const char *path)
{
  uint64_t size = qcow2_virtual_size (img), off = 0;
  struct qcow2_extent *ext = calloc (max, sizeof *ext);
  int have_prev = 0;
  FILE *fp = fopen (path, "w");

  if (ext == NULL || fp == NULL) {
    perror (path);
    return -1;
  }
  fprintf (fp, "[");
  while (off < size) {
    size_t n;
    int r = qcow2_map (img, off, size - off, ext, max, &n);

    if (r < 0) {
      fprintf (stderr, "qcow2_map at %" PRIu64 ": %s\n", off, strerror (-r));
      return -1;
    }
    if (n == 0 || n > max) {
      fprintf (stderr, "qcow2_map at %" PRIu64 ": %zu extents\n", off, n);
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      const struct qcow2_extent *e = &ext[i];

      if (e->offset != off || e->length == 0 || e->length > size - off) {
        fprintf (stderr, "extent [%" PRIu64 ", +%" PRIu64 ") does not "
                 "continue at %" PRIu64 "\n", e->offset, e->length, off);
        return -1;
      }
      /* Inside one call, mergeable neighbours are a bug; across calls the
       * output may have been cut anywhere. */
      if (i > 0 && mergeable (&ext[i - 1], e)) {
        fprintf (stderr, "extents at %" PRIu64 " and %" PRIu64 " were not "
                 "coalesced\n", ext[i - 1].offset, e->offset);
        return -1;
      }
      if ((e->type == QCOW2_EXTENT_UNALLOCATED) != (e->depth == 0)) {
        fprintf (stderr, "extent at %" PRIu64 ": depth %u for %s\n",
                 e->offset, e->depth, type_name (e->type));
        return -1;
      }
      if (e->type == QCOW2_EXTENT_COMPRESSED &&
          (uint64_t) e->cluster_offset + e->length >
          qcow2_layer_cluster_size (e->layer)) {
        fprintf (stderr, "compressed extent at %" PRIu64 " spans clusters\n",
                 e->offset);
        return -1;
      }
      fprintf (fp, "%s\n{\"start\": %" PRIu64 ", \"length\": %" PRIu64
               ", \"type\": \"%s\", \"depth\": %u",
               have_prev ? "," : "", e->offset, e->length,
               type_name (e->type), e->depth);
      if (e->type == QCOW2_EXTENT_DATA)
        fprintf (fp, ", \"file\": \"%s\", \"offset\": %" PRIu64,
                 qcow2_file_name (img, e->file), e->host_offset);
      if (e->type == QCOW2_EXTENT_COMPRESSED)
        fprintf (fp, ", \"offset\": %" PRIu64 ", \"compressed_length\": %"
                 PRIu32 ", \"cluster_offset\": %" PRIu32,
                 e->host_offset, e->compressed_length, e->cluster_offset);
      fprintf (fp, "}");
      have_prev = 1;
      off += e->length;
    }
  }
  fprintf (fp, "\n]\n");
  free (ext);
  if (fclose (fp) != 0) {
    perror (path);
    return -1;
  }
  return 0;
}

int
main (int argc, char *argv[])
{
  struct qcow2_open_opts opts = { .log = log_cb };
  struct qcow2_image *img;
  size_t chunk = 1 << 20, max_ext = 1000;
  const char *map_path = NULL;
  uint64_t size, off, start = 0, length = UINT64_MAX;
  char *buf;
  int c, fd, r;

  while ((c = getopt (argc, argv, "b:c:e:m:r:")) != -1) {
    switch (c) {
    case 'b': chunk = strtoull (optarg, NULL, 0); break;
    case 'c': opts.l2_cache_size = strtoull (optarg, NULL, 0); break;
    case 'e': max_ext = strtoull (optarg, NULL, 0); break;
    case 'm': map_path = optarg; break;
    case 'r':
      if (sscanf (optarg, "%" SCNu64 ",%" SCNu64, &start, &length) != 2) {
        fprintf (stderr, "-r START,LENGTH\n");
        exit (2);
      }
      break;
    default:
      fprintf (stderr, "usage: %s [-b CHUNK] [-c L2_CACHE] [-e MAX] "
               "[-m MAP.json] [-r START,LENGTH] IMAGE OUT.raw\n", argv[0]);
      exit (2);
    }
  }
  if (argc - optind != 2 || chunk == 0 || max_ext == 0) {
    fprintf (stderr, "%s: need IMAGE OUT.raw\n", argv[0]);
    exit (2);
  }

  r = qcow2_open (argv[optind], &opts, &img);
  if (r < 0) {
    fprintf (stderr, "qcow2_open %s: %s\n", argv[optind], strerror (-r));
    exit (1);
  }
  size = qcow2_virtual_size (img);
  if (length != UINT64_MAX) {
    if (start > size || length > size - start) {
      fprintf (stderr, "-r range outside the image\n");
      exit (2);
    }
  }
  else
    length = size;

  fd = open (argv[optind + 1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  buf = malloc (chunk);
  if (fd < 0 || buf == NULL) {
    perror (argv[optind + 1]);
    exit (1);
  }
  /* Reads past the end must be refused, not truncated. */
  if (qcow2_pread (img, buf, 1, size) != -EINVAL ||
      (size > 0 && qcow2_pread (img, buf, 2, size - 1) != -EINVAL)) {
    fprintf (stderr, "qcow2_pread past the end was not refused\n");
    exit (1);
  }
  for (off = start; off < start + length; off += chunk) {
    size_t n = start + length - off < chunk ? start + length - off : chunk;

    r = qcow2_pread (img, buf, n, off);
    if (r < 0) {
      fprintf (stderr, "qcow2_pread [%" PRIu64 ", +%zu): %s\n",
               off, n, strerror (-r));
      exit (1);
    }
    if (pwrite (fd, buf, n, off - start) != (ssize_t) n) {
      perror ("pwrite");
      exit (1);
    }
  }
  if (ftruncate (fd, length) != 0 || close (fd) != 0) {
    perror (argv[optind + 1]);
    exit (1);
  }
  free (buf);

  if (map_path && dump_map (img, max_ext, map_path) < 0)
    exit (1);
  if (qcow2_is_corrupt (img)) {
    fprintf (stderr, "image was marked corrupt\n");
    exit (1);
  }
  qcow2_close (img);
  return 0;
}
