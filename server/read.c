/* SPDX-License-Identifier: MIT */
/* READ and CACHE.  READ maps the range with qcow2_map and queues one
 * io_uring read per data or compressed extent (a piece); compressed
 * clusters come from the worker's cache or are decompressed
 * (decompress.c) once their stream is in.  The reply is
 * built when the last piece completes, so a simple-reply error is always
 * known before the header goes out: runs of data become OFFSET_DATA
 * chunks and runs of zeros OFFSET_HOLE chunks, unless the client asked
 * for one chunk (DF) or has no structured replies.  Large reads of
 * files we never write skip our buffer altogether (zerocopy.c).  CACHE
 * maps the same way and asks for readahead. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

/* CACHE: readahead at most this many extents per request (advisory). */
#define CACHE_MAX_EXTENTS 4096

/* ---- mapping ---------------------------------------------------------- */

int
read_map_range (struct request *req, uint64_t offset, uint64_t length,
                size_t max_ext)
{
  struct qcow2_image *img = req->cs->conn->exp->img;
  uint64_t pos = offset, end = offset + length;

  while (pos < end && req->nr_ext < max_ext) {
    size_t got = 0;
    int r;

    if (req->ext == NULL) {
      /* Most requests fit the inline room: no allocation. */
      req->ext = req->small_ext;
      req->cap_ext = SMALL_EXT;
    }
    if (req->nr_ext == req->cap_ext) {
      size_t cap = MAX (2 * req->cap_ext, (size_t) 16);
      struct qcow2_extent *p;
      if (req->ext == req->small_ext) {
        p = malloc (cap * sizeof *p);
        if (p)
          memcpy (p, req->ext, req->nr_ext * sizeof *p);
      }
      else
        p = realloc (req->ext, cap * sizeof *p);
      if (p == NULL) {
        session_set_error (req, ENOMEM, "out of memory mapping the range");
        return -ENOMEM;
      }
      req->ext = p;
      req->cap_ext = cap;
    }
    r = qcow2_map (img, pos, end - pos, req->ext + req->nr_ext,
                   MIN (req->cap_ext - req->nr_ext, (size_t) MAP_BATCH), &got);
    if (r < 0) {
      session_set_error (req, -r, "cannot map offset %" PRIu64 ": %s", pos,
                         strerror (-r));
      return r;
    }
    /* The library promises contiguous, non-empty extents covering a
     * prefix; a broken promise must not loop forever or overrun. */
    if (got == 0 || got > req->cap_ext - req->nr_ext) {
      session_set_error (req, EIO, "internal error mapping offset %" PRIu64,
                         pos);
      return -EIO;
    }
    for (size_t i = 0; i < got; i++) {
      struct qcow2_extent *e = &req->ext[req->nr_ext + i];
      if (e->offset != pos || e->length == 0 || e->length > end - pos) {
        session_set_error (req, EIO, "internal error mapping offset %"
                           PRIu64, pos);
        return -EIO;
      }
      pos += e->length;
    }
    req->nr_ext += got;
  }
  return 0;
}

/* ---- the READ reply --------------------------------------------------- */

/* Where the reply's bytes for guest offset OFFSET are: in the buffer, or
 * (NULL) next in the pipe of a zero-copy read. */
static void *
data_at (struct request *req, uint64_t offset)
{
  return req->zc ? NULL : req->buf + (offset - req->offset);
}

