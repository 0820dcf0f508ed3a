/* SPDX-License-Identifier: MIT */
/* Stress the L2 slice cache: big sparse images (1 TiB, 4k and 64k
 * clusters) with thousands of written spots spread over thousands of L2
 * slices, opened with the smallest cache, read by several threads at
 * once in different orders.  Every read is checked against the pattern
 * qemu-io wrote (or zeros between spots), so an eviction that hands out
 * a slice another thread is still reading, or a hash chain that loses a
 * slice, shows up as wrong bytes, a sanitizer report or a crash.  Run it
 * under helgrind/drd too (make check-valgrind). */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "tests/tests.h"

#define NR_THREADS 4
#define SPOT_LEN 512

struct spot {
  uint64_t offset;
  uint8_t pattern;
};

struct job {
  struct qcow2_image *img;
  const struct spot *spots;
  size_t nr_spots;
  unsigned seed;
  int errors;
};

static void *
reader (void *arg)
{
  struct job *j = arg;
  uint8_t buf[3 * SPOT_LEN];
  unsigned seed = j->seed;
  size_t *order = malloc (j->nr_spots * sizeof *order);

  if (order == NULL) {
    j->errors++;
    return NULL;
  }
  for (size_t i = 0; i < j->nr_spots; i++)
    order[i] = i;
  for (size_t i = j->nr_spots - 1; i > 0; i--) {
    size_t k = rand_r (&seed) % (i + 1), t = order[i];
    order[i] = order[k];
    order[k] = t;
  }
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < j->nr_spots; i++) {
      const struct spot *s = &j->spots[order[i]];
      /* The spot with its unwritten neighbours: zeros, pattern, zeros. */
      int r = qcow2_pread (j->img, buf, sizeof buf, s->offset - SPOT_LEN);

      if (r < 0) {
        fprintf (stderr, "qcow2_pread at %" PRIu64 ": %s\n",
                 s->offset, strerror (-r));
        j->errors++;
        continue;
      }
      for (size_t b = 0; b < sizeof buf; b++) {
        uint8_t want = b >= SPOT_LEN && b < 2 * SPOT_LEN ? s->pattern : 0;
        if (buf[b] != want) {
          fprintf (stderr, "spot %" PRIu64 " byte %zu: %#x, want %#x\n",
                   s->offset, b, buf[b], want);
          j->errors++;
          break;
        }
      }
    }
  }
  free (order);
  return NULL;
}

static int
run (const char *dir, unsigned cluster_size, size_t nr_spots,
     uint64_t stride)
{
  char img_path[4096], cmd_path[4096], cmd[16384];
  struct qcow2_open_opts opts = {
    .l2_cache_size = QCOW2_MIN_L2_CACHE_SIZE, .log = test_log_cb,
  };
  struct qcow2_image *img;
  struct spot *spots = calloc (nr_spots, sizeof *spots);
  struct job jobs[NR_THREADS];
  pthread_t th[NR_THREADS];
  struct timespec t0, t1;
  FILE *fp;
  int r, errors = 0;

  snprintf (img_path, sizeof img_path, "%s/big-%u.qcow2", dir, cluster_size);
  snprintf (cmd_path, sizeof cmd_path, "%s/cmds-%u", dir, cluster_size);
  snprintf (cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o "
            "cluster_size=%u '%s' 1T", cluster_size, img_path);
  if (spots == NULL || system (cmd) != 0) {
    fprintf (stderr, "%s failed\n", cmd);
    return 1;
  }
  fp = fopen (cmd_path, "w");
  if (fp == NULL) {
    perror (cmd_path);
    return 1;
  }
  for (size_t k = 0; k < nr_spots; k++) {
    /* Spread, not aligned to the stride, never at offset 0. */
    spots[k].offset = (k * stride + (k * 7919 % 97 + 1) * 4096) & ~511ull;
    spots[k].pattern = k % 251 + 1;
    fprintf (fp, "write -P %u %" PRIu64 " %d\n", spots[k].pattern,
             spots[k].offset, SPOT_LEN);
  }
  fclose (fp);
  snprintf (cmd, sizeof cmd, "qemu-io -f qcow2 '%s' < '%s' > /dev/null",
            img_path, cmd_path);
  if (system (cmd) != 0) {
    fprintf (stderr, "%s failed\n", cmd);
    return 1;
  }

  r = qcow2_open (img_path, &opts, &img);
  if (r < 0) {
    fprintf (stderr, "qcow2_open %s: %s\n", img_path, strerror (-r));
    return 1;
  }
  clock_gettime (CLOCK_MONOTONIC, &t0);
  for (int t = 0; t < NR_THREADS; t++) {
    jobs[t] = (struct job) { .img = img, .spots = spots,
                             .nr_spots = nr_spots, .seed = t + 1 };
    if (pthread_create (&th[t], NULL, reader, &jobs[t]) != 0) {
      perror ("pthread_create");
      return 1;
    }
  }
  for (int t = 0; t < NR_THREADS; t++) {
    pthread_join (th[t], NULL);
    errors += jobs[t].errors;
  }
  clock_gettime (CLOCK_MONOTONIC, &t1);
  if (qcow2_is_corrupt (img)) {
    fprintf (stderr, "image marked corrupt\n");
    errors++;
  }
  qcow2_close (img);
  printf ("%u-byte clusters: %zu spots x %d threads x 2 passes in %.2fs, "
          "%d errors\n", cluster_size, nr_spots, NR_THREADS,
          (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, errors);
  free (spots);
  unlink (img_path);
  unlink (cmd_path);
  return errors != 0;
}

int
main (void)
{
  char dir[] = "/tmp/test-qcow2-cache.XXXXXX";
  int fail = 0;

  test_require ("qemu-img", "qemu-io", NULL);
  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  /* 4k clusters: one slice per L2 table, 3000 tables. */
  fail |= run (dir, 4096, 3000, (UINT64_C (1) << 40) / 3000);
  /* 64k clusters: 16 slices per table; 2000 spots 96 MiB apart land in
   * about 2000 different slices of 390 tables. */
  fail |= run (dir, 65536, 2000, UINT64_C (96) << 20);
  rmdir (dir);
  return fail;
}
