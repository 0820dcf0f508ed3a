/* SPDX-License-Identifier: MIT */
/* Decompression of compressed clusters: zlib raw deflate or zstd, as the
 * layer's compression_type says.
 *
 * Both produce exactly one cluster or the cluster is corrupt.  A caller
 * that needs only the start of a cluster (a 4 KiB read at offset 8 KiB
 * needs 12 KiB) may stop there: both formats decode front to back, so
 * stopping early saves the rest of the work and gives the same bytes.  zlib
 * inflates with window bits -15, the largest, so streams from any writer
 * decode (QEMU writes -12).  zstd may have stored several frames in one
 * cluster; we decode frame after frame until the cluster is full.
 * Trailing input is ignored in both: the last 512-byte sector of a
 * compressed cluster is shared with the next one.
 *
 * Decompression contexts are per thread and reused, so a worker that
 * reads compressed clusters doesn't allocate per call; they are freed
 * when the thread exits. */

#include <config.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#include <zlib.h>
#include <zstd.h>

#include "qcow2/internal.h"

struct dctx {
  z_stream z;
  bool z_ready;
  ZSTD_DCtx *zstd;
};

static pthread_key_t dctx_key;
static pthread_once_t dctx_once = PTHREAD_ONCE_INIT;
static int dctx_key_err;

static void
dctx_free (void *p)
{
  struct dctx *d = p;

  if (d->z_ready)
    inflateEnd (&d->z);
  ZSTD_freeDCtx (d->zstd);
  free (d);
}

static void
dctx_key_init (void)
{
  dctx_key_err = pthread_key_create (&dctx_key, dctx_free);
}

static struct dctx *
get_dctx (void)
{
  struct dctx *d;

  pthread_once (&dctx_once, dctx_key_init);
  if (dctx_key_err)
    return NULL;
  d = pthread_getspecific (dctx_key);
  if (d == NULL) {
    d = calloc (1, sizeof *d);
    if (d == NULL)
      return NULL;
    if (pthread_setspecific (dctx_key, d) != 0) {
      free (d);
      return NULL;
    }
  }
  return d;
}

uint32_t
qcow2_layer_cluster_size (const struct qcow2_layer *layer)
{
  return layer->cluster_size;
}

static int
inflate_cluster (struct qcow2_layer *layer, struct dctx *d,
                 const void *in, size_t in_len, void *out, uint32_t out_len)
{
  z_stream *z = &d->z;
  int r;

  if (!d->z_ready) {
    *z = (z_stream) { 0 };
    if (inflateInit2 (z, -15) != Z_OK)
      return -ENOMEM;
    d->z_ready = true;
  }
  else if (inflateReset (z) != Z_OK)
    return -EIO;

  /* Compressed lengths are a few MiB at most (the descriptor caps them);
   * clamping only guards the uInt conversion. */
  z->next_in = (Bytef *) in;
  z->avail_in = in_len > UINT_MAX ? UINT_MAX : in_len;
  z->next_out = out;
  z->avail_out = out_len;
  r = inflate (z, Z_FINISH);
  /* A full output buffer with input left over (Z_BUF_ERROR) is fine:
   * trailing bytes belong to the next cluster. */
  if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && z->avail_out == 0)
    return 0;
  return qcow2_corrupt (layer, "compressed cluster does not inflate to "
                        "one cluster (zlib %d, %u bytes short)",
                        r, z->avail_out);
}

static int
zstd_cluster (struct qcow2_layer *layer, struct dctx *d,
              const void *in, size_t in_len, void *out, uint32_t out_len)
{
  ZSTD_inBuffer ib = { .src = in, .size = in_len, .pos = 0 };
  ZSTD_outBuffer ob = { .dst = out, .size = out_len, .pos = 0 };

  if (d->zstd == NULL) {
    d->zstd = ZSTD_createDCtx ();
    if (d->zstd == NULL)
      return -ENOMEM;
  }
  else
    ZSTD_DCtx_reset (d->zstd, ZSTD_reset_session_only);

  while (ob.pos < ob.size) {
    size_t in_pos = ib.pos, out_pos = ob.pos;
    size_t r = ZSTD_decompressStream (d->zstd, &ob, &ib);

    if (ZSTD_isError (r))
      return qcow2_corrupt (layer, "compressed cluster: zstd: %s",
                            ZSTD_getErrorName (r));
    /* r == 0 ends a frame; the next call starts the next one. */
    if (ib.pos == in_pos && ob.pos == out_pos)
      return qcow2_corrupt (layer, "compressed cluster: zstd stream ends "
                            "%zu bytes short of one cluster",
                            ob.size - ob.pos);
  }
  return 0;
}

int
qcow2_decompress_part (const struct qcow2_layer *clayer, const void *in,
                       size_t in_len, void *out, uint32_t out_len)
{
  /* The layer is const to callers; reporting corruption marks its image. */
  struct qcow2_layer *layer = (struct qcow2_layer *) clayer;
  struct dctx *d = get_dctx ();

  if (d == NULL)
    return -ENOMEM;
  if (out_len == 0 || out_len > layer->cluster_size)
    return -EINVAL;
  switch (layer->compression_type) {
  case QCOW2_COMPRESSION_ZLIB:
    return inflate_cluster (layer, d, in, in_len, out, out_len);
  case QCOW2_COMPRESSION_ZSTD:
    return zstd_cluster (layer, d, in, in_len, out, out_len);
  default:
    /* open.c refuses other types; never trust that twice. */
    return qcow2_corrupt (layer, "unknown compression type %u",
                          layer->compression_type);
  }
}

int
qcow2_decompress (const struct qcow2_layer *layer, const void *in,
                  size_t in_len, void *out)
{
  return qcow2_decompress_part (layer, in, in_len, out, layer->cluster_size);
}
