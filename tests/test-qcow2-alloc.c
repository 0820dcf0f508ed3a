/* SPDX-License-Identifier: MIT */
/* The allocator, through its internal API: images made by qemu-img with
 * refcount widths 1, 2, 8, 16, 64 and 512 B / 64 KiB clusters are opened
 * writable; thousands of clusters are allocated (forcing new refcount
 * blocks and, with 512 B clusters, refcount table growth), written, some
 * released through the deferred path and flushed, refcount overflow is
 * provoked, the L1 table is grown; after close `qemu-img check` must
 * report no corruption and exactly the clusters we still hold as leaks
 * (nothing references them), which checks every refcount we wrote.
 *
 * Also a small tool for the shell test test-qcow2-alloc.sh:
 *   test-qcow2-alloc open-rw IMAGE        open writable, close
 *   test-qcow2-alloc hold IMAGE SECONDS   open writable, wait, close */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "qcow2/internal.h"
#include "tests/tests.h"

static int
run (const char *cmd)
{
  int r = system (cmd);
  return r == -1 ? -1 : WEXITSTATUS (r);
}

/* qemu-img check IMG: exit code, and the leak count from its JSON. */
static int
check_image (const char *img, int64_t *leaks)
{
  char cmd[1024], line[256];
  FILE *fp;
  int st;

  *leaks = 0;
  snprintf (cmd, sizeof cmd, "qemu-img check --output=json '%s' 2>&1; "
            "echo \"exit=$?\"", img);
  fp = popen (cmd, "r");
  if (fp == NULL)
    return -1;
  st = -1;
  while (fgets (line, sizeof line, fp)) {
    const char *p;

    if ((p = strstr (line, "\"leaks\":")) != NULL)
      *leaks = strtoll (p + 8, NULL, 10);
    if (strncmp (line, "exit=", 5) == 0)
      st = atoi (line + 5);
    if (strstr (line, "corruptions") || strstr (line, "ERROR"))
      fputs (line, stderr);
  }
  pclose (fp);
  return st;
}

struct held {
  uint64_t host, n;
};

