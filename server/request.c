/* SPDX-License-Identifier: MIT */
/* The transmission phase, per connection: request parsing, validation
 * and dispatch to the command handlers (read.c, block-status.c,
 * writes.c), and the connection's lifetime, driven by the worker's
 * io_uring loop (worker.c).
 *
 * A plain connection keeps one IORING_OP_RECV armed whenever it wants
 * input, so requests come in through the same ring as the data reads
 * they start: no recv syscall per request, and none that only says
 * EAGAIN.  A TLS connection reads through its transport until that says
 * EAGAIN (OpenSSL may hold plaintext the socket no longer shows, so
 * readiness alone is not trusted), then arms a POLLIN.  Too many
 * requests or bytes in flight pause reading.  A WRITE's payload is
 * received into a pool buffer before the request is dispatched.  A
 * connection is freed only when no request, recv, read, write or poll
 * of it is left in the kernel. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
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

/* Backpressure: a request is left unread (in the input buffer, or in
 * the socket) while the connection has this many requests in flight,
 * or while what it would hold (parse_cost: READ data, a WRITE payload,
 * BLOCK_STATUS extents) would take the bytes the connection holds over
 * server_max_inflight.  A connection holding nothing may always take
 * one request, so one of the largest (NBD_MAX_PAYLOAD) always fits:
 * a connection holds at most MAX (server_max_inflight, NBD_MAX_PAYLOAD)
 * bytes of data, however fast it sends and however slowly it reads. */
#define MAX_INFLIGHT_REQS 128

uint64_t server_max_inflight = SERVER_DEFAULT_MAX_INFLIGHT;
/* Receive buffer: many small requests per recv. */
#define IN_BUF_SIZE (64 * 1024)
/* Write payloads at least this big are received straight into their
 * buffer; smaller ones go through the input buffer with the headers
 * around them, so a burst of small writes costs few recv calls. */
#define DIRECT_PAYLOAD (IN_BUF_SIZE / 4)

static void read_requests (struct conn_state *cs);

/* ---- backpressure ----------------------------------------------------- */

/* May CS take a request that holds COST bytes? */
static bool
fits (const struct conn_state *cs, uint64_t cost)
{
  if (cs->nr_reqs >= MAX_INFLIGHT_REQS)
    return false;
  return cs->bytes == 0
    || cost <= server_max_inflight - MIN (cs->bytes, server_max_inflight);
}

/* ---- stopping a connection -------------------------------------------- */

/* Drop the request whose payload is still coming in (kept or thrown
 * away): it will not be answered. */
static void
drop_incoming (struct conn_state *cs)
{
  if (cs->discard_req) {
    session_req_free (cs->discard_req);
    cs->discard_req = NULL;
  }
  if (cs->payload_req) {
    struct request *req = cs->payload_req;

    if (cs->recv_armed && cs->recv_direct) {
      /* The kernel may still write into the payload buffer: it goes
       * back to the pool only when the recv completes. */
      cs->recv_orphan = req->buf;
      cs->recv_orphan_cls = req->buf_cls;
      req->buf = NULL;
    }
    session_req_free (req);
    cs->payload_req = NULL;
  }
}

/* Stop using the socket for good (client gone, protocol violation):
 * queued replies are dropped, reads in the kernel are waited for. */
static void
kill_conn (struct conn_state *cs, const char *reason)
{
  if (!cs->close_reason)
    cs->close_reason = reason;
  cs->dead = true;
  cs->stop_read = true;
  /* A sendmsg in the ring holds the head replies until it completes:
   * take it back, so a client that stopped reading cannot hold them. */
  if (cs->send_armed && !cs->send_cancelled) {
    cs->send_cancelled = true;
    session_cancel_op (cs, &cs->send_op);
  }
  reply_drop_queue (cs);
  drop_incoming (cs);
  writes_drop_parked (cs);
  session_mark_dirty (cs);
}

static void
stop_reading (struct conn_state *cs, const char *reason)
{
  if (!cs->close_reason)
    cs->close_reason = reason;
  cs->stop_read = true;
  /* A payload cut short by EOF or shutdown: nobody waits for the answer
   * to a request we never fully received. */
  drop_incoming (cs);
  session_mark_dirty (cs);
}

