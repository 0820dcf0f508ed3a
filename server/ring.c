/* SPDX-License-Identifier: MIT */
/* A worker's io_uring ring: setting it up, and handing out the SQEs that
 * every user of the ring (the request code, the command handlers, the
 * loop itself) prepares.  Prepared SQEs reach the kernel when the loop
 * next waits (ring_wait, from worker.c, which then reaps the
 * completions), or earlier when the submission queue fills up.  The
 * ring fields of struct worker are owned by this file; only the
 * worker's own thread submits. */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "server/server.h"
#include "server/transmission.h"

/* Ring sizes: the SQ is refilled many times per iteration when needed
 * (ring_get_sqe submits on overflow); the CQ is larger so a burst of
 * completions does not spill into the kernel's overflow list. */
#define RING_ENTRIES 256
#define RING_CQ_ENTRIES 4096

int
ring_init (struct worker *w)
{
  struct io_uring_params p;
  int r;

  /* SINGLE_ISSUER + DEFER_TASKRUN: completions are run only when this
   * worker enters the kernel to wait, which it does once per iteration
   * anyway, saving the task-work interruptions. */
  memset (&p, 0, sizeof p);
  p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER
    | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED;
  p.cq_entries = RING_CQ_ENTRIES;
  r = io_uring_queue_init_params (RING_ENTRIES, &w->ring.uring, &p);
  if (r == 0) {
    w->ring.disabled = true;
    return 0;
  }

  /* Older kernels: plain ring. */
  memset (&p, 0, sizeof p);
  p.flags = IORING_SETUP_CQSIZE;
  p.cq_entries = RING_CQ_ENTRIES;
  r = io_uring_queue_init_params (RING_ENTRIES, &w->ring.uring, &p);
  w->ring.disabled = false;
  return r;
}

void
ring_exit (struct worker *w)
{
  io_uring_queue_exit (&w->ring.uring);
}

void
ring_enable (struct worker *w)
{
  if (w->ring.disabled) {
    /* With IORING_SETUP_SINGLE_ISSUER the task that enables the ring
     * becomes its only submitter: this thread.  (liburing 2.3's shared
     * library does not export io_uring_enable_rings, hence the raw
     * register call.) */
    int r = io_uring_register (w->ring.uring.ring_fd,
                               IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (r < 0) {
      log_error ("worker %u: io_uring_enable_rings: %s", w->idx,
                 strerror (-r));
      abort ();
    }
  }
}

void
ring_wait (struct worker *w, struct __kernel_timespec *ts)
{
  struct io_uring_cqe *unused;
  int r;

  if (ts)
    r = io_uring_submit_and_wait_timeout (&w->ring.uring, &unused, 1, ts,
                                          NULL);
  else
    r = io_uring_submit_and_wait (&w->ring.uring, 1);
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) {
    log_error ("worker %u: io_uring_submit_and_wait: %s", w->idx,
               strerror (-r));
    abort ();
  }
}

/* Submit what is queued, to make room in the SQ. */
static void
submit_queued (struct worker *w)
{
  int r = io_uring_submit (&w->ring.uring);

  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
    log_error ("worker %u: io_uring_submit: %s", w->idx, strerror (-r));
    abort ();
  }
}

void
ring_reserve_sqes (struct worker *w, unsigned n)
{
  while (io_uring_sq_space_left (&w->ring.uring) < n)
    submit_queued (w);
}

struct io_uring_sqe *
ring_get_sqe (struct worker *w)
{
  struct io_uring_sqe *sqe;

  while ((sqe = io_uring_get_sqe (&w->ring.uring)) == NULL)
    submit_queued (w);
  io_uring_sqe_set_data64 (sqe, 0);
  return sqe;
}