static int
test_one (const char *dir, unsigned cluster_size, unsigned refcount_bits)
{
  char img[512], cmd[1024];
  struct qcow2_open_opts opts = { .writable = true, .log = test_log_cb };
  struct qcow2_image *image;
  struct qcow2_layer *layer;
  /* 512 B clusters: enough clusters to need new refcount blocks and a
   * bigger refcount table for every width up to 16 bits (1-bit blocks
   * cover 4096 clusters, the initial table 64 blocks). */
  const unsigned nr_allocs = cluster_size == 512 ? 24000 : 3000;
  CLEANUP_FREE struct held *held = calloc (nr_allocs, sizeof *held);
  CLEANUP_FREE unsigned char *buf = NULL;
  uint64_t live = 0, rt_before, l1_before, total = 0;
  int64_t leaks;
  int r, st;

  snprintf (img, sizeof img, "%s/c%u-r%u.qcow2", dir, cluster_size,
            refcount_bits);
  snprintf (cmd, sizeof cmd, "qemu-img create -q -f qcow2 -o "
            "cluster_size=%u,refcount_bits=%u '%s' 64M", cluster_size,
            refcount_bits, img);
  CHECK (run (cmd) == 0, "%s", cmd);
  r = qcow2_open (img, &opts, &image);
  CHECK (r == 0, "open %s: %s", img, strerror (-r));
  layer = image->layers[0];
  rt_before = layer->refcount_table_clusters;
  l1_before = layer->l1_size;
  buf = malloc (4 * (size_t) cluster_size);
  CHECK (held && buf, "out of memory");

  {
    WRLOCK_FOR_SCOPE (&layer->lock);

    for (unsigned i = 0; i < nr_allocs; i++) {
      uint64_t want = 1 + i % 4, host, got, rc;

      r = alloc_clusters_locked (layer, 1, want, &host, &got);
      CHECK (r == 0, "alloc %u: %s", i, strerror (-r));
      CHECK (got >= 1 && got <= want && host % cluster_size == 0,
             "alloc %u: got %" PRIu64 " at %#" PRIx64, i, got, host);
      /* What the caller of the allocator does: write the clusters. */
      memset (buf, 0x40 + i % 64, got * cluster_size);
      r = image->io->pwrite (image->io_opaque, image->files[0].fd, buf,
                             got * cluster_size, host);
      CHECK (r == 0, "write: %s", strerror (-r));
      r = refcount_get_locked (layer, host, &rc);
      CHECK (r == 0 && rc == 1, "refcount of new cluster %#" PRIx64
             " is %" PRIu64, host, rc);
      held[i].host = host;
      held[i].n = got;
      live += got;
      total += got;
    }

    /* Overflow is an error, never a wrap. */
    {
      uint64_t maxv = refcount_bits == 64 ? UINT64_MAX
        : (UINT64_C (1) << refcount_bits) - 1, rc;

      if (refcount_bits <= 8) {
        r = refcount_adjust_locked (layer, held[0].host, 1,
                                    (int64_t) maxv - 1);
        CHECK (r == 0, "raise to max: %s", strerror (-r));
        r = refcount_adjust_locked (layer, held[0].host, 1, 1);
        CHECK (r == -EINVAL, "overflow gave %d", r);
        r = refcount_get_locked (layer, held[0].host, &rc);
        CHECK (r == 0 && rc == maxv, "after overflow: %" PRIu64, rc);
        r = refcount_adjust_locked (layer, held[0].host, 1,
                                    -((int64_t) maxv - 1));
        CHECK (r == 0, "lower again: %s", strerror (-r));
      }
      else {
        r = refcount_adjust_locked (layer, held[0].host, 1, 1000);
        CHECK (r == 0, "raise: %s", strerror (-r));
        r = refcount_adjust_locked (layer, held[0].host, 1, -1000);
        CHECK (r == 0, "lower: %s", strerror (-r));
      }
    }

    /* Release every other run: deferred until the flush is done. */
    for (unsigned i = 0; i < nr_allocs; i += 2) {
      uint64_t rc;

      r = release_clusters_locked (layer, held[i].host, held[i].n, false);
      CHECK (r == 0, "release: %s", strerror (-r));
      r = refcount_get_locked (layer, held[i].host, &rc);
      CHECK (r == 0 && rc == 1, "released cluster dropped early");
    }
    /* Not reusable yet: a new allocation must not land on them. */
    {
      uint64_t host, got;

      layer->free_hint = 0;
      r = alloc_clusters_locked (layer, 1, 1, &host, &got);
      CHECK (r == 0, "alloc: %s", strerror (-r));
      for (unsigned i = 0; i < nr_allocs; i += 2)
        CHECK (host < held[i].host || host >= held[i].host
               + held[i].n * cluster_size,
               "reused a cluster whose freeing is not durable");
      r = refcount_adjust_locked (layer, host, 1, -1);
      CHECK (r == 0, "undo: %s", strerror (-r));
    }
    r = refcount_writeback_locked (layer);
    CHECK (r == 0, "writeback: %s", strerror (-r));
    r = release_commit_locked (layer);
    CHECK (r == 0, "flush done: %s", strerror (-r));
    for (unsigned i = 0; i < nr_allocs; i += 2) {
      uint64_t rc;

      r = refcount_get_locked (layer, held[i].host, &rc);
      CHECK (r == 0 && rc == 0, "released cluster still %" PRIu64, rc);
      live -= held[i].n;
    }
    /* Now they are reusable: the allocator goes back to them. */
    {
      uint64_t host, got;

      r = alloc_clusters_locked (layer, 1, 1, &host, &got);
      CHECK (r == 0 && host <= held[0].host,
             "freed cluster %#" PRIx64 " not reused (got %#" PRIx64 ")",
             held[0].host, host);
      live += 1;
    }

    /* L1 growth, directly: the header and the new table must agree. */
    r = l1_grow_locked (layer, l1_before + 3000);
    CHECK (r == 0, "l1 grow: %s", strerror (-r));
    CHECK (layer->l1_size >= l1_before + 3000, "l1 not grown");
  }

  if (cluster_size == 512 && refcount_bits >= 8)
    CHECK (layer->refcount_table_clusters > rt_before,
           "refcount table did not grow (%u clusters)",
           layer->refcount_table_clusters);
  qcow2_close (image);

  st = check_image (img, &leaks);
  CHECK (st == 0 || st == 3, "qemu-img check %s exited %d", img, st);
  CHECK ((uint64_t) leaks == live, "%s: qemu-img counts %" PRId64
         " leaked clusters, we hold %" PRIu64, img, leaks, live);
  printf ("ok: clusters %u, refcount_bits %u: %" PRIu64 " clusters "
          "allocated, %" PRIu64 " held, check exit %d\n", cluster_size,
          refcount_bits, total, live, st);

  /* The grown L1 table is what a reopen sees. */
  opts.writable = false;
  r = qcow2_open (img, &opts, &image);
  CHECK (r == 0, "reopen %s: %s", img, strerror (-r));
  CHECK (image->layers[0]->l1_size >= l1_before + 3000, "l1 size lost");
  qcow2_close (image);
  return 0;
}

static int
tool (int argc, char **argv)
{
  struct qcow2_open_opts opts = { .writable = true, .log = test_log_cb };
  struct qcow2_image *image;
  int r;

  r = qcow2_open (argv[2], &opts, &image);
  if (r < 0) {
    fprintf (stderr, "open %s: %s\n", argv[2], strerror (-r));
    return 1;
  }
  if (strcmp (argv[1], "hold") == 0 && argc > 3) {
    printf ("holding\n");
    fflush (stdout);
    sleep (atoi (argv[3]));
  }
  qcow2_close (image);
  return 0;
}

int
main (int argc, char **argv)
{
  static const unsigned widths[] = { 1, 2, 8, 16, 64 };
  static const unsigned sizes[] = { 512, 65536 };
  char dir[] = "/tmp/test-qcow2-alloc.XXXXXX";
  char cmd[600];

  if (argc > 2)
    return tool (argc, argv);
  test_require ("qemu-img", NULL);
  if (mkdtemp (dir) == NULL) {
    perror ("mkdtemp");
    return 1;
  }
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
    for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++)
      test_one (dir, sizes[s], widths[w]);
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  run (cmd);
  return test_status ();
}