/* The client closed its end. */
static void
hung_up (struct conn_state *cs)
{
  if (cs->in_len > 0 || cs->discard_left > 0 || cs->payload_req)
    stop_reading (cs, "client hung up in the middle of a request");
  else
    stop_reading (cs, "client hung up without NBD_CMD_DISC");
}

static void
recv_failed (struct conn_state *cs, int err)
{
  log_info ("%s: recv: %s", cs->conn->peer, strerror (err));
  kill_conn (cs, "receive error");
}

/* ---- dispatch --------------------------------------------------------- */

/* Handle a fully received request (payload, if any, discarded). */
static void
dispatch (struct request *req)
{
  struct conn *conn = req->cs->conn;
  struct nbd_request hdr = {
    .flags = req->flags, .type = req->type, .cookie = req->cookie,
    .offset = req->offset, .length = req->length, .meta = req->meta,
  };
  int err;

  if (req->err) {
    /* Failed while its payload came in (no buffer for it). */
    reply_plain (req);
    return;
  }
  if (req->type == NBD_CMD_BLOCK_STATUS && req->buf) {
    /* The payload names the contexts and the effect length; its buffer
     * is not needed again (the reply takes one of its own). */
    err = parse_payload (conn, &hdr, (const uint8_t *) req->buf,
                         req->length, req->msg, sizeof req->msg);
    bufpool_put (req->cs->w, req->buf, req->buf_cls);
    req->buf = NULL;
    req->length = hdr.length;
    req->meta = hdr.meta;
    if (err) {
      req->err = err;
      reply_plain (req);
      return;
    }
  }
  err = parse_check (conn, &hdr, req->msg, sizeof req->msg);
  if (err) {
    req->err = err;
    reply_plain (req);
    return;
  }

  switch (req->type) {
  case NBD_CMD_READ:
    cmd_read (req);
    return;
  case NBD_CMD_BLOCK_STATUS:
    cmd_block_status (req);
    return;
  case NBD_CMD_CACHE:
    cmd_cache (req);
    return;
  case NBD_CMD_FLUSH:
    cmd_flush (req);
    return;
  case NBD_CMD_WRITE:
    cmd_write (req);
    return;
  case NBD_CMD_TRIM:
    cmd_trim (req);
    return;
  case NBD_CMD_WRITE_ZEROES:
    cmd_write_zeroes (req);
    return;
  default:
    abort ();                   /* parse_check refused it */
  }
}

/* ---- reading ---------------------------------------------------------- */

/* Receive through the ring into the input buffer or (DIRECT) into the
 * payload buffer; coalesce.c decides whether to wait for a batch. */
static void
arm_recv (struct conn_state *cs, bool direct)
{
  if (direct) {
    struct request *req = cs->payload_req;
    size_t left = req->length - cs->payload_got;
    rxc_arm_recv (cs, req->buf + cs->payload_got, left, left);
  }
  else {
    /* Whatever is owed (the rest of a payload, a discarded payload or a
     * header) is not in the buffer: everything there is parsed. */
    size_t owed = cs->discard_left;
    if (cs->payload_req)
      owed = cs->payload_req->length - cs->payload_got;
    else if (cs->in_len > 0)
      owed = parse_header_size (cs->conn) - cs->in_len;
    rxc_arm_recv (cs, cs->in_buf + cs->in_len, IN_BUF_SIZE - cs->in_len,
                  owed);
  }
  cs->recv_armed = true;
  cs->recv_direct = direct;
  cs->ops++;
}

/* Move what the input buffer holds of the incoming payload into the
 * request's buffer, and dispatch the request once all of it is in.
 * Returns false when there is nothing to move: more must be received. */
static bool
take_payload (struct conn_state *cs)
{
  struct request *req = cs->payload_req;
  size_t avail = cs->in_len - cs->in_pos;
  size_t need = req->length - cs->payload_got;
  size_t n = MIN (avail, need);

  if (avail == 0 && need > 0)
    return false;
  memcpy (req->buf + cs->payload_got, cs->in_buf + cs->in_pos, n);
  cs->in_pos += n;
  cs->payload_got += n;
  if (cs->payload_got == req->length) {
    cs->payload_req = NULL;
    dispatch (req);
  }
  return true;
}

/* Throw away what the input buffer holds of a payload nobody will use;
 * once all of it is gone, answer its request (with its error). */
