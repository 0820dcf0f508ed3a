/* SPDX-License-Identifier: MIT */
/* Replies: building them and sending them.  Each reply is one iovec
 * list (headers and data buffers, never copied; a NULL base stands for
 * bytes in the request's pipe, see zerocopy.c) queued on its
 * connection; replies leave in completion order through that send
 * queue, so bytes of two replies never interleave, and a burst of small
 * ones goes out in one send.  Errors become NBD errors here (nbd_errno),
 * and only here. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

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

/* ---- replies ---------------------------------------------------------- */

void
reply_enqueue (struct request *req)
{
  struct conn_state *cs = req->cs;

  if (cs->dead) {
    session_req_free (req);
    session_mark_dirty (cs);
    return;
  }
  req->next = NULL;
  req->queued = true;
  cs->nr_queued++;
  if (cs->sq_tail)
    cs->sq_tail->next = req;
  else
    cs->sq_head = req;
  cs->sq_tail = req;
  session_mark_dirty (cs);
}

int
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

void
reply_release_iov (struct request *req)
{
  if (req->iov != req->small_iov)
    free (req->iov);
  if (req->hdrs != req->small_hdrs)
    free (req->hdrs);
  req->iov = NULL;
  req->hdrs = NULL;
  req->iovcnt = 0;
}

void
reply_put_iov (struct request *req, void *base, size_t len)
{
  req->iov[req->iovcnt].iov_base = base;
  req->iov[req->iovcnt].iov_len = len;
  req->iovcnt++;
}

size_t
reply_hdr_size (const struct request *req)
{
  return req->cs->conn->extended_headers ? NBD_EXTENDED_REPLY_SIZE
    : NBD_STRUCTURED_REPLY_SIZE;
}

uint8_t *
reply_put_struct_hdr (uint8_t *p, struct request *req, uint16_t flags,
                      uint16_t type, uint32_t len)
{
  if (req->cs->conn->extended_headers) {
    /* The offset is the request's, whatever the chunk describes. */
    store_be32 (p, NBD_EXTENDED_REPLY_MAGIC);
    store_be16 (p + 4, flags);
    store_be16 (p + 6, type);
    store_be64 (p + 8, req->cookie);
    store_be64 (p + 16, req->offset);
    store_be64 (p + 24, len);
    return p + NBD_EXTENDED_REPLY_SIZE;
  }
  store_be32 (p, NBD_STRUCTURED_REPLY_MAGIC);
  store_be16 (p + 4, flags);
  store_be16 (p + 6, type);
  store_be64 (p + 8, req->cookie);
  store_be32 (p + 16, len);
  return p + NBD_STRUCTURED_REPLY_SIZE;
}

/* Send a simple reply with no data, or (structured or extended) an
 * error chunk or a bare DONE.  Used for every reply except successful
 * READ and BLOCK_STATUS.  Cannot fail: the fixed headers fit the inline
 * room. */
void
reply_plain (struct request *req)
{
  struct conn_state *cs = req->cs;
  size_t msglen = req->err ? strlen (req->msg) : 0;
  size_t hsz = reply_hdr_size (req);

  req->iov = req->small_iov;
  req->hdrs = req->small_hdrs;
  if (!cs->conn->structured_replies) {
    store_be32 (req->hdrs, NBD_SIMPLE_REPLY_MAGIC);
    store_be32 (req->hdrs + 4, nbd_errno (req->err));
    store_be64 (req->hdrs + 8, req->cookie);
    reply_put_iov (req, req->hdrs, NBD_SIMPLE_REPLY_SIZE);
  }
  else if (req->err == 0) {
    reply_put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                          NBD_REPLY_TYPE_NONE, 0);
    reply_put_iov (req, req->hdrs, hsz);
  }
  else {
    uint8_t *p = reply_put_struct_hdr (req->hdrs, req, NBD_REPLY_FLAG_DONE,
                                       NBD_REPLY_TYPE_ERROR, 6 + msglen);
    store_be32 (p, nbd_errno (req->err));
    store_be16 (p + 4, msglen);
    reply_put_iov (req, req->hdrs, hsz + 6);
    if (msglen)
      reply_put_iov (req, req->msg, msglen);
  }
  if (log_verbose >= 3)
    log_debug ("%s: %s cookie %#" PRIx64 " offset %" PRIu64 " length %"
               PRIu64 ": %s%s%s", cs->conn->peer, cmd_name (req->type),
               req->cookie, req->offset, req->length,
               req->err ? strerror (req->err) : "ok",
               msglen ? ": " : "", msglen ? req->msg : "");
  reply_enqueue (req);
}

void
reply_error (struct request *req, int err, const char *fmt, ...)
{
  va_list ap;

  req->err = err;
  va_start (ap, fmt);
  vsnprintf (req->msg, sizeof req->msg, fmt, ap);
  va_end (ap);
  reply_plain (req);
}

/* ---- sending ---------------------------------------------------------- */

void
reply_drop_queue (struct conn_state *cs)
{
  /* The kernel still reads the head replies: reply_send_complete drops
   * them all when it is done. */
  if (cs->send_armed)
    return;
  while (cs->sq_head) {
    struct request *req = cs->sq_head;
    cs->sq_head = req->next;
    session_req_free (req);
  }
  cs->sq_tail = NULL;
}

/* SENT bytes of the queue went out: step over them, freeing finished
 * replies. */
