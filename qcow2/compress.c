/* SPDX-License-Identifier: MIT */
/* Compression and decompression of compressed clusters: zlib raw deflate
 * or zstd, as the layer's compression_type says.
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
 * Compression (compress-write.c, QEMU's compress filter) makes the
 * streams QEMU makes: zlib raw deflate with window bits -12, memory
 * level 9 and the default level, or zstd at its default level as one
 * frame from one ZSTD_compressStream2 call (QEMU's qcow2-threads.c), so
 * both write the same bytes for the same cluster.  A stream must be
 * shorter than the cluster, or it is not worth it: the cluster is then
 * written uncompressed (QEMU gives the compressor cluster_size - 1 bytes
 * of room).
 *
 * Contexts are per thread and reused, so a worker that reads or writes
 * compressed clusters doesn't allocate per call; they are freed when the
 * thread exits. */

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
  z_stream zc;                  /* compression */
  bool zc_ready;
  ZSTD_CCtx *zstd_c;
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
  if (d->zc_ready)
    deflateEnd (&d->zc);
  ZSTD_freeCCtx (d->zstd_c);
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
    /* header-parse.c refuses other types; never trust that twice. */
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

/* ---- Compression ------------------------------------------------------ */

/* QEMU's zlib parameters (qcow2_zlib_compress): no zlib header, a 4 KiB
 * window. */
#define DEFLATE_WINDOW_BITS (-12)
#define DEFLATE_MEM_LEVEL 9

static int
deflate_cluster (struct dctx *d, const void *in, uint32_t in_len, void *out,
                 uint32_t out_cap)
{
  z_stream *z = &d->zc;
  int r;

  if (!d->zc_ready) {
    *z = (z_stream) { 0 };
    if (deflateInit2 (z, Z_DEFAULT_COMPRESSION, Z_DEFLATED,
                      DEFLATE_WINDOW_BITS, DEFLATE_MEM_LEVEL,
                      Z_DEFAULT_STRATEGY) != Z_OK)
      return -ENOMEM;
    d->zc_ready = true;
  }
  else if (deflateReset (z) != Z_OK)
    return -EIO;
  z->next_in = (Bytef *) in;
  z->avail_in = in_len;
  z->next_out = out;
  z->avail_out = out_cap;
  r = deflate (z, Z_FINISH);
  if (r == Z_STREAM_END)
    return (int) (out_cap - z->avail_out);
  /* Z_OK: the output did not fit (QEMU: write it uncompressed); any
   * other answer fails the write, as in QEMU. */
  return r == Z_OK ? -ENOSPC : -EIO;
}

static int
zstd_compress_cluster (struct dctx *d, const void *in, uint32_t in_len,
                       void *out, uint32_t out_cap)
{
  ZSTD_inBuffer ib = { .src = in, .size = in_len, .pos = 0 };
  ZSTD_outBuffer ob = { .dst = out, .size = out_cap, .pos = 0 };
  size_t r;

  if (d->zstd_c == NULL) {
    d->zstd_c = ZSTD_createCCtx ();
    if (d->zstd_c == NULL)
      return -ENOMEM;
  }
  else
    ZSTD_CCtx_reset (d->zstd_c, ZSTD_reset_session_only);
  /* One call with all the input and ZSTD_e_end, as QEMU: a non-zero
   * return means the frame is not finished, i.e. it did not fit.  QEMU
   * takes an error code the same way (it compares it with the room
   * left), so the cluster is then written uncompressed. */
  r = ZSTD_compressStream2 (d->zstd_c, &ob, &ib, ZSTD_e_end);
  if (r != 0)
    return -ENOSPC;
  return (int) ob.pos;
}

int
compress_cluster (const struct qcow2_layer *layer, const void *in,
                  void *out)
{
  struct dctx *d = get_dctx ();
  uint32_t cs = layer->cluster_size;

  if (d == NULL)
    return -ENOMEM;
  switch (layer->compression_type) {
  case QCOW2_COMPRESSION_ZLIB:
    return deflate_cluster (d, in, cs, out, cs - 1);
  case QCOW2_COMPRESSION_ZSTD:
    return zstd_compress_cluster (d, in, cs, out, cs - 1);
  default:
    return -ENOTSUP;    /* header-parse.c refuses other types */
  }
}
