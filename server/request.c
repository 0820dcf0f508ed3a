/* SPDX-License-Identifier: MIT */
/* The transmission phase: per-connection request parsing, command
 * handling and replies, driven by the worker's io_uring loop (worker.c).
 *
 * A connection reads requests until its transport says EAGAIN (TLS may
 * hold plaintext the socket no longer shows, so readiness alone is not
 * trusted), then arms a POLLIN.  READ maps the range with qcow2_map and
 * queues one io_uring read per data or compressed extent; the reply is
 * built when the last read completes, so a simple-reply error is always
 * known before the header goes out.  Replies leave in completion order
 * through a per-connection send queue, each as one iovec list (headers
 * and data buffers, never copied), so bytes of two replies never
 * interleave.  Too many requests or bytes in flight pause reading.  A
 * connection is freed only when no request, read, write or poll of it is
 * left in the kernel.
 *
 * WRITE receives its payload into a pool buffer, asks qcow2_write_begin
 * for the host writes (payload, copy-on-write buffers, zero ranges),
 * queues one io_uring write per host-contiguous run (fallocate for zero
 * ranges), and calls qcow2_write_end when the last completes; only then
 * is it answered, so a FLUSH (qcow2_flush) covers every write answered
 * on any connection.  A request the library answers with QCOW2_BLOCKED
 * (an overlapping allocation in flight, perhaps this loop's own) is
 * parked, never waited for, and retried after the next wake-up.
 * WRITE_ZEROES, TRIM and FLUSH call the library synchronously. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

/* Backpressure: stop reading requests while a connection has this many
 * requests, or this many bytes of replies, in flight. */
#define MAX_INFLIGHT_REQS 128
#define MAX_INFLIGHT_BYTES (64u * 1024 * 1024)
/* Receive buffer: many small requests per recv. */
#define IN_BUF_SIZE (64 * 1024)
/* Extents asked of qcow2_map per call. */
#define MAP_BATCH 256
/* BLOCK_STATUS work cap: at most this many extents per context in a
 * reply, and this many mapped extents looked at. */
#define BS_MAX_EXTENTS 2048
#define BS_MAX_RAW 8192
/* CACHE: readahead at most this many extents per request (advisory). */
#define CACHE_MAX_EXTENTS 4096
/* Recycled request structs kept per worker. */
#define MAX_FREE_REQS 256
#define STRUCT_HDR NBD_STRUCTURED_REPLY_SIZE
/* Write payloads at least this big are received straight into their
 * buffer; smaller ones go through the input buffer with the headers
 * around them, so a burst of small writes costs few recv calls. */
#define DIRECT_PAYLOAD (IN_BUF_SIZE / 4)
/* Most iovecs in one vectored write (the kernel's UIO_MAXIOV). */
#define WRITE_MAX_IOV 1024

struct piece {
  struct uring_op op;
  struct request *req;
  const struct qcow2_extent *ext;
  char *dst;            /* where the guest bytes go */
  size_t len;           /* bytes to read (compressed: stream length) */
  size_t done;          /* bytes read so far (short reads resubmit) */
  int fd;
  uint64_t host_off;
  char *scratch;        /* compressed stream */
  unsigned scratch_cls;
};

/* One host write of a WRITE request: a host-contiguous run of segments
 * from qcow2_write_begin as one (vectored) write, or one ZERO segment as
 * an FALLOC_FL_ZERO_RANGE fallocate (or written zeros where the file
 * system refuses it). */
struct wop {
  struct uring_op op;
  struct request *req;
  unsigned file;
  int fd;
  struct iovec *iov;    /* what is left to write (advanced in place) */
  int iovcnt;
  uint64_t off;         /* host offset of the next byte */
  uint64_t left;        /* bytes still to write or zero */
  bool zero;            /* a ZERO segment */
  bool write_zeros;     /* ... written from zero_buf, not fallocated */
};

struct request {
  struct conn_state *cs;
  struct request *next;         /* send queue, free list, parked list */
  uint16_t flags, type;
  uint64_t cookie, offset;
  uint32_t length;
  uint64_t bytes;               /* counted against MAX_INFLIGHT_BYTES */

  int err;                      /* errno to report, 0 = success */
  char msg[96];                 /* structured error message */

  /* READ */
  struct qcow2_extent *ext;
  size_t nr_ext, cap_ext;
  struct piece *pieces;
  size_t nr_pieces;
  unsigned pending;             /* pieces still in the kernel */
  char *buf;                    /* READ data, WRITE payload */
  unsigned buf_cls;

  /* WRITE, between qcow2_write_begin and qcow2_write_end; 'pending'
   * counts the wops in the kernel. */
  struct qcow2_write *qw;
  struct wop *wops;
  struct iovec *wiov;

  /* Reply: iov[iov_idx] + iov_off is the next byte to send. */
  struct iovec *iov;
  int iovcnt, iov_idx;
  size_t iov_off;
  uint8_t *hdrs;                /* chunk headers and small payloads */
  struct iovec small_iov[3];
  uint8_t small_hdrs[64];
};

struct conn_state {
  struct conn *conn;
  struct worker *w;
  struct conn_state *next, *prev;       /* worker's connection list */
  struct conn_state *dirty_next;
  bool in_dirty;

  /* Input */
  uint8_t *in_buf;
  size_t in_pos, in_len;
  uint64_t discard_left;        /* payload bytes still to throw away */
  struct request *discard_req;  /* answered once the payload is gone */
  struct request *payload_req;  /* WRITE whose payload is coming in */
  uint32_t payload_got;         /* bytes of it in req->buf so far */
  bool paused;                  /* over the in-flight bounds */
  bool stop_read;               /* DISC, EOF, shutdown: read no more */
  bool dead;                    /* socket unusable: drop replies */
  const char *close_reason;

  /* In flight */
  unsigned nr_reqs;             /* parsed and not yet sent or dropped */
  uint64_t bytes;
  unsigned ops;                 /* polls, reads and writes in the kernel */
  struct uring_op poll_in, poll_out;
  bool poll_in_armed, poll_out_armed, cancelled;

  /* Send queue */
  struct request *sq_head, *sq_tail;
};

