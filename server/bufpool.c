/* SPDX-License-Identifier: MIT */
/* A worker's buffer pool: page-aligned buffers in power-of-two size
 * classes (4 KiB to 32 MiB) for READ data, WRITE payloads, reply
 * extents and decompressed clusters, kept per worker so steady-state
 * requests never reach malloc, and bounded so the pool stays a cache.
 * Only the worker thread that owns the pool uses it (struct bufpool in
 * struct worker, owned by this file). */

#include <config.h>

#include <malloc.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "server/server.h"
#include "server/transmission.h"

/* How many free buffers of a class a worker keeps: about 32 MiB worth per
 * class (at least 2, at most 128), enough to cover a busy connection's
 * in-flight reads so steady-state reads never hit malloc, which for large
 * sizes means mmap and page faults on every request.  All classes
 * together keep at most POOL_MAX_BYTES: the pool is a cache, and the
 * documented memory bound counts it at that. */
#define POOL_MAX_BYTES (64u * 1024 * 1024)

static unsigned
pool_keep (unsigned cls)
{
  size_t n = (32u << 20) >> (cls + BUFPOOL_MIN_SHIFT);
  return n < 2 ? 2 : n > 128 ? 128 : n;
}

/* Buffers of 128 KiB and more are mapped on their own rather than taken
 * from malloc: malloc would keep freed ones in its arenas (its mmap
 * threshold grows with the largest buffer freed), so the process would
 * hold more than the pool says.  Mapped, a buffer the pool does not
 * keep goes straight back to the kernel. */
#define POOL_MMAP_CLS 5

static size_t
cls_size (unsigned cls)
{
  return (size_t) 1 << (cls + BUFPOOL_MIN_SHIFT);
}

static void
buf_free (void *buf, unsigned cls)
{
  if (cls >= POOL_MMAP_CLS)
    munmap (buf, cls_size (cls));
  else
    free (buf);
}

void *
bufpool_get (struct worker *w, size_t size, unsigned *cls)
{
  unsigned c = 0;
  void *p;

  while (c < BUFPOOL_CLASSES - 1 && cls_size (c) < size)
    c++;
  if (cls_size (c) < size)
    return NULL;
  *cls = c;
  if (w->pool.nfree[c] > 0) {
    w->pool.bytes -= cls_size (c);
    return w->pool.free[c][--w->pool.nfree[c]];
  }
  if (c < POOL_MMAP_CLS)
    return aligned_alloc (4096, cls_size (c));
  p = mmap (NULL, cls_size (c), PROT_READ | PROT_WRITE,
            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void
bufpool_put (struct worker *w, void *buf, unsigned cls)
{
  if (buf == NULL)
    return;
  if (w->pool.free[cls] == NULL)
    w->pool.free[cls] = calloc (pool_keep (cls), sizeof (void *));
  if (w->pool.free[cls] && w->pool.nfree[cls] < pool_keep (cls)
      && w->pool.bytes + cls_size (cls) <= POOL_MAX_BYTES) {
    w->pool.free[cls][w->pool.nfree[cls]++] = buf;
    w->pool.bytes += cls_size (cls);
  }
  else
    buf_free (buf, cls);
}

void
bufpool_destroy (struct worker *w)
{
  for (unsigned c = 0; c < BUFPOOL_CLASSES; c++) {
    for (unsigned i = 0; i < w->pool.nfree[c]; i++)
      buf_free (w->pool.free[c][i], c);
    free (w->pool.free[c]);
    w->pool.free[c] = NULL;
    w->pool.nfree[c] = 0;
  }
  w->pool.bytes = 0;
}

void
bufpool_shrink (struct worker *w)
{
  /* A worker with no connection keeps no buffers: what a burst of
   * clients left in its pool, and in malloc's arenas, goes back to the
   * kernel, so a quiet server is as small as a fresh one. */
  if (w->pool.bytes > 0)
    bufpool_destroy (w);
  malloc_trim (0);
}
