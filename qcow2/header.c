/* SPDX-License-Identifier: MIT */
/* The header of a writable layer: QEMU-compatible image locks, the
 * autoclear bits we don't maintain, and the dirty bit (set for
 * lazy_refcounts images while open, cleared on a clean close); open.c's
 * writable open puts them in place.  Writes of the incompatible-features
 * field go through one function and one mutex, so that the corrupt bit
 * (set by qcow2_corrupt without a layer lock) is never lost to a
 * concurrent update of the dirty bit.  Ordering: qcow2/ORDERING.md. */
#include <config.h>

#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* ---- Image locking -----------------------------------------------------
 *
 * QEMU (block/file-posix.c) takes OFD read locks on single bytes: byte
 * 100 + bit for each permission it holds, byte 200 + bit for each
 * permission it does not let others have.  A new user tests with a write
 * lock that nobody holds byte 200 + bit of the permissions it wants nor
 * byte 100 + bit of the permissions it denies.  Permission bits (QEMU's
 * BLK_PERM_*): */
#define PERM_CONSISTENT_READ 0x1
#define PERM_WRITE           0x2
#define PERM_WRITE_UNCHANGED 0x4
#define PERM_RESIZE          0x8
#define PERM_ALL             0xf
#define LOCK_PERM_BASE   100
#define LOCK_SHARED_BASE 200

static const char *
perm_name (unsigned bit)
{
  switch (bit) {
  case PERM_CONSISTENT_READ: return "consistent read";
  case PERM_WRITE: return "write";
  case PERM_WRITE_UNCHANGED: return "write unchanged";
  default: return "resize";
  }
}

static int
ofd_lock (int fd, short type, off_t start, int cmd, struct flock *out)
{
  struct flock fl = {
    .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1,
  };

  if (fcntl (fd, cmd, &fl) == -1)
    return -errno;
  if (out)
    *out = fl;
  return 0;
}

/* Check that no other user holds lock byte OFF of FD, which stands for
 * permission BIT (WHAT: "" for a permission held, "shared " for one
 * denied, as QEMU words the message).  -EBUSY (logged) when one does. */
static int
check_byte_free (struct qcow2_image *img, int fd, const char *name,
                 off_t off, const char *what, unsigned bit)
{
  struct flock fl = { .l_type = F_UNLCK };   /* filled by F_OFD_GETLK */
  int r;

  r = ofd_lock (fd, F_WRLCK, off, F_OFD_GETLK, &fl);
  if (r < 0)
    return r;
  if (fl.l_type != F_UNLCK) {
    if (img->open_error) {
      struct qcow2_open_error *e = img->open_error;

      e->kind = QCOW2_OPEN_ERROR_LOCK;
      e->err = EBUSY;
      e->depth = img->nr_layers;
      e->perm = perm_name (bit);
      e->shared = what[0] != '\0';
      snprintf (e->file, sizeof e->file, "%s", name);
    }
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: failed to get %s\"%s\" lock: "
               "is another process using the image?", name, what,
               perm_name (bit));
    return -EBUSY;
  }
  return 0;
}

/* A lock byte could not be taken (R): file systems without OFD locks
 * go on without locking, as QEMU does; anything else fails the open. */
static int
lock_refused (struct qcow2_image *img, const char *name, int r)
{
  if (r == -ENOTSUP || r == -ENOLCK || r == -EINVAL) {
    qcow2_log (img, QCOW2_LOG_WARNING, "%s: cannot lock the image (%s); "
               "going on without", name, strerror (-r));
    return 0;
  }
  return r;
}

/* Take the lock bytes of FD as QEMU would for a user holding PERM and
 * sharing SHARED, then check nobody conflicts.  NAME is for the message.
 * -EBUSY (logged) on conflict. */
static int
lock_file (struct qcow2_image *img, int fd, const char *name,
           unsigned perm, unsigned shared)
{
  unsigned bit;
  int r;

  for (bit = 1; bit & PERM_ALL; bit <<= 1) {
    unsigned i = __builtin_ctz (bit);

    if (perm & bit) {
      r = ofd_lock (fd, F_RDLCK, LOCK_PERM_BASE + i, F_OFD_SETLK, NULL);
      if (r < 0)
        return lock_refused (img, name, r);
    }
    if (!(shared & bit)) {
      r = ofd_lock (fd, F_RDLCK, LOCK_SHARED_BASE + i, F_OFD_SETLK, NULL);
      if (r < 0)
        return lock_refused (img, name, r);
    }
  }
  for (bit = 1; bit & PERM_ALL; bit <<= 1) {
    unsigned i = __builtin_ctz (bit);

    r = 0;
    if (perm & bit)
      r = check_byte_free (img, fd, name, LOCK_SHARED_BASE + i, "", bit);
    if (r == 0 && !(shared & bit))
      r = check_byte_free (img, fd, name, LOCK_PERM_BASE + i, "shared ",
                           bit);
    if (r < 0)
      return r;
  }
  return 0;
}

