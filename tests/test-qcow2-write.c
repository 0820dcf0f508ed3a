/* SPDX-License-Identifier: MIT */
/* Differential and race tests of the libqcow2 write path, driven by
 * tests/test-qcow2-write.sh on images made by qemu-img.
 *
 *   test-qcow2-write random IMAGE SHADOW SEED OPS THREADS
 *     Random writes, zeroes (with and without MAY_UNMAP and FAST_ZERO)
 *     and discards of random sizes and alignments through qcow2_pwrite,
 *     qcow2_zero and qcow2_discard, from THREADS threads, each in its own
 *     byte range (ranges share clusters at their edges), mirrored into
 *     the raw file SHADOW (which starts as a copy of the image's
 *     contents).  Every operation is read back at once; at the end the
 *     image is flushed and closed, and the script compares it with the
 *     shadow using qemu-img compare and checks it with qemu-img check.
 *
 *   test-qcow2-write enospc IMAGE SHADOW SEED OPS
 *     The same random writes while the host file system is "full": io
 *     ops that fail every write past the file's size + 2 MiB with ENOSPC.
 *     A failed write leaves its range undefined (the shadow takes what
 *     the image reads); everything else must stay exact, and once the
 *     space is back a flush must succeed and the image check clean.
 *
 *   test-qcow2-write race IMAGE SEED ROUNDS
 *     Each round, four threads write overlapping ranges of one
 *     unallocated cluster, each with its own byte value, and a fifth
 *     discards or zeroes it; afterwards every byte must hold the value of
 *     one of the operations that covered it (or its old contents if
 *     none did).  Also checks QCOW2_BLOCKED and the wakeup callback.
 *
 * Debugging aids: WRITE_VERBOSE=1 logs every operation, WRITE_PARANOID=1
 * compares the thread's whole range before every operation (finds the
 * operation that damaged a range it did not write).
 *
 * Includes qcow2/internal.h to know the cluster size, version and
 * backing file, which decide what a discard must leave behind. */

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
#include <sys/stat.h>

#include "common/rounding.h"
#include "qcow2/internal.h"
#include "tests/tests.h"

static struct qcow2_image *img;
static int shadow_fd = -1;
static uint64_t vsize, csize;
static bool discard_zeroes;     /* a discarded whole cluster reads 0 */
static atomic_int wakeups;
static _Atomic uint64_t enospc_limit = UINT64_MAX;
static bool enospc_mode;

static int
full_pwrite (void *opaque, int fd, const void *buf, size_t len, uint64_t off)
{
  if (off + len > atomic_load (&enospc_limit))
    return -ENOSPC;
  return qcow2_posix_io.pwrite (opaque, fd, buf, len, off);
}

static int
no_punch (void *opaque, int fd, uint64_t off, uint64_t len)
{
  return -ENOTSUP;
}

static struct qcow2_io_ops full_io;

static void
wakeup_cb (void *opaque)
{
  atomic_fetch_add (&wakeups, 1);
}

static uint64_t
rnd (uint64_t *s)
{
  /* xorshift64*: enough for test data, reproducible from the seed. */
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * UINT64_C (2685821657736338717);
}

static void
open_image (const char *path)
{
  struct qcow2_open_opts opts = {
    .writable = true, .log = test_log_cb, .wakeup = wakeup_cb,
    /* A small cache, so dirty slices get evicted during the run. */
    .l2_cache_size = 64 << 10,
    /* Discarded clusters are punched: a punch that hit a cluster still
     * referenced (a snapshot's, a compressed neighbour's) would show as
     * a difference from the shadow or a lost snapshot. */
    .punch_discarded = true,
  };

  if (enospc_mode) {
    /* A full file system that cannot punch holes either: freed
     * clusters must be reused all the same. */
    full_io = qcow2_posix_io;
    full_io.pwrite = full_pwrite;
    full_io.punch = no_punch;
    opts.io = &full_io;
  }
  int r = qcow2_open (path, &opts, &img);
  struct qcow2_layer *top;

  if (r < 0) {
    fprintf (stderr, "test-qcow2-write: open %s: %s\n", path, strerror (-r));
    exit (1);
  }
  top = img->layers[0];
  vsize = qcow2_virtual_size (img);
  csize = top->cluster_size;
  discard_zeroes = !(top->version < 3 && top->backing != NULL);
}

/* ---- random --------------------------------------------------------- */

struct worker {
  pthread_t thread;
  uint64_t seed, ops;
  uint64_t start, end;          /* this thread's byte range */
};