static void conn_read (struct conn_state *cs);
static void set_error (struct request *req, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
static void reply_error (struct request *req, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* ---- errors ----------------------------------------------------------- */

uint32_t
nbd_errno (int err)
{
  switch (err) {
  case 0: return 0;
  case EPERM: case EROFS: return NBD_EPERM;
  case EIO: return NBD_EIO;
  case ENOMEM: return NBD_ENOMEM;
  case EINVAL: return NBD_EINVAL;
  case ENOSPC: case EDQUOT: case EFBIG: return NBD_ENOSPC;
  case EOVERFLOW: return NBD_EOVERFLOW;
  case ENOTSUP: return NBD_ENOTSUP;
  case ESHUTDOWN: return NBD_ESHUTDOWN;
  default: return NBD_EIO;
  }
}

static const char *
cmd_name (uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ: return "READ";
  case NBD_CMD_WRITE: return "WRITE";
  case NBD_CMD_DISC: return "DISC";
  case NBD_CMD_FLUSH: return "FLUSH";
  case NBD_CMD_TRIM: return "TRIM";
  case NBD_CMD_CACHE: return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  default: return "unknown";
  }
}

static void
set_error (struct request *req, int err, const char *fmt, ...)
{
  va_list ap;

  if (req->err)
    return;                     /* keep the first error */
  req->err = err;
  va_start (ap, fmt);
  vsnprintf (req->msg, sizeof req->msg, fmt, ap);
  va_end (ap);
}

/* ---- request structs -------------------------------------------------- */

static struct request *
req_new (struct conn_state *cs)
{
  struct worker *w = cs->w;
  struct request *req = w->free_reqs;

  if (req) {
    w->free_reqs = req->next;
    w->nr_free_reqs--;
  }
  else {
    req = malloc (sizeof *req);
    if (req == NULL)
      return NULL;
  }
  memset (req, 0, sizeof *req);
  req->cs = cs;
  cs->nr_reqs++;
  return req;
}

/* The request is finished: sent, or dropped with its connection. */
static void
req_free (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;

  for (size_t i = 0; i < req->nr_pieces; i++)
    bufpool_put (w, req->pieces[i].scratch, req->pieces[i].scratch_cls);
  free (req->pieces);
  if (req->qw) {
    /* Never reached (a write ends before its request is answered), but
     * an in-flight allocation left behind would block its range for
     * good: end it as failed. */
    log_error ("%s: internal error: write freed before it ended",
               cs->conn->peer);
    qcow2_write_end (req->qw, -EIO);
    req->qw = NULL;
  }
  free (req->wops);
  free (req->wiov);
  free (req->ext);
  bufpool_put (w, req->buf, req->buf_cls);
  if (req->iov != req->small_iov)
    free (req->iov);
  if (req->hdrs != req->small_hdrs)
    free (req->hdrs);

  cs->nr_reqs--;
  cs->bytes -= req->bytes;

  if (w->nr_free_reqs < MAX_FREE_REQS) {
    req->next = w->free_reqs;
    w->free_reqs = req;
    w->nr_free_reqs++;
  }
  else
    free (req);
}

/* ---- connection bookkeeping ------------------------------------------- */

static void
mark_dirty (struct conn_state *cs)
{
  if (!cs->in_dirty) {
    cs->in_dirty = true;
    cs->dirty_next = cs->w->dirty;
    cs->w->dirty = cs;
  }
}

/* Stop using the socket for good (client gone, protocol violation):
 * queued replies are dropped, reads in the kernel are waited for. */
static void
conn_kill (struct conn_state *cs, const char *reason)
{
  if (!cs->close_reason)
    cs->close_reason = reason;
  cs->dead = true;
  cs->stop_read = true;
  while (cs->sq_head) {
    struct request *req = cs->sq_head;
    cs->sq_head = req->next;
    req_free (req);
  }
  cs->sq_tail = NULL;
  if (cs->discard_req) {
    req_free (cs->discard_req);
    cs->discard_req = NULL;
  }
  if (cs->payload_req) {
    req_free (cs->payload_req);
    cs->payload_req = NULL;
  }
  /* Parked requests have not touched the image yet: drop them. */
  struct request **pp = &cs->w->parked_head;
  cs->w->parked_tail = NULL;
  while (*pp) {
    struct request *req = *pp;
    if (req->cs == cs) {
      *pp = req->next;
      req_free (req);
    }
    else {
      cs->w->parked_tail = req;
      pp = &req->next;
    }
  }
  mark_dirty (cs);
}

static void
conn_stop_reading (struct conn_state *cs, const char *reason)
{
  if (!cs->close_reason)
    cs->close_reason = reason;
  cs->stop_read = true;
  if (cs->discard_req) {
    /* A payload cut short by EOF or shutdown: nobody waits for the
     * answer to a request we never fully received. */
    req_free (cs->discard_req);
    cs->discard_req = NULL;
  }
  if (cs->payload_req) {
    req_free (cs->payload_req);
    cs->payload_req = NULL;
  }
  mark_dirty (cs);
}

static void
arm_poll (struct conn_state *cs, bool out)
{
  struct io_uring_sqe *sqe = worker_get_sqe (cs->w);
  struct uring_op *op = out ? &cs->poll_out : &cs->poll_in;

  io_uring_prep_poll_add (sqe, cs->conn->fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data (sqe, op);
  if (out)
    cs->poll_out_armed = true;
  else
    cs->poll_in_armed = true;
  cs->ops++;
}

static void
cancel_op (struct conn_state *cs, struct uring_op *op)
{
  struct io_uring_sqe *sqe = worker_get_sqe (cs->w);

  io_uring_prep_cancel (sqe, op, 0);
  io_uring_sqe_set_data64 (sqe, 0);
}

static bool
over_bounds (const struct conn_state *cs)
{
  return cs->nr_reqs >= MAX_INFLIGHT_REQS || cs->bytes >= MAX_INFLIGHT_BYTES;
}

/* ---- replies ---------------------------------------------------------- */

static void
enqueue_reply (struct request *req)
{
  struct conn_state *cs = req->cs;

  if (cs->dead) {
    req_free (req);
    mark_dirty (cs);
    return;
  }
  req->next = NULL;
  if (cs->sq_tail)
    cs->sq_tail->next = req;
  else
    cs->sq_head = req;
  cs->sq_tail = req;
  mark_dirty (cs);
}

/* Room for N iovecs and HDR_BYTES of headers in the request. */
static int
reply_alloc (struct request *req, size_t n, size_t hdr_bytes)
{
  if (n <= sizeof req->small_iov / sizeof req->small_iov[0])
    req->iov = req->small_iov;
  else if ((req->iov = calloc (n, sizeof *req->iov)) == NULL)
    return -1;
  if (hdr_bytes <= sizeof req->small_hdrs)
    req->hdrs = req->small_hdrs;
  else if ((req->hdrs = malloc (hdr_bytes)) == NULL)
    return -1;
  return 0;
}

static void
put_iov (struct request *req, void *base, size_t len)
{
  req->iov[req->iovcnt].iov_base = base;
  req->iov[req->iovcnt].iov_len = len;
  req->iovcnt++;
}

static uint8_t *
put_struct_hdr (uint8_t *p, struct request *req, uint16_t flags,
                uint16_t type, uint32_t len)
{
  store_be32 (p, NBD_STRUCTURED_REPLY_MAGIC);
  store_be16 (p + 4, flags);
  store_be16 (p + 6, type);
  store_be64 (p + 8, req->cookie);
  store_be32 (p + 16, len);
  return p + STRUCT_HDR;
}

/* Send a simple reply with no data, or (structured) an error chunk or a
 * bare DONE.  Used for every reply except successful READ and
 * BLOCK_STATUS.  Cannot fail: the fixed headers fit the inline room. */
static void
reply_plain (struct request *req)
{
  struct conn_state *cs = req->cs;
  size_t msglen = req->err ? strlen (req->msg) : 0;

  req->iov = req->small_iov;
  req->hdrs = req->small_hdrs;
  if (!cs->conn->structured_replies) {
    store_be32 (req->hdrs, NBD_SIMPLE_REPLY_MAGIC);
    store_be32 (req->hdrs + 4, nbd_errno (req->err));
    store_be64 (req->hdrs + 8, req->cookie);
    put_iov (req, req->hdrs, NBD_SIMPLE_REPLY_SIZE);
  }
  else if (req->err == 0) {
    put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                    NBD_REPLY_TYPE_NONE, 0);
    put_iov (req, req->hdrs, STRUCT_HDR);
  }
  else {
    uint8_t *p = put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                                 NBD_REPLY_TYPE_ERROR, 6 + msglen);
    store_be32 (p, nbd_errno (req->err));
    store_be16 (p + 4, msglen);
    put_iov (req, req->hdrs, STRUCT_HDR + 6);
    if (msglen)
      put_iov (req, req->msg, msglen);
  }
  if (log_verbose >= 3)
    log_debug ("%s: %s cookie %#" PRIx64 " offset %" PRIu64 " length %"
               PRIu32 ": %s%s%s", cs->conn->peer, cmd_name (req->type),
               req->cookie, req->offset, req->length,
               req->err ? strerror (req->err) : "ok",
               msglen ? ": " : "", msglen ? req->msg : "");
  enqueue_reply (req);
}

