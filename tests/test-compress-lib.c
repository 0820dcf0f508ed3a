/* SPDX-License-Identifier: MIT */
/* Compressed writes through libqcow2 from several threads at once,
 * driven by tests/test-compress-write.sh on an empty image made by
 * qemu-img.
 *
 *   test-compress-lib IMAGE SHADOW SEED THREADS OPS
 *
 * Each thread owns a run of whole clusters and does OPS random
 * operations in it through qcow2_pwrite_compressed and qcow2_zero with
 * QCOW2_COMPRESSED: whole clusters of text (which compress) or random
 * bytes (which do not), unaligned writes and zeroings (widened to whole
 * clusters, the rest read back as zeros), writes across several
 * clusters, rewrites of written clusters (refused with EIO when the new
 * data compresses, and then nothing may change; accepted when it does
 * not), and FLUSHes.  Streams of all threads are packed into the same
 * host clusters, so the threads share refcounts.  Every operation is
 * read back at once against the thread's copy; at the end the copies go
 * to the raw file SHADOW and the image is closed, and the script
 * compares the two with qemu-img compare and checks the image. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "tests/tests.h"

static struct qcow2_image *img;
static uint64_t vsize, csize;
static unsigned nthreads;
static unsigned long nops;
static bool verbose;            /* COMPRESS_VERBOSE=1: log every operation */

/* xorshift64*: each thread its own stream. */
static uint64_t
rnd (uint64_t *s)
{
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * UINT64_C (2685821657736338717);
}

static void
fill (uint64_t *s, uint8_t *p, size_t n, bool compressible)
{
  static const char *const words[] = {
    "qcow2 ", "cluster ", "stream ", "deflate ", "zstd ", "refcount ",
  };

  for (size_t i = 0; i < n;) {
    if (compressible) {
      const char *w = words[rnd (s) % 6];
      size_t l = strlen (w);

      for (size_t j = 0; j < l && i < n; j++)
        p[i++] = w[j];
    }
    else
      p[i++] = rnd (s);
  }
}

struct thread {
  unsigned id;
  uint64_t start, len;          /* the thread's range: whole clusters */
  uint8_t *copy;                /* what the range must read */
  bool *written;                /* per cluster: has a host cluster */
  uint64_t seed;
  pthread_t tid;
};

/* Does [off, off+len) of T touch a written cluster? */
static bool
touches_written (struct thread *t, uint64_t off, uint64_t len)
{
  for (uint64_t c = off / csize; c <= (off + len - 1) / csize; c++)
    if (t->written[c - t->start / csize])
      return true;
  return false;
}

static void
mark_written (struct thread *t, uint64_t off, uint64_t len)
{
  for (uint64_t c = off / csize; c <= (off + len - 1) / csize; c++)
    t->written[c - t->start / csize] = true;
}

static void
check_range (struct thread *t, uint64_t off, uint64_t len, const char *what)
{
  uint8_t *buf = malloc (len);
  int r;

  if (buf == NULL)
    abort ();
  r = qcow2_pread (img, buf, len, off);
  if (r < 0)
    test_fail ("thread %u: read after %s at %" PRIu64 ": %s", t->id, what,
             off, strerror (-r));
  else if (memcmp (buf, t->copy + (off - t->start), len) != 0)
    test_fail ("thread %u: %s at %" PRIu64 "+%" PRIu64 " reads back wrong",
             t->id, what, off, len);
  free (buf);
}

/* qcow2_zero with QCOW2_COMPRESSED over [off, off+len), which either
 * starts on a cluster boundary or lies inside one cluster, so that at
 * most one partial cluster is written (compressed, or as it is if the
 * widened cluster does not compress) and it comes last: whole clusters
 * become zero clusters first (MAY_UNMAP: with no host cluster, whatever
 * they held), then the partial one is written, or refused with EIO,
 * unchanged, if it has a host cluster and compresses. */
static void
zero_op (struct thread *t, uint64_t off, uint64_t len)
{
  uint64_t end = off + len, me = end / csize * csize;
  int r;

  r = qcow2_zero (img, off, len, QCOW2_COMPRESSED | QCOW2_MAY_UNMAP);
  if (verbose)
    fprintf (stderr, "thread %u: zeroing at %" PRIu64 "+%" PRIu64 ": %d\n",
             t->id, off, len, r);
  if (off % csize == 0) {
    memset (t->copy + (off - t->start), 0, me - off);
    for (uint64_t c = off; c < me; c += csize)
      t->written[(c - t->start) / csize] = false;
  }
  else
    me = off;
  if (r == 0 && me < end) {
    memset (t->copy + (me - t->start), 0, end - me);
    mark_written (t, me, end - me);
  }
  else if (r == -EIO && (me == end || !touches_written (t, me, end - me)))
    test_fail ("thread %u: zeroing at %" PRIu64 "+%" PRIu64 " refused with "
             "no allocated partial cluster", t->id, off, len);
  else if (r != 0 && r != -EIO)
    test_fail ("thread %u: zeroing at %" PRIu64 "+%" PRIu64 ": %s", t->id,
             off, len, strerror (-r));
  check_range (t, off / csize * csize,
               (end + csize - 1) / csize * csize - off / csize * csize,
               "zeroing");
}

