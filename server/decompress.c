/* SPDX-License-Identifier: MIT */
/* Compressed clusters of READ requests: decompression spread over the
 * workers, and a small per-worker cache of decompressed clusters.
 *
 * Decompressing a 64 KiB cluster costs tens of microseconds, far more
 * than anything else a read does, and one connection lives on one
 * worker.  So a worker whose read of a compressed stream completes does
 * not decompress it on the spot: it queues a job (jobs.c) that any
 * worker may do.
 *
 * Only as many bytes as the read needs are decoded (a 4 KiB read at
 * offset 8 KiB of a cluster stops after 12 KiB), unless the cluster was
 * asked for recently: then all of it is decoded and cached, so a
 * sequential reader decodes each cluster about once.
 *
 * The cache is keyed by layer, host offset of the compressed stream and
 * the layer's stream generation (qcow2_extent.stream_gen): compressed
 * writes (the compress filter) may put a new stream where a freed one
 * was, but always under a new generation, so an entry never answers
 * for a stream other than its own. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cleanup.h"
#include "qcow2/qcow2.h"
#include "server/server.h"
#include "server/transmission.h"

/* Decompressed bytes a worker caches (at least one cluster whatever its
 * size) in at most DCACHE_SLOTS entries.  Entries without a buffer only
 * remember that a cluster was asked for. */
#define DCACHE_BYTES (2u << 20)

/* ---- cache ------------------------------------------------------------ */

static struct dcache_entry *
dcache_find (struct worker *w, const struct qcow2_extent *x)
{
  for (unsigned i = 0; i < w->dcache.n; i++) {
    struct dcache_entry *e = &w->dcache.e[i];
    if (e->layer == x->layer && e->host_offset == x->host_offset
        && e->stream_gen == x->stream_gen) {
      e->stamp = ++w->dcache.clock;
      return e;
    }
  }
  return NULL;
}

static void
dcache_evict (struct worker *w, unsigned i)
{
  struct dcache_entry *e = &w->dcache.e[i];

  if (e->buf) {
    w->dcache.bytes -= e->size;
    bufpool_put (w, e->buf, e->cls);
  }
  w->dcache.e[i] = w->dcache.e[--w->dcache.n];
}

/* Remember the cluster of compressed extent X; with BUF (a pool buffer
 * of class CLS holding the whole cluster of SIZE bytes), keep its
 * contents too.  The cache owns BUF from here on. */
static void
dcache_insert (struct worker *w, const struct qcow2_extent *x, void *buf,
               unsigned cls, uint32_t size)
{
  struct dcache_entry *e = dcache_find (w, x);

  if (e == NULL) {
    if (w->dcache.n == DCACHE_SLOTS) {
      unsigned old = 0;
      for (unsigned i = 1; i < w->dcache.n; i++)
        if (w->dcache.e[i].stamp < w->dcache.e[old].stamp)
          old = i;
      dcache_evict (w, old);
    }
    e = &w->dcache.e[w->dcache.n++];
    *e = (struct dcache_entry) { .layer = x->layer,
                                 .host_offset = x->host_offset,
                                 .stream_gen = x->stream_gen,
                                 .stamp = ++w->dcache.clock };
  }
  if (buf == NULL)
    return;
  if (e->buf) {                 /* raced with another full decode */
    bufpool_put (w, buf, cls);
    return;
  }
  /* Make room, oldest first, but never evict the new entry itself. */
  while (w->dcache.bytes + size > DCACHE_BYTES) {
    unsigned old = w->dcache.n;
    for (unsigned i = 0; i < w->dcache.n; i++)
      if (w->dcache.e[i].buf && &w->dcache.e[i] != e
          && (old == w->dcache.n
              || w->dcache.e[i].stamp < w->dcache.e[old].stamp))
        old = i;
    if (old == w->dcache.n)
      break;
    w->dcache.bytes -= w->dcache.e[old].size;
    bufpool_put (w, w->dcache.e[old].buf, w->dcache.e[old].cls);
    w->dcache.e[old].buf = NULL;
  }
  e->buf = buf;
  e->cls = cls;
  e->size = size;
  w->dcache.bytes += size;
}

bool
decompress_cached (struct worker *w, const struct qcow2_extent *e, char *dst)
{
  struct dcache_entry *ce = dcache_find (w, e);

  if (ce == NULL || ce->buf == NULL)
    return false;
  memcpy (dst, (char *) ce->buf + e->cluster_offset, e->length);
  return true;
}

void
decompress_cache_free (struct worker *w)
{
  while (w->dcache.n)
    dcache_evict (w, w->dcache.n - 1);
}

/* ---- jobs ------------------------------------------------------------- */

void
decompress_finish (struct piece *pc)
{
  struct djob *j = &pc->job;
  struct request *req = pc->req;
  struct worker *w = req->cs->w;
  const struct qcow2_extent *e = pc->ext;

  if (j->result < 0)
    session_set_error (req, -j->result, "cannot decompress cluster at offset %"
                       PRIu64 ": %s", e->offset, strerror (-j->result));
  else if (j->out != pc->dst)
    memcpy (pc->dst, (char *) j->out + e->cluster_offset, e->length);

  /* Remember the cluster, with its bytes if we have all of them, so the
   * next read of it decodes it whole (or finds it here). */
  bool whole = j->out != pc->dst
    && j->out_len == qcow2_layer_cluster_size (e->layer);
  if (j->result == 0)
    dcache_insert (w, e, whole ? j->out : NULL,
                   j->out_cls, j->out_len);
  if (j->out != pc->dst && (j->result < 0 || !whole))
    bufpool_put (w, j->out, j->out_cls);
  j->out = NULL;
  req->cs->ops--;               /* taken by decompress_submit */
}

static void
job_run (struct djob *j)
{
  j->result = qcow2_decompress_part (j->layer, j->in, j->in_len, j->out,
                                     j->out_len);
}

int
decompress_submit (struct piece *pc, void (*finish) (struct djob *j))
{
  struct request *req = pc->req;
  struct worker *w = req->cs->w;
  const struct qcow2_extent *e = pc->ext;
  struct djob *j = &pc->job;
  uint32_t csize = qcow2_layer_cluster_size (e->layer);
  struct dcache_entry *ce;

  if (csize == 0 || e->cluster_offset > csize
      || e->length > csize - e->cluster_offset) {
    session_set_error (req, EIO, "bad compressed extent at offset %" PRIu64,
                       e->offset);
    return -1;
  }

  *j = (struct djob) { .owner = w, .layer = e->layer, .in = pc->scratch,
                       .in_len = pc->len };
  /* Decoded by an earlier job while this one's stream was read? */
  if (decompress_cached (w, e, pc->dst))
    return 0;
  ce = dcache_find (w, e);
  if (ce == NULL && e->cluster_offset == 0) {
    /* First sight of the cluster, and the piece is its start: decode
     * straight into the read buffer, no further than needed. */
    j->out = pc->dst;
    j->out_len = e->length;
  }
  else {
    j->out_len = ce ? csize : e->cluster_offset + e->length;
    j->out = bufpool_get (w, csize, &j->out_cls);
    if (j->out == NULL) {
      session_set_error (req, ENOMEM, "out of memory decompressing");
      return -1;
    }
  }

  j->run = job_run;
  j->finish = finish;
  req->cs->ops++;
  jobs_submit (w, j);
  return 1;
}
