/* SPDX-License-Identifier: MIT */
/* Start-up steps shared by every way of serving an image (serve, attach):
 * opening the image as the export, with the messages that say why it
 * cannot be, and the pid file.  What differs between them - listening
 * sockets or a kernel device, the signals - stays with each. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "server/server.h"

/* Did the library say why something failed?  Then we need not. */
static atomic_bool qcow2_logged_error;

static void
qcow2_log (void *opaque, enum qcow2_log_level level, const char *msg)
{
  switch (level) {
  case QCOW2_LOG_ERROR:
    atomic_store (&qcow2_logged_error, true);
    log_error ("%s", msg);
    break;
  case QCOW2_LOG_WARNING: log_error ("warning: %s", msg); break;
  default: log_debug ("%s", msg); break;
  }
}

int
export_open (const struct server_config *cfg, struct export *exp)
{
  struct qcow2_open_opts opts = {
    .writable = !cfg->read_only,
    .punch_discarded = cfg->discard_unmap,
    .l2_cache_size = cfg->l2_cache_size,
    .log = qcow2_log,
    /* Requests parked on QCOW2_BLOCKED are retried by their worker. */
    .wakeup = workers_wakeup,
  };
  int r;

  memset (exp, 0, sizeof *exp);
  r = qcow2_open (cfg->image, &opts, &exp->img);
  if (r < 0) {
    if (!atomic_load (&qcow2_logged_error))
      log_error ("%s: cannot open image: %s", cfg->image, strerror (-r));
    /* Like qemu-nbd, never fall back to read-only on our own: a client
     * expecting to write would find out only at its first write. */
    if (opts.writable && (r == -EROFS || r == -EACCES || r == -EPERM))
      log_error ("%s cannot be opened for writing; use --read-only to "
                 "serve it read-only", cfg->image);
    return -1;
  }
  if (qcow2_is_corrupt (exp->img))
    log_error ("warning: %s is marked corrupt; serving it read-only",
               cfg->image);
  exp->name = cfg->export_name ? cfg->export_name : "";
  exp->description = cfg->description;
  exp->size = qcow2_virtual_size (exp->img);
  exp->read_only = cfg->read_only;
  exp->discard_unmap = cfg->discard_unmap;
  /* CAN_MULTI_CONN is honest: a FLUSH on any connection covers the
   * writes answered on all of them (qcow2_flush).  TRIM is advertised
   * even with --discard=ignore, as qemu-nbd does. */
  exp->eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_DF
    | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
  if (exp->read_only)
    exp->eflags |= NBD_FLAG_READ_ONLY;
  else
    exp->eflags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM
      | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  exp->min_block = 1;
  exp->pref_block = 4096;
  exp->max_block = NBD_MAX_PAYLOAD;
  return 0;
}

void
export_close (struct export *exp)
{
  if (exp->img)
    qcow2_close (exp->img);
  exp->img = NULL;
}

int
pid_file_write (const char *path)
{
  char buf[32];
  int fd, n;

  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1) {
    log_error ("%s: %m", path);
    return -1;
  }
  n = snprintf (buf, sizeof buf, "%ld\n", (long) getpid ());
  if (write (fd, buf, n) != n) {
    log_error ("%s: write: %m", path);
    close (fd);
    unlink (path);
    return -1;
  }
  if (close (fd) == -1) {
    log_error ("%s: close: %m", path);
    unlink (path);
    return -1;
  }
  return 0;
}
