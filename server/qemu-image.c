/* SPDX-License-Identifier: MIT */
/* The image qemu-nbd is asked to serve: its FILE argument (a file name,
 * a "json:{...}" name or, with --image-opts, a key=value list), -f, and
 * the block options that can ride along, turned into the image fields of
 * a server_config; the format probed as QEMU probes it when none is
 * given; and open failures worded as qemu-nbd words them.
 *
 * The block graphs we can serve are the ones CI scripts build: a qcow2
 * or raw format node over a "file" node (driver, filename, locking,
 * aio), with backing=null, read-only, discard, detect-zeroes and cache.*
 * on top, raw's offset and size, or a bare "file" node (served as raw);
 * and the compress filter over such a qcow2 node (virt-v2v's and
 * nbdcopy's compressed output), with QEMU's refusals of anything else
 * under it.  Anything else QEMU would open (other formats, protocols,
 * nested format nodes) is refused by name. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "server/qemu-nbd.h"

/* QEMU's probe reads this much (block.c BLOCK_PROBE_BUF_SIZE). */
#define PROBE_SIZE 2048

/* Formats and protocols QEMU 7.2 knows but we do not serve, so they are
 * refused by name rather than as unknown drivers. */
static const char *const other_drivers[] = {
  "blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "copy-before-write",
  "copy-on-read", "dmg", "ftp", "ftps", "gluster", "http", "https", "iscsi",
  "iser", "luks", "nbd", "nfs", "nvme", "parallels",
  "preallocate", "qcow", "qed", "quorum", "rbd", "replication",
  "snapshot-access", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc",
  "vvfat", NULL,
};

static bool
is_other_driver (const char *d)
{
  for (size_t i = 0; other_drivers[i]; i++)
    if (strcmp (d, other_drivers[i]) == 0)
      return true;
  return false;
}

/* A "file" protocol node: QEMU's file, host_device and host_cdrom. */
static bool
is_file_driver (const char *d)
{
  return strcmp (d, "file") == 0 || strcmp (d, "host_device") == 0
    || strcmp (d, "host_cdrom") == 0;
}

/* QEMU's null block driver (a disk of zeros whose writes go nowhere in
 * QEMU; see null_file for ours), which tests use when the contents do
 * not matter.  Its size unless "size" says otherwise, as in QEMU. */
#define NULL_DEFAULT_SIZE (UINT64_C (1) << 30)

static bool
is_null_driver (const char *d)
{
  return strcmp (d, "null-co") == 0 || strcmp (d, "null-aio") == 0;
}

/* "qemu-nbd: Failed to blk_new_open 'FILE': MESSAGE". */
static int __attribute__ ((format (printf, 2, 3)))
fail (const struct qnbd_image_args *a, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  qnbd_error ("Failed to blk_new_open '%s': %s", a->file, msg);
  return -1;
}

static int
unsupported_driver (const struct qnbd_image_args *a, const char *d)
{
  if (is_other_driver (d))
    return fail (a, "the '%s' driver is not supported by qcow2-nbd, which "
                 "serves qcow2 and raw images only", d);
  return fail (a, "Unknown driver '%s'", d);
}

/* What the options say, before it goes into the server_config. */
struct spec {
  const char *driver;           /* format: "qcow2", "raw" or NULL (probe) */
  bool compress;                /* the compress filter on top */
  const char *filename;
  bool no_backing;
  bool no_locks;
  bool read_only_opt;           /* read-only=on */
  bool direct, no_flush, discard_unmap, aio_native;
  uint64_t offset, size;        /* raw's window */
  bool has_size;
  /* The protocol node is QEMU's null driver (null-co, null-aio) of
   * null_size bytes, not a file: see null_file. */
  const char *null_driver;
  uint64_t null_size;
  bool null_top;                /* the null node is the top node */
};

/* A size or offset option: a decimal number, as QEMU's QemuOpts size
 * (suffixes too, k = 1024). */