static uint64_t
pick_len (uint64_t *s, uint64_t room)
{
  uint64_t len;

  switch (rnd (s) % 6) {
  case 0: len = 1 + rnd (s) % 4096; break;
  case 1: len = 1 + rnd (s) % (2 * csize); break;
  case 2: len = csize * (1 + rnd (s) % 4); break;
  case 3: len = 512 * (1 + rnd (s) % 64); break;
  case 4: len = 1 + rnd (s) % (1 << 20); break;
  default: len = 1 + rnd (s) % (4 * csize + 1000); break;
  }
  return len < room ? len : room;
}

static void
check_range (uint64_t off, uint64_t len, const char *what)
{
  uint8_t *a = malloc (len), *b = malloc (len);
  int r;

  if (a == NULL || b == NULL)
    abort ();
  r = qcow2_pread (img, a, len, off);
  if (r < 0)
    test_fail ("%s: read back [%" PRIu64 ", +%" PRIu64 "): %s", what, off, len,
          strerror (-r));
  else if (pread (shadow_fd, b, len, off) != (ssize_t) len)
    test_fail ("shadow read");
  else if (memcmp (a, b, len) != 0) {
    uint64_t i = 0;

    while (a[i] == b[i])
      i++;
    test_fail ("%s [%" PRIu64 ", +%" PRIu64 "): byte %" PRIu64 " reads %#x, "
          "shadow has %#x", what, off, len, off + i, a[i], b[i]);
  }
  free (a);
  free (b);
}

static void
shadow_zero (uint64_t off, uint64_t len)
{
  static const uint8_t z[65536];

  while (len > 0) {
    size_t n = len < sizeof z ? len : sizeof z;

    if (pwrite (shadow_fd, z, n, off) != (ssize_t) n)
      abort ();
    off += n;
    len -= n;
  }
}

static void *
worker_run (void *arg)
{
  struct worker *wk = arg;
  uint64_t s = wk->seed;
  /* The longest pick_len can return. */
  uint8_t *buf = malloc (MAX (UINT64_C (1) << 20, 4 * csize + 1000));

  if (buf == NULL)
    abort ();
  for (uint64_t op = 0; op < wk->ops && !test_failed ();
       op++) {
    uint64_t room = wk->end - wk->start;
    uint64_t off, len;
    unsigned kind = rnd (&s) % 10;
    int r;

    if (getenv ("WRITE_PARANOID"))
      check_range (wk->start, wk->end - wk->start, "before op");

    /* Cluster aligned starts half the time, anywhere otherwise. */
    off = wk->start + rnd (&s) % room;
    if (rnd (&s) & 1) {
      uint64_t a = off - off % csize;
      if (a >= wk->start)
        off = a;
    }
    len = pick_len (&s, wk->end - off);

    if (kind < 6) {             /* write */
      uint8_t v = rnd (&s);

      for (uint64_t i = 0; i < len; i++)
        buf[i] = v + i * 7 + (i >> 9);
      r = qcow2_pwrite (img, buf, len, off, rnd (&s) % 16 == 0);
      if (getenv ("WRITE_VERBOSE"))
        fprintf (stderr, "write %" PRIu64 " +%" PRIu64 ": %d\n", off, len, r);
      if (r == -ENOSPC && enospc_mode) {
        /* Undefined now: take what the image says. */
        r = qcow2_pread (img, buf, len, off);
        if (r < 0) {
          test_fail ("read after ENOSPC: %s", strerror (-r));
          break;
        }
      }
      else if (r < 0) {
        test_fail ("write [%" PRIu64 ", +%" PRIu64 "): %s", off, len,
              strerror (-r));
        break;
      }
      if (pwrite (shadow_fd, buf, len, off) != (ssize_t) len)
        abort ();
      check_range (off, len, "write");
    }
    else if (kind < 8) {        /* zero */
      unsigned flags = QCOW2_WAIT;

      if (rnd (&s) & 1)
        flags |= QCOW2_MAY_UNMAP;
      if (rnd (&s) % 4 == 0)
        flags |= QCOW2_FAST_ZERO;
      r = qcow2_zero (img, off, len, flags);
      if (getenv ("WRITE_VERBOSE"))
        fprintf (stderr, "zero %" PRIu64 " +%" PRIu64 " flags %u: %d\n",
                 off, len, flags, r);
      if (r == -ENOTSUP && (flags & QCOW2_FAST_ZERO))
        ;                       /* nothing changed */
      else if (r == -ENOSPC && enospc_mode) {
        uint8_t *tmp = malloc (len);

        if (tmp == NULL || qcow2_pread (img, tmp, len, off) < 0 ||
            pwrite (shadow_fd, tmp, len, off) != (ssize_t) len)
          test_fail ("read after ENOSPC");
        free (tmp);
      }
      else if (r < 0) {
        test_fail ("zero [%" PRIu64 ", +%" PRIu64 "): %s", off, len,
              strerror (-r));
        break;
      }
      else
        shadow_zero (off, len);
      check_range (off, len, "zero");
    }
    else if (kind < 9) {        /* discard */
      uint64_t first = (off + csize - 1) / csize;
      uint64_t end = off + len == vsize ? (vsize + csize - 1) / csize
        : (off + len) / csize;

      r = qcow2_discard (img, off, len, QCOW2_WAIT);
      if (r == -ENOSPC && enospc_mode) {
        /* Only a new L2 table can fail, before any entry changed. */
        check_range (off, len, "failed discard");
        continue;
      }
      if (getenv ("WRITE_VERBOSE"))
        fprintf (stderr, "discard %" PRIu64 " +%" PRIu64 ": %d\n", off, len,
                 r);
      if (r < 0) {
        test_fail ("discard [%" PRIu64 ", +%" PRIu64 "): %s", off, len,
              strerror (-r));
        break;
      }
      if (discard_zeroes && first < end) {
        uint64_t zs = first * csize, ze = end * csize;

        if (ze > vsize)
          ze = vsize;
        shadow_zero (zs, ze - zs);
      }
      check_range (off, len, "discard");
    }
    else if (kind < 10 && getenv ("WRITE_PARANOID"))
      check_range (wk->start, wk->end - wk->start, "paranoid");
    else {                      /* flush */
      r = qcow2_flush (img);
      if (r < 0 && !(r == -ENOSPC && enospc_mode)) {
        test_fail ("flush: %s", strerror (-r));
        break;
      }
    }
  }
  free (buf);
  return NULL;
}

