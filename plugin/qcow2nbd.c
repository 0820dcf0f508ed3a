/* SPDX-License-Identifier: MIT */
/* nbdkit-qcow2nbd-plugin: the qcow2 core behind nbdkit.  A thin
 * adapter: one image opened with qcow2_open when nbdkit is ready, shared
 * by every connection (the library is thread safe, so the thread model is
 * parallel), reads through qcow2_pread, writes through qcow2_pwrite,
 * WRITE_ZEROES through qcow2_zero, TRIM through qcow2_discard, FLUSH and
 * FUA through qcow2_flush (which covers every connection, so multi-conn
 * is honest), block status through qcow2_map.  The image is opened
 * read-write unless readonly=true (nbdkit -r alone still opens it
 * read-write but never writes).  Library messages go to
 * nbdkit_error/nbdkit_debug.
 *
 *   nbdkit qcow2nbd file=IMAGE [l2-cache-size=SIZE] [readonly=true] */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "qcow2/qcow2.h"

/* Extents asked of qcow2_map per round of a block status request. */
#define PLUGIN_EXTENTS 64

static char *filename;
static uint64_t l2_cache_size;
static bool ro_option;            /* readonly=true */
static struct qcow2_image *image;

static void
log_cb (void *opaque, enum qcow2_log_level level, const char *msg)
{
  switch (level) {
  case QCOW2_LOG_ERROR:
    nbdkit_error ("%s", msg);
    break;
  case QCOW2_LOG_WARNING:
    nbdkit_debug ("warning: %s", msg);
    break;
  case QCOW2_LOG_DEBUG:
    nbdkit_debug ("%s", msg);
    break;
  }
}

static void
qcow2nbd_unload (void)
{
  if (image)
    qcow2_close (image);
  free (filename);
}

static int
qcow2nbd_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    free (filename);
    filename = nbdkit_realpath (value);
    if (filename == NULL)
      return -1;
  }
  else if (strcmp (key, "readonly") == 0) {
    int r = nbdkit_parse_bool (value);

    if (r < 0)
      return -1;
    ro_option = r;
  }
  else if (strcmp (key, "l2-cache-size") == 0) {
    int64_t r = nbdkit_parse_size (value);

    if (r < 0)
      return -1;
    l2_cache_size = r;
  }
  else {
    nbdkit_error ("unknown parameter '%s'", key);
    return -1;
  }
  return 0;
}

static int
qcow2nbd_config_complete (void)
{
  if (filename == NULL) {
    nbdkit_error ("you must supply the file=<IMAGE> parameter");
    return -1;
  }
  return 0;
}

/* Open once nbdkit has finished forking, so the image's fds and the
 * library's state belong to the serving process. */
static int
qcow2nbd_get_ready (void)
{
  /* A trim that reaches a plugin is meant (nbdkit's nodiscard filter
   * stops it otherwise): give the space back, as qemu-nbd
   * --discard=unmap does. */
  struct qcow2_open_opts opts = {
    .writable = !ro_option, .l2_cache_size = l2_cache_size, .log = log_cb,
    .punch_discarded = true,
  };
  int r = qcow2_open (filename, &opts, &image);

  if (r < 0) {
    nbdkit_error ("%s: %s", filename, strerror (-r));
    return -1;
  }
  return 0;
}

static void *
qcow2nbd_open (int readonly)
{
  /* Every connection shares the one image; any non-NULL handle will do. */
  return image;
}

static int64_t
qcow2nbd_get_size (void *handle)
{
  return qcow2_virtual_size (handle);
}

static int
qcow2nbd_can_write (void *handle)
{
  return !ro_option;
}

static int
qcow2nbd_can_flush (void *handle)
{
  return !ro_option;
}

/* qcow2_flush after the write: the data and the metadata reaching it. */
static int
qcow2nbd_can_fua (void *handle)
{
  return ro_option ? NBDKIT_FUA_NONE : NBDKIT_FUA_NATIVE;
}

/* Zero flags, preallocated zero clusters and subcluster bits: zeroing
 * is native, and fast where it needs no data written (qcow2_zero fails
 * with ENOTSUP otherwise). */
static int
qcow2nbd_can_zero (void *handle)
{
  return !ro_option;
}

static int
qcow2nbd_can_fast_zero (void *handle)
{
  return !ro_option;
}

static int
qcow2nbd_can_trim (void *handle)
{
  return !ro_option;
}

static int
qcow2nbd_can_multi_conn (void *handle)
{
  return 1;
}

static int
qcow2nbd_can_extents (void *handle)
{
  return 1;
}

