/* SPDX-License-Identifier: MIT */
/* The exports by name: the positional image and each --export, opened
 * at startup and open until the end (a failure there is a startup
 * error), and the images of --export-dir, opened at the first INFO, GO
 * or EXPORT_NAME that names them and closed once no connection has used
 * them for --idle-timeout seconds, or sooner when --max-open-exports
 * are open and another one is wanted.  One image that cannot be opened
 * is refused to the clients that ask for it (NBD_REP_ERR_UNKNOWN with
 * the library's reason, logged); the others go on being served.
 *
 * Every export carries its own image (caches, locks, allocator) and, per
 * worker, its own fds of the image files (struct export_fds), made when
 * it opens and closed when it closes, so fds and memory follow the open
 * exports, not the exports there are.  A connection holds a reference
 * from its GO until it is freed (conn_free); a handshake holds one while
 * it answers an option and for its last SET_META_CONTEXT.  An export
 * with references is never closed.
 *
 * Names in a directory: a file's name is its export name, and which
 * files and names qualify is export-dir.c's to say (regular files, no
 * symbolic link, no hidden file, UTF-8; a client's name is tested the
 * same way before it is joined to the directory).  The directory is read
 * afresh for every NBD_OPT_LIST, and a name not yet known is looked up
 * in it when asked for, so new files are served without a restart.
 *
 * Threads: the listener looks up and opens (exports_get, from the
 * handshake), workers and the listener drop references (exports_put,
 * from conn_free), and the closer thread closes idle exports.  Opening
 * and closing run outside the lock, the entry marked OPENING or CLOSING
 * meanwhile; whoever wants such an entry waits on the condition. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/server.h"

enum state {
  CLOSED,
  OPENING,                      /* being opened, outside the lock */
  OPEN,
  CLOSING,                      /* being closed, outside the lock */
};

/* One export, open or not. */
struct entry {
  char *name;                   /* const */
  char *path;                   /* const: its image */
  /* const: the --export it comes from; NULL for the positional image
   * (the server's configuration is its own) and directory images. */
  const struct export_spec *spec;
  bool pinned;                  /* const: open from start to end */
  bool from_dir;                /* const: an image of --export-dir */

  /* lock: */
  enum state state;
  unsigned refs;                /* connections and handshakes using it */
  uint64_t idle_since;          /* now_ns() when refs last fell to 0 */
  bool gone;                    /* no longer in the directory */
  struct export *exp;           /* OPEN: built, constant while open */
};

/* Lock order: the lock, then the library's image locks (never the other
 * way: the library calls us back only through wakeup_all). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond;     /* a state changed, a reference dropped */
static struct entry **entries;  /* lock: sorted by name (strcmp) */
static size_t nr_entries, cap_entries;   /* lock */
static unsigned nr_open_dir;    /* lock: directory exports not CLOSED */
static bool stopping;           /* lock: exports_shutdown began */
static bool initialised;        /* lock */

/* Constant after exports_init. */
static const struct server_config *base;
static unsigned nr_workers;
static unsigned max_open;       /* of the directory's images */
static uint64_t idle_ns;

static pthread_t closer;
static bool closer_running;

/* ---- the table -------------------------------------------------------- */

/* The index of NAME in entries, or where it would go (*FOUND false). */
static size_t
find_locked (const char *name, bool *found)
{
  size_t lo = 0, hi = nr_entries;

  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp (entries[mid]->name, name);

    if (c == 0) {
      *found = true;
      return mid;
    }
    if (c < 0)
      lo = mid + 1;
    else
      hi = mid;
  }
  *found = false;
  return lo;
}

static void
entry_free (struct entry *e)
{
  if (e == NULL)
    return;
  free (e->name);
  free (e->path);
  free (e->exp);
  free (e);
}

/* Insert a new entry NAME for PATH at index AT.  NULL when out of
 * memory (logged). */
