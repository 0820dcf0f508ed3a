/* SPDX-License-Identifier: MIT */
/* Messages to stderr.  Errors always print; -v adds informational
 * messages (connections starting and ending), -vv debugging (each
 * handshake option).  Every message is formatted into one buffer and
 * written with a single write(2), so lines from concurrent threads never
 * interleave mid-line, and no lock is needed.  Messages may contain text
 * a client sent us (export names): control characters are replaced so a
 * client cannot forge log lines or drive the terminal. */

#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "server/server.h"

int log_verbose;
const char *log_program = "qcow2-nbd";

static void log_v (const char *prefix, const char *fmt, va_list ap)
  __attribute__ ((format (printf, 2, 0)));

static void
log_v (const char *prefix, const char *fmt, va_list ap)
{
  char buf[1024];
  int saved_errno = errno;
  int n, m;
  size_t len, i;

  n = snprintf (buf, sizeof buf, "%s: %s", log_program, prefix);
  if (n < 0 || (size_t) n >= sizeof buf)
    n = 0;
  m = vsnprintf (buf + n, sizeof buf - n, fmt, ap);
  if (m < 0)
    m = 0;
  len = (size_t) n + (size_t) m;
  /* Truncated: keep what fits and still end the line. */
  if (len > sizeof buf - 2)
    len = sizeof buf - 2;
  for (i = 0; i < len; i++)
    if ((unsigned char) buf[i] < 0x20 || buf[i] == 0x7f)
      buf[i] = '?';
  buf[len++] = '\n';

  /* Best effort: nothing sensible remains if stderr is gone. */
  while (write (STDERR_FILENO, buf, len) == -1 && errno == EINTR)
    ;
  errno = saved_errno;
}

void
log_error (const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  log_v ("", fmt, ap);
  va_end (ap);
}

void
log_info (const char *fmt, ...)
{
  va_list ap;

  if (log_verbose < 1)
    return;
  va_start (ap, fmt);
  log_v ("", fmt, ap);
  va_end (ap);
}

void
log_debug (const char *fmt, ...)
{
  va_list ap;

  if (log_verbose < 2)
    return;
  va_start (ap, fmt);
  log_v ("debug: ", fmt, ap);
  va_end (ap);
}

void
log_error_line (const char *msg)
{
  log_error ("%s", msg);
}
