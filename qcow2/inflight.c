/* SPDX-License-Identifier: MIT */
/* In-flight records: the guest clusters of the top layer that a write,
 * zeroing or discard is working on between its begin and its end.
 *
 * Every write, zeroing and discard registers one, and anything
 * overlapping waits (QCOW2_WAIT) or returns QCOW2_BLOCKED: two writes
 * into one unallocated cluster must not both allocate it, and a discard
 * must not free a cluster a write is about to link.  Records are whole
 * clusters of the top layer and kept in a short list: the number in
 * flight is bounded by the callers' queue depths.  When a record someone
 * got QCOW2_BLOCKED on goes, the image's wakeup callback runs.
 *
 * The state belongs to the layer (layer->inflight, made at open next to
 * the L2 cache) and has a lock of its own, a leaf lock: records are
 * entered before the layer lock is taken and left after it is dropped,
 * so in practice it is only ever taken alone. */

#include <config.h>

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "common/cleanup.h"
#include "qcow2/internal.h"

struct inflight {
  uint64_t first, last;         /* guest clusters of the top layer */
  struct inflight *next;        /* inflight_state.lock */
};

struct inflight_state {
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* signalled when a record goes */
  struct inflight *head;        /* lock */
  bool blocked;                 /* lock: a caller got QCOW2_BLOCKED */
};

int
inflight_init (struct qcow2_layer *layer)
{
  struct inflight_state *st = calloc (1, sizeof *st);

  if (st == NULL)
    return -errno;
  if (pthread_mutex_init (&st->lock, NULL) != 0) {
    free (st);
    return -ENOMEM;
  }
  if (pthread_cond_init (&st->cond, NULL) != 0) {
    pthread_mutex_destroy (&st->lock);
    free (st);
    return -ENOMEM;
  }
  layer->inflight = st;
  return 0;
}

void
inflight_destroy (struct qcow2_layer *layer)
{
  struct inflight_state *st = layer->inflight;

  if (st == NULL)
    return;
  pthread_cond_destroy (&st->cond);
  pthread_mutex_destroy (&st->lock);
  free (st);
  layer->inflight = NULL;
}

/* Does REC overlap a record already in WS? */
static bool
clashes_locked (const struct inflight_state *ws, const struct inflight *rec)
{
  for (const struct inflight *p = ws->head; p; p = p->next)
    if (p->first <= rec->last && rec->first <= p->last)
      return true;
  return false;
}

int
inflight_enter (struct qcow2_image *img, uint64_t offset, uint64_t length,
                unsigned flags, struct inflight **recp)
{
  struct qcow2_layer *top = img->layers[0];
  struct inflight_state *ws = top->inflight;
  struct inflight *rec;
  bool blocked = false;

  *recp = NULL;
  rec = malloc (sizeof *rec);
  if (rec == NULL)
    return -errno;
  rec->first = offset >> top->cluster_bits;
  rec->last = (offset + (length ? length - 1 : 0)) >> top->cluster_bits;

  {
    LOCK_FOR_SCOPE (&ws->lock);

    while (clashes_locked (ws, rec)) {
      if (!(flags & QCOW2_WAIT)) {
        ws->blocked = true;
        blocked = true;
        break;
      }
      pthread_cond_wait (&ws->cond, &ws->lock);
    }
    if (!blocked) {
      rec->next = ws->head;
      ws->head = rec;
    }
  }
  if (blocked) {
    free (rec);
    return QCOW2_BLOCKED;
  }
  *recp = rec;
  return 0;
}

void
inflight_leave (struct qcow2_image *img, struct inflight *rec)
{
  struct inflight_state *ws;
  bool wake;

  if (rec == NULL)
    return;
  ws = img->layers[0]->inflight;
  {
    LOCK_FOR_SCOPE (&ws->lock);

    for (struct inflight **p = &ws->head; *p; p = &(*p)->next)
      if (*p == rec) {
        *p = rec->next;
        break;
      }
    wake = ws->blocked;
    ws->blocked = false;
    pthread_cond_broadcast (&ws->cond);
  }
  free (rec);
  /* Outside every lock: the callback may retry at once. */
  if (wake && img->wakeup)
    img->wakeup (img->wakeup_opaque);
}