static struct entry *
insert_locked (size_t at, const char *name, const char *path)
{
  struct entry *e = calloc (1, sizeof *e);

  if (e)
    e->name = strdup (name);
  if (e && e->name)
    e->path = strdup (path);
  if (e == NULL || e->name == NULL || e->path == NULL) {
    log_error ("exports: out of memory");
    entry_free (e);
    return NULL;
  }
  if (nr_entries == cap_entries) {
    size_t cap = cap_entries ? 2 * cap_entries : 16;
    struct entry **p = realloc (entries, cap * sizeof *p);

    if (p == NULL) {
      log_error ("exports: out of memory");
      entry_free (e);
      return NULL;
    }
    entries = p;
    cap_entries = cap;
  }
  memmove (&entries[at + 1], &entries[at],
           (nr_entries - at) * sizeof *entries);
  entries[at] = e;
  nr_entries++;
  return e;
}

static void
remove_locked (size_t at)
{
  entry_free (entries[at]);
  memmove (&entries[at], &entries[at + 1],
           (nr_entries - at - 1) * sizeof *entries);
  nr_entries--;
}

/* ---- opening and closing ---------------------------------------------- */

/* A second open file description of file F of IMG, with O_DIRECT (a dup
 * would share the buffered one's flags): through /proc/self/fd, so it
 * is the very file the library opened even if its name has changed
 * since. */
static int
open_direct (const struct qcow2_image *img, size_t f)
{
  char path[64];

  snprintf (path, sizeof path, "/proc/self/fd/%d", qcow2_file_fd (img, f));
  return open (path, (qcow2_file_writable (img, f) ? O_RDWR : O_RDONLY)
               | O_DIRECT | O_CLOEXEC);
}

static void
fds_close (struct export *exp)
{
  for (unsigned i = 0; i < exp->nr_wfds; i++) {
    struct export_fds *xf = &exp->wfds[i];

    for (size_t f = 0; f < xf->nr; f++) {
      if (xf->fds[f] >= 0)
        close (xf->fds[f]);
      if (xf->dfds && xf->dfds[f] >= 0)
        close (xf->dfds[f]);
    }
    free (xf->fds);
    free (xf->dfds);
    free (xf->no_zero_range);
  }
  free (exp->wfds);
  exp->wfds = NULL;
  exp->nr_wfds = 0;
}

/* Give every worker its own fds of EXP's files.  Returns 0 or -1
 * (logged; nothing left open). */
static int
fds_open (struct export *exp)
{
  size_t nfiles = qcow2_file_count (exp->img);

  exp->wfds = calloc (nr_workers, sizeof *exp->wfds);
  if (exp->wfds == NULL) {
    log_error ("exports: %m");
    return -1;
  }
  for (unsigned i = 0; i < nr_workers; i++) {
    struct export_fds *xf = &exp->wfds[i];

    exp->nr_wfds++;
    xf->fds = malloc ((nfiles ? nfiles : 1) * sizeof *xf->fds);
    xf->no_zero_range = calloc (nfiles ? nfiles : 1,
                                sizeof *xf->no_zero_range);
    if (exp->direct_io)
      xf->dfds = malloc ((nfiles ? nfiles : 1) * sizeof *xf->dfds);
    if (xf->fds == NULL || xf->no_zero_range == NULL
        || (exp->direct_io && xf->dfds == NULL)) {
      log_error ("exports: %m");
      fds_close (exp);
      return -1;
    }
    for (size_t f = 0; f < nfiles; f++) {
      int fd = qcow2_file_fd (exp->img, f);

      xf->nr++;
      xf->fds[f] = fd < 0 ? -1 : fcntl (fd, F_DUPFD_CLOEXEC, 0);
      if (xf->dfds)
        xf->dfds[f] = -1;
      if (xf->fds[f] < 0) {
        log_error ("worker %u: dup of %s: %m", i,
                   qcow2_file_name (exp->img, f));
        fds_close (exp);
        return -1;
      }
      if (xf->dfds && (xf->dfds[f] = open_direct (exp->img, f)) < 0) {
        log_error ("Could not open '%s' with O_DIRECT: %m",
                   qcow2_file_name (exp->img, f));
        fds_close (exp);
        return -1;
      }
    }
  }
  return 0;
}

/* Why the last open of a directory image failed (its open_failed
 * hook), for the client; the opener is one thread at a time. */
static _Thread_local char open_why[256];