static int
run_random (const char *image, const char *shadow, uint64_t seed,
            uint64_t ops, unsigned nthreads)
{
  struct worker *wk;
  int r;

  open_image (image);
  shadow_fd = open (shadow, O_RDWR);
  if (shadow_fd < 0) {
    perror (shadow);
    return 1;
  }
  if (nthreads == 0)
    nthreads = 1;
  wk = calloc (nthreads, sizeof *wk);
  for (unsigned t = 0; t < nthreads; t++) {
    /* Byte ranges, deliberately not cluster aligned: neighbours share
     * the clusters at their edges. */
    wk[t].start = vsize / nthreads * t;
    wk[t].end = t == nthreads - 1 ? vsize : vsize / nthreads * (t + 1);
    if (t > 0)
      wk[t].start += 7 * t;
    wk[t].seed = seed * 1000003 + t + 1;
    wk[t].ops = ops;
    pthread_create (&wk[t].thread, NULL, worker_run, &wk[t]);
  }
  for (unsigned t = 0; t < nthreads; t++)
    pthread_join (wk[t].thread, NULL);
  free (wk);

  atomic_store (&enospc_limit, UINT64_MAX);
  r = qcow2_flush (img);
  if (r < 0)
    test_fail ("final flush: %s", strerror (-r));
  check_range (0, vsize, "whole disk");
  qcow2_close (img);
  close (shadow_fd);
  return test_status ();
}

/* ---- race ----------------------------------------------------------- */

struct racer {
  pthread_t thread;
  uint64_t off, len;
  uint8_t value;                /* 0: zero; 0xff: discard */
  int result;
};

static pthread_barrier_t barrier;

static void *
racer_run (void *arg)
{
  struct racer *rc = arg;
  uint8_t *buf = malloc (rc->len);

  memset (buf, rc->value, rc->len);
  pthread_barrier_wait (&barrier);
  if (rc->value == 0)
    rc->result = qcow2_zero (img, rc->off, rc->len,
                             QCOW2_WAIT | QCOW2_MAY_UNMAP);
  else if (rc->value == 0xff)
    rc->result = qcow2_discard (img, rc->off, rc->len, QCOW2_WAIT);
  else
    rc->result = qcow2_pwrite (img, buf, rc->len, rc->off, false);
  free (buf);
  return NULL;
}

static int
test_blocked (void)
{
  struct qcow2_write *w, *w2;
  const struct qcow2_seg *segs;
  size_t nsegs;
  int r, before;

  r = qcow2_write_begin (img, 0, 512, 0, &w, &segs, &nsegs);
  if (r != 0) {
    test_fail ("write_begin: %d", r);
    return -1;
  }
  r = qcow2_write_begin (img, 100, 1000, 0, &w2, &segs, &nsegs);
  if (r != QCOW2_BLOCKED)
    test_fail ("overlapping write_begin returned %d, not QCOW2_BLOCKED", r);
  r = qcow2_zero (img, 0, csize, 0);
  if (r != QCOW2_BLOCKED)
    test_fail ("overlapping zero returned %d, not QCOW2_BLOCKED", r);
  r = qcow2_discard (img, 0, csize, 0);
  if (r != QCOW2_BLOCKED)
    test_fail ("overlapping discard returned %d, not QCOW2_BLOCKED", r);
  before = atomic_load (&wakeups);
  qcow2_write_end (w, -EIO);    /* a failed write: undone */
  if (atomic_load (&wakeups) == before)
    test_fail ("no wakeup after the blocking write ended");
  r = qcow2_write_begin (img, 100, 1000, 0, &w2, &segs, &nsegs);
  if (r != 0)
    test_fail ("write_begin after the end: %d", r);
  else
    qcow2_write_end (w2, -EIO);
  return 0;
}

