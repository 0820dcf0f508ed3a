/* SPDX-License-Identifier: MIT */
/* Worker threads and their event loop: the top of the transmission
 * phase.  Each worker owns an io_uring ring (ring.c), a buffer pool
 * (bufpool.c) and the connections handed to it (its fds of the image
 * files are in each open export: struct export_fds, exports.c), and
 * serves them all from one completion loop: it submits the SQEs of an
 * iteration and waits with one io_uring_enter, hands each completion to
 * its owner (request.c), runs queued jobs (jobs.c) and the deferred
 * work of every connection that has some (request.c).  Connections
 * arrive through a mutex-protected queue and the worker's eventfd
 * (wakeup.c), so the listener never touches a worker's ring.  The same
 * eventfd carries the library's wake-ups, after which the worker
 * retries the requests it parked (writes.c), and the job wake-ups.
 * Nothing below calls back into this file. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/server.h"
#include "server/transmission.h"

/* After workers_shutdown(), connections get this long to take their last
 * replies; a client that stopped reading must not hold the exit up. */
#define SHUTDOWN_GRACE_NS (10 * UINT64_C (1000000000))

static struct worker *workers;
static unsigned nr_workers;
/* workers_start's CONN_CLOSED, for connections never handed to a
 * worker (each worker has it too, for request.c). */
static void (*closed_hook) (void);

/* ---- the loop ------------------------------------------------------- */

/* Pick up handed-over connections and notice shutdown. */
static void
wake (struct worker *w)
{
  struct conn **list;
  size_t n;

  {
    LOCK_FOR_SCOPE (&w->lock);
    list = w->handoff;
    n = w->nr_handoff;
    w->handoff = NULL;
    w->nr_handoff = w->cap_handoff = 0;
  }

  for (size_t i = 0; i < n; i++)
    request_conn_start (w, list[i]);
  free (list);

  /* The eventfd does not say who kicked it: an ended allocation may have
   * unblocked parked requests, so try them whatever the reason. */
  writes_retry_parked (w);

  if (atomic_load (&w->stop) && !w->stopping) {
    w->stopping = true;
    w->stop_time = now_ns ();
    request_stop_all (w);
  }
}

/* May a stopping W leave its loop?  Connections handed over after
 * shutdown started are closed by wake(); only leave once none can
 * arrive unseen. */
static bool
may_leave (struct worker *w)
{
  if (!w->stopping || w->conns != NULL)
    return false;
  LOCK_FOR_SCOPE (&w->lock);
  return w->nr_handoff == 0;
}

/* Submit this iteration's SQEs and wait for a completion: for as long
 * as it takes, unless jobs of ours wait for other workers or shutdown
 * has a grace period to watch. */
static void
wait_for_work (struct worker *w)
{
  if (atomic_load (&w->jobs.deferred) > 0) {
    /* Jobs of ours wait for other workers: come back for them if
     * nobody has taken them by then (jobs.c). */
    struct __kernel_timespec ts = { .tv_nsec = JOB_DEFER_NS };

    ring_wait (w, &ts);
  }
  else if (!w->stopping)
    ring_wait (w, NULL);
  else {
    struct __kernel_timespec ts = { .tv_sec = 1 };

    if (!w->killed && now_ns () - w->stop_time > SHUTDOWN_GRACE_NS) {
      w->killed = true;
      request_kill_all (w);
      request_service (w);
    }
    ring_wait (w, &ts);
  }
}

/* Hand every completion to its owner; returns true if the eventfd's
 * read completed (someone woke us). */
static bool
reap (struct worker *w)
{
  struct io_uring_cqe *cqe;
  unsigned head, seen = 0;
  bool woke = false;

  io_uring_for_each_cqe (&w->ring.uring, head, cqe) {
    struct uring_op *op = io_uring_cqe_get_data (cqe);
    int res = cqe->res;

    seen++;
    if (op == NULL)
      continue;
    if (op->kind == OP_WAKE) {
      if (res < 0 && res != -EINTR && res != -EAGAIN)
        log_error ("worker %u: eventfd read: %s", w->idx, strerror (-res));
      woke = true;
      wakeup_arm (w);
    }
    else
      request_complete (w, op, res);
  }
  io_uring_cq_advance (&w->ring.uring, seen);
  return woke;
}