static int
parse_size_opt (const char *s, uint64_t *v)
{
  char *end;
  unsigned long long n;
  int shift = 0;

  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  errno = 0;
  n = strtoull (s, &end, 10);
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'b': case 'B': end++; break;
  case 'k': case 'K': shift = 10; end++; break;
  case 'M': shift = 20; end++; break;
  case 'G': shift = 30; end++; break;
  case 'T': shift = 40; end++; break;
  case 'P': shift = 50; end++; break;
  case 'E': shift = 60; end++; break;
  default: return -1;
  }
  if (*end || (shift && n > (UINT64_MAX >> shift)))
    return -1;
  *v = (uint64_t) n << shift;
  return 0;
}

/* Take a boolean option KEY: 0/1, or keep *V when absent; -1 on a bad
 * value (reported). */
static int
take_bool (const struct qnbd_image_args *a, struct qdict *d, const char *key,
           bool *v)
{
  bool found;
  const char *s = qdict_take (d, key, &found);
  int b;

  if (!found)
    return 0;
  b = qopt_bool (s);
  if (b < 0)
    return fail (a, "Parameter '%s' expects 'on' or 'off'", key);
  *v = b;
  return 0;
}

/* A null protocol node at PREFIX, driver DRV: its size (1 GiB unless
 * given) and the options that change nothing here (reads are always
 * zeros, as with read-zeroes=on; no latency is simulated). */
static int
null_node (const struct qnbd_image_args *a, struct qdict *d,
           const char *prefix, const char *drv, struct spec *sp)
{
  static const char *const ignored[] = {
    "read-zeroes", "latency-ns", "node-name", "read-only", "auto-read-only",
    "discard", "detect-zeroes", "cache.direct", "cache.no-flush",
    "force-share", NULL,
  };
  char key[64];
  const char *v;
  bool found;

  sp->null_driver = drv;
  sp->null_top = *prefix == '\0';
  sp->null_size = NULL_DEFAULT_SIZE;
  snprintf (key, sizeof key, "%ssize", prefix);
  v = qdict_take (d, key, &found);
  if (found && parse_size_opt (v, &sp->null_size) < 0)
    return fail (a, "Parameter 'size' expects a non-negative number below "
                 "2^64");
  for (size_t i = 0; ignored[i]; i++) {
    snprintf (key, sizeof key, "%s%s", prefix, ignored[i]);
    qdict_take (d, key, NULL);
  }
  return 0;
}

/* The null driver's disk, for the rest of the server to open like any
 * raw file: a memfd of its size, whose unwritten bytes read as zeros
 * and cost nothing.  Unlike QEMU's, it keeps what is written (in
 * memory, at most its size), so a client reads back its own writes.
 * Named by /proc/self/fd, which the server opens like a path. */
static int
null_file (const struct qnbd_image_args *a, struct spec *sp)
{
  static char path[64];
  int fd = memfd_create (sp->null_driver, MFD_CLOEXEC);

  if (fd == -1)
    return fail (a, "%s: %m", sp->null_driver);
  if (ftruncate (fd, sp->null_size) == -1) {
    int e = errno;

    close (fd);
    return fail (a, "%s: size %" PRIu64 ": %s", sp->null_driver,
                 sp->null_size, strerror (e));
  }
  /* Kept open for the program's life: the path names this fd. */
  snprintf (path, sizeof path, "/proc/self/fd/%d", fd);
  sp->filename = path;
  return 0;
}

/* The "file" protocol node at PREFIX ("file." or ""): its file name and
 * options. */