static void
dir_open_failed (const struct server_config *cfg, int r,
                 const struct qcow2_open_error *err, const char *msg)
{
  (void) err;
  if (msg && *msg)
    snprintf (open_why, sizeof open_why, "%s", msg);
  else
    snprintf (open_why, sizeof open_why, "%s: %s", cfg->image,
              strerror (-r));
}

/* Open E (state OPENING, lock not held).  Returns 0, or -1 with WHY
 * (WHYLEN bytes) saying why. */
static int
entry_open (struct entry *e, char *why, size_t whylen)
{
  struct server_config cfg = *base;
  struct export *exp;

  if (e->spec || e->from_dir) {
    /* Only the positional image takes the options of one image. */
    cfg.image = e->path;
    cfg.export_name = e->name;
    cfg.description = NULL;
    cfg.nr_bitmaps = 0;
    cfg.snapshot = cfg.snapshot_id = cfg.snapshot_name = NULL;
    cfg.format = QCOW2_FORMAT_QCOW2;
    cfg.probed_raw = false;
  }
  if (e->spec) {
    const struct export_spec *sp = e->spec;

    cfg.description = sp->description;
    if (sp->read_only != -1)
      cfg.read_only = sp->read_only;
    if (sp->discard_unmap != -1)
      cfg.discard_unmap = sp->discard_unmap;
    memcpy (cfg.bitmaps, sp->bitmaps, sizeof cfg.bitmaps);
    cfg.nr_bitmaps = sp->nr_bitmaps;
  }
  open_why[0] = '\0';
  if (e->from_dir) {
    cfg.open_failed = dir_open_failed;
    cfg.bitmap_failed = NULL;
  }
  if (e->spec || e->from_dir) {
    if (export_dir_probe (e->path, &cfg, open_why, sizeof open_why) == -1) {
      snprintf (why, whylen, "%s", open_why);
      return -1;
    }
  }

  exp = calloc (1, sizeof *exp);
  if (exp == NULL) {
    snprintf (why, whylen, "out of memory");
    return -1;
  }
  if (export_open (&cfg, exp) < 0) {
    snprintf (why, whylen, "%s", open_why[0] ? open_why
              : "the image cannot be opened");
    free (exp);
    return -1;
  }
  if (fds_open (exp) == -1) {
    snprintf (why, whylen, "cannot set up its file descriptors");
    export_close (exp);
    free (exp);
    return -1;
  }
  e->exp = exp;
  if (e->from_dir)
    log_info ("export '%s': opened %s (%" PRIu64 " bytes)", e->name,
              e->path, exp->size);
  return 0;
}

/* Close E (state CLOSING, lock not held).  Returns 0, or the -errno of
 * its final flush (logged). */
static int
entry_close (struct entry *e)
{
  int r;

  fds_close (e->exp);
  r = export_close (e->exp);
  free (e->exp);
  e->exp = NULL;
  if (e->from_dir)
    log_info ("export '%s': closed", e->name);
  return r;
}

/* Close the open, unused entry at index AT; the lock is dropped
 * meanwhile, so indexes may have changed when this returns. */
static void
close_locked (size_t at)
{
  struct entry *e = entries[at];

  e->state = CLOSING;
  pthread_mutex_unlock (&lock);
  entry_close (e);
  pthread_mutex_lock (&lock);
  e->state = CLOSED;
  if (e->from_dir)
    nr_open_dir--;
  /* Gone from the directory, and nobody waiting to open it again. */
  if (e->gone && e->refs == 0) {
    bool found;
    size_t i = find_locked (e->name, &found);

    if (found && entries[i] == e)
      remove_locked (i);
  }
  pthread_cond_broadcast (&cond);
}

/* Make room for one more directory export: close the one unused
 * longest.  Returns true when there is room. */
static bool
make_room_locked (void)
{
  while (nr_open_dir >= max_open) {
    size_t lru = SIZE_MAX;

    for (size_t i = 0; i < nr_entries; i++) {
      struct entry *e = entries[i];

      if (e->from_dir && e->state == OPEN && e->refs == 0
          && (lru == SIZE_MAX || e->idle_since < entries[lru]->idle_since))
        lru = i;
    }
    if (lru == SIZE_MAX) {
      /* Unless one is closing right now, all are in use. */
      bool closing = false;

      for (size_t i = 0; i < nr_entries; i++)
        closing |= entries[i]->from_dir && entries[i]->state == CLOSING;
      if (!closing)
        return false;
      pthread_cond_wait (&cond, &lock);
      continue;
    }
    close_locked (lru);
  }
  return true;
}

