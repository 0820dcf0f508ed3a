/* SPDX-License-Identifier: MIT */
/* Opening an image: open the file of every layer, have its header,
 * header extensions and the placement of its tables checked
 * (header-parse.c), load its L1 table, and walk down the backing chain;
 * then the writable open of the top layer.  Everything here treats the
 * file as hostile, and a failure logs one line saying why before
 * returning -EINVAL (not a valid image), -ENOTSUP (valid, but uses
 * something we don't implement) or the host's -errno.
 *
 * Per-entry checks of L1/L2 entries are not done here: like QEMU we load
 * the L1 table as it is and let map.c report a bad entry as corruption
 * (EIO) for the range it covers, so one bad table doesn't make the rest of
 * the disk unreadable.
 *
 * Backing files: the name is a file name, never a URL or JSON; relative
 * names are resolved against the directory of the image that names them;
 * the format comes only from the backing format extension.  We never
 * probe: an image without the extension is refused with a message saying
 * how to add it (qemu-img rebase -u -F), because probing lets a guest who
 * writes a qcow2 header into a raw backing file read any host file.  The
 * top image's format is the caller's (qcow2_open_opts.format); a caller
 * that probes does so itself, and guards what it probed.
 *
 * The top image may be raw (written in place, raw.c), may be opened
 * without its backing file, and may be served through a window; the
 * window is applied by the public calls (qcow2_map, qcow2_write_begin,
 * qcow2_zero, qcow2_discard), never inside the library. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Open-time refusals and names from the file, in messages (log.c). */
#define fail qcow2_fail
#define printable qcow2_printable

/* One counter for the process: a reopened image whose layer lands at a
 * freed layer's address must not match the servers' caches of
 * decompressed clusters. */
uint64_t
stream_gen_next (void)
{
  static _Atomic uint64_t next = 1;

  return atomic_fetch_add (&next, 1);
}

/* Resolve NAME, found in the image at REFERRER, as QEMU does: absolute
 * names are used as-is, relative ones against REFERRER's directory. */
char *
open_resolve_name (const char *referrer, const char *name)
{
  const char *slash = strrchr (referrer, '/');
  size_t dirlen, namelen = strlen (name);
  char *r;

  if (name[0] == '/' || slash == NULL)
    return strdup (name);
  dirlen = slash - referrer + 1;
  r = malloc (dirlen + namelen + 1);
  if (!r)
    return NULL;
  memcpy (r, referrer, dirlen);
  memcpy (r + dirlen, name, namelen + 1);
  return r;
}

/* Open PATH through the io ops and append it to the file table; set
 * *INDEX.  WHAT says what the file is and REFERRER (NULL for the top
 * image) which image named it, for the message. */
static int
add_file (struct qcow2_image *img, const char *path, bool writable,
          const char *what, const char *referrer, unsigned *index)
{
  struct qcow2_file *files;
  char pbuf[256], rbuf[256];
  uint64_t size;
  int fd, r;

  files = realloc (img->files, (img->nr_files + 1) * sizeof *files);
  if (!files)
    return fail (img, -ENOMEM, "out of memory");
  img->files = files;

  fd = img->io->open (img->io_opaque, path, writable);
  if (fd < 0 && img->open_error) {
    struct qcow2_open_error *e = img->open_error;

    e->kind = QCOW2_OPEN_ERROR_OPEN;
    e->err = -fd;
    e->depth = img->nr_layers;
    snprintf (e->file, sizeof e->file, "%s", path);
  }
  if (fd < 0)
    return fail (img, fd, "%s%scannot open %s '%s': %s",
                 referrer ? printable (referrer, rbuf, sizeof rbuf) : "",
                 referrer ? ": " : "", what,
                 printable (path, pbuf, sizeof pbuf), strerror (-fd));
  r = img->io->get_size (img->io_opaque, fd, &size);
  if (r < 0) {
    img->io->close (img->io_opaque, fd);
    return fail (img, r, "cannot get the size of %s '%s': %s", what,
                 printable (path, pbuf, sizeof pbuf), strerror (-r));
  }
  files[img->nr_files].name = strdup (path);
  if (!files[img->nr_files].name) {
    img->io->close (img->io_opaque, fd);
    return fail (img, -ENOMEM, "out of memory");
  }
  files[img->nr_files].fd = fd;
  files[img->nr_files].writable = writable;
  files[img->nr_files].size = size;
  *index = img->nr_files++;
  return 0;
}