/* All pieces of a READ are in: build the reply. */
static void
read_done (struct request *req)
{
  struct conn_state *cs = req->cs;
  bool df = req->flags & NBD_CMD_FLAG_DF;
  size_t hsz = reply_hdr_size (req);

  if (cs->dead) {
    session_req_free (req);
    session_mark_dirty (cs);
    return;
  }
  if (req->err) {
    reply_plain (req);
    return;
  }
  if (log_verbose >= 3)
    log_debug ("%s: READ cookie %#" PRIx64 " offset %" PRIu64 " length %"
               PRIu64 ": %zu extents%s", cs->conn->peer, req->cookie,
               req->offset, req->length, req->nr_ext,
               req->zc ? ", zero-copy" : "");

  if (!cs->conn->structured_replies) {
    if (reply_alloc (req, 2, NBD_SIMPLE_REPLY_SIZE) == -1)
      goto nomem;
    store_be32 (req->hdrs, NBD_SIMPLE_REPLY_MAGIC);
    store_be32 (req->hdrs + 4, 0);
    store_be64 (req->hdrs + 8, req->cookie);
    reply_put_iov (req, req->hdrs, NBD_SIMPLE_REPLY_SIZE);
    reply_put_iov (req, data_at (req, req->offset), req->length);
    reply_enqueue (req);
    return;
  }

  if (df || req->nr_ext == 0) {
    /* One content chunk (the buffer has the zeros filled in). */
    if (reply_alloc (req, 2, hsz + 8) == -1)
      goto nomem;
    uint8_t *p = reply_put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                                       NBD_REPLY_TYPE_OFFSET_DATA,
                                       8 + req->length);
    store_be64 (p, req->offset);
    reply_put_iov (req, req->hdrs, hsz + 8);
    reply_put_iov (req, data_at (req, req->offset), req->length);
    reply_enqueue (req);
    return;
  }

  /* Runs of data extents become OFFSET_DATA chunks, runs of zero and
   * unallocated extents OFFSET_HOLE chunks; together they cover the
   * range exactly once. */
  size_t nchunks = 0;
  for (size_t i = 0; i < req->nr_ext; i++)
    if (i == 0
        || extent_is_hole (&req->ext[i]) != extent_is_hole (&req->ext[i - 1]))
      nchunks++;
  if (reply_alloc (req, 2 * nchunks, nchunks * (hsz + 12)) == -1)
    goto nomem;

  uint8_t *p = req->hdrs;
  for (size_t i = 0; i < req->nr_ext; ) {
    bool hole = extent_is_hole (&req->ext[i]);
    uint64_t start = req->ext[i].offset, len = 0;
    size_t j = i;

    while (j < req->nr_ext && extent_is_hole (&req->ext[j]) == hole)
      len += req->ext[j++].length;
    uint16_t flags = j == req->nr_ext ? NBD_REPLY_FLAG_DONE : 0;
    uint8_t *chunk = p;
    if (hole) {
      p = reply_put_struct_hdr (p, req, flags, NBD_REPLY_TYPE_OFFSET_HOLE,
                                12);
      store_be64 (p, start);
      store_be32 (p + 8, len);
      p += 12;
      reply_put_iov (req, chunk, hsz + 12);
    }
    else {
      p = reply_put_struct_hdr (p, req, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                                8 + len);
      store_be64 (p, start);
      p += 8;
      reply_put_iov (req, chunk, hsz + 8);
      reply_put_iov (req, data_at (req, start), len);
    }
    i = j;
  }
  reply_enqueue (req);
  return;

 nomem:
  reply_release_iov (req);
  reply_error (req, ENOMEM, "out of memory building the reply");
}

/* ---- READ ------------------------------------------------------------- */

static void
piece_submit (struct piece *pc)
{
  struct conn_state *cs = pc->req->cs;
  char *dst = pc->scratch ? pc->scratch : pc->dst;
  struct io_uring_sqe *sqe = ring_get_sqe (cs->w);
  int fd = pc->fd;

  /* Chosen at each (re)submission: after a short read the rest may no
   * longer be aligned for O_DIRECT. */
  if (!pc->scratch)
    fd = worker_data_fd (conn_fds (cs), pc->ext->file, pc->host_off + pc->done,
                         pc->len - pc->done, dst + pc->done);
  io_uring_prep_read (sqe, fd, dst + pc->done, pc->len - pc->done,
                      pc->host_off + pc->done);
  io_uring_sqe_set_data (sqe, &pc->op);
  cs->ops++;
}

/* A data read of PC failed with ERR (ENODATA: the file ended before
 * the extent did). */