/* ---- the closer thread ------------------------------------------------ */

static void *
closer_thread (void *arg)
{
  (void) arg;
  pthread_mutex_lock (&lock);
  while (!stopping) {
    uint64_t now = now_ns (), next = UINT64_MAX;
    bool closed = false;

    for (size_t i = 0; i < nr_entries; i++) {
      struct entry *e = entries[i];

      if (!e->from_dir || e->state != OPEN || e->refs > 0)
        continue;
      if (now - e->idle_since >= idle_ns) {
        log_debug ("export '%s': idle, closing", e->name);
        close_locked (i);
        closed = true;
        break;                  /* the table may have changed */
      }
      if (e->idle_since + idle_ns < next)
        next = e->idle_since + idle_ns;
    }
    if (closed)
      continue;
    if (next == UINT64_MAX)
      pthread_cond_wait (&cond, &lock);
    else {
      struct timespec ts = {
        .tv_sec = next / 1000000000, .tv_nsec = next % 1000000000,
      };
      pthread_cond_timedwait (&cond, &lock, &ts);
    }
  }
  pthread_mutex_unlock (&lock);
  return NULL;
}

/* ---- public ----------------------------------------------------------- */

static struct entry *
add_pinned (const char *name, const char *path)
{
  bool found;
  size_t at = find_locked (name, &found);

  if (found) {
    log_error ("two exports are named '%s'", name);
    return NULL;
  }
  return insert_locked (at, name, path);
}

int
exports_init (const struct server_config *cfg, unsigned workers)
{
  pthread_condattr_t ca;

  base = cfg;
  nr_workers = workers ? workers : 1;
  max_open = cfg->max_open_exports ? cfg->max_open_exports
    : DEFAULT_MAX_OPEN_EXPORTS;
  idle_ns = (uint64_t) cfg->idle_timeout * 1000000000;
  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&cond, &ca);
  pthread_condattr_destroy (&ca);
  initialised = true;
  stopping = false;

  /* Before any other thread exists: no lock needed, but the helpers
   * expect it. */
  LOCK_FOR_SCOPE (&lock);
  if (cfg->image && add_pinned (cfg->export_name, cfg->image) == NULL)
    return -1;
  for (unsigned i = 0; i < cfg->nr_exports; i++) {
    struct entry *e = add_pinned (cfg->exports[i].name,
                                  cfg->exports[i].path);
    if (e == NULL)
      return -1;
    e->spec = &cfg->exports[i];
  }
  for (size_t i = 0; i < nr_entries; i++) {
    struct entry *e = entries[i];
    char why[256];

    e->pinned = true;
    if (entry_open (e, why, sizeof why) == -1) {
      /* The library's reasons are logged (or the open_failed hook has
       * them); probing's are ours to say. */
      if (open_why[0])
        log_error ("export '%s': %s", e->name, why);
      return -1;
    }
    e->state = OPEN;
    e->refs = 1;                /* never idle */
  }
  if (cfg->export_dir) {
    struct stat st;

    if (stat (cfg->export_dir, &st) == -1) {
      log_error ("--export-dir %s: %m", cfg->export_dir);
      return -1;
    }
    if (!S_ISDIR (st.st_mode)) {
      log_error ("--export-dir %s: %s", cfg->export_dir, strerror (ENOTDIR));
      return -1;
    }
  }
  return 0;
}

int
exports_start (void)
{
  int r;

  if (base->export_dir == NULL)
    return 0;
  r = pthread_create (&closer, NULL, closer_thread, NULL);
  if (r != 0) {
    log_error ("creating the export closer thread: %s", strerror (r));
    return -1;
  }
  closer_running = true;
  return 0;
}

