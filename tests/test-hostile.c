/* SPDX-License-Identifier: MIT */
/* Open every image make-hostile.py made and check what the library does
 * with it against the manifest: refused at open with the right errno and
 * a log line that says why, or opened with every 4 KiB chunk of the guest
 * reading either exactly like the reference raw image or, inside the
 * ranges the manifest names, failing with EIO (and the image flagged
 * corrupt).  Built with ASan and UBSan whatever the configuration, so an
 * out-of-bounds read or a leak on an error path fails the test too.
 *
 * Usage: test-hostile DIR   (DIR holds manifest.txt and the images) */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"

#define CHUNK 4096

static char log_buf[65536];
static size_t log_len;
static unsigned log_errors;

static void
log_cb (void *opaque, enum qcow2_log_level level, const char *msg)
{
  int n;

  if (level == QCOW2_LOG_ERROR)
    log_errors++;
  n = snprintf (log_buf + log_len, sizeof log_buf - log_len, "%s%s\n",
                level == QCOW2_LOG_ERROR ? "error: " :
                level == QCOW2_LOG_WARNING ? "warning: " : "debug: ", msg);
  if (n > 0 && (size_t) n < sizeof log_buf - log_len)
    log_len += n;
}

static void
log_reset (void)
{
  log_len = 0;
  log_buf[0] = '\0';
  log_errors = 0;
}

static const struct { const char *name; int err; } errnos[] = {
  { "EINVAL", EINVAL }, { "ENOTSUP", ENOTSUP }, { "ENOENT", ENOENT },
  { "EROFS", EROFS }, { "EIO", EIO }, { "ELOOP", ELOOP },
  { "ENOMEM", ENOMEM },
};

static int
errno_by_name (const char *name)
{
  size_t i;

  for (i = 0; i < sizeof errnos / sizeof errnos[0]; i++)
    if (strcmp (errnos[i].name, name) == 0)
      return errnos[i].err;
  fprintf (stderr, "test-hostile: unknown errno name %s\n", name);
  exit (EXIT_FAILURE);
}

/* Flags column: comma-separated key[=value]. */
struct flags {
  const char *ref;
  const char *zeros;           /* range that must read as zeros, or "-" */
  bool writable, corrupt;
  unsigned depth, layers;
  const char *bitmap;          /* qcow2_bitmap_get it after the open */
  const char *snapshot;        /* qcow2_open_opts.snapshot */
};

static void
parse_flags (char *s, struct flags *fl)
{
  char *tok, *save = NULL;

  memset (fl, 0, sizeof *fl);
  fl->ref = "ref.raw";
  fl->zeros = "-";
  for (tok = strtok_r (s, ",", &save); tok; tok = strtok_r (NULL, ",", &save)) {
    if (strncmp (tok, "ref=", 4) == 0)
      fl->ref = tok + 4;
    else if (strncmp (tok, "zeros=", 6) == 0)
      fl->zeros = tok + 6;
    else if (strcmp (tok, "writable") == 0)
      fl->writable = true;
    else if (strcmp (tok, "corrupt") == 0)
      fl->corrupt = true;
    else if (strncmp (tok, "depth=", 6) == 0)
      fl->depth = atoi (tok + 6);
    else if (strncmp (tok, "layers=", 7) == 0)
      fl->layers = atoi (tok + 7);
    else if (strncmp (tok, "bitmap=", 7) == 0)
      fl->bitmap = tok + 7;
    else if (strncmp (tok, "snapshot=", 9) == 0)
      fl->snapshot = tok + 9;
    else {
      fprintf (stderr, "test-hostile: unknown flag %s\n", tok);
      exit (EXIT_FAILURE);
    }
  }
}

/* Is [off, off+len) inside one of the ranges "a-b,c-d" (or "-")? */
static bool
in_ranges (const char *ranges, uint64_t off, uint64_t len)
{
  const char *p = ranges;

  if (strcmp (ranges, "-") == 0)
    return false;
  while (*p) {
    char *end;
    uint64_t a = strtoull (p, &end, 10), b;

    if (*end != '-')
      goto bad;
    b = strtoull (end + 1, &end, 10);
    if (off < b && a < off + len) {
      if (off < a || off + len > b) {
        fprintf (stderr, "test-hostile: range %s not chunk aligned\n",
                 ranges);
        exit (EXIT_FAILURE);
      }
      return true;
    }
    if (*end == ',')
      end++;
    else if (*end != '\0')
      goto bad;
    p = end;
  }
  return false;
 bad:
  fprintf (stderr, "test-hostile: bad range list %s\n", ranges);
  exit (EXIT_FAILURE);
}

static unsigned failures;

static void __attribute__ ((format (printf, 2, 3)))
fail (const char *image, const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "FAIL: %s: ", image);
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n  log:\n%s", log_buf);
  failures++;
}

static void
open_opts (const struct flags *fl, struct qcow2_open_opts *opts)
{
  memset (opts, 0, sizeof *opts);
  opts->writable = fl->writable;
  opts->max_backing_depth = fl->depth;
  opts->log = log_cb;
  opts->snapshot = fl->snapshot;
}

