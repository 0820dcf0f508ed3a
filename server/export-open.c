/* SPDX-License-Identifier: MIT */
/* Opening an export: the one place that opens an image (and, for
 * --snapshot, its temporary overlay) and builds its export from a
 * configuration, for exports.c, which keeps the exports by name and
 * opens them when the server starts or (--export-dir) when a client
 * first asks; and closing it again.  While an image opens, the
 * library's first error is kept for the configuration's hooks
 * (qemu-nbd words its own messages) instead of being printed. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "qcow2/qcow2.h"
#include "server/server.h"

/* ---- the library's messages ------------------------------------------- */

/* While the image is being opened, its first error is kept for the
 * open_failed hook instead of being printed.  Per thread: the library
 * logs an open's errors from the opening thread, while workers may log
 * about other images at the same time. */
static _Thread_local const struct server_config *opening;
static _Thread_local char open_msg[1024];
/* Did the library say why something failed?  Then we need not. */
static _Thread_local atomic_bool qcow2_logged_error;

static void
qcow2_log (void *opaque, enum qcow2_log_level level, const char *msg)
{
  switch (level) {
  case QCOW2_LOG_ERROR:
    atomic_store (&qcow2_logged_error, true);
    if (opening && (opening->open_failed || opening->bitmap_failed)) {
      if (open_msg[0] == '\0')
        snprintf (open_msg, sizeof open_msg, "%s", msg);
      break;
    }
    log_error ("%s", msg);
    break;
  case QCOW2_LOG_WARNING:
    /* qemu-nbd says nothing of what we warn about (a dirty image). */
    if (opening && opening->open_failed)
      log_info ("warning: %s", msg);
    else
      log_error ("warning: %s", msg);
    break;
  default: log_debug ("%s", msg); break;
  }
}

/* ---- the image -------------------------------------------------------- */

static void
open_opts (const struct server_config *cfg, struct qcow2_open_opts *opts,
           struct qcow2_open_error *err)
{
  *opts = (struct qcow2_open_opts) {
    .writable = !cfg->read_only,
    .punch_discarded = cfg->discard_unmap,
    .l2_cache_size = cfg->l2_cache_size,
    .log = qcow2_log,
    /* Requests parked on QCOW2_BLOCKED are retried by their worker. */
    .wakeup = wakeup_all,
    .format = cfg->format,
    .no_backing = cfg->no_backing,
    .no_locks = cfg->no_locks,
    .offset = cfg->offset,
    .size = cfg->size,
    .has_size = cfg->has_size,
    .error = err,
    .snapshot = cfg->snapshot,
    .snapshot_id = cfg->snapshot_id,
    .snapshot_name = cfg->snapshot_name,
  };
}

/* --snapshot: a temporary qcow2 overlay whose backing file is the image,
 * in a private directory under $TMPDIR (else /var/tmp, as QEMU), opened
 * writable and unlinked at once, so nothing is left behind whatever way
 * the server ends.  The image itself is opened read-only, as the
 * overlay's backing file.  Returns 0 or -errno (logged). */
static int
open_overlay (const struct server_config *cfg, struct qcow2_image **imgp,
              struct qcow2_open_error *err)
{
  const char *tmp = getenv ("TMPDIR");
  CLEANUP_FREE char *base = NULL, *dir = NULL, *path = NULL;
  struct qcow2_create_opts co = { 0 };
  struct qcow2_open_opts opts;
  int r;

  base = realpath (cfg->image, NULL);
  if (base == NULL) {
    r = -errno;
    err->kind = QCOW2_OPEN_ERROR_OPEN;
    err->err = -r;
    err->depth = 1;
    snprintf (err->file, sizeof err->file, "%s", cfg->image);
    return r;
  }
  if (asprintf (&dir, "%s/qcow2-nbd-snapshot.XXXXXX",
                tmp && *tmp ? tmp : "/var/tmp") == -1) {
    dir = NULL;
    return -ENOMEM;
  }
  if (mkdtemp (dir) == NULL) {
    r = -errno;
    log_error ("creating the temporary snapshot in %s: %m", dir);
    return r;
  }
  if (asprintf (&path, "%s/overlay.qcow2", dir) == -1) {
    path = NULL;
    rmdir (dir);
    return -ENOMEM;
  }
  co.backing_file = base;
  co.backing_format = cfg->format == QCOW2_FORMAT_RAW ? "raw" : "qcow2";
  r = qcow2_create (path, &co, qcow2_log, NULL);
  if (r == 0) {
    open_opts (cfg, &opts, err);
    opts.writable = true;
    opts.format = QCOW2_FORMAT_QCOW2;
    opts.no_backing = false;
    opts.snapshot = opts.snapshot_id = opts.snapshot_name = NULL;
    r = qcow2_open (path, &opts, imgp);
  }
  unlink (path);
  rmdir (dir);
  return r;
}

/* Open the image as CFG says; on failure report it (the open_failed
 * hook, or our own words) and return -errno. */
static int
open_image (const struct server_config *cfg, struct qcow2_image **imgp)
{
  struct qcow2_open_opts opts;
  struct qcow2_open_error err = { 0 };
  bool writable = !cfg->read_only;
  int r;

  opening = cfg;
  open_msg[0] = '\0';
  atomic_store (&qcow2_logged_error, false);
  if (cfg->overlay && writable)
    r = open_overlay (cfg, imgp, &err);
  else {
    open_opts (cfg, &opts, &err);
    r = qcow2_open (cfg->image, &opts, imgp);
  }
  opening = NULL;
  if (r == 0)
    return 0;

  if (cfg->open_failed) {
    cfg->open_failed (cfg, r, &err, open_msg);
    return r;
  }
  if (!atomic_load (&qcow2_logged_error))
    log_error ("%s: cannot open image: %s", cfg->image, strerror (-r));
  /* Like qemu-nbd, never fall back to read-only on our own: a client
   * expecting to write would find out only at its first write. */
  if (writable && (r == -EROFS || r == -EACCES || r == -EPERM))
    log_error ("%s cannot be opened for writing; use --read-only to "
               "serve it read-only", cfg->image);
  return r;
}