static void
reply_error (struct request *req, int err, const char *fmt, ...)
{
  va_list ap;

  req->err = err;
  va_start (ap, fmt);
  vsnprintf (req->msg, sizeof req->msg, fmt, ap);
  va_end (ap);
  reply_plain (req);
}

static bool
is_hole (const struct qcow2_extent *e)
{
  return e->type == QCOW2_EXTENT_ZERO || e->type == QCOW2_EXTENT_UNALLOCATED;
}

/* All pieces of a READ are in: build the reply. */
static void
read_done (struct request *req)
{
  struct conn_state *cs = req->cs;
  bool df = req->flags & NBD_CMD_FLAG_DF;

  if (cs->dead) {
    req_free (req);
    mark_dirty (cs);
    return;
  }
  if (req->err) {
    reply_plain (req);
    return;
  }
  if (log_verbose >= 3)
    log_debug ("%s: READ cookie %#" PRIx64 " offset %" PRIu64 " length %"
               PRIu32 ": %zu extents", cs->conn->peer, req->cookie,
               req->offset, req->length, req->nr_ext);

  if (!cs->conn->structured_replies) {
    if (reply_alloc (req, 2, NBD_SIMPLE_REPLY_SIZE) == -1)
      goto nomem;
    store_be32 (req->hdrs, NBD_SIMPLE_REPLY_MAGIC);
    store_be32 (req->hdrs + 4, 0);
    store_be64 (req->hdrs + 8, req->cookie);
    put_iov (req, req->hdrs, NBD_SIMPLE_REPLY_SIZE);
    put_iov (req, req->buf, req->length);
    enqueue_reply (req);
    return;
  }

  if (df || req->nr_ext == 0) {
    /* One content chunk (the buffer has the zeros filled in). */
    if (reply_alloc (req, 2, STRUCT_HDR + 8) == -1)
      goto nomem;
    uint8_t *p = put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                                 NBD_REPLY_TYPE_OFFSET_DATA,
                                 8 + req->length);
    store_be64 (p, req->offset);
    put_iov (req, req->hdrs, STRUCT_HDR + 8);
    put_iov (req, req->buf, req->length);
    enqueue_reply (req);
    return;
  }

  /* Runs of data extents become OFFSET_DATA chunks, runs of zero and
   * unallocated extents OFFSET_HOLE chunks; together they cover the
   * range exactly once. */
  size_t nchunks = 0;
  for (size_t i = 0; i < req->nr_ext; i++)
    if (i == 0 || is_hole (&req->ext[i]) != is_hole (&req->ext[i - 1]))
      nchunks++;
  if (reply_alloc (req, 2 * nchunks, nchunks * (STRUCT_HDR + 12)) == -1)
    goto nomem;

  uint8_t *p = req->hdrs;
  for (size_t i = 0; i < req->nr_ext; ) {
    bool hole = is_hole (&req->ext[i]);
    uint64_t start = req->ext[i].offset, len = 0;
    size_t j = i;

    while (j < req->nr_ext && is_hole (&req->ext[j]) == hole)
      len += req->ext[j++].length;
    uint16_t flags = j == req->nr_ext ? NBD_REPLY_FLAG_DONE : 0;
    uint8_t *chunk = p;
    if (hole) {
      p = put_struct_hdr (p, req, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
      store_be64 (p, start);
      store_be32 (p + 8, len);
      p += 12;
      put_iov (req, chunk, STRUCT_HDR + 12);
    }
    else {
      p = put_struct_hdr (p, req, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                          8 + len);
      store_be64 (p, start);
      p += 8;
      put_iov (req, chunk, STRUCT_HDR + 8);
      put_iov (req, req->buf + (start - req->offset), len);
    }
    i = j;
  }
  enqueue_reply (req);
  return;

 nomem:
  if (req->iov != req->small_iov)
    free (req->iov);
  if (req->hdrs != req->small_hdrs)
    free (req->hdrs);
  req->iov = NULL;
  req->hdrs = NULL;
  req->iovcnt = 0;
  reply_error (req, ENOMEM, "out of memory building the reply");
}

/* ---- READ ------------------------------------------------------------- */

/* Map [offset, offset+length) completely into req->ext.  Returns 0 or
 * -errno (the message set). */
static int
map_range (struct request *req, uint64_t offset, uint64_t length,
           size_t max_ext)
{
  struct qcow2_image *img = req->cs->conn->exp->img;
  uint64_t pos = offset, end = offset + length;

  while (pos < end && req->nr_ext < max_ext) {
    size_t got = 0;
    int r;

    if (req->nr_ext == req->cap_ext) {
      size_t cap = req->cap_ext ? 2 * req->cap_ext : 16;
      struct qcow2_extent *p = realloc (req->ext, cap * sizeof *p);
      if (p == NULL) {
        set_error (req, ENOMEM, "out of memory mapping the range");
        return -ENOMEM;
      }
      req->ext = p;
      req->cap_ext = cap;
    }
    r = qcow2_map (img, pos, end - pos, req->ext + req->nr_ext,
                   MIN (req->cap_ext - req->nr_ext, (size_t) MAP_BATCH), &got);
    if (r < 0) {
      set_error (req, -r, "cannot map offset %" PRIu64 ": %s", pos,
                 strerror (-r));
      return r;
    }
    /* The library promises contiguous, non-empty extents covering a
     * prefix; a broken promise must not loop forever or overrun. */
    if (got == 0 || got > req->cap_ext - req->nr_ext) {
      set_error (req, EIO, "internal error mapping offset %" PRIu64, pos);
      return -EIO;
    }
    for (size_t i = 0; i < got; i++) {
      struct qcow2_extent *e = &req->ext[req->nr_ext + i];
      if (e->offset != pos || e->length == 0 || e->length > end - pos) {
        set_error (req, EIO, "internal error mapping offset %" PRIu64, pos);
        return -EIO;
      }
      pos += e->length;
    }
    req->nr_ext += got;
  }
  return 0;
}

static void
piece_submit (struct piece *pc)
{
  struct conn_state *cs = pc->req->cs;
  char *dst = pc->scratch ? pc->scratch : pc->dst;
  struct io_uring_sqe *sqe = worker_get_sqe (cs->w);

  io_uring_prep_read (sqe, pc->fd, dst + pc->done, pc->len - pc->done,
                      pc->host_off + pc->done);
  io_uring_sqe_set_data (sqe, &pc->op);
  cs->ops++;
}

/* A compressed cluster's stream is in: decompress and copy our piece. */
static void
piece_decompress (struct piece *pc)
{
  struct request *req = pc->req;
  const struct qcow2_extent *e = pc->ext;
  uint32_t csize = qcow2_layer_cluster_size (e->layer);
  char *out;
  unsigned cls = 0;
  int r;

  if (e->cluster_offset == 0 && e->length == csize)
    out = pc->dst;
  else {
    if (csize == 0 || e->cluster_offset > csize
        || e->length > csize - e->cluster_offset) {
      set_error (req, EIO, "bad compressed extent at offset %" PRIu64,
                 e->offset);
      return;
    }
    out = bufpool_get (req->cs->w, csize, &cls);
    if (out == NULL) {
      set_error (req, ENOMEM, "out of memory decompressing");
      return;
    }
  }
  r = qcow2_decompress (e->layer, pc->scratch, pc->len, out);
  if (r < 0)
    set_error (req, -r, "cannot decompress cluster at offset %" PRIu64
               ": %s", e->offset, strerror (-r));
  else if (out != pc->dst)
    memcpy (pc->dst, out + e->cluster_offset, e->length);
  if (out != pc->dst)
    bufpool_put (req->cs->w, out, cls);
}