int
header_lock_layer (struct qcow2_layer *layer, bool writable)
{
  struct qcow2_image *img = layer->img;
  /* Like QEMU for a qcow2 file: a writer holds consistent read, write
   * and resize; every user (reader too) denies others write and resize,
   * since the metadata must not change under it. */
  unsigned perm = PERM_CONSISTENT_READ | (writable ? PERM_WRITE |
                                          PERM_RESIZE : 0);
  unsigned shared = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE);
  int r;

  /* A raw file, as qemu-nbd locks it: the served image holds consistent
   * read (and write when writable) and denies only resize, since the
   * export's size is fixed; a raw backing file holds consistent read
   * and denies nothing. */
  if (layer->format == LAYER_RAW) {
    perm = PERM_CONSISTENT_READ | (writable ? PERM_WRITE : 0);
    shared = layer->depth == 1 ? PERM_ALL & ~PERM_RESIZE : PERM_ALL;
  }

  /* Only real file descriptors can carry OFD locks. */
  if (img->io != &qcow2_posix_io || img->no_locks)
    return 0;
  r = lock_file (img, img->files[layer->file].fd,
                 img->files[layer->file].name, perm, shared);
  if (r == 0 && layer->data_file != layer->file)
    r = lock_file (img, img->files[layer->data_file].fd,
                   img->files[layer->data_file].name, perm, shared);
  if (r == 0)
    layer->image_locked = true;
  return r;
}

/* ---- Header fields -----------------------------------------------------*/

/* Serialises writes of the incompatible-features field (and of
 * layer->incompatible), including the one from qcow2_corrupt, which runs
 * with or without a layer lock held. */
static pthread_mutex_t incompat_lock = PTHREAD_MUTEX_INITIALIZER;

int
header_write_incompatible (struct qcow2_layer *layer, uint64_t set,
                           uint64_t clear)
{
  struct qcow2_image *img = layer->img;
  unsigned char b[8];
  uint64_t v;
  int r;

  if (layer->version < 3)
    return 0;                   /* v2 has no feature fields */
  {
    LOCK_FOR_SCOPE (&incompat_lock);
    v = (layer->incompatible | set) & ~clear;
    if (atomic_load (&img->corrupt))
      v |= QCOW2_INCOMPAT_CORRUPT;
    store_be64 (b, v);
    r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd, b,
                         sizeof b, QCOW2_HDR_INCOMPATIBLE_FEATURES);
    if (r < 0)
      return r;
    layer->incompatible = v;
  }
  return img->io->flush (img->io_opaque, img->files[layer->file].fd);
}

int
header_mark_dirty_locked (struct qcow2_layer *layer)
{
  bool dirty;

  if (!(layer->compatible & QCOW2_COMPAT_LAZY_REFCOUNTS))
    return 0;
  {
    /* incompatible is guarded by incompat_lock, not layer->lock:
     * qcow2_corrupt writes it from threads holding the layer lock only
     * shared. */
    LOCK_FOR_SCOPE (&incompat_lock);
    dirty = layer->incompatible & QCOW2_INCOMPAT_DIRTY;
  }
  if (dirty)
    return 0;
  return header_write_incompatible (layer, QCOW2_INCOMPAT_DIRTY, 0);
}

/* ---- Writable open and close ------------------------------------------*/

/* Autoclear bits: keep only those we maintain (data_file_raw, and
 * bitmaps: bitmap.c keeps them). */
int
header_clear_autoclear (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int r;

  if (layer->version >= 3 &&
      (layer->autoclear & ~(QCOW2_AUTOCLEAR_DATA_FILE_RAW |
                            QCOW2_AUTOCLEAR_BITMAPS))) {
    unsigned char b[8];
    uint64_t v = layer->autoclear & (QCOW2_AUTOCLEAR_DATA_FILE_RAW |
                                     QCOW2_AUTOCLEAR_BITMAPS);

    store_be64 (b, v);
    r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd, b,
                         sizeof b, QCOW2_HDR_AUTOCLEAR_FEATURES);
    if (r == 0)
      r = img->io->flush (img->io_opaque, img->files[layer->file].fd);
    if (r < 0) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: clearing autoclear feature "
                 "bits: %s", name, strerror (-r));
      return r;
    }
    layer->autoclear = v;
  }
  return 0;
}

int
header_close_writable (struct qcow2_layer *layer)
{
  int r = 0;

  if ((layer->incompatible & QCOW2_INCOMPAT_DIRTY) &&
      !atomic_load (&layer->img->corrupt))
    r = header_write_incompatible (layer, 0, QCOW2_INCOMPAT_DIRTY);
  /* The OFD locks go with the last descriptor of each file. */
  return r;
}