/* ---- the export ------------------------------------------------------- */

/* Returns 0, or -1 (logged: a --bitmap that cannot be exported). */
static int
build_export (const struct server_config *cfg, struct qcow2_image *img,
              struct export *exp)
{
  memset (exp, 0, sizeof *exp);
  exp->img = img;
  exp->name = cfg->export_name;
  exp->description = cfg->description;
  exp->size = qcow2_virtual_size (img);
  exp->read_only = cfg->read_only;
  exp->discard_unmap = cfg->discard_unmap;
  exp->probed_raw = cfg->probed_raw;
  exp->writethrough = cfg->writethrough;
  exp->no_flush = cfg->no_flush;
  exp->direct_io = cfg->direct_io;
  exp->detect_zeroes = cfg->detect_zeroes;
  /* With an overlay (-s) the filter is only read through. */
  exp->compress = cfg->compress && !cfg->overlay;
  if (contexts_setup (exp, cfg) == -1)
    return -1;
  exp->metas = exp->nr_meta == META_MAX ? UINT64_MAX
    : (UINT64_C (1) << exp->nr_meta) - 1;
  if (!cfg->alloc_depth)
    exp->metas &= ~(UINT64_C (1) << META_ALLOCATION_DEPTH);

  exp->eflags = handshake_eflags (exp->read_only);
  exp->min_block = 1;
  exp->pref_block = 4096;
  exp->max_block = NBD_MAX_PAYLOAD;
  exp->min_block_unasked = 1;

  if (cfg->qemu_export) {
    /* qemu-nbd (nbd/server.c): FUA whatever the mode; several
     * connections only promised when several may come; whole sectors;
     * the request alignment (512 for a probed raw image, whose first
     * sector is checked whole) only to clients that ask. */
    exp->eflags |= NBD_FLAG_SEND_FUA;
    if (cfg->max_connections == 1)
      exp->eflags &= ~NBD_FLAG_CAN_MULTI_CONN;
    exp->size &= ~(uint64_t) 511;
    exp->min_block = cfg->probed_raw ? 512 : 1;
    /* The compress filter's request alignment is the cluster; under
     * qemu-nbd's --offset (a raw node on top) it is the raw node's, 1. */
    if (exp->compress && cfg->offset == 0)
      exp->min_block = qcow2_cluster_size (img);
    /* The preferred size stays 4096: the handshake raises it to the
     * minimum it sends (1 to a client that did not ask), as qemu-nbd. */
  }
  return 0;
}

/* QEMU's compress filter cannot be written unless the disk is a whole
 * number of its blocks (clusters): block.c refuses the write permission.
 * Returns 0, or -EPERM after reporting it as the open failure. */
static int
check_compress (const struct server_config *cfg, struct qcow2_image *img)
{
  static const char msg[] = "Cannot get 'write' permission without "
    "'resize': Image size is not a multiple of request alignment";
  uint64_t cs = qcow2_cluster_size (img);
  /* The filter sits on the disk, under any --offset window. */
  uint64_t disk = qcow2_virtual_size (img) + cfg->offset;
  struct qcow2_open_error err = { .kind = QCOW2_OPEN_ERROR_OTHER };

  if (!cfg->compress || cfg->overlay || cfg->read_only || cs == 0
      || disk % cs == 0)
    return 0;
  if (cfg->open_failed)
    cfg->open_failed (cfg, -EPERM, &err, msg);
  else
    log_error ("%s: %s", cfg->image, msg);
  return -EPERM;
}

/* ---- open and close --------------------------------------------------- */

int
export_open (const struct server_config *cfg, struct export *exp)
{
  struct qcow2_image *img = NULL;
  int r;

  memset (exp, 0, sizeof *exp);
  r = open_image (cfg, &img);
  if (r < 0)
    return r;
  r = check_compress (cfg, img);
  if (r < 0) {
    qcow2_close (img);
    return r;
  }
  if (qcow2_is_corrupt (img))
    log_error ("warning: %s is marked corrupt; serving it read-only",
               cfg->image);
  /* The library's errors about the bitmaps are the front end's to word,
   * as for the image. */
  opening = cfg;
  open_msg[0] = '\0';
  r = build_export (cfg, img, exp);
  opening = NULL;
  if (r == -1) {
    if (cfg->bitmap_failed && exp->failed_bitmap)
      cfg->bitmap_failed (cfg, exp->failed_bitmap, open_msg);
    else if (open_msg[0])
      log_error ("%s", open_msg);
    contexts_free (exp);
    qcow2_close (img);
    exp->img = NULL;
    return -EINVAL;
  }
  return 0;
}

int
export_close (struct export *exp)
{
  int r = 0;

  if (exp->img == NULL)
    return 0;
  /* The last flush, made here for its result (qcow2_close flushes
   * again, cheaply, and marks the image clean only when it worked).
   * When it fails - after a failed sync it always does - writes
   * answered since the last successful FLUSH may be lost. */
  if (!exp->read_only && (r = qcow2_flush (exp->img)) < 0)
    log_error ("%s: the final flush failed (%s): writes not flushed "
               "before may be lost", qcow2_file_name (exp->img, 0),
               strerror (-r));
  qcow2_close (exp->img);
  exp->img = NULL;
  contexts_free (exp);
  return r;
}

