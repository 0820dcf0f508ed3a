/* SPDX-License-Identifier: MIT */
/* Zero-copy READ: data goes from the page cache to the socket by
 * reference, never through a buffer of ours.
 *
 * A copying READ moves every byte twice on our side (page cache to our
 * buffer, buffer to the socket).  For large reads those copies are most
 * of the server's CPU time.  Here each data extent is spliced from the
 * image file into a pipe (IORING_OP_SPLICE, which io_uring runs in its
 * worker threads, so a cold page never stalls this worker), the extents
 * one after the other because they share the pipe; the reply is built
 * when all are in, as for a copying read, so a read error is still
 * reported before the header goes out; and the send path splices the
 * pipe into the socket between the chunk headers.
 *
 * The pages are referenced, not copied, until the client has them.  If
 * the bytes could change meanwhile, the reply could carry them: worse, a
 * host cluster freed by a TRIM and reused for another guest offset could
 * send that offset's data.  So only files we never write qualify: the
 * image of a read-only export, and backing files.
 *
 * Only plain transports splice (TLS must encrypt from memory), only
 * reads large enough that the copies cost more than the io_uring
 * round trips, only requests whose pages fit in one pipe, and only so
 * many at once per connection and per worker. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/server.h"
#include "server/transmission.h"

/* Smaller reads are copied: two copies of a few pages cost less than the
 * splice round trips through io_uring's workers. */
#define ZC_MIN_LENGTH (128 * 1024)
/* More extents than this are copied: they are spliced one after the
 * other, and a long chain of round trips costs more than it saves. */
#define ZC_MAX_PIECES 32
/* Pipe capacity asked for, and idle pipes a worker keeps. */
#define ZC_PIPE_SIZE (1024 * 1024)
#define ZC_KEEP_PIPES 16
/* Pipes in use at once, per connection and per worker: a client that
 * stops reading holds its replies' pipes, and must not use up the
 * process's file descriptors.  Reads beyond the caps are copied. */
#define ZC_CONN_PIPES 8
#define ZC_WORKER_PIPES 64
/* After pipes could not be had (file descriptors, the kernel's per-user
 * pipe limits), copy for this long before trying again. */
#define ZC_BACKOFF_NS (1000 * 1000 * 1000)

/* Pipe buffers hold one page each, whatever its size. */
static size_t
page_size (void)
{
  static size_t size;

  if (size == 0) {
    long r = sysconf (_SC_PAGESIZE);
    size = r > 0 ? (size_t) r : 4096;
  }
  return size;
}

static void
pipe_close (struct zpipe *zp)
{
  close (zp->rfd);
  close (zp->wfd);
  zp->rfd = zp->wfd = -1;
}

/* A pipe of ZC_PIPE_SIZE bytes, or false (and zero-copy paused). */
static bool
pipe_get (struct worker *w, struct zpipe *zp)
{
  int fds[2], size;

  if (w->zc.nr_pipes > 0) {
    *zp = w->zc.pipes[--w->zc.nr_pipes];
    return true;
  }
  if (w->zc.pipes == NULL) {
    w->zc.pipes = calloc (ZC_KEEP_PIPES, sizeof *w->zc.pipes);
    if (w->zc.pipes == NULL)
      return false;
  }
  /* A blocking pipe, so io_uring's worker never sees EAGAIN from a full
   * one and retries; zc_start makes sure the data fits, and the splice
   * asks not to block anyway. */
  if (pipe2 (fds, O_CLOEXEC) == -1)
    goto fail;
  zp->rfd = fds[0];
  zp->wfd = fds[1];
  /* Past the per-user pipe limits the kernel gives small pipes only:
   * not worth using, and not worth asking again at once. */
  size = fcntl (fds[1], F_SETPIPE_SZ, ZC_PIPE_SIZE);
  if (size < ZC_PIPE_SIZE) {
    int err = size == -1 ? errno : ENOBUFS;
    pipe_close (zp);
    errno = err;
    goto fail;
  }
  return true;

 fail:
  log_info ("worker %u: no pipe for zero-copy reads (%m); copying for "
            "a while", w->idx);
  w->zc.paused_until = now_ns () + ZC_BACKOFF_NS;
  return false;
}