static void
skip_discarded (struct conn_state *cs)
{
  size_t n = MIN ((uint64_t) (cs->in_len - cs->in_pos), cs->discard_left);

  cs->in_pos += n;
  cs->discard_left -= n;
  if (cs->discard_left == 0 && cs->discard_req) {
    struct request *req = cs->discard_req;
    cs->discard_req = NULL;
    dispatch (req);
  }
}

/* REQ (of header HDR, holding COST bytes) comes with a payload: receive
 * it into a pool buffer if the request will use it; the payload of one
 * refused anyway is thrown away as it comes, and the request answered
 * once it is gone. */
static void
start_payload (struct conn_state *cs, struct request *req,
               const struct nbd_request *hdr, uint64_t cost)
{
  uint32_t length = hdr->length;
  int err = parse_check_payload (cs->conn, hdr, req->msg, sizeof req->msg);

  if (err != 0)
    req->err = err;
  else {
    req->buf = bufpool_get (cs->w, length, &req->buf_cls);
    if (req->buf) {
      req->bytes = cost;
      cs->bytes += req->bytes;
      cs->payload_req = req;
      cs->payload_got = 0;
      return;
    }
    session_set_error (req, ENOMEM, "out of memory for the payload");
  }
  cs->discard_left = length;
  cs->discard_req = req;
}

/* Parse the request header at the front of the input buffer and start
 * its request: dispatch it, or start on its payload.  Returns false when
 * reading stops here: the connection is over its in-flight bounds (the
 * header stays where it is until replies make room), disconnecting, or
 * killed for a protocol violation. */
static bool
take_request (struct conn_state *cs)
{
  struct conn *conn = cs->conn;
  const uint8_t *p = cs->in_buf + cs->in_pos;
  struct nbd_request hdr;
  struct request *req;
  uint64_t cost;

  if (parse_request (conn, p, cs->in_len - cs->in_pos, &hdr)
      == PARSE_BAD_MAGIC) {
    log_info ("%s: bad request magic %#" PRIx32 ", disconnecting",
              conn->peer, load_be32 (p));
    kill_conn (cs, "bad request magic");
    return false;
  }
  cost = parse_cost (&hdr);
  if (!fits (cs, cost)) {
    cs->paused = true;
    cs->paused_cost = cost;
    return false;
  }
  cs->in_pos += parse_header_size (conn);
  rxc_count (cs, MIN (hdr.length, (uint64_t) UINT32_MAX));

  if (hdr.type == NBD_CMD_DISC) {
    stop_reading (cs, "client sent NBD_CMD_DISC");
    return false;
  }
  /* Beyond the limit we cannot keep the stream in sync cheaply, and no
   * valid client sends it. */
  if (parse_payload_len (conn, &hdr) > NBD_MAX_PAYLOAD) {
    log_info ("%s: %s payload of %" PRIu64 " bytes is too large, "
              "disconnecting", conn->peer, cmd_name (hdr.type), hdr.length);
    kill_conn (cs, "oversized payload");
    return false;
  }

  req = session_req_new (cs);
  if (req == NULL) {
    kill_conn (cs, "out of memory");
    return false;
  }
  req->flags = hdr.flags;
  req->type = hdr.type;
  req->cookie = hdr.cookie;
  req->offset = hdr.offset;
  req->length = hdr.length;
  req->meta = hdr.meta;

  if (parse_payload_len (conn, &hdr) > 0)
    start_payload (cs, req, &hdr, cost);
  else {
    req->bytes = cost;
    cs->bytes += req->bytes;
    dispatch (req);
  }
  return true;
}

/* Receive more input through the transport (a TLS connection): into the
 * payload buffer when DIRECT, else into the input buffer.  Returns true
 * to parse on, false when reading stops here: nothing more yet (a POLLIN
 * is armed), EOF or an error. */
static bool
recv_more (struct conn_state *cs, bool direct)
{
  struct conn *conn = cs->conn;
  ssize_t r;

  if (direct) {
    struct request *req = cs->payload_req;
    r = conn->transport->recv (conn, req->buf + cs->payload_got,
                               req->length - cs->payload_got);
    if (r > 0) {
      cs->payload_got += r;
      return true;              /* dispatched by take_payload when complete */
    }
  }
  else {
    r = conn->transport->recv (conn, cs->in_buf + cs->in_len,
                               IN_BUF_SIZE - cs->in_len);
    if (r > 0) {
      cs->in_len += r;
      return true;
    }
  }
  if (r == 0) {
    hung_up (cs);
    return false;
  }
  if (errno == EINTR)
    return true;
  if (errno == EAGAIN || errno == EWOULDBLOCK) {
    if (!cs->poll_in_armed)
      session_arm_poll (cs, false);
    return false;
  }
  recv_failed (cs, errno);
  return false;
}