static void *
worker_thread (void *arg)
{
  struct worker *w = arg;

  ring_enable (w);
  wakeup_arm (w);

  while (!may_leave (w)) {
    wait_for_work (w);
    if (reap (w))
      wake (w);
    jobs_run (w);
    request_service (w);
  }

  session_worker_cleanup (w);
  decompress_cache_free (w);
  zc_worker_cleanup (w);
  bufpool_destroy (w);
  return NULL;
}

/* ---- public ----------------------------------------------------------- */

int
workers_start (unsigned n, void (*conn_closed) (void))
{
  closed_hook = conn_closed;
  if (n == 0)
    n = 1;
  workers = calloc (n, sizeof *workers);
  if (workers == NULL) {
    log_error ("workers: %m");
    return -1;
  }

  for (unsigned i = 0; i < n; i++) {
    struct worker *w = &workers[i];
    int r;

    w->idx = i;
    w->conn_closed = conn_closed;
    pthread_mutex_init (&w->lock, NULL);
    if (wakeup_init (w) < 0)
      return -1;
    r = ring_init (w);
    if (r < 0) {
      log_error ("worker %u: io_uring_queue_init: %s", i, strerror (-r));
      return -1;
    }
    r = pthread_create (&w->thread, NULL, worker_thread, w);
    if (r != 0) {
      log_error ("worker %u: pthread_create: %s", i, strerror (r));
      ring_exit (w);
      return -1;
    }
    nr_workers++;
  }
  wakeup_enable (workers, nr_workers);
  return 0;
}

void
workers_add_conn (struct conn *conn)
{
  struct worker *w = NULL;
  int flags;

  flags = fcntl (conn->fd, F_GETFL);
  if (flags == -1 || fcntl (conn->fd, F_SETFL, flags | O_NONBLOCK) == -1) {
    log_error ("%s: O_NONBLOCK: %m", conn->peer);
    conn_free (conn);
    closed_hook ();
    return;
  }

  for (unsigned i = 0; i < nr_workers; i++)
    if (w == NULL
        || atomic_load (&workers[i].nr_conns) < atomic_load (&w->nr_conns))
      w = &workers[i];
  if (w == NULL) {
    conn_free (conn);
    closed_hook ();
    return;
  }

  {
    LOCK_FOR_SCOPE (&w->lock);
    if (w->nr_handoff == w->cap_handoff) {
      size_t cap = w->cap_handoff ? 2 * w->cap_handoff : 8;
      struct conn **p = realloc (w->handoff, cap * sizeof *p);
      if (p == NULL) {
        log_error ("%s: %m", conn->peer);
        conn_free (conn);
        closed_hook ();
        return;
      }
      w->handoff = p;
      w->cap_handoff = cap;
    }
    w->handoff[w->nr_handoff++] = conn;
    atomic_fetch_add (&w->nr_conns, 1);
  }
  wakeup_kick (w);
}

void
workers_shutdown (void)
{
  for (unsigned i = 0; i < nr_workers; i++) {
    atomic_store (&workers[i].stop, true);
    wakeup_kick (&workers[i]);
  }
  /* A worker leaves only when its connections have no request left, so
   * every write has ended (qcow2_write_end) once all are joined.  Join
   * them all before closing anything: a worker finishing a write wakes
   * the others through their eventfds. */
  for (unsigned i = 0; i < nr_workers; i++)
    pthread_join (workers[i].thread, NULL);
  wakeup_disable ();
  for (unsigned i = 0; i < nr_workers; i++) {
    struct worker *w = &workers[i];

    ring_exit (w);
    wakeup_fini (w);
    free (w->handoff);
    pthread_mutex_destroy (&w->lock);
  }
  free (workers);
  workers = NULL;
  nr_workers = 0;
}