static void *
thread_main (void *arg)
{
  struct thread *t = arg;
  const uint64_t nclusters = t->len / csize;
  uint8_t *data = malloc (4 * csize);

  if (data == NULL)
    abort ();
  for (unsigned long i = 0; i < nops && !test_failed (); i++) {
    uint64_t c = t->start / csize + rnd (&t->seed) % nclusters;
    uint64_t coff = c * csize, off, len;
    unsigned kind = rnd (&t->seed) % 8;
    bool compressible = rnd (&t->seed) % 3 != 0;
    const char *what;
    int r;

    switch (kind) {
    case 0: case 1: case 2:             /* whole clusters, 1 to 3 */
      len = csize * (1 + rnd (&t->seed) % 3);
      if (coff + len > t->start + t->len)
        len = t->start + t->len - coff;
      off = coff;
      what = "write";
      break;
    case 3: case 4:                     /* inside one cluster */
      off = coff + rnd (&t->seed) % csize;
      len = 1 + rnd (&t->seed) % (coff + csize - off);
      what = "unaligned write";
      break;
    case 5:                             /* across a cluster boundary */
      if (coff + 2 * csize > t->start + t->len) {
        i--;
        continue;
      }
      off = coff + rnd (&t->seed) % csize;
      len = coff + csize - off + 1 + rnd (&t->seed) % csize;
      what = "straddling write";
      break;
    case 6:                             /* zeroing (see zero_op) */
      if (rnd (&t->seed) % 2) {
        off = coff;
        len = 1 + rnd (&t->seed) % (3 * csize);
        if (off + len > t->start + t->len)
          len = t->start + t->len - off;
      }
      else {
        off = coff + rnd (&t->seed) % csize;
        len = 1 + rnd (&t->seed) % (coff + csize - off);
      }
      what = "zeroing";
      break;
    default:
      r = qcow2_flush (img);
      if (r < 0)
        test_fail ("thread %u: flush: %s", t->id, strerror (-r));
      continue;
    }

    if (kind == 6) {
      zero_op (t, off, len);
      continue;
    }

    /* The widened clusters: what they read before, with the new data. */
    uint64_t astart = off / csize * csize;
    uint64_t aend = (off + len + csize - 1) / csize * csize;
    bool written = touches_written (t, astart, aend - astart);
    /* Whole clusters of text always compress, random ones never do;
     * a widened partial cluster may go either way. */
    bool whole = off == astart && off + len == aend;

    fill (&t->seed, data, len, compressible);
    r = qcow2_pwrite_compressed (img, data, len, off);
    if (verbose)
      fprintf (stderr, "thread %u: %s %s at %" PRIu64 "+%" PRIu64
               " (written %d): %d\n", t->id, what,
               compressible ? "text" : "random", off, len, written, r);
    if (r == -EIO && written && !(whole && !compressible)) {
      /* Refused (a cluster that compresses is allocated): nothing may
       * have changed. */
      check_range (t, astart, aend - astart, "refused write");
      continue;
    }
    if (r == 0 && written && whole && compressible) {
      test_fail ("thread %u: %s of text over written clusters at %" PRIu64
               " was not refused", t->id, what, off);
      continue;
    }
    if (r < 0) {
      test_fail ("thread %u: %s at %" PRIu64 "+%" PRIu64 " (%s): %s", t->id,
               what, off, len, compressible ? "text" : "random",
               strerror (-r));
      continue;
    }
    memcpy (t->copy + (off - t->start), data, len);
    mark_written (t, astart, aend - astart);
    check_range (t, astart, aend - astart, what);
  }
  free (data);
  return NULL;
}

int
main (int argc, char **argv)
{
  struct qcow2_open_opts opts = { .writable = true, .log = test_log_cb };
  struct thread *th;
  int shadow, r;

  if (argc != 6) {
    fprintf (stderr, "usage: %s IMAGE SHADOW SEED THREADS OPS\n", argv[0]);
    return 2;
  }
  verbose = getenv ("COMPRESS_VERBOSE") != NULL;
  nthreads = strtoul (argv[4], NULL, 10);
  nops = strtoul (argv[5], NULL, 10);
  r = qcow2_open (argv[1], &opts, &img);
  if (r < 0) {
    fprintf (stderr, "open %s: %s\n", argv[1], strerror (-r));
    return 1;
  }
  vsize = qcow2_virtual_size (img);
  csize = qcow2_cluster_size (img);
  if (nthreads == 0 || vsize % csize || vsize / csize < nthreads) {
    fprintf (stderr, "need a whole number of clusters, at least one per "
             "thread\n");
    return 2;
  }

  th = calloc (nthreads, sizeof *th);
  for (unsigned i = 0; i < nthreads; i++) {
    struct thread *t = &th[i];
    uint64_t per = vsize / csize / nthreads;

    t->id = i;
    t->start = i * per * csize;
    t->len = i + 1 == nthreads ? vsize - t->start : per * csize;
    t->copy = calloc (1, t->len);
    t->written = calloc (t->len / csize, sizeof *t->written);
    t->seed = strtoull (argv[3], NULL, 10) * 1000003 + i + 1;
    if (t->copy == NULL || t->written == NULL)
      abort ();
    pthread_create (&t->tid, NULL, thread_main, t);
  }
  for (unsigned i = 0; i < nthreads; i++)
    pthread_join (th[i].tid, NULL);

  shadow = open (argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (shadow == -1) {
    perror (argv[2]);
    return 1;
  }
  for (unsigned i = 0; i < nthreads; i++)
    if (pwrite (shadow, th[i].copy, th[i].len, th[i].start)
        != (ssize_t) th[i].len) {
      perror ("shadow");
      return 1;
    }
  close (shadow);
  qcow2_close (img);
  for (unsigned i = 0; i < nthreads; i++) {
    free (th[i].copy);
    free (th[i].written);
  }
  free (th);
  return test_status ();
}