int
exports_shutdown (void)
{
  int status = 0;

  if (!initialised)
    return 0;
  pthread_mutex_lock (&lock);
  stopping = true;
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
  if (closer_running)
    pthread_join (closer, NULL);
  closer_running = false;

  /* The workers are gone: no reference is left but the pinned ones. */
  pthread_mutex_lock (&lock);
  while (nr_entries > 0) {
    struct entry *e = entries[nr_entries - 1];

    if (e->state == OPEN) {
      e->state = CLOSING;
      pthread_mutex_unlock (&lock);
      if (entry_close (e) < 0)
        status = -1;
      pthread_mutex_lock (&lock);
    }
    entry_free (e);
    nr_entries--;
  }
  free (entries);
  entries = NULL;
  nr_entries = cap_entries = 0;
  nr_open_dir = 0;
  initialised = false;
  pthread_mutex_unlock (&lock);
  return status;
}

const struct export *
exports_single (void)
{
  LOCK_FOR_SCOPE (&lock);
  if (base->export_dir || nr_entries != 1)
    return NULL;
  return entries[0]->exp;
}

/* Find or (from the directory) make the entry for NAME.  NULL: no such
 * export. */
static struct entry *
lookup_locked (const char *name)
{
  CLEANUP_FREE char *path = NULL;
  struct entry *e;
  bool found;
  size_t at = find_locked (name, &found);

  if (found) {
    e = entries[at];
    if (!e->from_dir)
      return e;
    /* Still there?  A removed file is not served to new clients (those
     * using it go on until they leave). */
    if (export_dir_file_ok (e->path)) {
      e->gone = false;
      return e;
    }
    e->gone = true;
    if (e->state == CLOSED && e->refs == 0)
      remove_locked (at);
    return NULL;
  }
  if (base->export_dir == NULL || !export_dir_name_ok (name))
    return NULL;
  path = export_dir_path (base->export_dir, name);
  if (path == NULL || !export_dir_file_ok (path))
    return NULL;
  e = insert_locked (at, name, path);
  if (e)
    e->from_dir = true;
  return e;
}

static uint32_t
export_get (const char *name, size_t len, const struct export **expp,
            char *msg, size_t msglen)
{
  char key[NBD_MAX_STRING + 1];
  char why[256];
  const char *reason;
  size_t pathlen;
  struct entry *e;
  int r;

  *expp = NULL;
  if (len > NBD_MAX_STRING || memchr (name, '\0', len)) {
    snprintf (msg, msglen, "no export named '%.*s'",
              (int) MIN (len, 128u), name);
    return NBD_REP_ERR_UNKNOWN;
  }
  memcpy (key, name, len);
  key[len] = '\0';

  pthread_mutex_lock (&lock);
  e = lookup_locked (key);
  /* "": the export named "" if there is one, else --default-export. */
  if (e == NULL && len == 0 && base->default_export)
    e = lookup_locked (base->default_export);
  if (e == NULL) {
    pthread_mutex_unlock (&lock);
    if (len == 0)
      snprintf (msg, msglen, "no default export: name one of those "
                "NBD_OPT_LIST gives");
    else
      snprintf (msg, msglen, "no export named '%.*s'",
                (int) MIN (len, 128u), name);
    return NBD_REP_ERR_UNKNOWN;
  }
  /* Held while the lock is dropped below, so the entry stays. */
  e->refs++;
  for (;;) {
    if (stopping) {
      e->refs--;
      pthread_mutex_unlock (&lock);
      snprintf (msg, msglen, "the server is stopping");
      return NBD_REP_ERR_SHUTDOWN;
    }
    if (e->state == OPEN) {
      *expp = e->exp;           /* with the reference taken above */
      pthread_mutex_unlock (&lock);
      return 0;
    }
    if (e->state != CLOSED) {
      pthread_cond_wait (&cond, &lock);
      continue;
    }
    /* A directory image to open (the others are always open): room
     * first, which may drop the lock. */
    if (!make_room_locked ()) {
      e->refs--;
      pthread_mutex_unlock (&lock);
      log_info ("export '%s': not opened: %u exports open and in use "
                "(--max-open-exports)", e->name, max_open);
      snprintf (msg, msglen, "too many exports in use (%u); try again "
                "later", max_open);
      return NBD_REP_ERR_POLICY;
    }
    if (e->state == CLOSED)
      break;
  }
  e->state = OPENING;
  nr_open_dir++;
  pthread_mutex_unlock (&lock);

  r = entry_open (e, why, sizeof why);

  pthread_mutex_lock (&lock);
  if (r == -1) {
    e->state = CLOSED;
    nr_open_dir--;
    log_error ("export '%s' refused: %s", e->name, why);
    /* The client is told why, but not where the server keeps it. */
    pathlen = strlen (e->path);
    reason = why;
    if (strncmp (why, e->path, pathlen) == 0 && why[pathlen] == ':')
      reason = why + pathlen + 1 + (why[pathlen + 1] == ' ');
    snprintf (msg, msglen, "export '%.*s' cannot be opened: %s",
              (int) MIN (len, 64u), name, reason);
    e->refs--;                  /* E may go once the lock is dropped */
    pthread_cond_broadcast (&cond);
    pthread_mutex_unlock (&lock);
    return NBD_REP_ERR_UNKNOWN;
  }
  e->state = OPEN;
  *expp = e->exp;               /* with the reference taken above */
  pthread_cond_broadcast (&cond);
  pthread_mutex_unlock (&lock);
  return 0;
}