static void
read_failed (struct piece *pc, int err)
{
  if (err == ENODATA)
    session_set_error (pc->req, EIO, "read error at offset %" PRIu64 ": the "
                       "image file ends early", pc->ext->offset);
  else
    session_set_error (pc->req, err, "read error at offset %" PRIu64 ": %s",
                       pc->ext->offset, strerror (err));
}

/* A decompression job of PC is done (on this, its owner's worker). */
static void
piece_decompressed (struct djob *j)
{
  struct piece *pc = container_of (j, struct piece, job);

  decompress_finish (pc);
  piece_done (pc);
}

void
piece_complete (struct piece *pc, int res)
{
  struct request *req = pc->req;
  struct conn_state *cs = req->cs;

  cs->ops--;
  if (req->zc) {
    int r = zc_piece_complete (pc, res);
    if (r == 1)
      return;                   /* resubmitted */
    if (r < 0)
      read_failed (pc, -r);
    piece_done (pc);
    return;
  }
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN) {
      piece_submit (pc);
      return;
    }
    read_failed (pc, -res);
  }
  else if (res > 0 && (size_t) res < pc->len - pc->done) {
    /* Short read: go on from there; a read at EOF returns 0 next. */
    pc->done += res;
    if (!req->err && !cs->dead) {
      piece_submit (pc);
      return;
    }
  }
  else {
    char *dst = pc->scratch ? pc->scratch : pc->dst;
    pc->done += res;
    /* Past the end of the file reads as zeros. */
    memset (dst + pc->done, 0, pc->len - pc->done);
    if (pc->scratch && !req->err && !cs->dead
        && decompress_submit (pc, piece_decompressed) == 1)
      return;                   /* piece_done follows */
  }
  piece_done (pc);
}

void
piece_done (struct piece *pc)
{
  struct request *req = pc->req;
  struct conn_state *cs = req->cs;

  if (pc->scratch) {
    bufpool_put (cs->w, pc->scratch, pc->scratch_cls);
    pc->scratch = NULL;
  }
  req->pending--;
  if (req->zc && req->zc_next < req->nr_pieces) {
    /* Zero-copy pieces share the pipe: one after the other. */
    if (!req->err && !cs->dead)
      zc_submit (&req->pieces[req->zc_next++]);
    else {
      req->pending -= req->nr_pieces - req->zc_next;
      req->zc_next = req->nr_pieces;
    }
  }
  if (req->pending == 0)
    read_done (req);
  session_mark_dirty (cs);
}

/* Room for a piece per data extent of REQ: inline for a few, else
 * allocated.  0, or -1 when out of memory. */
static int
alloc_pieces (struct request *req)
{
  size_t npieces = 0;

  for (size_t i = 0; i < req->nr_ext; i++)
    if (!extent_is_hole (&req->ext[i]))
      npieces++;
  if (npieces <= SMALL_PIECES) {
    req->pieces = req->small_pieces;    /* zeroed by session_req_new */
    return 0;
  }
  req->pieces = calloc (npieces, sizeof *req->pieces);
  if (req->pieces == NULL)
    return -1;
  /* A fragmented read keeps a piece per extent: counted with its data,
   * so many of them make the connection wait too. */
  session_req_hold (req, npieces * sizeof *req->pieces
                    + req->nr_ext * sizeof *req->ext);
  return 0;
}

/* Add the piece that reads extent E (DATA, or COMPRESSED and not
 * cached) of REQ for DST.  0, or -1 with the request's error set. */