/* Allocate a layer and append it to img->layers, so that qcow2_close
 * frees it whatever happens next. */
static int
new_layer (struct qcow2_image *img, unsigned depth,
           struct qcow2_layer **layerp)
{
  struct qcow2_layer **layers, *layer;

  layers = realloc (img->layers, (img->nr_layers + 1) * sizeof *layers);
  if (!layers)
    return fail (img, -ENOMEM, "out of memory");
  img->layers = layers;
  layer = calloc (1, sizeof *layer);
  if (!layer)
    return fail (img, -ENOMEM, "out of memory");
  if (pthread_rwlock_init (&layer->lock, NULL) != 0) {
    free (layer);
    return fail (img, -ENOMEM, "cannot create a lock");
  }
  layer->img = img;
  layer->depth = depth;
  layer->stream_gen = stream_gen_next ();
  img->layers[img->nr_layers++] = layer;
  *layerp = layer;
  return 0;
}

/* Load L's L1 table (L1_BYTES long) whole, in host byte order. */
static int
load_l1 (struct qcow2_image *img, struct qcow2_layer *l, const char *name,
         uint64_t l1_bytes)
{
  const int fd = img->files[l->file].fd;
  int r;

  l->l1 = malloc (l1_bytes ? l1_bytes : 1);
  if (!l->l1)
    return fail (img, -ENOMEM, "out of memory");
  if (l1_bytes) {
    r = img->io->pread (img->io_opaque, fd, l->l1, l1_bytes,
                        l->l1_table_offset);
    if (r < 0)
      return fail (img, r, "%s: reading the L1 table: %s", name,
                   strerror (-r));
    for (size_t i = 0; i < l->l1_size; i++)
      l->l1[i] = load_be64 (&l->l1[i]);
  }
  return 0;
}

