/* SPDX-License-Identifier: MIT */
/* The one path for problems found after open: qcow2_corrupt() reports
 * corruption found in metadata (a bad L1/L2 entry, a compressed stream
 * that does not decompress, ...) and marks the image corrupt, as QEMU
 * does; sync_failed() puts the image into its failed state after a sync
 * error (qcow2/ORDERING.md, "A failed sync"); qcow2_log() formats any
 * message for the caller's log callback, qcow2_error() an error about
 * one file, and qcow2_printable() makes names from the file safe to put
 * in a message.  None prints: a server keeps serving its other clients. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/internal.h"

static void __attribute__ ((format (printf, 4, 0)))
vlog (struct qcow2_image *img, enum qcow2_log_level level,
      const char *prefix, const char *fmt, va_list ap)
{
  char buf[1024];
  int n;

  if (!img->log)
    return;
  n = snprintf (buf, sizeof buf, "%s", prefix);
  if (n < 0 || (size_t) n >= sizeof buf)
    n = 0;
  /* A message longer than the buffer is cut: log lines need no more,
   * and the callback may run on a hot path, so no allocation. */
  vsnprintf (buf + n, sizeof buf - n, fmt, ap);
  img->log (img->log_opaque, level, buf);
}

void
qcow2_log (struct qcow2_image *img, enum qcow2_log_level level,
           const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vlog (img, level, "", fmt, ap);
  va_end (ap);
}

int
qcow2_error (struct qcow2_layer *layer, int err, const char *fmt, ...)
{
  char prefix[512];
  va_list ap;

  snprintf (prefix, sizeof prefix, "%s: ",
            layer->img->files[layer->file].name);
  va_start (ap, fmt);
  vlog (layer->img, QCOW2_LOG_ERROR, prefix, fmt, ap);
  va_end (ap);
  return err;
}

const char *
qcow2_printable (const char *s, char *buf, size_t n)
{
  size_t i;

  for (i = 0; s[i] && i + 1 < n; i++)
    buf[i] = (unsigned char) s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
  buf[i] = '\0';
  return buf;
}

int
qcow2_corrupt (struct qcow2_layer *layer, const char *fmt, ...)
{
  struct qcow2_image *img = layer->img;
  const char *name = "?";
  char prefix[512];
  va_list ap;

  if (layer->file < img->nr_files && img->files[layer->file].name)
    name = img->files[layer->file].name;
  snprintf (prefix, sizeof prefix, "%s: corruption: ", name);

  va_start (ap, fmt);
  vlog (img, QCOW2_LOG_ERROR, prefix, fmt, ap);
  va_end (ap);

  /* The in-memory flag stops our own writers; on a writable image the
   * corrupt bit (QCOW2_INCOMPAT_CORRUPT) also goes into the on-disk
   * header of the top layer, so no later opener writes to it either.
   * We may hold a layer lock here (see cache.c): the header write takes
   * only its own mutex.  Only the first report writes. */
  if (!atomic_exchange (&img->corrupt, true) && img->writable &&
      layer->depth == 1 && layer->format == LAYER_QCOW2) {
    int r = header_write_incompatible (layer, QCOW2_INCOMPAT_CORRUPT, 0);
    if (r < 0)
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot mark the image corrupt "
                 "on disk: %s", name, strerror (-r));
  }
  return -EIO;
}

int
sync_failed (struct qcow2_layer *layer, int err)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int expected = 0, r;

  /* Only the first failure reports and marks; later callers (there are
   * none once sync_layer sees the latch, but two may race to it) just
   * return their error. */
  if (!atomic_compare_exchange_strong (&img->sync_error, &expected, err))
    return err;
  qcow2_log (img, QCOW2_LOG_ERROR, "%s: sync failed: %s; writes not yet "
             "durable may have been lost, and no later sync could prove "
             "otherwise: from now on every write and flush of this image "
             "fails with EIO (reads go on); restart to recover", name,
             strerror (-err));

  /* Metadata on disk is consistent but may leak clusters (refcounts
   * written, the L2 entries using them not): the dirty bit asks the
   * next read-write opener, ours or QEMU's, to rebuild the refcounts.
   * Its own sync will likely fail too; the write may still land. */
  if (!img->writable || layer->depth != 1 || layer->format != LAYER_QCOW2)
    return err;
  if (layer->version < 3) {
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: a version 2 image has no "
               "dirty bit: it may leak clusters ('qemu-img check -r "
               "leaks' frees them)", name);
    return err;
  }
  r = header_write_incompatible (layer, QCOW2_INCOMPAT_DIRTY, 0);
  if (r < 0)
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: marking the image dirty: %s "
               "(it may leak clusters: 'qemu-img check -r leaks' frees "
               "them)", name, strerror (-r));
  return err;
}