static int
add_piece (struct request *req, const struct qcow2_extent *e, char *dst)
{
  struct piece *pc = &req->pieces[req->nr_pieces];

  pc->op.kind = OP_PIECE;
  pc->req = req;
  pc->ext = e;
  pc->dst = dst;
  pc->fd = conn_fds (req->cs)->fds[e->file];
  pc->host_off = e->host_offset;
  if (e->type == QCOW2_EXTENT_DATA)
    pc->len = e->length;
  else {
    /* A compressed stream is at most a little over one cluster. */
    if (e->compressed_length == 0
        || e->compressed_length > 2 * qcow2_layer_cluster_size (e->layer)
                                  + 1024) {
      session_set_error (req, EIO, "bad compressed length at offset %"
                         PRIu64, e->offset);
      return -1;
    }
    pc->len = e->compressed_length;
    pc->scratch = bufpool_get (req->cs->w, pc->len, &pc->scratch_cls);
    if (pc->scratch == NULL) {
      session_set_error (req, ENOMEM, "out of memory");
      return -1;
    }
  }
  req->nr_pieces++;
  return 0;
}

/* Go through REQ's extents: holes are zeroed in place when the reply
 * carries zeros (ZERO_FILL), compressed clusters in the worker's cache
 * are copied at once, the rest become pieces.  Stops at the first error
 * (the request's error set). */
static void
plan_pieces (struct request *req, bool zero_fill)
{
  struct worker *w = req->cs->w;

  for (size_t i = 0; i < req->nr_ext; i++) {
    const struct qcow2_extent *e = &req->ext[i];
    char *dst = data_at (req, e->offset);

    if (extent_is_hole (e)) {
      if (zero_fill)
        memset (dst, 0, e->length);
      continue;
    }
    if (e->file >= conn_fds (req->cs)->nr) {
      session_set_error (req, EIO, "bad file index in extent at %" PRIu64,
                         e->offset);
      break;
    }
    if (e->type == QCOW2_EXTENT_COMPRESSED && decompress_cached (w, e, dst))
      continue;
    if (add_piece (req, e, dst) < 0)
      break;
  }
}

void
cmd_read (struct request *req)
{
  struct conn_state *cs = req->cs;
  bool zero_fill = !cs->conn->structured_replies
    || (req->flags & NBD_CMD_FLAG_DF);

  if (req->length == 0) {
    reply_plain (req);
    return;
  }
  if (read_map_range (req, req->offset, req->length, SIZE_MAX) < 0) {
    reply_plain (req);
    return;
  }
  if (!zc_start (req, zero_fill)) {
    req->buf = bufpool_get (cs->w, req->length, &req->buf_cls);
    if (req->buf == NULL) {
      reply_error (req, ENOMEM, "out of memory for the read buffer");
      return;
    }
  }
  if (alloc_pieces (req) < 0) {
    reply_error (req, ENOMEM, "out of memory");
    return;
  }
  plan_pieces (req, zero_fill);

  /* Submit only once every piece is set up, so an error part-way never
   * leaves reads in the kernel for a request we are answering now. */
  if (req->err) {
    reply_plain (req);
    return;
  }
  req->pending = req->nr_pieces;
  if (req->zc) {
    /* zc_start saw at least one data extent. */
    req->zc_next = 1;
    zc_submit (&req->pieces[0]);
    return;
  }
  for (size_t i = 0; i < req->nr_pieces; i++)
    piece_submit (&req->pieces[i]);
  if (req->pending == 0)
    read_done (req);
}


/* ---- CACHE ------------------------------------------------------------ */

void
cmd_cache (struct request *req)
{
  struct worker *w = req->cs->w;
  const struct export_fds *xf = conn_fds (req->cs);

  /* Readahead is advice: failures are not the client's concern, and the
   * reply need not wait for it. */
  if (read_map_range (req, req->offset, req->length, CACHE_MAX_EXTENTS) == 0) {
    for (size_t i = 0; i < req->nr_ext; i++) {
      const struct qcow2_extent *e = &req->ext[i];
      uint64_t len;

      if (extent_is_hole (e) || e->file >= xf->nr)
        continue;
      len = e->type == QCOW2_EXTENT_DATA ? e->length : e->compressed_length;
      struct io_uring_sqe *sqe = ring_get_sqe (w);
      io_uring_prep_fadvise (sqe, xf->fds[e->file], e->host_offset, len,
                             POSIX_FADV_WILLNEED);
    }
  }
  req->err = 0;
  reply_plain (req);
}