static int
run_race (const char *image, uint64_t seed, uint64_t rounds)
{
  uint64_t s = seed;
  enum { N = 5 };

  open_image (image);
  test_blocked ();
  pthread_barrier_init (&barrier, NULL, N);

  for (uint64_t round = 0; round < rounds && !test_failed ();
       round++) {
    /* A cluster away from the edges; the window spans it and a bit of
     * its neighbours. */
    uint64_t nclusters = vsize / csize;
    uint64_t c = 1 + rnd (&s) % (nclusters - 2);
    uint64_t wstart = c * csize - csize / 4, wlen = csize + csize / 2;
    struct racer rc[N];
    uint8_t *before = malloc (wlen), *after = malloc (wlen);
    int r;

    r = qcow2_pread (img, before, wlen, wstart);
    if (r < 0)
      test_fail ("read: %s", strerror (-r));
    for (int i = 0; i < N; i++) {
      rc[i].off = wstart + rnd (&s) % wlen;
      rc[i].len = 1 + rnd (&s) % (wstart + wlen - rc[i].off);
      rc[i].value = i + 1;
    }
    /* The last one zeroes or discards the whole cluster. */
    rc[N - 1].off = c * csize;
    rc[N - 1].len = csize;
    rc[N - 1].value = rnd (&s) & 1 ? 0 : 0xff;
    for (int i = 0; i < N; i++)
      pthread_create (&rc[i].thread, NULL, racer_run, &rc[i]);
    for (int i = 0; i < N; i++) {
      pthread_join (rc[i].thread, NULL);
      if (rc[i].result != 0)
        test_fail ("racer %d: %s", i, strerror (-rc[i].result));
    }
    r = qcow2_pread (img, after, wlen, wstart);
    if (r < 0)
      test_fail ("read: %s", strerror (-r));
    for (uint64_t j = 0; j < wlen; j++) {
      uint64_t g = wstart + j;
      bool ok = false, covered = false;

      for (int i = 0; i < N; i++) {
        if (g < rc[i].off || g >= rc[i].off + rc[i].len)
          continue;
        covered = true;
        if (after[j] == (rc[i].value == 0xff ? (discard_zeroes ? 0
                                                : before[j])
                         : rc[i].value))
          ok = true;
        /* A discard on a v2 image with a backing file does nothing:
         * any earlier writer's value may remain too (checked below). */
      }
      if (!covered)
        ok = after[j] == before[j];
      if (!ok && !discard_zeroes)
        ok = true;      /* v2 with backing: not decidable per byte */
      if (!ok) {
        test_fail ("round %" PRIu64 ": byte %" PRIu64 " is %#x: no operation "
              "that covered it wrote that", round, g, after[j]);
        break;
      }
    }
    free (before);
    free (after);
    if (round % 8 == 7 && qcow2_flush (img) < 0)
      test_fail ("flush");
  }
  if (qcow2_flush (img) < 0)
    test_fail ("final flush");
  qcow2_close (img);
  return test_status ();
}

int
main (int argc, char *argv[])
{
  if (argc == 7 && strcmp (argv[1], "random") == 0)
    return run_random (argv[2], argv[3], strtoull (argv[4], NULL, 0),
                       strtoull (argv[5], NULL, 0), atoi (argv[6]));
  if (argc == 6 && strcmp (argv[1], "enospc") == 0) {
    struct stat st;

    if (stat (argv[2], &st) < 0) {
      perror (argv[2]);
      return 1;
    }
    enospc_mode = true;
    atomic_store (&enospc_limit, (uint64_t) st.st_size + (2 << 20));
    return run_random (argv[2], argv[3], strtoull (argv[4], NULL, 0),
                       strtoull (argv[5], NULL, 0), 2);
  }
  if (argc == 5 && strcmp (argv[1], "race") == 0)
    return run_race (argv[2], strtoull (argv[3], NULL, 0),
                     strtoull (argv[4], NULL, 0));
  fprintf (stderr, "usage: test-qcow2-write random IMAGE SHADOW SEED OPS "
           "THREADS\n       test-qcow2-write enospc IMAGE SHADOW SEED OPS\n"
           "       test-qcow2-write race IMAGE SEED ROUNDS\n");
  return 2;
}
