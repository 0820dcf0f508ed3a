/* SPDX-License-Identifier: MIT */
/* Giving host clusters back: the deferred refcount decrements of a
 * writable layer, and the host space of clusters a guest discarded.
 *
 * A reference dropped in memory (an L2 entry discarded or overwritten by
 * copy-on-write, an L2 table replaced) is not a free cluster yet: the
 * decrement waits in a list until the flush that made the dropped
 * reference durable commits it (qcow2/ORDERING.md, rule 2), so the
 * allocator cannot hand the cluster out while a crash could still bring
 * the old reference back.
 *
 * Clusters a guest gave back (TRIM, or WRITE_ZEROES that may unmap) also
 * give their space back to the host file system, as QEMU's discard
 * pass-through does: their bytes are punched out of the file
 * (FALLOC_FL_PUNCH_HOLE), so the image's allocated size follows what the
 * guest trimmed.  That is safe as soon as no other reference can reach
 * the bytes: at once when the reference dropped was the cluster's only
 * one (refcount 1: the guest range reads as zeros from now on, and after
 * a crash a discarded range may read as zeros too), otherwise when the
 * commit takes the refcount to zero (a compressed stream sharing its
 * host cluster, a cluster an internal snapshot still holds).  Either way
 * the cluster is not reused before the commit, so a punched cluster is
 * never one that holds anybody's data.  Where the file system cannot
 * punch holes the clusters are just freed for reuse.
 *
 * Clusters freed by copy-on-write (a compressed or shared cluster
 * overwritten) keep their host space until reused, as in QEMU, whose
 * "pass-discard-other" is off by default.
 *
 * Locking: layer->lock, held exclusively by every caller (init and
 * destroy run inside qcow2_open and qcow2_close, on one thread). */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/rounding.h"
#include "qcow2/internal.h"

/* Decrements kept before a discard or zeroing commits them with a flush
 * of its own: bounds the list's memory (16 bytes a range) for a client
 * that trims a fragmented disk without ever flushing. */
#define RELEASE_BACKLOG_LIMIT 65536

struct pending_range {
  uint64_t host, n;
  bool punch;                   /* punch what reaches refcount 0 */
};

struct release_list {
  struct pending_range *v;
  size_t n, cap;
  size_t committing;            /* v[0..committing) belong to the flush
                                 * in progress, if 'begun' */
  bool begun;
};

int
release_init (struct qcow2_layer *layer)
{
  layer->pending = calloc (1, sizeof *layer->pending);
  return layer->pending == NULL ? -errno : 0;
}

void
release_destroy (struct qcow2_layer *layer)
{
  if (layer->pending != NULL) {
    free (layer->pending->v);
    free (layer->pending);
    layer->pending = NULL;
  }
}

/* Give the host bytes of the N clusters at HOST back to the file
 * system.  Best effort: a file system without hole punching keeps the
 * space, and the clusters are reused later all the same. */
static void
punch (struct qcow2_layer *layer, uint64_t host, uint64_t n)
{
  struct qcow2_image *img = layer->img;
  int r;

  if (n == 0 || img->io->punch == NULL)
    return;
  r = img->io->punch (img->io_opaque, img->files[layer->file].fd, host,
                      n << layer->cluster_bits);
  if (r < 0 && r != -ENOTSUP && r != -EOPNOTSUPP)
    qcow2_log (img, QCOW2_LOG_DEBUG, "%s: punching %" PRIu64 " bytes at %#"
               PRIx64 ": %s", img->files[layer->file].name,
               n << layer->cluster_bits, host, strerror (-r));
}

/* Append [host, host+n clusters) to the list, merging with the last
 * range not yet being committed. */