static void
piece_complete (struct piece *pc, int res)
{
  struct request *req = pc->req;
  struct conn_state *cs = req->cs;

  cs->ops--;
  if (res < 0) {
    if (res == -EINTR || res == -EAGAIN) {
      piece_submit (pc);
      return;
    }
    set_error (req, -res, "read error at offset %" PRIu64 ": %s",
               pc->ext->offset, strerror (-res));
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
    if (pc->scratch && !req->err && !cs->dead)
      piece_decompress (pc);
  }
  if (pc->scratch) {
    bufpool_put (cs->w, pc->scratch, pc->scratch_cls);
    pc->scratch = NULL;
  }
  if (--req->pending == 0)
    read_done (req);
}

static void
do_read (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;
  bool zero_fill = !cs->conn->structured_replies
    || (req->flags & NBD_CMD_FLAG_DF);
  size_t npieces = 0;

  if (req->length == 0) {
    reply_plain (req);
    return;
  }
  if (map_range (req, req->offset, req->length, SIZE_MAX) < 0) {
    reply_plain (req);
    return;
  }
  req->buf = bufpool_get (w, req->length, &req->buf_cls);
  if (req->buf == NULL) {
    reply_error (req, ENOMEM, "out of memory for the read buffer");
    return;
  }

  for (size_t i = 0; i < req->nr_ext; i++)
    if (!is_hole (&req->ext[i]))
      npieces++;
  if (npieces) {
    req->pieces = calloc (npieces, sizeof *req->pieces);
    if (req->pieces == NULL) {
      reply_error (req, ENOMEM, "out of memory");
      return;
    }
  }

  for (size_t i = 0; i < req->nr_ext; i++) {
    const struct qcow2_extent *e = &req->ext[i];
    char *dst = req->buf + (e->offset - req->offset);
    struct piece *pc;

    if (is_hole (e)) {
      if (zero_fill)
        memset (dst, 0, e->length);
      continue;
    }
    if (e->file >= w->nr_fds) {
      set_error (req, EIO, "bad file index in extent at %" PRIu64, e->offset);
      break;
    }
    pc = &req->pieces[req->nr_pieces++];
    pc->op.kind = OP_PIECE;
    pc->req = req;
    pc->ext = e;
    pc->dst = dst;
    pc->fd = w->fds[e->file];
    pc->host_off = e->host_offset;
    if (e->type == QCOW2_EXTENT_DATA)
      pc->len = e->length;
    else {
      /* A compressed stream is at most a little over one cluster. */
      if (e->compressed_length == 0
          || e->compressed_length > 2 * qcow2_layer_cluster_size (e->layer)
                                    + 1024) {
        set_error (req, EIO, "bad compressed length at offset %" PRIu64,
                   e->offset);
        req->nr_pieces--;
        break;
      }
      pc->len = e->compressed_length;
      pc->scratch = bufpool_get (w, pc->len, &pc->scratch_cls);
      if (pc->scratch == NULL) {
        set_error (req, ENOMEM, "out of memory");
        req->nr_pieces--;
        break;
      }
    }
  }

  /* Submit only once every piece is set up, so an error part-way never
   * leaves reads in the kernel for a request we are answering now. */
  if (req->err) {
    reply_plain (req);
    return;
  }
  req->pending = req->nr_pieces;
  for (size_t i = 0; i < req->nr_pieces; i++)
    piece_submit (&req->pieces[i]);
  if (req->pending == 0)
    read_done (req);
}

/* ---- BLOCK_STATUS ----------------------------------------------------- */

struct bs_list {
  uint32_t id;
  uint8_t *ents;                /* (u32 length, u32 flags) pairs, wire order */
  size_t n, max;
  uint32_t last_len, last_flags;
  bool full;
};

static void
bs_add (struct bs_list *l, uint64_t len, uint32_t flags)
{
  if (l->full || len == 0)
    return;
  if (l->n > 0 && l->last_flags == flags) {
    /* Lengths stay below 4 GiB: the request length is a u32. */
    l->last_len += len;
    store_be32 (l->ents + 8 * (l->n - 1), l->last_len);
    return;
  }
  if (l->n == l->max) {
    l->full = true;
    return;
  }
  store_be32 (l->ents + 8 * l->n, len);
  store_be32 (l->ents + 8 * l->n + 4, flags);
  l->last_len = len;
  l->last_flags = flags;
  l->n++;
}

/* base:allocation of a DATA extent whose layer says host holes matter
 * (qcow2_layer_host_holes): a hole in the host file reads as zeros and is
 * reported with HOLE_FLAGS (ZERO for a metadata-preallocated qcow2 layer,
 * HOLE|ZERO for a raw layer), as qemu-nbd does through its file layer. */
static void
bs_add_data (struct bs_list *l, int fd, uint64_t host, uint64_t len,
             uint32_t hole_flags)
{
  uint64_t pos = host, end = host + len;

  while (pos < end && !l->full) {
    off_t d = lseek (fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO)       /* no data up to EOF */
        bs_add (l, end - pos, hole_flags);
      else                      /* no SEEK_DATA: assume data */
        bs_add (l, end - pos, 0);
      return;
    }
    if ((uint64_t) d > pos) {
      uint64_t h = MIN ((uint64_t) d, end);
      bs_add (l, h - pos, hole_flags);
      pos = h;
      if (pos >= end)
        return;
    }
    off_t hole = lseek (fd, pos, SEEK_HOLE);
    uint64_t dend = hole < 0 || (uint64_t) hole <= pos ? end
      : MIN ((uint64_t) hole, end);
    bs_add (l, dend - pos, 0);
    pos = dend;
  }
}

static void
do_block_status (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;
  struct bs_list lists[META_NR];
  size_t nlists = 0, nraw = 0;
  bool req_one = req->flags & NBD_CMD_FLAG_REQ_ONE;
  uint64_t pos = req->offset, end = req->offset + req->length;
  struct bs_list *base = NULL, *depth = NULL;

  memset (lists, 0, sizeof lists);
  for (unsigned m = 0; m < META_NR; m++) {
    if (!(cs->conn->meta & (1u << m)))
      continue;
    struct bs_list *l = &lists[nlists++];
    l->id = META_CONTEXT_ID (m);
    l->max = req_one ? 1 : BS_MAX_EXTENTS;
    l->ents = malloc (8 * l->max);
    if (l->ents == NULL) {
      for (size_t i = 0; i < nlists; i++)
        free (lists[i].ents);
      reply_error (req, ENOMEM, "out of memory");
      return;
    }
    if (m == META_BASE_ALLOCATION)
      base = l;
    else if (m == META_ALLOCATION_DEPTH)
      depth = l;
  }

  /* Map batch by batch, feeding every context, until the range is
   * covered, every context is full (with REQ_ONE: its one extent has
   * ended) or the work cap is reached.  Each context's reply then covers
   * a prefix of the range, which the protocol allows. */
  while (pos < end && nraw < BS_MAX_RAW) {
    bool all_full = true;
    for (size_t i = 0; i < nlists; i++)
      all_full &= lists[i].full;
    if (all_full)
      break;

    req->nr_ext = 0;
    if (map_range (req, pos, end - pos, MAP_BATCH) < 0)
      break;
    for (size_t i = 0; i < req->nr_ext; i++) {
      const struct qcow2_extent *e = &req->ext[i];

      if (base) {
        enum qcow2_host_holes hh = e->type == QCOW2_EXTENT_DATA
          ? qcow2_layer_host_holes (e->layer) : QCOW2_HOST_HOLES_DATA;

        if (hh != QCOW2_HOST_HOLES_DATA && e->file < w->nr_fds)
          bs_add_data (base, w->fds[e->file], e->host_offset, e->length,
                       hh == QCOW2_HOST_HOLES_ZERO ? NBD_STATE_ZERO
                       : NBD_STATE_HOLE | NBD_STATE_ZERO);
        else if (is_hole (e))
          bs_add (base, e->length, NBD_STATE_HOLE | NBD_STATE_ZERO);
        else
          bs_add (base, e->length, 0);
      }
      if (depth)
        bs_add (depth, e->length,
                e->type == QCOW2_EXTENT_UNALLOCATED ? 0 : e->depth);
      pos += e->length;
    }
    nraw += req->nr_ext;
  }

  if (req->err) {
    for (size_t i = 0; i < nlists; i++)
      free (lists[i].ents);
    reply_plain (req);
    return;
  }

  /* One chunk per context: header + context id, then the extents. */
  size_t total = 0;
  for (size_t i = 0; i < nlists; i++)
    total += lists[i].n;
  if (reply_alloc (req, 2 * nlists, nlists * (STRUCT_HDR + 4)) == -1
      || (req->buf = bufpool_get (w, MAX (total * 8, (size_t) 1),
                                  &req->buf_cls)) == NULL) {
    for (size_t i = 0; i < nlists; i++)
      free (lists[i].ents);
    if (req->iov != req->small_iov)
      free (req->iov);
    if (req->hdrs != req->small_hdrs)
      free (req->hdrs);
    req->iov = NULL;
    req->hdrs = NULL;
    reply_error (req, ENOMEM, "out of memory");
    return;
  }
  char *data = req->buf;
  for (size_t i = 0; i < nlists; i++) {
    uint8_t *h = req->hdrs + i * (STRUCT_HDR + 4);
    uint8_t *p = put_struct_hdr (h, req,
                                 i == nlists - 1 ? NBD_REPLY_FLAG_DONE : 0,
                                 NBD_REPLY_TYPE_BLOCK_STATUS,
                                 4 + 8 * lists[i].n);
    store_be32 (p, lists[i].id);
    put_iov (req, h, STRUCT_HDR + 4);
    memcpy (data, lists[i].ents, 8 * lists[i].n);
    put_iov (req, data, 8 * lists[i].n);
    data += 8 * lists[i].n;
    free (lists[i].ents);
  }
  if (log_verbose >= 3)
    log_debug ("%s: BLOCK_STATUS cookie %#" PRIx64 " offset %" PRIu64
               " length %" PRIu32 ": %zu extents", cs->conn->peer,
               req->cookie, req->offset, req->length, total);
  enqueue_reply (req);
}

