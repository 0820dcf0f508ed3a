/* SPDX-License-Identifier: MIT */
/* Worker threads.  Each worker owns an io_uring ring and a buffer pool
 * (its fds of the image files are in each open export: struct
 * export_fds, exports.c), and serves many connections from one
 * completion loop: it reaps a batch of completions, lets request.c parse
 * requests, queue data reads and send replies, and then submits all the
 * SQEs of that iteration with one io_uring_enter.  Connections arrive
 * through a mutex-protected queue and an eventfd the ring always has a
 * read armed on, so the listener never touches a worker's ring.  The same
 * eventfd carries the library's wake-ups (wakeup_all): an ended
 * allocation makes every worker retry the requests it parked; and
 * CPU-heavy jobs (decompression, compression), which any worker may do
 * (jobs.c). */

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

static void *
worker_thread (void *arg)
{
  struct worker *w = arg;

  ring_enable (w);
  wakeup_arm (w);

  for (;;) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    bool woke = false;

    if (w->stopping && w->conns == NULL) {
      /* Connections handed over after shutdown started are closed by
       * wake(); only leave once none can arrive unseen. */
      LOCK_FOR_SCOPE (&w->lock);
      if (w->nr_handoff == 0)
        break;
    }

    int r;
    if (atomic_load (&w->deferred_jobs) > 0) {
      /* Jobs of ours wait for other workers: come back for them if
       * nobody has taken them by then (jobs.c). */
      struct __kernel_timespec ts = { .tv_nsec = JOB_DEFER_NS };
      struct io_uring_cqe *unused;

      r = io_uring_submit_and_wait_timeout (&w->ring, &unused, 1, &ts, NULL);
    }
    else if (!w->stopping)
      r = io_uring_submit_and_wait (&w->ring, 1);
    else {
      struct __kernel_timespec ts = { .tv_sec = 1 };
      struct io_uring_cqe *unused;

      if (!w->killed && now_ns () - w->stop_time > SHUTDOWN_GRACE_NS) {
        w->killed = true;
        request_kill_all (w);
        request_service (w);
      }
      r = io_uring_submit_and_wait_timeout (&w->ring, &unused, 1, &ts, NULL);
    }
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
      log_error ("worker %u: io_uring_submit_and_wait: %s", w->idx,
                 strerror (-r));
      abort ();
    }

    io_uring_for_each_cqe (&w->ring, head, cqe) {
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
    io_uring_cq_advance (&w->ring, seen);

    if (woke)
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
workers_start (unsigned n)
{
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
      io_uring_queue_exit (&w->ring);
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
    listener_conn_closed (true);
    return;
  }

  for (unsigned i = 0; i < nr_workers; i++)
    if (w == NULL
        || atomic_load (&workers[i].nr_conns) < atomic_load (&w->nr_conns))
      w = &workers[i];
  if (w == NULL) {
    conn_free (conn);
    listener_conn_closed (true);
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
        listener_conn_closed (true);
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

    io_uring_queue_exit (&w->ring);
    wakeup_fini (w);
    free (w->handoff);
    pthread_mutex_destroy (&w->lock);
  }
  free (workers);
  workers = NULL;
  nr_workers = 0;
}