static int
file_node (const struct qnbd_image_args *a, struct qdict *d,
           const char *prefix, struct spec *sp)
{
  char key[64];
  const char *v;
  bool found;

  snprintf (key, sizeof key, "%sdriver", prefix);
  v = qdict_take (d, key, &found);
  if (found && v && is_null_driver (v))
    return null_node (a, d, prefix, v, sp);
  if (found && v && !is_file_driver (v)) {
    if (strcmp (v, "qcow2") == 0 || strcmp (v, "raw") == 0
        || strcmp (v, "compress") == 0)
      return fail (a, "qcow2-nbd cannot serve a '%s' node on top of another "
                   "format node ('%s%s' is '%s'); give the file itself",
                   sp->driver ? sp->driver : "(probed)", prefix, "driver", v);
    return unsupported_driver (a, v);
  }
  snprintf (key, sizeof key, "%sfilename", prefix);
  sp->filename = qdict_take (d, key, NULL);
  if (sp->filename == NULL)
    return fail (a, "The 'file' block driver requires a file name");
  snprintf (key, sizeof key, "%slocking", prefix);
  v = qdict_take (d, key, &found);
  if (found) {
    if (v && strcmp (v, "off") == 0)
      sp->no_locks = true;
    else if (!v || (strcmp (v, "on") != 0 && strcmp (v, "auto") != 0))
      return fail (a, "Parameter 'locking' does not accept value '%s'",
                   v ? v : "null");
  }
  snprintf (key, sizeof key, "%saio", prefix);
  v = qdict_take (d, key, &found);
  if (found) {
    if (v && strcmp (v, "native") == 0)
      sp->aio_native = true;
    else if (v && (strcmp (v, "threads") == 0 || strcmp (v, "io_uring") == 0))
      sp->aio_native = false;
    else
      return fail (a, "Parameter 'aio' does not accept value '%s'",
                   v ? v : "null");
  }
  /* File options that change nothing we do. */
  static const char *const ignored[] = {
    "aio-max-batch", "x-check-cache-dropped", "drop-cache", "pr-manager",
    "node-name", "read-only", "auto-read-only", "discard", "detect-zeroes",
    "cache.direct", "cache.no-flush", "force-share", NULL,
  };
  for (size_t i = 0; ignored[i]; i++) {
    snprintf (key, sizeof key, "%s%s", prefix, ignored[i]);
    qdict_take (d, key, NULL);
  }
  return 0;
}

/* KEY ("name"): the option NAME of the node at PREFIX ("file.name"
 * under "file."), written into the caller's char key[64]. */
#define KEY(k) (snprintf (key, sizeof key, "%s%s", prefix, k), key)

/* The options common to every node (bdrv's "common" options) of the
 * node at PREFIX: the top node, or the qcow2 node under the compress
 * filter. */
static int
common_opts (const struct qnbd_image_args *a, struct qdict *d,
             const char *prefix, struct spec *sp)
{
  const char *v;
  bool found, force_share = false;
  char key[64];

  qdict_take (d, KEY ("node-name"), NULL);
  qdict_take (d, KEY ("auto-read-only"), NULL);
  if (take_bool (a, d, KEY ("read-only"), &sp->read_only_opt) < 0
      || take_bool (a, d, KEY ("cache.direct"), &sp->direct) < 0
      || take_bool (a, d, KEY ("cache.no-flush"), &sp->no_flush) < 0
      || take_bool (a, d, KEY ("force-share"), &force_share) < 0)
    return -1;
  v = qdict_take (d, KEY ("discard"), &found);
  if (found) {
    if (v && (strcmp (v, "unmap") == 0 || strcmp (v, "on") == 0))
      sp->discard_unmap = true;
    else if (v && (strcmp (v, "ignore") == 0 || strcmp (v, "off") == 0))
      sp->discard_unmap = false;
    else
      return fail (a, "Invalid discard option");
  }
  /* Checked, but qemu-nbd then sets the node's detect-zeroes from its
   * own --detect-zeroes (default off), so the option has no effect. */
  v = qdict_take (d, KEY ("detect-zeroes"), &found);
  if (found) {
    if (!v || (strcmp (v, "off") && strcmp (v, "on") && strcmp (v, "unmap")))
      return fail (a, "Parameter 'detect-zeroes' does not accept value '%s'",
                   v ? v : "null");
    if (strcmp (v, "unmap") == 0 && !sp->discard_unmap)
      return fail (a, "setting detect-zeroes to unmap is not allowed "
                   "without setting discard operation to unmap");
  }
  if (force_share && !sp->read_only_opt && !a->read_only)
    return fail (a, "force-share=on can only be used with read-only images");
  return 0;
}

/* qcow2 options QEMU takes that change nothing here (cache sizes are
 * ours to choose; discard passing is what our discard does), of the
 * node at PREFIX. */