/* Open the external data file L names, like a backing file. */
static int
open_data_file (struct qcow2_image *img, struct qcow2_layer *l,
                const char *name, bool writable)
{
  int r;

  if (l->data_file_name) {
    CLEANUP_FREE char *path = open_resolve_name (name, l->data_file_name);

    if (!path)
      return fail (img, -ENOMEM, "out of memory");
    r = add_file (img, path, writable, "external data file", name,
                  &l->data_file);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Parse and validate the qcow2 header of layer L (its file is already
 * open), load its L1 table and create its L2 cache. */
static int
open_qcow2_layer (struct qcow2_image *img, struct qcow2_layer *l,
                  bool writable, uint64_t cache_size)
{
  /* Copies, not a pointer into img->files: add_file reallocates it. */
  const char *name = img->files[l->file].name;
  uint64_t l1_bytes = 0;
  int r;

  r = header_parse (img, l, name, writable, &l1_bytes);
  if (r == 0)
    r = load_l1 (img, l, name, l1_bytes);
  if (r == 0)
    r = open_data_file (img, l, name, writable);
  if (r < 0)
    return r;

  r = refcount_detect_metadata_prealloc (l);
  if (r < 0)
    return fail (img, r, "%s: reading refcounts: %s", name, strerror (-r));

  r = l2_cache_create (l, cache_size);
  if (r < 0)
    return fail (img, r, "%s: cannot create the L2 cache: %s", name,
                 strerror (-r));
  r = inflight_init (l);
  if (r < 0)
    return fail (img, r, "%s: cannot create the in-flight records: %s",
                 name, strerror (-r));
  return 0;
}

/* The window of the disk the caller serves, checked as QEMU's raw
 * driver checks its offset and size options (and worded alike). */
static int
set_window (struct qcow2_image *img, const struct qcow2_open_opts *opts)
{
  uint64_t disk = img->layers[0]->size;

  if (opts->offset > disk)
    return fail (img, -EINVAL, "Offset (%" PRIu64 ") cannot be greater "
                 "than size of the containing file (%" PRIu64 ")",
                 opts->offset, disk);
  if (opts->has_size && disk - opts->offset < opts->size)
    return fail (img, -EINVAL, "The sum of offset (%" PRIu64 ") and size "
                 "(%" PRIu64 ") has to be smaller or equal to the  actual "
                 "size of the containing file (%" PRIu64 ")",
                 opts->offset, opts->size, disk);
  if (opts->has_size && !IS_ALIGNED (opts->size, 512))
    return fail (img, -EINVAL, "Specified size is not multiple of 512");
  img->window = opts->offset;
  img->view_size = opts->has_size ? opts->size : disk - opts->offset;
  return 0;
}

/* A new image with the options of OPTS (not NULL), no files or layers
 * yet.  NULL when out of memory. */
static struct qcow2_image *
new_image (const struct qcow2_open_opts *opts)
{
  struct qcow2_image *img = calloc (1, sizeof *img);

  if (!img)
    return NULL;
  img->io = opts->io ? opts->io : &qcow2_posix_io;
  img->io_opaque = opts->io_opaque;
  img->log = opts->log;
  img->log_opaque = opts->log_opaque;
  img->writable = opts->writable;
  img->punch_discarded = opts->punch_discarded;
  img->wakeup = opts->wakeup;
  img->wakeup_opaque = opts->wakeup_opaque;
  img->open_error = opts->error;
  img->no_locks = opts->no_locks;
  if (opts->error)
    memset (opts->error, 0, sizeof *opts->error);
  atomic_init (&img->corrupt, false);
  return img;
}

/* The writable open of a qcow2 top layer: image lock, allocator,
 * dirty-image repair, autoclear bits, dirty bit, bitmaps in use, in that
 * order (ORDERING.md). */
static int
open_writable_steps (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const char *name = img->files[layer->file].name;
  int r;

  r = header_lock_layer (layer, true);
  if (r < 0)
    return r;
  r = refcount_init (layer, 0);
  if (r == 0)
    r = release_init (layer);
  if (r < 0) {
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: reading the refcount table: %s",
               name, strerror (-r));
    return r;
  }

  if (layer->incompatible & QCOW2_INCOMPAT_DIRTY) {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = repair_dirty_locked (layer);
    free (layer->repair_counts);
    layer->repair_counts = NULL;
    layer->repair_nr = 0;
    if (r < 0) {
      qcow2_log (img, QCOW2_LOG_ERROR, "%s: repairing the dirty image "
                 "failed: %s", name, strerror (-r));
      return r;
    }
  }

  r = header_clear_autoclear (layer);
  if (r < 0)
    return r;

  /* lazy_refcounts: dirty while open (ORDERING.md). */
  {
    WRLOCK_FOR_SCOPE (&layer->lock);
    r = header_mark_dirty_locked (layer);
  }
  if (r < 0) {
    qcow2_log (img, QCOW2_LOG_ERROR, "%s: setting the dirty bit: %s",
               name, strerror (-r));
    return r;
  }
  /* Persistent bitmaps: in use on disk while open (ORDERING.md). */
  return bitmap_open_writable (layer);
}

static int
open_writable (struct qcow2_layer *layer)
{
  int r = open_writable_steps (layer);

  /* Without its allocator, a layer that failed to open is never flushed
   * or marked clean by qcow2_close. */
  if (r < 0) {
    release_destroy (layer);
    refcount_destroy (layer);
  }
  return r;
}

/* Open layer L (at DEPTH) from the file CUR as FORMAT: the file, the
 * header and tables (qcow2), the snapshot asked for (top layer), and the
 * image locks as QEMU takes them; the writable top layer also gets its
 * allocator, autoclear bits and dirty-bit repair. */
static int
open_layer (struct qcow2_image *img, struct qcow2_layer *l, const char *cur,
            enum layer_format format, const char *prev_name,
            const struct qcow2_open_opts *opts, uint64_t cache_size)
{
  const unsigned depth = l->depth;
  bool writable = opts->writable && depth == 1;
  int r;

  r = add_file (img, cur, writable, depth == 1 ? "image" : "backing file",
                prev_name, &l->file);
  if (r < 0)
    return r;
  l->data_file = l->file;

  if (format == LAYER_RAW) {
    l->format = LAYER_RAW;
    /* As QEMU sees a file: whole sectors, the tail of the last one
     * past the end of the file reading as zeros (io ops' pread). */
    l->size = ROUND_UP (img->files[l->file].size, 512);
    return header_lock_layer (l, writable);
  }
  r = open_qcow2_layer (img, l, writable, cache_size);
  if (r == 0 && depth == 1)
    r = snapshot_select (l, opts);
  if (r < 0)
    return r;
  return writable ? open_writable (l) : header_lock_layer (l, false);
}

/* Where the chain goes after layer L, opened from CUR (not the bottom:
 * it names a backing file): check the depth (MAX_DEPTH backing files at
 * most) and the backing format, resolve the name into *NEXTP (the
 * caller's to free) and its format into *FORMAT, and refuse a simple
 * loop. */
static int
chain_next (struct qcow2_image *img, struct qcow2_layer *l, const char *cur,
            unsigned max_depth, char **nextp, enum layer_format *format)
{
  CLEANUP_FREE char *next = NULL;
  char pbuf[256], nbuf[256];

  if (l->depth > max_depth)
    return fail (img, -EINVAL, "%s: backing chain deeper than %u backing "
                 "files (a loop?)", printable (cur, pbuf, sizeof pbuf),
                 max_depth);
  if (!l->backing_format)
    return fail (img, -ENOTSUP, "%s: backing file '%s' has no backing "
                 "format, and probing it is unsafe; set one with 'qemu-img "
                 "rebase -u -b NAME -F raw|qcow2 IMAGE'",
                 printable (cur, pbuf, sizeof pbuf),
                 printable (l->backing_name, nbuf, sizeof nbuf));
  if (strcmp (l->backing_format, "qcow2") == 0)
    *format = LAYER_QCOW2;
  else if (strcmp (l->backing_format, "raw") == 0)
    *format = LAYER_RAW;
  else
    return fail (img, -ENOTSUP, "%s: unsupported backing format '%s' (only "
                 "qcow2 and raw)", printable (cur, pbuf, sizeof pbuf),
                 printable (l->backing_format, nbuf, sizeof nbuf));
  next = open_resolve_name (cur, l->backing_name);
  if (!next)
    return fail (img, -ENOMEM, "out of memory");
  /* Catch the simple loops (a -> b -> a with consistent names) with a
   * clear message; the depth cap catches the rest. */
  for (size_t i = 0; i < img->nr_files; i++) {
    if (strcmp (img->files[i].name, next) == 0)
      return fail (img, -EINVAL, "%s: backing file loop: '%s' is already "
                   "in the chain",
                   printable (img->files[l->file].name, pbuf, sizeof pbuf),
                   printable (next, nbuf, sizeof nbuf));
  }
  *nextp = next;
  next = NULL;
  return 0;
}

/* An image qcow2_open has not handed on yet: closing it frees every
 * layer and file opened so far, and a half-built layer too (new_layer
 * puts it in the image before anything else).  The caller's error
 * struct is not written after qcow2_open returned. */
static void
close_half_open (struct qcow2_image **imgp)
{
  if (*imgp) {
    (*imgp)->open_error = NULL;
    qcow2_close (*imgp);
  }
}
#define CLEANUP_HALF_OPEN __attribute__ ((cleanup (close_half_open)))

int
qcow2_open (const char *path, const struct qcow2_open_opts *opts,
            struct qcow2_image **imgp)
{
  static const struct qcow2_open_opts defaults = { 0 };
  CLEANUP_HALF_OPEN struct qcow2_image *img = NULL;
  struct qcow2_layer *prev = NULL;
  CLEANUP_FREE char *owned_path = NULL;
  enum layer_format format;
  const char *cur = path;
  uint64_t cache_size;
  unsigned max_depth, depth;
  int r;

  *imgp = NULL;
  if (!opts)
    opts = &defaults;
  img = new_image (opts);
  if (!img)
    return -ENOMEM;
  format = opts->format == QCOW2_FORMAT_RAW ? LAYER_RAW : LAYER_QCOW2;

  cache_size = opts->l2_cache_size ? opts->l2_cache_size
    : QCOW2_DEFAULT_L2_CACHE_SIZE;
  if (cache_size < QCOW2_MIN_L2_CACHE_SIZE)
    cache_size = QCOW2_MIN_L2_CACHE_SIZE;
  /* max_backing_depth counts backing files below the top image. */
  max_depth = opts->max_backing_depth ? opts->max_backing_depth
    : QCOW2_DEFAULT_MAX_BACKING_DEPTH;

  for (depth = 1;; depth++) {
    struct qcow2_layer *l = NULL;
    /* Names are separate strings: they outlive reallocations of
     * img->files. */
    const char *prev_name = prev ? img->files[prev->file].name : NULL;
    char *next = NULL;

    r = new_layer (img, depth, &l);
    if (r < 0)
      return r;
    if (prev)
      prev->backing = l;
    prev = l;

    r = open_layer (img, l, cur, format, prev_name, opts, cache_size);
    if (r < 0)
      return r;
    if (l->format == LAYER_RAW || !l->backing_name ||
        (depth == 1 && opts->no_backing))
      break;
    r = chain_next (img, l, cur, max_depth, &next, &format);
    if (r < 0)
      return r;
    free (owned_path);     /* cur may point here: resolved first */
    cur = owned_path = next;
  }

  r = set_window (img, opts);
  if (r < 0)
    return r;
  img->open_error = NULL;
  *imgp = img;
  img = NULL;
  return 0;
}

void
qcow2_close (struct qcow2_image *img)
{
  size_t i;

  if (!img)
    return;
  /* A clean close leaves a clean image: bitmaps written back, then
   * everything durable, then the dirty bit cleared (ORDERING.md).  After
   * a failed flush the image stays dirty, to be repaired at the next
   * writable open; after a failed sync nothing is written at all (the
   * bitmaps stay in use, so inconsistent). */
  if (img->writable && img->nr_layers > 0 &&
      img->layers[0]->refcount_cache != NULL &&
      !atomic_load (&img->corrupt) && !qcow2_sync_error (img)) {
    bitmap_close (img);
    if (flush_final (img) == 0)
      header_close_writable (img->layers[0]);
  }
  /* A raw file has no dirty state, but its writes should be durable
   * once the image is closed, as with QEMU. */
  if (img->writable && img->nr_layers > 0
      && img->layers[0]->format == LAYER_RAW)
    qcow2_flush (img);
  for (i = 0; i < img->nr_layers; i++) {
    struct qcow2_layer *l = img->layers[i];

    release_destroy (l);
    refcount_destroy (l);
    bitmap_free (l);
    if (l->format == LAYER_QCOW2 && l->l2_cache)
      l2_cache_destroy (l);
    inflight_destroy (l);
    pthread_rwlock_destroy (&l->lock);
    free (l->backing_name);
    free (l->backing_format);
    free (l->data_file_name);
    free (l->l1);
    free (l);
  }
  free (img->layers);
  for (i = 0; i < img->nr_files; i++) {
    img->io->close (img->io_opaque, img->files[i].fd);
    free (img->files[i].name);
  }
  free (img->files);
  free (img);
}

uint64_t
qcow2_virtual_size (const struct qcow2_image *img)
{
  return img->view_size;
}

uint32_t
qcow2_cluster_size (const struct qcow2_image *img)
{
  const struct qcow2_layer *top = img->layers[0];

  return top->format == LAYER_QCOW2 ? top->cluster_size : 0;
}

uint32_t
qcow2_layer_cluster_size (const struct qcow2_layer *layer)
{
  return layer->cluster_size;
}

size_t
qcow2_file_count (const struct qcow2_image *img)
{
  return img->nr_files;
}

/* Returns the fd, or -EINVAL for an index out of range. */
int
qcow2_file_fd (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files ? img->files[index].fd : -EINVAL;
}

bool
qcow2_file_writable (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files && img->files[index].writable;
}

uint64_t
qcow2_file_size (const struct qcow2_image *img, size_t index)
{
  /* Only the metadata file of a writable layer grows while open, so
   * for the others this is exact. */
  return index < img->nr_files ? img->files[index].size : 0;
}

/* Returns NULL for an index out of range. */
const char *
qcow2_file_name (const struct qcow2_image *img, size_t index)
{
  return index < img->nr_files ? img->files[index].name : NULL;
}

unsigned
qcow2_chain_depth (const struct qcow2_image *img)
{
  return img->nr_layers;
}