static int
add_pending (struct qcow2_layer *layer, uint64_t host, uint64_t n,
             bool punch_later)
{
  struct release_list *p = layer->pending;
  struct pending_range *last;

  if (n == 0)
    return 0;
  last = p->n > (p->begun ? p->committing : 0) ? &p->v[p->n - 1] : NULL;
  if (last && last->punch == punch_later &&
      last->host + (last->n << layer->cluster_bits) == host) {
    last->n += n;
    return 0;
  }
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 64;
    struct pending_range *v = realloc (p->v, cap * sizeof *v);

    if (v == NULL)
      return -ENOMEM;
    p->v = v;
    p->cap = cap;
  }
  p->v[p->n++] = (struct pending_range) { host, n, punch_later };
  return 0;
}

int
release_clusters_locked (struct qcow2_layer *layer, uint64_t host,
                         uint64_t n, bool give_back)
{
  const uint64_t first = host >> layer->cluster_bits;
  uint64_t run = 0;             /* clusters before 'i' sharing a fate */
  bool run_now = false;
  int r;

  if (n == 0)
    return 0;
  if (!IS_ALIGNED (host, layer->cluster_size))
    return -EINVAL;
  /* Catch a release of an unreferenced cluster now, not at commit. */
  for (uint64_t i = 0; i < n; i++) {
    uint64_t rc;
    bool now;

    r = refcount_get_locked (layer, (first + i) << layer->cluster_bits, &rc);
    if (r < 0)
      return r;
    if (rc == 0)
      return qcow2_corrupt (layer, "refcount of cluster %#" PRIx64
                            " would drop below zero (it is 0)",
                            (first + i) << layer->cluster_bits);
    /* Only this reference left: its bytes can go now. */
    now = give_back && rc == 1;
    if (run > 0 && now != run_now) {
      if (run_now)
        punch (layer, (first + i - run) << layer->cluster_bits, run);
      r = add_pending (layer, (first + i - run) << layer->cluster_bits, run,
                       give_back && !run_now);
      if (r < 0)
        return r;
      run = 0;
    }
    run_now = now;
    run++;
  }
  if (run_now)
    punch (layer, (first + n - run) << layer->cluster_bits, run);
  return add_pending (layer, (first + n - run) << layer->cluster_bits, run,
                      give_back && !run_now);
}

bool
release_backlog_locked (const struct qcow2_layer *layer)
{
  return layer->pending != NULL && layer->pending->n >= RELEASE_BACKLOG_LIMIT;
}

void
release_commit_begin_locked (struct qcow2_layer *layer)
{
  layer->pending->committing = layer->pending->n;
  layer->pending->begun = true;
}

/* Apply the decrement of range R; punch the clusters it frees when R
 * asks for it. */
static int
commit_range (struct qcow2_layer *layer, const struct pending_range *r)
{
  const uint64_t first = r->host >> layer->cluster_bits;
  uint64_t run = 0;
  int e;

  e = refcount_adjust_locked (layer, r->host, r->n, -1);
  if (e < 0 || !r->punch)
    return e;
  for (uint64_t i = 0; i < r->n; i++) {
    uint64_t rc;

    e = refcount_get_locked (layer, (first + i) << layer->cluster_bits, &rc);
    if (e < 0)
      return e;
    if (rc == 0) {
      run++;
      continue;
    }
    punch (layer, (first + i - run) << layer->cluster_bits, run);
    run = 0;
  }
  punch (layer, (first + r->n - run) << layer->cluster_bits, run);
  return 0;
}

int
release_commit_locked (struct qcow2_layer *layer)
{
  struct release_list *p = layer->pending;
  size_t upto = p->begun ? p->committing : p->n, i;
  int r = 0;

  for (i = 0; i < upto; i++) {
    r = commit_range (layer, &p->v[i]);
    if (r < 0) {
      i++;                      /* reported; don't retry it forever */
      break;
    }
  }
  if (i > 0 && p->n > i)
    memmove (p->v, p->v + i, (p->n - i) * sizeof *p->v);
  p->n -= i;
  p->committing = 0;
  p->begun = false;
  return r;
}
