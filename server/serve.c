/* SPDX-License-Identifier: MIT */
/* From a configuration to a running server, for both command lines
 * (main.c's serve and qemu-nbd.c): the one place that opens an image
 * (and, for --snapshot, its temporary overlay) and builds its export
 * from a configuration (for exports.c, which keeps the exports by name),
 * loads TLS credentials, listens, starts the workers,
 * writes the pid file, runs the listener until the server is told to
 * stop, and then shuts everything down in order.
 *
 * Signals: SIGINT, SIGTERM and SIGHUP are blocked in every thread (the
 * mask is set before any thread exists, so threads inherit it) and
 * received by one dedicated thread with sigwait(); SIGPIPE is ignored
 * (socket sends use MSG_NOSIGNAL anyway, but TLS may write(2)).  The
 * first SIGINT/SIGTERM (and SIGHUP when sighup_stops, as in qemu-nbd)
 * stops the server gracefully; a second one exits at once. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "qcow2/qcow2.h"
#include "server/server.h"
#include "tls/tls.h"

static unsigned
cpu_count (void)
{
  cpu_set_t set;
  long n;

  if (sched_getaffinity (0, sizeof set, &set) == 0 && CPU_COUNT (&set) > 0)
    return CPU_COUNT (&set);
  n = sysconf (_SC_NPROCESSORS_ONLN);
  return n > 0 ? (unsigned) n : 1;
}

void
serve_config_init (struct server_config *cfg)
{
  memset (cfg, 0, sizeof *cfg);
  cfg->export_name = "";
  cfg->port = NBD_DEFAULT_PORT;
  cfg->threads = cpu_count ();
  cfg->handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT;
  cfg->max_handshakes = DEFAULT_MAX_HANDSHAKES;
  cfg->max_handshakes_per_source = DEFAULT_MAX_HANDSHAKES_PER_SOURCE;
  cfg->max_inflight_bytes = SERVER_DEFAULT_MAX_INFLIGHT;
  cfg->persistent = true;
  cfg->alloc_depth = true;
  cfg->tls.mode = TLS_OFF;
  cfg->max_open_exports = DEFAULT_MAX_OPEN_EXPORTS;
  cfg->idle_timeout = DEFAULT_EXPORT_IDLE_TIMEOUT;
}

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

/* ---- signals and the pid file ----------------------------------------- */

static void *
signal_thread (void *arg)
{
  const struct server_config *cfg = arg;
  sigset_t set;
  bool stopped = false;

  sigemptyset (&set);
  sigaddset (&set, SIGINT);
  sigaddset (&set, SIGTERM);
  sigaddset (&set, SIGHUP);
  for (;;) {
    int sig;

    if (sigwait (&set, &sig) != 0)
      continue;
    if (sig == SIGHUP && !cfg->sighup_stops) {
      log_info ("SIGHUP ignored");
      continue;
    }
    if (stopped) {
      log_error ("second signal %d: exiting now", sig);
      _exit (EXIT_FAILURE);
    }
    log_info ("signal %d: shutting down", sig);
    stopped = true;
    server_stop ();
  }
  return NULL;
}

/* Write the pid file as QEMU does: created 0600 if need be, locked (a
 * second server given the same file fails), checked to be the file now
 * at PATH, then truncated and written.  The fd stays open (and the lock
 * held) until exit. */
int
pid_file_write (const char *path)
{
  char buf[32];
  int fd, n;

  for (;;) {
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
    struct stat a, b;

    fd = open (path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd == -1) {
      log_error ("Could not create '%s': %m", path);
      return -1;
    }
    if (fstat (fd, &b) == -1) {
      log_error ("Cannot stat file: %m");
      close (fd);
      return -1;
    }
    if (fcntl (fd, F_SETLK, &fl) == -1) {
      log_error ("Cannot lock pid file: %m");
      close (fd);
      return -1;
    }
    /* Someone replaced it meanwhile: lock the new one instead. */
    if (stat (path, &a) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev)
      break;
    close (fd);
  }
  n = snprintf (buf, sizeof buf, "%ld\n", (long) getpid ());
  if (ftruncate (fd, 0) == -1 || write (fd, buf, n) != n) {
    log_error ("Failed to write pid file");
    unlink (path);
    close (fd);
    return -1;
  }
  return 0;
}

/* ---- the server's life ------------------------------------------------ */

