/* SPDX-License-Identifier: MIT */
/* CPU-heavy work spread over the workers: decompressing the compressed
 * clusters of READs (decompress.c) and compressing the clusters of
 * WRITEs through QEMU's compress filter (writes.c).
 *
 * One connection lives on one worker, so a worker that would spend
 * milliseconds of CPU on a request queues it as a job on one queue
 * shared by all workers and wakes one other worker.  Every worker drains
 * the queue at the end of its loop iteration, before it sleeps, and a
 * woken one drains it straight away; a job done by a worker other than
 * its owner goes back on the owner's done list with a wake-up, and the
 * owner finishes it.  The owner always helps, so a job never waits for a
 * worker that is asleep or gone.
 *
 * A long job (a compressed WRITE: milliseconds of CPU) is deferred: its
 * owner kicks another worker at once and leaves the job to the others
 * for JOB_DEFER_NS, going on with its connections meanwhile (it waits no
 * longer than that), and takes the job itself only after that.
 * Otherwise an owner that receives one request per loop iteration would
 * always take its own job before a woken helper got to it, and one
 * connection's writes would be compressed one after the other.
 *
 * A job's run() touches no worker state (any worker may run it); its
 * finish() runs on the owner, with the owner's ring and buffers. */

#include <config.h>

#include <stdatomic.h>

#include "common/cleanup.h"
#include "server/server.h"
#include "server/transmission.h"

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
static struct djob *queue_head, *queue_tail;    /* queue_lock */
static atomic_uint queue_len;

void
jobs_submit (struct worker *w, struct djob *j)
{
  j->owner = w;
  j->next = NULL;
  j->defer = j->defer && wakeup_has_peers ();
  if (j->defer) {
    j->queued_at = now_ns ();
    atomic_fetch_add (&w->jobs.deferred, 1);
  }
  {
    LOCK_FOR_SCOPE (&queue_lock);
    if (queue_tail)
      queue_tail->next = j;
    else
      queue_head = j;
    queue_tail = j;
    atomic_fetch_add (&queue_len, 1);
  }
  w->jobs.queued = true;
  if (j->defer)
    wakeup_kick_other (w);
}

/* The next job W may take: not one of its own deferred ones, while
 * others may still take it. */
static struct djob *
queue_pop (struct worker *w)
{
  struct djob *j;

  if (atomic_load (&queue_len) == 0)
    return NULL;
  LOCK_FOR_SCOPE (&queue_lock);
  j = queue_head;
  if (j && j->defer && j->owner == w
      && now_ns () - j->queued_at < JOB_DEFER_NS)
    return NULL;
  if (j) {
    queue_head = j->next;
    if (queue_head == NULL)
      queue_tail = NULL;
    atomic_fetch_sub (&queue_len, 1);
    if (j->defer)
      atomic_fetch_sub (&j->owner->jobs.deferred, 1);
  }
  return j;
}

static void
job_run (struct worker *w, struct djob *j)
{
  struct worker *owner = j->owner;
  struct djob *head;

  j->run (j);
  if (owner == w) {
    j->finish (j);
    return;
  }
  /* Once on the done list the job may be finished and its request
   * recycled at any moment: touch it no more. */
  head = atomic_load (&owner->jobs.done);
  do
    j->next = head;
  while (!atomic_compare_exchange_weak (&owner->jobs.done, &head, j));
  wakeup_kick (owner);
}

void
jobs_run (struct worker *w)
{
  struct djob *done, *j;

  /* Jobs others did for us: taking the whole list at once, so the
   * push's compare-and-swap never races with a pop.  This runs every
   * loop iteration, hence no lock. */
  done = atomic_load (&w->jobs.done) ? atomic_exchange (&w->jobs.done, NULL)
                                     : NULL;
  while ((j = done) != NULL) {
    done = j->next;
    j->finish (j);
  }

  /* Our jobs and anyone's: wake one helper if we queued more than one,
   * then work through the queue ourselves. */
  if (w->jobs.queued) {
    w->jobs.queued = false;
    if (atomic_load (&queue_len) > 0)
      wakeup_kick_other (w);
  }
  while ((j = queue_pop (w)) != NULL)
    job_run (w, j);
}