/* ---- CACHE ------------------------------------------------------------ */

static void
do_cache (struct request *req)
{
  struct worker *w = req->cs->w;

  /* Readahead is advice: failures are not the client's concern, and the
   * reply need not wait for it. */
  if (map_range (req, req->offset, req->length, CACHE_MAX_EXTENTS) == 0) {
    for (size_t i = 0; i < req->nr_ext; i++) {
      const struct qcow2_extent *e = &req->ext[i];
      uint64_t len;

      if (is_hole (e) || e->file >= w->nr_fds)
        continue;
      len = e->type == QCOW2_EXTENT_DATA ? e->length : e->compressed_length;
      struct io_uring_sqe *sqe = worker_get_sqe (w);
      io_uring_prep_fadvise (sqe, w->fds[e->file], e->host_offset, len,
                             POSIX_FADV_WILLNEED);
    }
  }
  req->err = 0;
  reply_plain (req);
}

/* ---- WRITE, WRITE_ZEROES, TRIM, FLUSH ---------------------------------- */

/* Never written: the source of zeros where fallocate cannot make them. */
static char zero_buf[1 << 20] __attribute__ ((aligned (4096)));

static void write_start (struct request *req);
static void do_write_zeroes (struct request *req);
static void do_trim (struct request *req);

/* The library said QCOW2_BLOCKED: an overlapping allocation is in
 * flight, maybe one of this very loop's, so the worker must not wait for
 * it.  Park the request until the next wake-up.  SEQ is workers_wake_seq
 * as read before the library call: if it has moved, the wake-up that
 * ended the blocking allocation may already have been consumed, so make
 * sure another one comes. */
static void
park (struct request *req, unsigned seq)
{
  struct worker *w = req->cs->w;

  req->next = NULL;
  if (w->parked_tail)
    w->parked_tail->next = req;
  else
    w->parked_head = req;
  w->parked_tail = req;
  if (atomic_load (&workers_wake_seq) != seq)
    worker_kick (w);
}

void
request_retry_parked (struct worker *w)
{
  struct request *req = w->parked_head;

  /* Requests blocked again are parked anew, so the order holds. */
  w->parked_head = w->parked_tail = NULL;
  while (req) {
    struct request *next = req->next;

    switch (req->type) {
    case NBD_CMD_WRITE: write_start (req); break;
    case NBD_CMD_WRITE_ZEROES: do_write_zeroes (req); break;
    case NBD_CMD_TRIM: do_trim (req); break;
    default: abort ();
    }
    req = next;
  }
}

/* A modifying command has done its work (ERR is 0 or a negative errno
 * from the library): with FUA, make it durable, then answer. */
static void
modify_done (struct request *req, int err)
{
  if (err < 0) {
    reply_error (req, -err, "%s at offset %" PRIu64 ": %s",
                 cmd_name (req->type), req->offset, strerror (-err));
    return;
  }
  if (req->flags & NBD_CMD_FLAG_FUA) {
    int r = qcow2_flush (req->cs->conn->exp->img);
    if (r < 0) {
      reply_error (req, -r, "flush after %s: %s", cmd_name (req->type),
                   strerror (-r));
      return;
    }
  }
  reply_plain (req);
}

static void
wop_submit (struct wop *wo)
{
  struct conn_state *cs = wo->req->cs;
  struct io_uring_sqe *sqe = worker_get_sqe (cs->w);

  if (wo->zero && !wo->write_zeros)
    io_uring_prep_fallocate (sqe, wo->fd, FALLOC_FL_ZERO_RANGE, wo->off,
                             wo->left);
  else if (wo->zero)
    io_uring_prep_write (sqe, wo->fd, zero_buf,
                         MIN (wo->left, (uint64_t) sizeof zero_buf), wo->off);
  else if (wo->iovcnt == 1)
    io_uring_prep_write (sqe, wo->fd, wo->iov->iov_base, wo->iov->iov_len,
                         wo->off);
  else
    io_uring_prep_writev (sqe, wo->fd, wo->iov, wo->iovcnt, wo->off);
  io_uring_sqe_set_data (sqe, &wo->op);
  cs->ops++;
}

/* Every host write of a WRITE is done: link the new clusters (or undo
 * the allocation after a failure), then answer.  Only now is the write
 * covered by a later FLUSH on any connection, so only now is it
 * acknowledged. */
static void
write_done (struct request *req)
{
  int r = qcow2_write_end (req->qw, req->err ? -req->err : 0);

  req->qw = NULL;
  if (req->err) {
    reply_plain (req);        /* the I/O error, already described */
    return;
  }
  modify_done (req, r);
}