int
serve_export_open (const struct server_config *cfg, struct export *exp)
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
serve_export_close (struct export *exp)
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

/* Block the signals the signal thread waits for, and ignore SIGPIPE,
 * before any thread exists, so every thread inherits the mask. */
static void
block_signals (void)
{
  sigset_t set;

  signal (SIGPIPE, SIG_IGN);
  sigemptyset (&set);
  sigaddset (&set, SIGINT);
  sigaddset (&set, SIGTERM);
  sigaddset (&set, SIGHUP);
  sigaddset (&set, SIGPIPE);
  pthread_sigmask (SIG_BLOCK, &set, NULL);
}

/* The TLS context CFG asks for, if any.  0, or -1 (logged). */
static int
start_tls (const struct server_config *cfg)
{
  server_tls_mode = cfg->tls.mode;
  if (cfg->tls.mode != TLS_OFF) {
    struct tls_config tls = cfg->tls;

    tls.log = log_error_line;
    server_tls_ctx = tls_ctx_new (&tls);
    if (server_tls_ctx == NULL) {
      log_error ("cannot set up TLS");
      return -1;
    }
  }
  return 0;
}

/* Say what is served, once it is. */
static void
log_serving (const struct server_config *cfg, unsigned threads)
{
  const struct export *single = exports_single ();

  if (single)
    log_info ("serving %s (%" PRIu64 " bytes) as export '%s' with %u "
              "thread%s", cfg->image ? cfg->image
              : qcow2_file_name (single->img, 0), single->size, single->name,
              threads, threads == 1 ? "" : "s");
  else {
    unsigned n = cfg->nr_exports + (cfg->image != NULL);

    log_info ("serving %u export%s%s%s with %u thread%s", n,
              n == 1 ? "" : "s",
              cfg->export_dir ? " and the images of " : "",
              cfg->export_dir ? cfg->export_dir : "",
              threads, threads == 1 ? "" : "s");
  }
}

int
serve_run (const struct server_config *cfg)
{
  unsigned threads = cfg->threads ? cfg->threads : 1;
  pthread_t sig_thread;
  int *fds = NULL, nfds;
  int status = EXIT_FAILURE, r;

  log_verbose = cfg->verbose;
  block_signals ();
  server_max_inflight = cfg->max_inflight_bytes;
  if (start_tls (cfg) == -1)
    return EXIT_FAILURE;

  /* The images named on the command line first: nothing listens until
   * they are open and checked, so a client that connects is always
   * served. */
  if (exports_init (cfg, threads) == -1)
    goto out_tls;

  /* Sockets before workers: a busy port is the likeliest failure, and
   * finding it first costs no thread or ring set-up. */
  nfds = sockets_listen (cfg, &fds);
  if (nfds < 0)
    goto out_exports;

  r = pthread_create (&sig_thread, NULL, signal_thread, (void *) cfg);
  if (r != 0) {
    errno = r;
    log_error ("creating the signal thread: %m");
    goto out_sockets;
  }
  pthread_detach (sig_thread);

  if (workers_start (threads) == -1)
    goto out_sockets;
  if (exports_start () == -1) {
    workers_shutdown ();
    goto out_sockets;
  }

  if (cfg->pid_file && pid_file_write (cfg->pid_file) == -1) {
    workers_shutdown ();
    goto out_sockets;
  }
  log_serving (cfg, threads);
  if (cfg->ready)
    cfg->ready (cfg);

  listener_run (cfg, fds, nfds);   /* closes fds */
  free (fds);
  fds = NULL;
  nfds = 0;

  workers_shutdown ();
  if (cfg->pid_file && !cfg->keep_pid_file)
    unlink (cfg->pid_file);
  /* Every export is flushed and closed; when a final flush fails,
   * writes answered since the last successful FLUSH may be lost, and
   * the exit status says so. */
  status = EXIT_SUCCESS;
  if (exports_shutdown () == -1) {
    log_error ("a final flush failed; exiting with status 1");
    status = EXIT_FAILURE;
  }
  log_info ("exiting");

 out_sockets:
  while (nfds > 0)
    close (fds[--nfds]);
  free (fds);
  if (cfg->socket_path)
    unlink (cfg->socket_path);
 out_exports:
  exports_shutdown ();
 out_tls:
  if (server_tls_ctx)
    tls_ctx_free (server_tls_ctx);
  server_tls_ctx = NULL;
  return status;
}