static int
qcow2nbd_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  int r = qcow2_pread (handle, buf, count, offset);

  if (r < 0) {
    nbdkit_set_error (-r);
    nbdkit_error ("read [%" PRIu64 ", +%" PRIu32 "): %s",
                  offset, count, strerror (-r));
    return -1;
  }
  return 0;
}

/* Report a failed call: its errno to the client, a message to the log
 * (but not for a FAST_ZERO refusal, which is an answer, not an error). */
static int
failed (int r, const char *what, uint32_t count, uint64_t offset)
{
  nbdkit_set_error (-r);
  if (r != -ENOTSUP)
    nbdkit_error ("%s [%" PRIu64 ", +%" PRIu32 "): %s", what, offset, count,
                  strerror (-r));
  return -1;
}

static int
after_write (void *handle, int r, const char *what, uint32_t count,
             uint64_t offset, uint32_t flags)
{
  if (r == 0 && (flags & NBDKIT_FLAG_FUA))
    r = qcow2_flush (handle);
  return r < 0 ? failed (r, what, count, offset) : 0;
}

static int
qcow2nbd_pwrite (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  int r = qcow2_pwrite (handle, buf, count, offset, false);

  return after_write (handle, r, "write", count, offset, flags);
}

static int
qcow2nbd_zero (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  unsigned qflags = QCOW2_WAIT;
  int r;

  if (flags & NBDKIT_FLAG_MAY_TRIM)
    qflags |= QCOW2_MAY_UNMAP;
  if (flags & NBDKIT_FLAG_FAST_ZERO)
    qflags |= QCOW2_FAST_ZERO;
  r = qcow2_zero (handle, offset, count, qflags);
  return after_write (handle, r, "zero", count, offset, flags);
}

static int
qcow2nbd_trim (void *handle, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  int r = qcow2_discard (handle, offset, count, QCOW2_WAIT);

  return after_write (handle, r, "trim", count, offset, flags);
}

static int
qcow2nbd_flush (void *handle, uint32_t flags)
{
  int r = qcow2_flush (handle);

  return r < 0 ? failed (r, "flush", 0, 0) : 0;
}

static int
qcow2nbd_extents (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents)
{
  struct qcow2_extent ext[PLUGIN_EXTENTS];
  uint64_t end = offset + count;

  while (offset < end) {
    size_t n;
    int r = qcow2_map (handle, offset, end - offset, ext, PLUGIN_EXTENTS,
                       &n);

    if (r < 0) {
      nbdkit_set_error (-r);
      nbdkit_error ("block status [%" PRIu64 ", +%" PRIu64 "): %s",
                    offset, end - offset, strerror (-r));
      return -1;
    }
    for (size_t i = 0; i < n; i++) {
      uint32_t type = 0;

      if (ext[i].type == QCOW2_EXTENT_ZERO ||
          ext[i].type == QCOW2_EXTENT_UNALLOCATED)
        type = NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO;
      if (nbdkit_add_extent (extents, ext[i].offset, ext[i].length,
                             type) < 0)
        return -1;
      offset += ext[i].length;
    }
    /* One answer is enough when the client asked for one. */
    if (flags & NBDKIT_FLAG_REQ_ONE)
      break;
  }
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "qcow2nbd",
  .longname = "qcow2-nbd QCOW2 plugin",
  .version = PACKAGE_VERSION,
  .description = "Export a QCOW2 image (and its backing chain)",
  .config_help =
    "file=<IMAGE>        (required) The qcow2 image to serve.\n"
    "l2-cache-size=<SIZE>  L2 cache per qcow2 layer (default 4M).\n"
    "readonly=true       Open the image read-only.",
  .magic_config_key = "file",
  .unload = qcow2nbd_unload,
  .config = qcow2nbd_config,
  .config_complete = qcow2nbd_config_complete,
  .get_ready = qcow2nbd_get_ready,
  .open = qcow2nbd_open,
  .get_size = qcow2nbd_get_size,
  .can_write = qcow2nbd_can_write,
  .can_flush = qcow2nbd_can_flush,
  .can_fua = qcow2nbd_can_fua,
  .can_zero = qcow2nbd_can_zero,
  .can_fast_zero = qcow2nbd_can_fast_zero,
  .can_trim = qcow2nbd_can_trim,
  .can_multi_conn = qcow2nbd_can_multi_conn,
  .can_extents = qcow2nbd_can_extents,
  .pread = qcow2nbd_pread,
  .pwrite = qcow2nbd_pwrite,
  .zero = qcow2nbd_zero,
  .trim = qcow2nbd_trim,
  .flush = qcow2nbd_flush,
  .extents = qcow2nbd_extents,
  .errno_is_preserved = 0,
};

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL
NBDKIT_REGISTER_PLUGIN (plugin)