static void
wop_complete (struct wop *wo, int res)
{
  struct request *req = wo->req;
  struct conn_state *cs = req->cs;

  cs->ops--;
  if (res == -EINTR || res == -EAGAIN) {
    wop_submit (wo);
    return;
  }
  if (wo->zero && !wo->write_zeros) {
    /* EINVAL too: kernels without IORING_OP_FALLOCATE say that. */
    if (res == -EOPNOTSUPP || res == -ENOSYS || res == -EINVAL) {
      if (!cs->w->no_zero_range[wo->file])
        log_debug ("worker %u: FALLOC_FL_ZERO_RANGE on %s: %s; writing "
                   "zeros instead", cs->w->idx,
                   qcow2_file_name (cs->conn->exp->img, wo->file),
                   strerror (-res));
      cs->w->no_zero_range[wo->file] = true;
      wo->write_zeros = true;
      wop_submit (wo);
      return;
    }
    if (res < 0)
      set_error (req, -res, "zeroing host offset %" PRIu64 ": %s",
                 wo->off, strerror (-res));
    wo->left = 0;
  }
  else if (res < 0)
    set_error (req, -res, "write at host offset %" PRIu64 ": %s",
               wo->off, strerror (-res));
  else if (res == 0)
    set_error (req, EIO, "write at host offset %" PRIu64
               " made no progress", wo->off);
  else {
    /* A short write goes on where it stopped. */
    uint64_t n = res;

    wo->left -= MIN (n, wo->left);
    wo->off += n;
    while (!wo->zero && n > 0 && wo->iovcnt > 0) {
      if (n >= wo->iov->iov_len) {
        n -= wo->iov->iov_len;
        wo->iov++;
        wo->iovcnt--;
      }
      else {
        wo->iov->iov_base = (char *) wo->iov->iov_base + n;
        wo->iov->iov_len -= n;
        n = 0;
      }
    }
    if (wo->left > 0 && !req->err) {
      wop_submit (wo);
      return;
    }
  }
  if (--req->pending == 0)
    write_done (req);
}

/* Can segments A and B go into one run? */
static bool
seg_adjacent (const struct qcow2_seg *a, const struct qcow2_seg *b)
{
  return a->file == b->file && a->host_offset + a->length == b->host_offset
    && (a->source == QCOW2_SEG_ZERO) == (b->source == QCOW2_SEG_ZERO);
}

/* Start (or, after QCOW2_BLOCKED, retry) a WRITE whose payload is in
 * req->buf: ask the library for the host writes, then submit them all
 * at once, one per host-contiguous run. */
static void
write_start (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;
  const struct qcow2_seg *segs;
  size_t nsegs = 0, nops = 0;
  unsigned seq = atomic_load (&workers_wake_seq);
  int r;

  r = qcow2_write_begin (cs->conn->exp->img, req->offset, req->length, 0,
                         &req->qw, &segs, &nsegs);
  if (r != 0)
    req->qw = NULL;             /* no write handle to end */
  if (r == QCOW2_BLOCKED) {
    park (req, seq);
    return;
  }
  if (r < 0) {
    modify_done (req, r);
    return;
  }

  /* Our own library, but a bad segment would write the wrong bytes to
   * the wrong place: check before trusting. */
  for (size_t i = 0; i < nsegs; i++) {
    const struct qcow2_seg *sg = &segs[i];
    bool bad = sg->file >= w->nr_fds || sg->length == 0
      || sg->host_offset > UINT64_MAX - sg->length;

    if (sg->source == QCOW2_SEG_GUEST)
      bad |= !range_fits (sg->src_offset, sg->length, req->length);
    else if (sg->source == QCOW2_SEG_BUFFER)
      bad |= sg->buf == NULL;
    else if (sg->source != QCOW2_SEG_ZERO)
      bad = true;
    if (bad) {
      set_error (req, EIO, "internal error: bad write segment %zu", i);
      write_done (req);
      return;
    }
  }
  for (size_t i = 0, run = 0; i < nsegs; i++) {
    if (i == 0 || !seg_adjacent (&segs[i - 1], &segs[i])
        || run == WRITE_MAX_IOV) {
      nops++;
      run = 0;
    }
    run++;
  }

  if (nops > 0) {
    req->wops = calloc (nops, sizeof *req->wops);
    req->wiov = calloc (nsegs, sizeof *req->wiov);
    if (req->wops == NULL || req->wiov == NULL) {
      set_error (req, ENOMEM, "out of memory for the write");
      write_done (req);
      return;
    }
  }

  struct wop *wo = NULL;
  size_t run = 0;
  for (size_t i = 0; i < nsegs; i++) {
    const struct qcow2_seg *sg = &segs[i];
    struct iovec *iov = &req->wiov[i];

    if (i == 0 || !seg_adjacent (&segs[i - 1], sg) || run == WRITE_MAX_IOV) {
      wo = wo ? wo + 1 : req->wops;
      wo->op.kind = OP_WRITE;
      wo->req = req;
      wo->file = sg->file;
      wo->fd = w->fds[sg->file];
      wo->off = sg->host_offset;
      wo->iov = iov;
      wo->zero = sg->source == QCOW2_SEG_ZERO;
      wo->write_zeros = wo->zero && w->no_zero_range[sg->file];
      run = 0;
    }
    run++;
    wo->left += sg->length;
    if (sg->source == QCOW2_SEG_GUEST)
      iov->iov_base = req->buf + sg->src_offset;
    else
      iov->iov_base = (void *) sg->buf;
    iov->iov_len = sg->length;
    wo->iovcnt++;
  }

  req->pending = nops;
  for (size_t i = 0; i < nops; i++)
    wop_submit (&req->wops[i]);
  if (nops == 0)
    write_done (req);
}

static void
do_write (struct request *req)
{
  if (req->length == 0) {
    modify_done (req, 0);
    return;
  }
  write_start (req);
}

static void
do_write_zeroes (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  unsigned flags = 0, seq;
  int r;

  if (req->length == 0) {
    modify_done (req, 0);
    return;
  }
  /* As in QEMU, deallocating needs both the client's leave (no NO_HOLE)
   * and the server's (--discard=unmap). */
  if (exp->discard_unmap && !(req->flags & NBD_CMD_FLAG_NO_HOLE))
    flags |= QCOW2_MAY_UNMAP;
  if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
    flags |= QCOW2_FAST_ZERO;

  seq = atomic_load (&workers_wake_seq);
  r = qcow2_zero (exp->img, req->offset, req->length, flags);
  if (r == QCOW2_BLOCKED) {
    park (req, seq);
    return;
  }
  if (r == -ENOTSUP && (flags & QCOW2_FAST_ZERO)) {
    /* The client asked to hear at once that zeroing would be slow; it
     * will write the zeros itself. */
    reply_error (req, ENOTSUP, "fast zeroing is not possible here");
    return;
  }
  modify_done (req, r);
}

static void
do_trim (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  unsigned seq;
  int r;

  /* --discard=ignore (the default, as in qemu-nbd): TRIM is advice and
   * may be ignored; the data stays as it was. */
  if (!exp->discard_unmap || req->length == 0) {
    reply_plain (req);
    return;
  }
  seq = atomic_load (&workers_wake_seq);
  r = qcow2_discard (exp->img, req->offset, req->length, 0);
  if (r == QCOW2_BLOCKED) {
    park (req, seq);
    return;
  }
  modify_done (req, r);
}

static void
do_flush (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  int r;

  /* Covers every write already answered, on every connection: those
   * have all ended (qcow2_write_end) before their replies were queued,
   * and qcow2_flush covers every ended write, whatever thread made it. */
  if (exp->read_only) {
    reply_plain (req);
    return;
  }
  r = qcow2_flush (exp->img);
  if (r < 0) {
    reply_error (req, -r, "flush: %s", strerror (-r));
    return;
  }
  reply_plain (req);
}

/* ---- parsing ---------------------------------------------------------- */

/* Which flags each command accepts, beyond FUA (valid everywhere once
 * negotiated, "Command flags"). */
static uint16_t
valid_flags (const struct conn *conn, uint16_t type)
{
  uint16_t f = 0;

  if (conn->exp->eflags & NBD_FLAG_SEND_FUA)
    f |= NBD_CMD_FLAG_FUA;
  switch (type) {
  case NBD_CMD_READ:
    if (conn->structured_replies && (conn->exp->eflags & NBD_FLAG_SEND_DF))
      f |= NBD_CMD_FLAG_DF;
    break;
  case NBD_CMD_WRITE_ZEROES:
    f |= NBD_CMD_FLAG_NO_HOLE;
    if (conn->exp->eflags & NBD_FLAG_SEND_FAST_ZERO)
      f |= NBD_CMD_FLAG_FAST_ZERO;
    break;
  case NBD_CMD_BLOCK_STATUS:
    f |= NBD_CMD_FLAG_REQ_ONE;
    break;
  }
  return f;
}

