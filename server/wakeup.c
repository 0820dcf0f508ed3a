/* SPDX-License-Identifier: MIT */
/* How workers are woken: each worker's eventfd, which its ring always
 * has a read armed on, so that another thread (the listener handing a
 * connection over, a worker that finished a job or ended an allocation,
 * the library's wake-up callback, shutdown) reaches a worker without
 * touching its ring.  The eventfd does not say why it was written: the
 * woken loop (worker.c) looks at everything a wake-up may mean.  The
 * wake-up fields of struct worker are owned by this file. */

#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/eventfd.h>

#include "server/server.h"
#include "server/transmission.h"

/* The workers, and how many may be kicked: set once every worker runs,
 * cleared only after every thread has been joined, so a wake-up from a
 * worker's last write never pokes a closed eventfd. */
static struct worker *workers;
static atomic_uint nr_wakeable;

atomic_uint wakeup_seq;

int
wakeup_init (struct worker *w)
{
  w->wake.op.kind = OP_WAKE;
  w->wake.efd = eventfd (0, EFD_CLOEXEC);
  if (w->wake.efd < 0) {
    log_error ("worker %u: eventfd: %m", w->idx);
    return -1;
  }
  return 0;
}

void
wakeup_arm (struct worker *w)
{
  struct io_uring_sqe *sqe = ring_get_sqe (w);

  io_uring_prep_read (sqe, w->wake.efd, &w->wake.val, sizeof w->wake.val,
                      0);
  io_uring_sqe_set_data (sqe, &w->wake.op);
}

void
wakeup_fini (struct worker *w)
{
  close (w->wake.efd);
}

void
wakeup_enable (struct worker *ws, unsigned n)
{
  workers = ws;
  atomic_store (&nr_wakeable, n);
}

void
wakeup_disable (void)
{
  atomic_store (&nr_wakeable, 0);
}

void
wakeup_kick (struct worker *w)
{
  uint64_t one = 1;

  /* An eventfd write fails only if the counter would overflow, which
   * means the worker has a wake-up pending anyway. */
  if (write (w->wake.efd, &one, sizeof one) != sizeof one && errno != EAGAIN)
    log_error ("worker %u: eventfd write: %m", w->idx);
}

bool
wakeup_has_peers (void)
{
  return atomic_load (&nr_wakeable) >= 2;
}

void
wakeup_kick_other (struct worker *w)
{
  static atomic_uint next;
  unsigned n = atomic_load (&nr_wakeable);

  if (n < 2)
    return;
  unsigned i = atomic_fetch_add (&next, 1) % (n - 1);
  wakeup_kick (&workers[i < w->idx ? i : i + 1]);
}

void
wakeup_all (void *opaque)
{
  unsigned n = atomic_load (&nr_wakeable);

  atomic_fetch_add (&wakeup_seq, 1);
  for (unsigned i = 0; i < n; i++)
    wakeup_kick (&workers[i]);
}