static void
pipe_put (struct worker *w, struct zpipe *zp, bool empty)
{
  if (empty && w->zc.pipes && w->zc.nr_pipes < ZC_KEEP_PIPES) {
    w->zc.pipes[w->zc.nr_pipes++] = *zp;
    zp->rfd = zp->wfd = -1;
  }
  else
    pipe_close (zp);
}

bool
zc_start (struct request *req, bool zero_fill)
{
  struct conn *conn = req->cs->conn;
  struct worker *w = req->cs->w;
  const struct qcow2_image *img = conn->exp->img;
  size_t pieces = 0, pages = 0;

  /* cache=none: the page cache is what the user asked us to avoid. */
  if (conn->transport->splice == NULL || req->length < ZC_MIN_LENGTH
      || conn_fds (req->cs)->dfds != NULL
      || req->cs->zc_pipes >= ZC_CONN_PIPES
      || w->zc.held >= ZC_WORKER_PIPES
      || (w->zc.paused_until && now_ns () < w->zc.paused_until))
    return false;
  for (size_t i = 0; i < req->nr_ext; i++) {
    const struct qcow2_extent *e = &req->ext[i];

    if (extent_is_hole (e)) {
      if (zero_fill)            /* the zeros would have to be sent */
        return false;
      continue;
    }
    /* Bytes past the end of the file read as zeros, which would have
     * to be written into the pipe: copy such (rare) reads instead. */
    if (e->type != QCOW2_EXTENT_DATA || e->file >= conn_fds (req->cs)->nr
        || qcow2_file_writable (img, e->file)
        || e->host_offset + e->length > qcow2_file_size (img, e->file))
      return false;
    pages += (ROUND_UP (e->host_offset + e->length, page_size ())
              - ROUND_DOWN (e->host_offset, page_size ())) / page_size ();
    pieces++;
  }
  if (pieces == 0 || pieces > ZC_MAX_PIECES)
    return false;

  if (pages * page_size () > ZC_PIPE_SIZE || !pipe_get (w, &req->zp))
    return false;
  w->zc.paused_until = 0;
  req->cs->zc_pipes++;
  w->zc.held++;
  req->zc = true;
  return true;
}

void
zc_submit (struct piece *pc)
{
  struct request *req = pc->req;
  struct io_uring_sqe *sqe = ring_get_sqe (req->cs->w);

  io_uring_prep_splice (sqe, pc->fd, pc->host_off + pc->done,
                        req->zp.wfd, -1, pc->len - pc->done,
                        SPLICE_F_NONBLOCK);
  io_uring_sqe_set_data (sqe, &pc->op);
  req->cs->ops++;
}

int
zc_piece_complete (struct piece *pc, int res)
{
  struct request *req = pc->req;

  if (res == -EINTR) {
    zc_submit (pc);
    return 1;
  }
  /* -EAGAIN: the pipe is full, which zc_start's count rules out; fail
   * the read rather than wait for room that never comes. */
  if (res < 0)
    return res;
  /* zc_start checked the extent against the file size, which does not
   * change for a file we don't write: someone truncated it. */
  if (res == 0)
    return -ENODATA;
  pc->done += res;
  req->zc_held += res;
  if (pc->done < pc->len) {
    zc_submit (pc);
    return 1;
  }
  return 0;
}

void
zc_release (struct request *req)
{
  if (req->zc) {
    pipe_put (req->cs->w, &req->zp, req->zc_held == 0);
    req->cs->zc_pipes--;
    req->cs->w->zc.held--;
    req->zc = false;
  }
}

void
zc_worker_cleanup (struct worker *w)
{
  while (w->zc.nr_pipes > 0)
    pipe_close (&w->zc.pipes[--w->zc.nr_pipes]);
  free (w->zc.pipes);
  w->zc.pipes = NULL;
}
