/* SPDX-License-Identifier: MIT */
/* The bookkeeping of the transmission phase that every part of it uses:
 * request structs (recycled per worker), a request's error, and a
 * connection's state as the worker sees it: the list of connections
 * with deferred work (request.c's request_service runs it), its socket
 * polls and cancellations.  Nothing here decides anything about a
 * request or a connection: that is request.c (reading, dispatch, the
 * connection's life), the command handlers and reply.c, which all
 * stand on this file, as it stands on the ring, the buffer pool and
 * the zero-copy pipes.  The session fields of struct worker are owned
 * by this file. */

#include <config.h>

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "server/server.h"
#include "server/transmission.h"

/* Recycled request structs kept per worker. */
#define MAX_FREE_REQS 256

/* ---- requests --------------------------------------------------------- */

void
session_set_error (struct request *req, int err, const char *fmt, ...)
{
  va_list ap;

  if (req->err)
    return;                     /* keep the first error */
  req->err = err;
  va_start (ap, fmt);
  vsnprintf (req->msg, sizeof req->msg, fmt, ap);
  va_end (ap);
}

struct request *
session_req_new (struct conn_state *cs)
{
  struct worker *w = cs->w;
  struct request *req = w->session.free_reqs;

  if (req) {
    w->session.free_reqs = req->next;
    w->session.nr_free_reqs--;
  }
  else {
    req = malloc (sizeof *req);
    if (req == NULL)
      return NULL;
  }
  memset (req, 0, sizeof *req);
  req->cs = cs;
  cs->nr_reqs++;
  cs->nr_total++;
  return req;
}

void
session_req_hold (struct request *req, uint64_t bytes)
{
  req->bytes += bytes;
  req->cs->bytes += bytes;
}

void
session_req_free (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;

  for (size_t i = 0; i < req->nr_pieces; i++)
    bufpool_put (w, req->pieces[i].scratch, req->pieces[i].scratch_cls);
  if (req->pieces != req->small_pieces)
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
  if (req->ext != req->small_ext)
    free (req->ext);
  bufpool_put (w, req->buf, req->buf_cls);
  zc_release (req);
  if (req->iov != req->small_iov)
    free (req->iov);
  if (req->hdrs != req->small_hdrs)
    free (req->hdrs);

  cs->nr_reqs--;
  if (req->queued)
    cs->nr_queued--;
  cs->bytes -= req->bytes;

  if (w->session.nr_free_reqs < MAX_FREE_REQS) {
    req->next = w->session.free_reqs;
    w->session.free_reqs = req;
    w->session.nr_free_reqs++;
  }
  else
    free (req);
}

void
session_worker_cleanup (struct worker *w)
{
  while (w->session.free_reqs) {
    struct request *req = w->session.free_reqs;
    w->session.free_reqs = req->next;
    free (req);
  }
  w->session.nr_free_reqs = 0;
}

/* ---- connections ------------------------------------------------------ */

void
session_mark_dirty (struct conn_state *cs)
{
  if (!cs->in_dirty) {
    cs->in_dirty = true;
    cs->dirty_next = cs->w->session.dirty;
    cs->w->session.dirty = cs;
  }
}

struct conn_state *
session_take_dirty (struct worker *w)
{
  struct conn_state *cs = w->session.dirty;

  if (cs) {
    w->session.dirty = cs->dirty_next;
    cs->in_dirty = false;
  }
  return cs;
}

void
session_unmark_dirty (struct conn_state *cs)
{
  if (cs->in_dirty) {
    struct conn_state **pp = &cs->w->session.dirty;
    while (*pp != cs)
      pp = &(*pp)->dirty_next;
    *pp = cs->dirty_next;
    cs->in_dirty = false;
  }
}

void
session_arm_poll (struct conn_state *cs, bool out)
{
  struct io_uring_sqe *sqe = ring_get_sqe (cs->w);
  struct uring_op *op = out ? &cs->poll_out : &cs->poll_in;

  io_uring_prep_poll_add (sqe, cs->conn->fd, out ? POLLOUT : POLLIN);
  io_uring_sqe_set_data (sqe, op);
  if (out)
    cs->poll_out_armed = true;
  else
    cs->poll_in_armed = true;
  cs->ops++;
}

void
session_cancel_op (struct conn_state *cs, struct uring_op *op)
{
  struct io_uring_sqe *sqe = ring_get_sqe (cs->w);

  io_uring_prep_cancel (sqe, op, 0);
  io_uring_sqe_set_data64 (sqe, 0);
}
