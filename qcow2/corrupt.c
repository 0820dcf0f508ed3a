/* SPDX-License-Identifier: MIT */
/* The one path for problems found after open: qcow2_corrupt() reports
 * corruption found in metadata (a bad L1/L2 entry, a compressed stream
 * that does not decompress, ...) and marks the image corrupt, as QEMU
 * does; qcow2_log() formats any message for the caller's log callback.
 * Neither prints: a server keeps serving its other clients. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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

  /* Read-only for now.  When writes land, this is where the corrupt bit
   * (QCOW2_INCOMPAT_CORRUPT) is set in the on-disk header of a writable
   * top layer, so that no later writer trusts the metadata either; until
   * then the in-memory flag stops nothing but is reported to callers. */
  atomic_store (&img->corrupt, true);
  return -EIO;
}