static void
qcow2_opts (struct qdict *d, const char *prefix)
{
  static const char *const known[] = {
    "l2-cache-size", "l2-cache-entry-size", "cache-size",
    "refcount-cache-size", "cache-clean-interval", "lazy-refcounts",
    "pass-discard-request", "pass-discard-snapshot", "pass-discard-other",
    "overlap-check", NULL,
  };
  char key[64];
  size_t plen = strlen (prefix);

  for (size_t i = 0; known[i]; i++) {
    snprintf (key, sizeof key, "%s%s", prefix, known[i]);
    qdict_take (d, key, NULL);
  }
  for (size_t i = 0; i < d->n; i++)
    if (strncmp (d->e[i].key, prefix, plen) == 0
        && strncmp (d->e[i].key + plen, "overlap-check.", 14) == 0)
      d->e[i].used = true;
}

/* The file under the format node at PREFIX: "filename" (only the top
 * node's names a file node), or a "file." node.  0, or -1 (logged). */
static int
format_file (const struct qnbd_image_args *a, struct qdict *d,
             const char *prefix, struct spec *sp)
{
  const char *v;
  bool found;
  char key[64];

  v = qdict_take (d, KEY ("file"), &found);
  if (found)
    return fail (a, "Cannot find device='%s' nor node-name='%s'",
                 v ? v : "", v ? v : "");
  if (!qdict_has_prefix (d, KEY ("file.")) && *prefix)
    /* Only the top node's "filename" names a file node for it. */
    return fail (a, "A block device must be specified for \"file\"");
  if (!qdict_has_prefix (d, KEY ("file."))) {
    /* QEMU takes "filename" for the file node too. */
    if (qdict_take (d, KEY ("filename"), NULL) == NULL)
      return fail (a, "The 'file' block driver requires a file name");
    for (size_t i = 0; i < d->n; i++)
      if (strcmp (d->e[i].key, key) == 0)
        sp->filename = d->e[i].value;
  }
  else {
    char fprefix[64];

    snprintf (fprefix, sizeof fprefix, "%sfile.", prefix);
    if (file_node (a, d, fprefix, sp) < 0)
      return -1;
  }
  return 0;
}

/* The options of the format node at PREFIX for its driver (raw: offset
 * and size; qcow2 or probed: backing).  0, or -1 (logged). */
static int
format_opts (const struct qnbd_image_args *a, struct qdict *d,
             const char *prefix, struct spec *sp)
{
  const char *v;
  bool found;
  char key[64];

  if (sp->driver && strcmp (sp->driver, "raw") == 0) {
    v = qdict_take (d, KEY ("offset"), &found);
    if (found && parse_size_opt (v, &sp->offset) < 0)
      return fail (a, "Parameter 'offset' expects a non-negative number "
                   "below 2^64");
    v = qdict_take (d, KEY ("size"), &sp->has_size);
    if (sp->has_size && parse_size_opt (v, &sp->size) < 0)
      return fail (a, "Parameter 'size' expects a non-negative number "
                   "below 2^64");
  }
  if (!sp->driver || strcmp (sp->driver, "qcow2") == 0) {
    v = qdict_take (d, KEY ("backing"), &found);
    /* In key=value lists "null" is a node name like any other. */
    if (found && v != NULL)
      return fail (a, "Could not open backing file: Cannot find "
                   "device='%s' nor node-name='%s'", v, v);
    if (found)
      sp->no_backing = true;
    if (qdict_has_prefix (d, KEY ("backing.")))
      return fail (a, "qcow2-nbd opens backing files only as the image "
                   "names them (backing=null or nothing)");
    if (sp->driver)
      qcow2_opts (d, prefix);
  }
  return 0;
}

/* The format node at PREFIX ("", or "file." under the compress filter)
 * whose driver is DRV (NULL: probe): its file node and its own
 * options. */
static int
format_node (const struct qnbd_image_args *a, struct qdict *d,
             const char *prefix, const char *drv, struct spec *sp)
{
  if (drv && is_file_driver (drv)) {
    /* A bare protocol node: the file's bytes, as raw. */
    sp->driver = "raw";
    return file_node (a, d, prefix, sp);
  }
  if (drv && is_null_driver (drv)) {
    sp->driver = "raw";
    return null_node (a, d, prefix, drv, sp);
  }
  if (drv && strcmp (drv, "qcow2") != 0 && strcmp (drv, "raw") != 0)
    return unsupported_driver (a, drv);
  sp->driver = drv;
  if (format_file (a, d, prefix, sp) < 0)
    return -1;
  return format_opts (a, d, prefix, sp);
}