/* With a bitmap= flag: get the bitmap of the open IMG, and walk its runs
 * over the whole disk (they must tile it).  0 or the -errno of
 * qcow2_bitmap_get. */
static int
get_bitmap (const char *image, struct qcow2_image *img,
            const struct flags *fl)
{
  struct qcow2_bitmap *bm;
  uint64_t off = 0, size = qcow2_virtual_size (img);
  int r;

  if (fl->bitmap == NULL)
    return 0;
  r = qcow2_bitmap_get (img, fl->bitmap, &bm);
  if (r < 0)
    return r;
  while (off < size) {
    bool dirty;
    uint64_t n = qcow2_bitmap_extent (bm, off, size - off, &dirty);

    if (n == 0 || n > size - off) {
      fail (image, "bitmap run of %" PRIu64 " bytes at %" PRIu64, n, off);
      break;
    }
    off += n;
  }
  return 0;
}

static void
case_refuse (const char *image, const char *errname, const char *keyword,
             const struct flags *fl)
{
  struct qcow2_open_opts opts;
  struct qcow2_image *img = NULL;
  int want = errno_by_name (errname), r;

  open_opts (fl, &opts);
  r = qcow2_open (image, &opts, &img);
  if (r == 0 && fl->bitmap) {
    /* Refused when the bitmap is asked for, then. */
    r = get_bitmap (image, img, fl);
    qcow2_close (img);
    img = NULL;
    if (r == 0) {
      fail (image, "bitmap %s loaded, expected -%s", fl->bitmap, errname);
      return;
    }
  }
  else if (r == 0) {
    fail (image, "opened, expected -%s", errname);
    qcow2_close (img);
    return;
  }
  if (img != NULL)
    fail (image, "failed open left *imgp set");
  if (r != -want)
    fail (image, "open returned %d (%s), expected -%s", r, strerror (-r),
          errname);
  if (log_errors == 0)
    fail (image, "open failed without logging an error");
  if (strcasestr (log_buf, keyword) == NULL)
    fail (image, "log does not mention \"%s\"", keyword);
  printf ("ok: %s refused (%s)", image, errname);
  if (fl->writable)
    printf (" read-write");
  printf (": %s", log_buf);
}

static void
case_read (const char *image, const char *ranges, const char *keyword,
           const struct flags *fl)
{
  struct qcow2_open_opts opts;
  struct qcow2_image *img = NULL;
  FILE *ref;
  char *buf, *want;
  uint64_t size, off, ref_size;
  unsigned eio = 0, errors_before;
  int r;

  open_opts (fl, &opts);
  r = qcow2_open (image, &opts, &img);
  if (r < 0) {
    fail (image, "open failed: %s", strerror (-r));
    return;
  }
  if (*keyword && strcasestr (log_buf, keyword) == NULL)
    fail (image, "log does not mention \"%s\" after open", keyword);
  if (log_errors)
    fail (image, "open succeeded but logged an error");
  r = get_bitmap (image, img, fl);
  if (r < 0)
    fail (image, "bitmap %s: %s", fl->bitmap, strerror (-r));
  if (fl->layers && qcow2_chain_depth (img) != fl->layers)
    fail (image, "chain depth %u, expected %u", qcow2_chain_depth (img),
          fl->layers);
  if (qcow2_file_count (img) < qcow2_chain_depth (img) ||
      strcmp (qcow2_file_name (img, 0), image) != 0 ||
      qcow2_file_fd (img, 0) < 0 ||
      qcow2_file_fd (img, qcow2_file_count (img)) != -EINVAL ||
      qcow2_file_name (img, qcow2_file_count (img)) != NULL)
    fail (image, "file table inconsistent");

  ref = fopen (fl->ref, "rb");
  if (!ref) {
    perror (fl->ref);
    exit (EXIT_FAILURE);
  }
  fseek (ref, 0, SEEK_END);
  ref_size = ftell (ref);
  size = qcow2_virtual_size (img);
  if (size != ref_size)
    fail (image, "virtual size %" PRIu64 ", reference has %" PRIu64,
          size, ref_size);

  buf = malloc (CHUNK);
  want = malloc (CHUNK);
  if (!buf || !want)
    abort ();
  errors_before = log_errors;
  for (off = 0; off < size && off < ref_size; off += CHUNK) {
    size_t len = size - off < CHUNK ? size - off : CHUNK;
    bool expect_eio = in_ranges (ranges, off, len);

    memset (buf, 0x5a, len);
    r = qcow2_pread (img, buf, len, off);
    if (expect_eio) {
      if (r != -EIO)
        fail (image, "read at %" PRIu64 " returned %d, expected -EIO",
              off, r);
      eio++;
      continue;
    }
    if (r != 0) {
      fail (image, "read at %" PRIu64 " failed: %s", off, strerror (-r));
      continue;
    }
    if (in_ranges (fl->zeros, off, len))
      memset (want, 0, len);
    else if (fseek (ref, off, SEEK_SET) != 0 ||
             fread (want, 1, len, ref) != len)
      abort ();
    if (memcmp (buf, want, len) != 0) {
      fail (image, "data at %" PRIu64 " differs from %s", off, fl->ref);
      break;
    }
  }
  /* Reads outside the guest are refused, not served. */
  r = qcow2_pread (img, buf, 1, size);
  if (r != -EINVAL)
    fail (image, "read past the end returned %d, expected -EINVAL", r);

  if (qcow2_is_corrupt (img) != fl->corrupt)
    fail (image, "corrupt flag is %d, expected %d", qcow2_is_corrupt (img),
          fl->corrupt);
  if (eio && (log_errors == errors_before ||
              strstr (log_buf, "corruption") == NULL))
    fail (image, "EIO without a corruption message");
  if (!eio && log_errors != errors_before)
    fail (image, "reads logged errors");
  printf ("ok: %s read, %u chunks gave EIO as expected\n", image, eio);

  free (buf);
  free (want);
  fclose (ref);
  qcow2_close (img);
}