/* Parse requests out of the input buffer; receive more (on a plain
 * connection: arm the recv) while there is room in the in-flight
 * bounds. */
static void
read_requests (struct conn_state *cs)
{
  /* An armed recv means everything received so far is parsed, and its
   * buffer must stay put: its completion carries on from here. */
  if (cs->recv_armed)
    return;

  while (!cs->stop_read) {
    size_t avail = cs->in_len - cs->in_pos;
    bool direct = false;

    if (cs->payload_req) {
      if (take_payload (cs))
        continue;
      /* The input buffer is empty: a big payload skips it. */
      direct = cs->payload_req->length - cs->payload_got >= DIRECT_PAYLOAD;
    }
    if (cs->discard_left > 0 && avail > 0) {
      skip_discarded (cs);
      continue;
    }
    if (cs->discard_left == 0 && avail >= parse_header_size (cs->conn)) {
      if (!take_request (cs))
        return;
      continue;
    }

    /* Need more bytes: keep the partial header at the front. */
    if (avail > 0 && cs->in_pos > 0)
      memmove (cs->in_buf, cs->in_buf + cs->in_pos, avail);
    cs->in_pos = 0;
    cs->in_len = avail;

    if (cs->ring_recv) {
      arm_recv (cs, direct);
      return;
    }
    if (!recv_more (cs, direct))
      return;
  }
}

/* The armed recv completed with RES: bytes, EOF or an error. */
static void
recv_complete (struct conn_state *cs, int res)
{
  cs->recv_armed = false;
  cs->ops--;
  bool rearm = rxc_recv_complete (cs, res);
  if (cs->recv_orphan) {
    bufpool_put (cs->w, cs->recv_orphan, cs->recv_orphan_cls);
    cs->recv_orphan = NULL;
  }
  /* Reading stopped while the recv was armed (shutdown, a send error):
   * whatever it brought is not parsed. */
  if (cs->stop_read)
    return;

  if (res > 0) {
    if (cs->recv_direct)
      cs->payload_got += res;
    else
      cs->in_len += res;
    read_requests (cs);
  }
  else if (res == 0)
    hung_up (cs);
  else if (res == -EINTR || rearm)
    read_requests (cs);             /* arms it again */
  else if (res == -EAGAIN) {
    /* A kernel that hands EAGAIN back rather than waiting for input:
     * wait with a poll, whose completion arms the recv again. */
    if (!cs->poll_in_armed)
      session_arm_poll (cs, false);
  }
  else
    recv_failed (cs, -res);
}

/* ---- connection life -------------------------------------------------- */

/* The connection is gone from W: free it and tell the counts. */
static void
release_conn (struct worker *w, struct conn *conn)
{
  conn_free (conn);
  atomic_fetch_sub (&w->nr_conns, 1);
  w->conn_closed ();
}

static void
close_conn (struct conn_state *cs)
{
  struct worker *w = cs->w;
  struct conn *conn = cs->conn;

  /* Closing can happen while servicing a connection that re-marked
   * itself dirty: unlink it from that list too. */
  session_unmark_dirty (cs);
  if (cs->prev)
    cs->prev->next = cs->next;
  else
    w->conns = cs->next;
  if (cs->next)
    cs->next->prev = cs->prev;

  log_info ("%s: connection closed: %s (%" PRIu64 " requests)", conn->peer,
            cs->close_reason ? cs->close_reason : "unknown", cs->nr_total);
  free (cs->in_buf);
  free (cs);
  release_conn (w, conn);
  if (w->conns == NULL)
    bufpool_shrink (w);
}