/* Handle a fully received request (payload, if any, discarded). */
static void
dispatch (struct request *req)
{
  struct conn *conn = req->cs->conn;
  const struct export *exp = conn->exp;

  if (req->err) {
    /* Failed while its payload came in (no buffer for it). */
    reply_plain (req);
    return;
  }
  if (req->flags & ~valid_flags (conn, req->type)) {
    reply_error (req, EINVAL, "invalid flags %#x for %s", req->flags,
                 cmd_name (req->type));
    return;
  }

  switch (req->type) {
  case NBD_CMD_READ:
  case NBD_CMD_CACHE:
  case NBD_CMD_BLOCK_STATUS:
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    if (!range_fits (req->offset, req->length, exp->size)) {
      /* Writing past the end: ENOSPC, as qemu-nbd says. */
      reply_error (req, req->type == NBD_CMD_WRITE
                   || req->type == NBD_CMD_WRITE_ZEROES ? ENOSPC : EINVAL,
                   "request out of range: offset %" PRIu64 " length %"
                   PRIu32 " size %" PRIu64, req->offset, req->length,
                   exp->size);
      return;
    }
    break;
  }

  switch (req->type) {
  case NBD_CMD_READ:
    if (req->length > NBD_MAX_PAYLOAD) {
      /* Structured replies allow the more precise EOVERFLOW. */
      reply_error (req, conn->structured_replies ? EOVERFLOW : EINVAL,
                   "read of %" PRIu32 " bytes is over the %u byte limit",
                   req->length, NBD_MAX_PAYLOAD);
      return;
    }
    do_read (req);
    return;

  case NBD_CMD_BLOCK_STATUS:
    if ((conn->meta & ((1u << META_NR) - 1)) == 0) {
      reply_error (req, EINVAL, "no metadata context selected");
      return;
    }
    if (req->length == 0) {
      reply_error (req, EINVAL, "zero length block status");
      return;
    }
    do_block_status (req);
    return;

  case NBD_CMD_CACHE:
    do_cache (req);
    return;

  case NBD_CMD_FLUSH:
    do_flush (req);
    return;

  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    if (exp->read_only) {
      reply_error (req, EPERM, "%s on a read-only export",
                   cmd_name (req->type));
      return;
    }
    if (req->type == NBD_CMD_WRITE)
      do_write (req);
    else if (req->type == NBD_CMD_TRIM)
      do_trim (req);
    else
      do_write_zeroes (req);
    return;

  default:
    reply_error (req, EINVAL, "unknown command %u", req->type);
    return;
  }
}

/* Parse requests out of the input buffer; receive more while there is
 * room in the in-flight bounds. */
static void
conn_read (struct conn_state *cs)
{
  struct conn *conn = cs->conn;

  while (!cs->stop_read) {
    size_t avail = cs->in_len - cs->in_pos;
    uint8_t *p = cs->in_buf + cs->in_pos;
    bool direct = false;

    if (cs->payload_req) {
      struct request *req = cs->payload_req;
      size_t need = req->length - cs->payload_got;

      if (avail > 0 || need == 0) {
        size_t n = MIN (avail, need);
        memcpy (req->buf + cs->payload_got, p, n);
        cs->in_pos += n;
        cs->payload_got += n;
        if (cs->payload_got == req->length) {
          cs->payload_req = NULL;
          dispatch (req);
        }
        continue;
      }
      /* The input buffer is empty: a big payload skips it. */
      direct = need >= DIRECT_PAYLOAD;
    }

    if (cs->discard_left > 0 && avail > 0) {
      size_t n = MIN ((uint64_t) avail, cs->discard_left);
      cs->in_pos += n;
      cs->discard_left -= n;
      if (cs->discard_left == 0 && cs->discard_req) {
        struct request *req = cs->discard_req;
        cs->discard_req = NULL;
        dispatch (req);
      }
      continue;
    }

    if (cs->discard_left == 0 && avail >= NBD_REQUEST_SIZE) {
      struct request *req;

      if (over_bounds (cs)) {
        cs->paused = true;
        return;
      }
      if (load_be32 (p) != NBD_REQUEST_MAGIC) {
        log_info ("%s: bad request magic %#" PRIx32 ", disconnecting",
                  conn->peer, load_be32 (p));
        conn_kill (cs, "bad request magic");
        return;
      }
      uint16_t type = load_be16 (p + 6);
      uint32_t length = load_be32 (p + 24);
      cs->in_pos += NBD_REQUEST_SIZE;

      if (type == NBD_CMD_DISC) {
        conn_stop_reading (cs, "client sent NBD_CMD_DISC");
        return;
      }
      /* Only WRITE carries a payload.  Beyond the limit we cannot keep
       * the stream in sync cheaply, and no valid client sends it. */
      if (type == NBD_CMD_WRITE && length > NBD_MAX_PAYLOAD) {
        log_info ("%s: write payload of %" PRIu32 " bytes is too large, "
                  "disconnecting", conn->peer, length);
        conn_kill (cs, "oversized write payload");
        return;
      }

      req = req_new (cs);
      if (req == NULL) {
        conn_kill (cs, "out of memory");
        return;
      }
      req->flags = load_be16 (p + 4);
      req->type = type;
      req->cookie = load_be64 (p + 8);
      req->offset = load_be64 (p + 16);
      req->length = length;
      if (type == NBD_CMD_READ)
        req->bytes = MIN (length, NBD_MAX_PAYLOAD);

      if (type == NBD_CMD_WRITE && length > 0) {
        /* Keep the payload only for a write that will be done; the
         * payload of one refused anyway is thrown away as it comes. */
        if (!conn->exp->read_only
            && !(req->flags & ~valid_flags (conn, type))
            && range_fits (req->offset, length, conn->exp->size)) {
          req->buf = bufpool_get (cs->w, length, &req->buf_cls);
          if (req->buf) {
            req->bytes = length;
            cs->bytes += req->bytes;
            cs->payload_req = req;
            cs->payload_got = 0;
            continue;
          }
          set_error (req, ENOMEM, "out of memory for the write payload");
        }
        cs->discard_left = length;
        cs->discard_req = req;
      }
      else {
        cs->bytes += req->bytes;
        dispatch (req);
      }
      continue;
    }

    /* Need more bytes: keep the partial header at the front. */
    if (avail > 0 && cs->in_pos > 0)
      memmove (cs->in_buf, p, avail);
    cs->in_pos = 0;
    cs->in_len = avail;

    ssize_t r;
    if (direct) {
      struct request *req = cs->payload_req;
      r = conn->transport->recv (conn, req->buf + cs->payload_got,
                                 req->length - cs->payload_got);
      if (r > 0) {
        cs->payload_got += r;
        continue;               /* dispatched at the top when complete */
      }
    }
    else {
      r = conn->transport->recv (conn, cs->in_buf + cs->in_len,
                                 IN_BUF_SIZE - cs->in_len);
      if (r > 0) {
        cs->in_len += r;
        continue;
      }
    }
    if (r == 0) {
      if (cs->in_len > 0 || cs->discard_left > 0 || cs->payload_req)
        conn_stop_reading (cs, "client hung up in the middle of a request");
      else
        conn_stop_reading (cs, "client hung up without NBD_CMD_DISC");
      return;
    }
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!cs->poll_in_armed)
        arm_poll (cs, false);
      return;
    }
    log_info ("%s: recv: %m", conn->peer);
    conn_kill (cs, "receive error");
    return;
  }
}

/* ---- sending ---------------------------------------------------------- */