/* Fault injection: the posix ops, but the Nth call of open, pread or
 * get_size fails with EIO.  Opening must then fail with exactly that
 * error (and ASan sees any leak on that error path). */
static unsigned calls, fail_at;

static bool
inject (void)
{
  return ++calls == fail_at;
}

static int
fi_open (void *o, const char *path, bool w)
{
  return inject () ? -EIO : qcow2_posix_io.open (o, path, w);
}

static int
fi_pread (void *o, int fd, void *buf, size_t len, uint64_t off)
{
  return inject () ? -EIO : qcow2_posix_io.pread (o, fd, buf, len, off);
}

static int
fi_get_size (void *o, int fd, uint64_t *size)
{
  return inject () ? -EIO : qcow2_posix_io.get_size (o, fd, size);
}

static void
fault_injection (const char *image)
{
  struct qcow2_io_ops ops = qcow2_posix_io;
  struct qcow2_open_opts opts = { .io = &ops, .log = log_cb };
  struct qcow2_image *img;
  unsigned n;
  int r;

  ops.open = fi_open;
  ops.pread = fi_pread;
  ops.get_size = fi_get_size;
  for (n = 1;; n++) {
    log_reset ();
    calls = 0;
    fail_at = n;
    img = NULL;
    r = qcow2_open (image, &opts, &img);
    if (r == 0) {
      qcow2_close (img);
      if (calls >= n)
        fail (image, "open succeeded although I/O call %u failed", n);
      break;
    }
    if (r != -EIO || log_errors == 0 || img != NULL)
      fail (image, "with I/O call %u failing, open returned %d", n, r);
  }
  printf ("ok: %s: each of its %u open-time I/O calls failing fails the "
          "open cleanly\n", image, n - 1);
}

int
main (int argc, char **argv)
{
  FILE *fp;
  char line[4096];
  unsigned cases = 0;

  setvbuf (stdout, NULL, _IOLBF, 0);
  if (argc != 2) {
    fprintf (stderr, "usage: test-hostile DIR\n");
    exit (EXIT_FAILURE);
  }
  if (chdir (argv[1]) == -1) {
    perror (argv[1]);
    exit (EXIT_FAILURE);
  }
  fp = fopen ("manifest.txt", "r");
  if (!fp) {
    perror ("manifest.txt");
    exit (EXIT_FAILURE);
  }
  while (fgets (line, sizeof line, fp)) {
    char *f[5], *p = line, *nl = strchr (line, '\n');
    struct flags fl;
    size_t i;

    if (nl)
      *nl = '\0';
    if (!*line)
      continue;
    for (i = 0; i < 5; i++) {
      f[i] = p;
      p = strchr (p, '|');
      if (p)
        *p++ = '\0';
      else if (i < 4) {
        fprintf (stderr, "test-hostile: bad manifest line: %s\n", line);
        exit (EXIT_FAILURE);
      }
      else
        break;
    }
    parse_flags (f[4], &fl);
    log_reset ();
    if (strcmp (f[0], "refuse") == 0)
      case_refuse (f[1], f[2], f[3], &fl);
    else if (strcmp (f[0], "read") == 0)
      case_read (f[1], f[2], f[3], &fl);
    else {
      fprintf (stderr, "test-hostile: bad case kind %s\n", f[0]);
      exit (EXIT_FAILURE);
    }
    cases++;
  }
  fclose (fp);
  fault_injection ("sub/chain2.qcow2");
  fault_injection ("datafile.qcow2");
  fault_injection ("snapshot-ok.qcow2");
  fault_injection ("bitmaps.qcow2");
  if (cases == 0) {
    fprintf (stderr, "test-hostile: empty manifest\n");
    exit (EXIT_FAILURE);
  }
  printf ("%u cases, %u failures\n", cases, failures);
  return failures ? EXIT_FAILURE : EXIT_SUCCESS;
}