/* The entry whose export is EXP (open, so in the table). */
static struct entry *
entry_of_locked (const struct export *exp)
{
  bool found;
  size_t at = find_locked (exp->name, &found);

  return found && entries[at]->exp == exp ? entries[at] : NULL;
}

void
exports_put (const struct export *exp)
{
  struct entry *e;

  if (exp == NULL)
    return;
  LOCK_FOR_SCOPE (&lock);
  e = entry_of_locked (exp);
  if (e == NULL || e->refs == 0) {
    log_error ("internal error: export '%s' released too often", exp->name);
    return;
  }
  if (--e->refs == 0) {
    e->idle_since = now_ns ();
    pthread_cond_broadcast (&cond);
  }
}

/* Read the directory into the table: new images added, entries of files
 * that left dropped (once closed).  The directory is read first, then
 * merged under the lock. */
static void
rescan (void)
{
  size_t nr = 0, j = 0;
  char **names = export_dir_read (base->export_dir, &nr);

  if (names == NULL)
    return;
  pthread_mutex_lock (&lock);
  /* Both sorted: walk them together. */
  for (size_t i = 0; i < nr_entries || j < nr;) {
    int c = i == nr_entries ? 1 : j == nr ? -1
      : strcmp (entries[i]->name, names[j]);

    if (c < 0) {                /* an entry whose file is not there */
      struct entry *e = entries[i];

      if (e->from_dir && e->state == CLOSED && e->refs == 0) {
        remove_locked (i);
        continue;
      }
      if (e->from_dir)
        e->gone = true;
      i++;
    }
    else if (c > 0) {           /* a new file */
      CLEANUP_FREE char *path = export_dir_path (base->export_dir, names[j]);
      struct entry *e = path ? insert_locked (i, names[j], path) : NULL;

      if (e) {
        e->from_dir = true;
        i++;
      }
      j++;
    }
    else {                      /* both (an --export wins) */
      if (entries[i]->from_dir)
        entries[i]->gone = false;
      i++;
      j++;
    }
  }
  pthread_mutex_unlock (&lock);
  for (size_t k = 0; k < nr; k++)
    free (names[k]);
  free (names);
}

static int
export_list (const char *after,
             int (*fn) (void *opaque, const char *name,
                        const char *description),
             void *opaque)
{
  size_t at = 0;

  if (after == NULL && base->export_dir)
    rescan ();

  /* The callback only queues bytes: it may run under the lock. */
  LOCK_FOR_SCOPE (&lock);
  if (after) {
    bool found;

    at = find_locked (after, &found);
    if (found)
      at++;
  }
  for (; at < nr_entries; at++) {
    struct entry *e = entries[at];
    const char *desc = e->spec ? e->spec->description
      : e->from_dir ? NULL : base->description;
    int r;

    if (e->gone)
      continue;
    r = fn (opaque, e->name, desc);
    if (r != 0)
      return r;
  }
  return 0;
}

static void
export_put (const struct export *exp)
{
  exports_put (exp);
}

const struct export_source exports_source = {
  .get = export_get,
  .put = export_put,
  .list = export_list,
};
