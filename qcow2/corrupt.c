/* SPDX-License-Identifier: MIT */
/* The one path for problems found after open: qcow2_corrupt() reports
 * corruption found in metadata (a bad L1/L2 entry, a compressed stream
 * that does not decompress, ...) and marks the image corrupt, as QEMU
 * does; sync_layer() is ORDERING.md's "sync", and after a sync error it
 * puts the image into its failed state (qcow2/ORDERING.md, "A failed
 * sync"); qcow2_is_corrupt() and qcow2_sync_error() read those two
 * latches.  Messages go out through log.c; none prints: a server keeps
 * serving its other clients. */
#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/internal.h"

int
qcow2_corrupt (struct qcow2_layer *layer, const char *fmt, ...)
{
  struct qcow2_image *img = layer->img;
  const char *name = "?";
  char prefix[512];
  va_list ap;

  if (layer->file < img->nr_files && img->files[layer->file].name)
    name = img->files[layer->file].name;
  snprintf (prefix, sizeof prefix, "%s: corruption: ", name);

  va_start (ap, fmt);
  qcow2_vlog (img, QCOW2_LOG_ERROR, prefix, fmt, ap);
  va_end (ap);

  /* The in-memory flag stops our own writers; on a writable image the
   * corrupt bit (QCOW2_INCOMPAT_CORRUPT) also goes into the on-disk
   * header of the top layer, so no later opener writes to it either.
   * We may hold a layer lock here (see l2-cache.c): the header write takes
   * only its own mutex.  Only the first report writes. */
  if (!atomic_exchange (&img->corrupt, true) && img->writable &&
      layer->depth == 1 && layer->format == LAYER_QCOW2) {
    int r = header_write_incompatible (layer, QCOW2_INCOMPAT_CORRUPT, 0);
    if (r < 0)
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: cannot mark the image corrupt "
                 "on disk: %s", name, strerror (-r));
  }
  return -EIO;
}

/* A sync of LAYER's files failed with ERR: put the image into its failed
 * state (qcow2_sync_error), log why, and mark the image dirty on disk so
 * the next read-write open rebuilds its refcounts.  Returns ERR.  May be
 * called holding the layer lock (takes only header.c's mutex). */
static int
sync_failed (struct qcow2_layer *layer, int err)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int expected = 0, r;

  /* Only the first failure reports and marks; later callers (there are
   * none once sync_layer sees the latch, but two may race to it) just
   * return their error. */
  if (!atomic_compare_exchange_strong (&img->sync_error, &expected, err))
    return err;
  qcow2_log (img, QCOW2_LOG_ERROR, "%s: sync failed: %s; writes not yet "
             "durable may have been lost, and no later sync could prove "
             "otherwise: from now on every write and flush of this image "
             "fails with EIO (reads go on); restart to recover", name,
             strerror (-err));

  /* Metadata on disk is consistent but may leak clusters (refcounts
   * written, the L2 entries using them not): the dirty bit asks the
   * next read-write opener, ours or QEMU's, to rebuild the refcounts.
   * Its own sync will likely fail too; the write may still land. */
  if (!img->writable || layer->depth != 1 || layer->format != LAYER_QCOW2)
    return err;
  if (layer->version < 3) {
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: a version 2 image has no "
               "dirty bit: it may leak clusters ('qemu-img check -r "
               "leaks' frees them)", name);
    return err;
  }
  r = header_write_incompatible (layer, QCOW2_INCOMPAT_DIRTY, 0);
  if (r < 0)
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: marking the image dirty: %s "
               "(it may leak clusters: 'qemu-img check -r leaks' frees "
               "them)", name, strerror (-r));
  return err;
}

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

int
qcow2_sync_error (const struct qcow2_image *img)
{
  return atomic_load (&((struct qcow2_image *) img)->sync_error);
}

bool
qcow2_is_corrupt (const struct qcow2_image *img)
{
  return atomic_load (&((struct qcow2_image *) img)->corrupt);
}