static void
conn_send (struct conn_state *cs)
{
  struct conn *conn = cs->conn;

  while (cs->sq_head && !cs->dead) {
    struct iovec iov[64];
    int n = 0;
    size_t want = 0;
    bool more;

    /* Gather from as many queued replies as fit: one syscall for a
     * burst of small replies. */
    struct request *req = cs->sq_head;
    int idx = req->iov_idx;
    size_t off = req->iov_off;
    while (req && n < (int) (sizeof iov / sizeof iov[0])) {
      if (idx >= req->iovcnt) {
        req = req->next;
        idx = 0;
        off = 0;
        continue;
      }
      if (req->iov[idx].iov_len > off) {
        iov[n].iov_base = (char *) req->iov[idx].iov_base + off;
        iov[n].iov_len = req->iov[idx].iov_len - off;
        want += iov[n].iov_len;
        n++;
      }
      idx++;
      off = 0;
    }
    more = req != NULL;
    if (n == 0) {
      /* Only empty iovecs left (cannot happen: every reply has a
       * header); drop them rather than spin. */
      while (cs->sq_head) {
        struct request *r = cs->sq_head;
        cs->sq_head = r->next;
        req_free (r);
      }
      cs->sq_tail = NULL;
      break;
    }

    ssize_t r = conn->transport->send (conn, iov, n, more);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!cs->poll_out_armed)
          arm_poll (cs, true);
        return;
      }
      if (errno == EPIPE || errno == ECONNRESET)
        log_info ("%s: client went away while we were replying",
                  conn->peer);
      else
        log_info ("%s: send: %m", conn->peer);
      conn_kill (cs, "send error");
      return;
    }

    /* Advance over what went out, freeing finished replies. */
    size_t sent = r;
    while (cs->sq_head
           && (sent > 0 || cs->sq_head->iov_idx >= cs->sq_head->iovcnt)) {
      req = cs->sq_head;
      if (req->iov_idx >= req->iovcnt) {
        cs->sq_head = req->next;
        if (cs->sq_head == NULL)
          cs->sq_tail = NULL;
        req_free (req);
        continue;
      }
      size_t left = req->iov[req->iov_idx].iov_len - req->iov_off;
      if (sent >= left) {
        sent -= left;
        req->iov_idx++;
        req->iov_off = 0;
      }
      else {
        req->iov_off += sent;
        sent = 0;
      }
    }
    if ((size_t) r < want) {
      /* The socket buffer is full: wait for room rather than retry. */
      if (!cs->poll_out_armed)
        arm_poll (cs, true);
      return;
    }
  }
}

/* ---- connection life -------------------------------------------------- */

static void
conn_close (struct conn_state *cs)
{
  struct worker *w = cs->w;

  /* Closing can happen while servicing a connection that re-marked
   * itself dirty: unlink it from that list too. */
  if (cs->in_dirty) {
    struct conn_state **pp = &w->dirty;
    while (*pp != cs)
      pp = &(*pp)->dirty_next;
    *pp = cs->dirty_next;
    cs->in_dirty = false;
  }
  if (cs->prev)
    cs->prev->next = cs->next;
  else
    w->conns = cs->next;
  if (cs->next)
    cs->next->prev = cs->prev;

  log_info ("%s: connection closed: %s", cs->conn->peer,
            cs->close_reason ? cs->close_reason : "unknown");
  conn_free (cs->conn);
  free (cs->in_buf);
  free (cs);
  atomic_fetch_sub (&w->nr_conns, 1);
  listener_conn_closed ();
}

/* Deferred work of one connection; returns true when it was freed. */
static bool
conn_service (struct conn_state *cs)
{
  for (;;) {
    conn_send (cs);
    if (cs->paused && !cs->stop_read && !over_bounds (cs)) {
      /* Resuming: the transport may hold buffered input (TLS), so read
       * before deciding to poll. */
      cs->paused = false;
      conn_read (cs);
      if (cs->sq_head && !cs->dead && !cs->poll_out_armed)
        continue;
    }
    break;
  }

  if (!cs->stop_read || cs->nr_reqs > 0)
    return false;
  /* Nothing left to answer: take back any poll still in the kernel. */
  if ((cs->poll_in_armed || cs->poll_out_armed) && !cs->cancelled) {
    cs->cancelled = true;
    if (cs->poll_in_armed)
      cancel_op (cs, &cs->poll_in);
    if (cs->poll_out_armed)
      cancel_op (cs, &cs->poll_out);
  }
  if (cs->ops > 0)
    return false;
  conn_close (cs);
  return true;
}

void
request_conn_start (struct worker *w, struct conn *conn)
{
  struct conn_state *cs;

  if (w->stopping) {
    log_info ("%s: connection closed: server shutting down", conn->peer);
    conn_free (conn);
    atomic_fetch_sub (&w->nr_conns, 1);
    listener_conn_closed ();
    return;
  }
  cs = calloc (1, sizeof *cs);
  if (cs == NULL || (cs->in_buf = malloc (IN_BUF_SIZE)) == NULL) {
    log_error ("%s: out of memory", conn->peer);
    free (cs);
    conn_free (conn);
    atomic_fetch_sub (&w->nr_conns, 1);
    listener_conn_closed ();
    return;
  }
  cs->conn = conn;
  cs->w = w;
  cs->poll_in.kind = OP_POLL_IN;
  cs->poll_out.kind = OP_POLL_OUT;
  conn->worker = w;
  conn->state = cs;
  cs->next = w->conns;
  if (w->conns)
    w->conns->prev = cs;
  w->conns = cs;
  log_info ("%s: serving on worker %u", conn->peer, w->idx);

  conn_read (cs);
  mark_dirty (cs);
}

void
request_complete (struct worker *w, struct uring_op *op, int res)
{
  struct conn_state *cs;

  switch (op->kind) {
  case OP_POLL_IN:
    cs = container_of (op, struct conn_state, poll_in);
    cs->poll_in_armed = false;
    cs->ops--;
    /* Any result (readable, error, hang-up, cancelled) is settled by the
     * recv itself. */
    if (!cs->stop_read && !cs->paused && res != -ECANCELED)
      conn_read (cs);
    mark_dirty (cs);
    break;
  case OP_POLL_OUT:
    cs = container_of (op, struct conn_state, poll_out);
    cs->poll_out_armed = false;
    cs->ops--;
    mark_dirty (cs);
    break;
  case OP_PIECE: {
    struct piece *pc = container_of (op, struct piece, op);
    cs = pc->req->cs;
    piece_complete (pc, res);
    mark_dirty (cs);
    break;
  }
  case OP_WRITE: {
    struct wop *wo = container_of (op, struct wop, op);
    cs = wo->req->cs;
    wop_complete (wo, res);
    mark_dirty (cs);
    break;
  }
  default:
    abort ();
  }
}

void
request_service (struct worker *w)
{
  while (w->dirty) {
    struct conn_state *cs = w->dirty;
    w->dirty = cs->dirty_next;
    cs->in_dirty = false;
    conn_service (cs);
  }
}

void
request_stop_all (struct worker *w)
{
  for (struct conn_state *cs = w->conns; cs; cs = cs->next) {
    if (!cs->stop_read)
      conn_stop_reading (cs, "server shutting down");
  }
}

void
request_kill_all (struct worker *w)
{
  for (struct conn_state *cs = w->conns; cs; cs = cs->next) {
    if (!cs->dead) {
      log_info ("%s: not taking its replies, dropping it", cs->conn->peer);
      conn_kill (cs, "server shutting down, client not reading");
    }
  }
}

void
request_worker_cleanup (struct worker *w)
{
  while (w->free_reqs) {
    struct request *req = w->free_reqs;
    w->free_reqs = req->next;
    free (req);
  }
  w->nr_free_reqs = 0;
}