/* The compress filter: its "file" child must be a qcow2 node, which
 * QEMU opens before it looks at the driver (so its errors come first),
 * then refuses every other format with the same message. */
static int
compress_node (const struct qnbd_image_args *a, struct qdict *d,
               struct spec *sp)
{
  const char *v, *drv;
  bool found;

  sp->compress = true;
  v = qdict_take (d, "file", &found);
  if (found)
    return fail (a, "Cannot find device='%s' nor node-name='%s'",
                 v ? v : "", v ? v : "");
  if (!qdict_has_prefix (d, "file."))
    return fail (a, "A block device must be specified for \"file\"");
  drv = qdict_take (d, "file.driver", &found);
  if (common_opts (a, d, "file.", sp) < 0)
    return -1;
  if (drv && strcmp (drv, "qcow2") == 0)
    return format_node (a, d, "file.", drv, sp);
  if (drv && strcmp (drv, "compress") == 0)
    /* QEMU opens the inner filter first: its own complaints win. */
    return fail (a, "Compression is not supported for underlying format: "
                 "compress");
  if (drv && strcmp (drv, "raw") != 0 && !is_file_driver (drv))
    return unsupported_driver (a, drv);
  /* Without a driver the child is a protocol node ("file"); raw and
   * protocol nodes open, then cannot compress. */
  if (format_node (a, d, "file.", drv ? drv : "file", sp) < 0)
    return -1;
  {
    int fd = open (sp->filename, O_RDONLY | O_CLOEXEC);

    if (fd == -1)
      return fail (a, "Could not open '%s': %m", sp->filename);
    close (fd);
  }
  return fail (a, "Compression is not supported for underlying format: %s",
               drv ? drv : "file");
}

static int
from_dict (const struct qnbd_image_args *a, struct qdict *d, struct spec *sp)
{
  const char *drv, *v;
  bool found;

  drv = qdict_take (d, "driver", &found);
  if (!found || drv == NULL)
    drv = a->format;
  if (common_opts (a, d, "", sp) < 0)
    return -1;
  if (drv && strcmp (drv, "compress") == 0) {
    if (compress_node (a, d, sp) < 0)
      return -1;
  }
  else if (format_node (a, d, "", drv, sp) < 0)
    return -1;

  v = qdict_unused (d);
  if (v) {
    const char *opt = v;

    if (sp->compress) {
      if (strncmp (v, "file.", 5) != 0)
        return fail (a, "Block format 'compress' does not support the "
                     "option '%s'", v);
      opt = v + 5;
    }
    if (strncmp (opt, "file.", 5) == 0)
      return fail (a, "Block protocol '%s' doesn't support the option "
                   "'%s'", sp->null_driver ? sp->null_driver : "file",
                   opt + 5);
    if (sp->null_top)
      /* The null node is the top node: its options are unprefixed. */
      return fail (a, "Block protocol '%s' doesn't support the option "
                   "'%s'", sp->null_driver, opt);
    return fail (a, "Block format '%s' does not support the option '%s'",
                 sp->driver ? sp->driver : "raw", opt);
  }
  return 0;
}