/* Deferred work of one connection; returns true when it was freed. */
static bool
service_conn (struct conn_state *cs)
{
  for (;;) {
    if (reply_send (cs) < 0)
      kill_conn (cs, "send error");
    if (cs->paused && !cs->stop_read && fits (cs, cs->paused_cost)) {
      /* Resuming: the transport may hold buffered input (TLS), so read
       * before deciding to poll. */
      cs->paused = false;
      read_requests (cs);
      if (cs->sq_head && !cs->dead && !cs->poll_out_armed)
        continue;
    }
    break;
  }

  if (!cs->stop_read || cs->nr_reqs > 0)
    return false;
  /* Nothing left to answer: take back any poll or recv still in the
   * kernel. */
  if ((cs->poll_in_armed || cs->poll_out_armed || cs->recv_armed)
      && !cs->cancelled) {
    cs->cancelled = true;
    if (cs->poll_in_armed)
      session_cancel_op (cs, &cs->poll_in);
    if (cs->poll_out_armed)
      session_cancel_op (cs, &cs->poll_out);
    if (cs->recv_armed)
      session_cancel_op (cs, &cs->recv_op[cs->recv_slot]);
  }
  if (cs->ops > 0)
    return false;
  close_conn (cs);
  return true;
}

void
request_conn_start (struct worker *w, struct conn *conn)
{
  struct conn_state *cs;

  if (w->stopping) {
    log_info ("%s: connection closed: server shutting down", conn->peer);
    release_conn (w, conn);
    return;
  }
  cs = calloc (1, sizeof *cs);
  if (cs == NULL || (cs->in_buf = malloc (IN_BUF_SIZE)) == NULL) {
    log_error ("%s: out of memory", conn->peer);
    free (cs);
    release_conn (w, conn);
    return;
  }
  cs->conn = conn;
  cs->w = w;
  cs->poll_in.kind = OP_POLL_IN;
  cs->poll_out.kind = OP_POLL_OUT;
  cs->recv_op[0].kind = OP_RECV;
  cs->recv_op[1].kind = OP_RECV_2;
  cs->send_op.kind = OP_SEND;
  /* TLS keeps to its transport: only OpenSSL knows what it holds. */
  cs->ring_recv = conn->transport == &conn_plain_transport;
  cs->ring_send = cs->ring_recv;
  conn->worker = w;
  conn->state = cs;
  cs->next = w->conns;
  if (w->conns)
    w->conns->prev = cs;
  w->conns = cs;
  log_info ("%s: serving on worker %u", conn->peer, w->idx);

  read_requests (cs);
  session_mark_dirty (cs);
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
      read_requests (cs);
    session_mark_dirty (cs);
    break;
  case OP_POLL_OUT:
    cs = container_of (op, struct conn_state, poll_out);
    cs->poll_out_armed = false;
    cs->ops--;
    session_mark_dirty (cs);
    break;
  case OP_SEND:
    cs = container_of (op, struct conn_state, send_op);
    if (reply_send_complete (cs, res) < 0)
      kill_conn (cs, "send error");
    session_mark_dirty (cs);
    break;
  case OP_RECV:
  case OP_RECV_2:
    cs = container_of (op - (op->kind == OP_RECV_2), struct conn_state,
                       recv_op);
    recv_complete (cs, res);
    session_mark_dirty (cs);
    break;
  case OP_RECV_TIMEOUT:
    cs = container_of (op, struct conn_state, rxc.timeout_op);
    rxc_timeout_complete (cs, res);
    session_mark_dirty (cs);
    break;
  case OP_PIECE: {
    struct piece *pc = container_of (op, struct piece, op);
    cs = pc->req->cs;
    piece_complete (pc, res);
    session_mark_dirty (cs);
    break;
  }
  case OP_WRITE: {
    struct wop *wo = container_of (op, struct wop, op);
    cs = wo->req->cs;
    wop_complete (wo, res);
    session_mark_dirty (cs);
    break;
  }
  default:
    abort ();
  }
}

void
request_service (struct worker *w)
{
  struct conn_state *cs;

  while ((cs = session_take_dirty (w)) != NULL)
    service_conn (cs);
}

void
request_stop_all (struct worker *w)
{
  for (struct conn_state *cs = w->conns; cs; cs = cs->next) {
    if (!cs->stop_read)
      stop_reading (cs, "server shutting down");
  }
}

void
request_kill_all (struct worker *w)
{
  for (struct conn_state *cs = w->conns; cs; cs = cs->next) {
    if (!cs->dead) {
      log_info ("%s: not taking its replies, dropping it", cs->conn->peer);
      kill_conn (cs, "server shutting down, client not reading");
    }
  }
}
