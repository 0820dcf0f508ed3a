/* SPDX-License-Identifier: MIT */
/* Messages: the library never prints, it formats into a bounded buffer
 * and hands the line to the caller's log callback (qcow2_open_opts.log).
 * qcow2_log() sends any message, qcow2_error() and qcow2_fail() an error
 * and return the -errno to pass on, qcow2_printable() makes names from
 * the file safe to put in a message.  Below every other file of the
 * library, so that anything (the header, the corruption path, open) can
 * say why it failed. */
#include <config.h>

#include <stdarg.h>
#include <stdio.h>

#include "qcow2/internal.h"

void
qcow2_vlog (struct qcow2_image *img, enum qcow2_log_level level,
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
  qcow2_vlog (img, level, "", fmt, ap);
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
  qcow2_vlog (layer->img, QCOW2_LOG_ERROR, prefix, fmt, ap);
  va_end (ap);
  return err;
}

int
qcow2_fail (struct qcow2_image *img, int err, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  qcow2_vlog (img, QCOW2_LOG_ERROR, "", fmt, ap);
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