static void
advance (struct conn_state *cs, size_t sent)
{
  while (cs->sq_head
         && (sent > 0 || cs->sq_head->iov_idx >= cs->sq_head->iovcnt)) {
    struct request *req = cs->sq_head;
    if (req->iov_idx >= req->iovcnt) {
      cs->sq_head = req->next;
      if (cs->sq_head == NULL)
        cs->sq_tail = NULL;
      session_req_free (req);
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
}

/* The socket failed with ERR: say so, and let the caller drop the
 * connection (request.c owns its life). */
static int
send_failed (struct conn_state *cs, int err)
{
  if (err == EPIPE || err == ECONNRESET)
    log_info ("%s: client went away while we were replying",
              cs->conn->peer);
  else
    log_info ("%s: send: %s", cs->conn->peer, strerror (err));
  return -1;
}

/* Queue a sendmsg of IOV[0..N) in the ring.  The kernel sends what fits
 * and waits for room on its own, so no POLLOUT is needed. */
static void
ring_send (struct conn_state *cs, const struct iovec *iov, int n, bool more)
{
  struct io_uring_sqe *sqe = ring_get_sqe (cs->w);

  memcpy (cs->send_iov, iov, n * sizeof *iov);
  cs->send_msg = (struct msghdr) { .msg_iov = cs->send_iov,
                                   .msg_iovlen = n };
  io_uring_prep_sendmsg (sqe, cs->conn->fd, &cs->send_msg,
                         MSG_NOSIGNAL | (more ? MSG_MORE : 0));
  io_uring_sqe_set_data (sqe, &cs->send_op);
  cs->send_armed = true;
  cs->ops++;
}

int
reply_send_complete (struct conn_state *cs, int res)
{
  cs->send_armed = false;
  cs->ops--;
  if (cs->dead) {
    reply_drop_queue (cs);      /* deferred by the connection's kill */
    return 0;
  }
  if (res == -EINTR)
    return 0;                   /* reply_send tries again */
  if (res == -EAGAIN) {
    /* A kernel that hands EAGAIN back instead of waiting for room:
     * wait with a poll before the next try, never spin. */
    if (!cs->poll_out_armed)
      session_arm_poll (cs, true);
    return 0;
  }
  if (res < 0)
    return send_failed (cs, -res);
  advance (cs, res);
  return 0;
}

/* Send the bytes at the head of REQ's reply that wait in its pipe (a
 * zero-copy READ's data), straight from the pipe to the socket: the
 * transport's result, *WANT set to what was asked. */
static ssize_t
send_from_pipe (struct conn_state *cs, struct request *req, size_t *want)
{
  struct conn *conn = cs->conn;
  int idx = req->iov_idx;
  bool more = idx + 1 < req->iovcnt || req->next;
  ssize_t r;

  *want = req->iov[idx].iov_len - req->iov_off;
  r = conn->transport->splice (conn, req->zp.rfd, *want, more);
  if (r > 0)
    req->zc_held -= r;
  return r;
}

/* Gather into IOV (room for MAX) the bytes of as many queued replies
 * from REQ on as fit, up to the next bytes that come from a pipe: one
 * syscall for a burst of small replies.  Returns how many iovecs, with
 * *WANT their bytes and *MORE whether more bytes follow them. */
static int
gather (struct request *req, struct iovec *iov, int max, size_t *want,
        bool *more)
{
  int idx = req->iov_idx, n = 0;
  size_t off = req->iov_off;

  while (req && n < max) {
    if (idx >= req->iovcnt) {
      req = req->next;
      idx = 0;
      off = 0;
      continue;
    }
    if (req->iov[idx].iov_base == NULL)
      break;
    if (req->iov[idx].iov_len > off) {
      iov[n].iov_base = (char *) req->iov[idx].iov_base + off;
      iov[n].iov_len = req->iov[idx].iov_len - off;
      *want += iov[n].iov_len;
      n++;
    }
    idx++;
    off = 0;
  }
  /* MSG_MORE only if bytes really follow: TCP holds a segment sent
   * with it until more come or a timer fires. */
  while (req && idx >= req->iovcnt) {
    req = req->next;
    idx = 0;
  }
  *more = req != NULL;
  return n;
}

int
reply_send (struct conn_state *cs)
{
  struct conn *conn = cs->conn;

  /* On a plain connection a POLLOUT in the kernel means the ring's
   * last sendmsg found no room: wait for it. */
  while (cs->sq_head && !cs->dead && !cs->send_armed
         && !(cs->ring_send && cs->poll_out_armed)) {
    struct request *req = cs->sq_head;
    struct iovec iov[64];
    size_t want = 0;
    ssize_t r;

    /* Step over empty iovecs, so the head is the next byte to send. */
    while (req->iov_idx < req->iovcnt
           && req->iov[req->iov_idx].iov_len <= req->iov_off) {
      req->iov_idx++;
      req->iov_off = 0;
    }

    if (req->iov_idx < req->iovcnt && req->iov[req->iov_idx].iov_base == NULL)
      r = send_from_pipe (cs, req, &want);
    else {
      bool more;
      int n = gather (req, iov, sizeof iov / sizeof iov[0], &want, &more);

      if (n == 0) {
        /* Only empty iovecs left (cannot happen: every reply has a
         * header); drop them rather than spin. */
        reply_drop_queue (cs);
        break;
      }
      if (cs->ring_send) {
        ring_send (cs, iov, n, more);
        return 0;
      }
      r = conn->transport->send (conn, iov, n, more);
    }
    if (r < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!cs->poll_out_armed)
          session_arm_poll (cs, true);
        return 0;
      }
      return send_failed (cs, errno);
    }

    advance (cs, r);
    if ((size_t) r < want) {
      /* The socket buffer is full: wait for room rather than retry. */
      if (!cs->poll_out_armed)
        session_arm_poll (cs, true);
      return 0;
    }
  }
  return 0;
}