/* QEMU reads a name with a ':' before any '/' as PROTOCOL:REST. */
static int
plain_name (const struct qnbd_image_args *a, struct spec *sp)
{
  const char *f = a->file, *colon = strchr (f, ':'), *slash = strchr (f, '/');

  sp->driver = a->format;
  sp->filename = f;
  if (colon && (!slash || colon < slash)) {
    size_t n = colon - f;

    if (n == 4 && strncmp (f, "file", 4) == 0)
      sp->filename = colon + 1;
    else {
      char proto[64];

      snprintf (proto, sizeof proto, "%.*s", (int) MIN (n, 63u), f);
      if (!is_null_driver (proto)) {
        if (is_other_driver (proto))
          return fail (a, "the '%s' protocol is not supported by "
                       "qcow2-nbd, which serves local files only", proto);
        return fail (a, "Unknown protocol '%s'", proto);
      }
      if (strcmp (colon, "://") != 0)
        return fail (a, "The only allowed filename for this driver is "
                     "'%s://'", proto);
      sp->null_driver = strcmp (proto, "null-co") == 0 ? "null-co"
        : "null-aio";
      sp->null_size = NULL_DEFAULT_SIZE;
    }
  }
  if (sp->driver && is_file_driver (sp->driver))
    sp->driver = "raw";
  else if (sp->driver && strcmp (sp->driver, "compress") == 0) {
    /* -f compress FILE: the filter over a protocol node. */
    int fd;

    if (*sp->filename == '\0')
      return fail (a, "The 'file' block driver requires a file name");
    fd = open (sp->filename, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
      return fail (a, "Could not open '%s': %m", sp->filename);
    close (fd);
    return fail (a, "Compression is not supported for underlying format: "
                 "file");
  }
  else if (sp->driver && strcmp (sp->driver, "qcow2")
           && strcmp (sp->driver, "raw"))
    return unsupported_driver (a, sp->driver);
  if (*sp->filename == '\0')
    return fail (a, "The 'file' block driver requires a file name");
  return 0;
}

/* Probe the format of SP->filename as QEMU does.  Sets sp->driver and
 * *PROBED (raw guessed). */
static int
probe (const struct qnbd_image_args *a, struct spec *sp, bool *probed)
{
  uint8_t buf[PROBE_SIZE] = { 0 };
  struct stat st;
  const char *fmt;
  ssize_t n;
  int fd;

  fd = open (sp->filename, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return fail (a, "Could not open '%s': %m", sp->filename);
  if (fstat (fd, &st) == 0 && S_ISDIR (st.st_mode)) {
    close (fd);
    return fail (a, "Could not open '%s': %s", sp->filename,
                 strerror (EISDIR));
  }
  n = pread (fd, buf, sizeof buf, 0);
  close (fd);
  if (n < 0)
    return fail (a, "Could not read image for determining its format: %m");
  /* An empty file is raw without looking; past the end reads zeros. */
  fmt = n == 0 ? "raw" : probe_format (buf, sizeof buf, sp->filename);
  if (strcmp (fmt, "qcow2") != 0 && strcmp (fmt, "raw") != 0)
    return fail (a, "'%s' is a %s image; qcow2-nbd serves qcow2 and raw "
                 "images only", sp->filename, fmt);
  sp->driver = fmt;
  *probed = strcmp (fmt, "raw") == 0;
  return 0;
}

int
qnbd_image_config (const struct qnbd_image_args *a,
                   struct server_config *cfg)
{
  struct spec sp = {
    .direct = a->direct, .no_flush = a->no_flush,
    .discard_unmap = a->discard_unmap, .aio_native = a->aio_native,
  };
  /* Static: the configuration points into it for the program's life. */
  static struct qdict d;
  bool probed = false;
  char err[256];
  int r = 0;

  if (a->image_opts) {
    if (qdict_parse_opts (&d, a->file, "file", err, sizeof err) < 0) {
      qnbd_error ("%s", err);
      return -1;
    }
    r = from_dict (a, &d, &sp);
  }
  else if (strncmp (a->file, "json:", 5) == 0) {
    r = qdict_parse_json (&d, a->file + 5, err, sizeof err);
    if (r == -2)
      r = fail (a, "%s", err);
    else if (r < 0)
      r = fail (a, "Could not parse the JSON options: %s", err);
    else
      r = from_dict (a, &d, &sp);
  }
  else
    r = plain_name (a, &sp);
  if (r == 0 && sp.aio_native && !sp.direct)
    r = fail (a, "aio=native was specified, but it requires cache.direct=on, "
              "which was not specified.");
  if (r == 0 && sp.read_only_opt && !a->read_only)
    r = fail (a, "Block node is read-only");
  if (r == 0 && sp.null_driver)
    r = null_file (a, &sp);
  if (r == 0 && sp.driver == NULL)
    r = probe (a, &sp, &probed);
  if (r < 0) {
    qdict_free (&d);
    return -1;
  }

  /* The strings now belong to the configuration for the program's
   * life: the dictionary is never freed on success. */
  cfg->image = sp.filename;
  cfg->format = strcmp (sp.driver, "raw") == 0 ? QCOW2_FORMAT_RAW
    : QCOW2_FORMAT_QCOW2;
  cfg->probed_raw = probed;
  cfg->no_backing = sp.no_backing;
  cfg->no_locks = sp.no_locks;
  cfg->offset = sp.offset;
  cfg->size = sp.size;
  cfg->has_size = sp.has_size;
  cfg->overlay = a->overlay;
  cfg->direct_io = sp.direct;
  cfg->writethrough = a->writethrough;
  cfg->no_flush = sp.no_flush;
  cfg->discard_unmap = sp.discard_unmap;
  cfg->detect_zeroes = a->detect_zeroes;
  cfg->compress = sp.compress;
  cfg->read_only = a->read_only;

  /* --offset: a raw node over whatever the image is (qemu-nbd.c), so a
   * window over the window. */
  if (a->offset) {
    if (cfg->has_size) {
      if (a->offset > cfg->size) {
        qnbd_error ("Offset (%" PRIu64 ") cannot be greater than size of "
                    "the containing file (%" PRIu64 ")", a->offset,
                    cfg->size);
        return -1;
      }
      cfg->size -= a->offset;
    }
    cfg->offset += a->offset;
  }

  if (probed && !a->read_only && !a->overlay)
    fprintf (stderr, "WARNING: Image format was not specified for '%s' and "
             "probing guessed raw.\n"
             "         Automatically detecting the format is dangerous for "
             "raw images, write operations on block 0 will be restricted.\n"
             "         Specify the 'raw' format explicitly to remove the "
             "restrictions.\n", sp.null_driver ? a->file : sp.filename);
  return 0;
}

void
qnbd_bitmap_failed (const struct server_config *cfg, const char *name,
                    const char *msg)
{
  if (strstr (msg, "is not found"))
    qnbd_error ("Bitmap '%s' is not found", name);
  else if (strstr (msg, "inconsistent"))
    qnbd_error ("Bitmap '%s' is inconsistent and cannot be used\n"
                "Try block-dirty-bitmap-remove to delete this bitmap from "
                "disk", name);
  else
    qnbd_error ("%s", msg);
}

void
qnbd_open_failed (const struct server_config *cfg, int r,
                  const struct qcow2_open_error *e, const char *msg)
{
  const char *arg = cfg->image;
  const char *prefix = e->depth > 1 ? "Could not open backing file: " : "";

  (void) arg;
  switch (e->kind) {
  case QCOW2_OPEN_ERROR_OPEN:
    qnbd_error ("Failed to blk_new_open '%s': %sCould not open '%s': %s",
                qnbd_image_arg, prefix, e->file, strerror (e->err));
    return;
  case QCOW2_OPEN_ERROR_NOT_QCOW2:
    qnbd_error ("Failed to blk_new_open '%s': %sImage is not in qcow2 "
                "format", qnbd_image_arg, prefix);
    return;
  case QCOW2_OPEN_ERROR_LOCK:
    qnbd_error ("Failed to blk_new_open '%s': %sFailed to get %s\"%s\" lock\n"
                "Is another process using the image [%s]?", qnbd_image_arg,
                prefix, e->shared ? "shared " : "", e->perm, e->file);
    return;
  default:
    /* -l naming no snapshot of the image. */
    if (r == -ENOENT && (cfg->snapshot || cfg->snapshot_id
                         || cfg->snapshot_name))
      qnbd_error ("Failed to load snapshot: Can't find snapshot");
    else if (r == -EROFS)
      qnbd_error ("Failed to blk_new_open '%s': qcow2: Image is corrupt; "
                  "cannot be opened read/write", qnbd_image_arg);
    else
      qnbd_error ("Failed to blk_new_open '%s': %s", qnbd_image_arg,
                  *msg ? msg : strerror (-r));
    return;
  }
}
