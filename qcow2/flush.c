/* SPDX-License-Identifier: MIT */
/* qcow2_flush: make every write that has ended, on any thread, durable
 * together with the metadata that reaches it, in the order
 * qcow2/ORDERING.md gives: refcounts, sync (the data of ended writes,
 * which completed before their write_end, goes with it), dirty L2 slices,
 * sync, and only then the deferred refcount decrements, so a cluster
 * freed by a discard or a copy-on-write is never reused before the L2
 * change that freed it is on disk.
 *
 * The whole sequence holds the top layer's lock exclusively: nothing can
 * allocate, link or release between the steps, which is what makes step
 * 5 apply exactly the decrements whose L2 changes step 3 wrote.
 * Concurrent flushes simply run one after the other; the second one finds
 * little to write.  Backing layers are never written.
 *
 * Two variants serve the library itself: the last flush of qcow2_close,
 * which also writes out the decrements the flush committed, and the
 * flush a long backlog of deferred decrements triggers (release.c). */

#include <config.h>

#include <errno.h>
#include <string.h>

#include "common/cleanup.h"
#include "qcow2/internal.h"

/* ORDERING.md's "sync": an fsync covers only the file it is given, and
 * the data of a write may sit in the external data file while the
 * metadata naming it sits in the metadata file.  After one sync failed,
 * none is even tried (ORDERING.md, "A failed sync"): whatever it said,
 * it could not prove durable what the failed one may have dropped. */
int
sync_layer (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  int r;

  if (atomic_load (&img->sync_error))
    return -EIO;
  r = img->io->flush (img->io_opaque, img->files[layer->file].fd);
  if (r == 0 && layer->data_file != layer->file)
    r = img->io->flush (img->io_opaque, img->files[layer->data_file].fd);
  return r < 0 ? sync_failed (layer, r) : 0;
}

/* Steps 1-5 of ORDERING.md, "FLUSH / FUA". */
static int
flush_locked (struct qcow2_layer *layer)
{
  int r;

  if (qcow2_sync_error (layer->img))
    return -EIO;                /* nothing written after a failed sync */
  r = refcount_writeback_locked (layer);      /* 1 */
  if (r == 0)
    r = sync_layer (layer);                   /* 2 */
  if (r == 0)
    r = l2_cache_writeback_locked (layer);    /* 3 */
  if (r == 0)
    r = sync_layer (layer);                   /* 4 */
  if (r < 0)
    return r;
  return release_commit_locked (layer);       /* 5 */
}

static bool
flushable (const struct qcow2_image *img)
{
  return img->writable && img->layers[0]->format == LAYER_QCOW2;
}

int
qcow2_flush (struct qcow2_image *img)
{
  struct qcow2_layer *layer = img->layers[0];

  if (img->writable && layer->format == LAYER_RAW)
    return sync_layer (layer);       /* no metadata: only the data */
  if (!flushable (img))
    return 0;
  WRLOCK_FOR_SCOPE (&layer->lock);
  return flush_locked (layer);
}

int
flush_final (struct qcow2_image *img)
{
  struct qcow2_layer *layer = img->layers[0];
  int r;

  if (!flushable (img))
    return 0;
  WRLOCK_FOR_SCOPE (&layer->lock);
  r = flush_locked (layer);
  /* Step 5 applied the deferred decrements in the refcount cache only;
   * a close that left them there would leak every cluster they free
   * (ORDERING.md, "Clean close"). */
  if (r == 0)
    r = refcount_writeback_locked (layer);
  if (r == 0)
    r = sync_layer (layer);
  return r;
}

void
flush_backlog (struct qcow2_image *img)
{
  struct qcow2_layer *layer = img->layers[0];
  int r;

  if (!flushable (img))
    return;
  WRLOCK_FOR_SCOPE (&layer->lock);
  if (!release_backlog_locked (layer))
    return;
  qcow2_log (img, QCOW2_LOG_DEBUG, "%s: many freed clusters wait for a "
             "flush: flushing to commit them", img->files[layer->file].name);
  r = flush_locked (layer);
  if (r < 0)
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: flush to commit freed clusters: "
               "%s", img->files[layer->file].name, strerror (-r));
}
