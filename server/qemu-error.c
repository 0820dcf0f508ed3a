/* SPDX-License-Identifier: MIT */
/* qemu-nbd's error_report(): a failure of the qemu-nbd front end is
 * printed as "NAME: MESSAGE" on stderr, NAME being the base name of
 * argv[0].  In a file of its own, below the rest of the front end, so
 * that the helpers qemu-nbd.c calls (qemu-image.c, qemu-list.c,
 * qemu-objects.c) report without depending on qemu-nbd.c. */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>

#include "server/qemu-nbd.h"

const char *qnbd_image_arg;
const char *qnbd_progname = "qemu-nbd";

void
qnbd_error (const char *fmt, ...)
{
  char buf[8192];
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (buf, sizeof buf, fmt, ap);
  va_end (ap);
  if (n < 0)
    n = 0;
  fprintf (stderr, "%s: %s\n", qnbd_progname, buf);
}
