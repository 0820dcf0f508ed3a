/* SPDX-License-Identifier: MIT */
/* From a configuration to a running server, for both command lines
 * (main.c's serve and qemu-nbd.c): builds the exports (exports.c, which
 * opens them through export-open.c), loads TLS credentials, listens,
 * starts the workers, writes the pid file, runs the listener until the
 * server is told to stop, and then shuts everything down in order.
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

/* ---- signals and the pid file ----------------------------------------- */

static void *
signal_thread (void *arg)
{
  const struct server_config *cfg = arg;
  sigset_t set;
  bool stopped = false;

  serve_stop_signals (&set);
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

/* A connection the workers served is gone: the listener counts it. */
static void
conn_closed (void)
{
  listener_conn_closed (true);
}

/* The signals that stop a server (SIGHUP only with sighup_stops, but
 * always taken), in SET.  Also ignores SIGPIPE: a vanished client is
 * an error return, not a death.  Call before any thread exists, then
 * block SET, so every thread inherits the mask. */
void
serve_stop_signals (sigset_t *set)
{
  signal (SIGPIPE, SIG_IGN);
  sigemptyset (set);
  sigaddset (set, SIGINT);
  sigaddset (set, SIGTERM);
  sigaddset (set, SIGHUP);
}

/* Block the signals the signal thread waits for. */
static void
block_signals (void)
{
  sigset_t set;

  serve_stop_signals (&set);
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

  if (workers_start (threads, conn_closed) == -1)
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
