/* SPDX-License-Identifier: MIT */
/* The commands that change the image: WRITE, WRITE_ZEROES, TRIM, FLUSH.
 *
 * WRITE has its payload in a pool buffer (request.c received it), asks
 * qcow2_write_begin for the host writes (payload, copy-on-write buffers,
 * zero ranges), writes small host-contiguous runs to the page cache
 * itself and queues one io_uring write per larger run (fallocate for
 * zero ranges), and calls qcow2_write_end when the last
 * completes; only then is it answered, so a FLUSH (qcow2_flush) covers
 * every write answered on any connection.  A request the library answers
 * with QCOW2_BLOCKED (an overlapping allocation in flight, perhaps this
 * loop's own) is parked, never waited for, and retried after the next
 * wake-up.  WRITE_ZEROES, TRIM and FLUSH call the library
 * synchronously. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "common/checked-overflow.h"
#include "common/iszero.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

/* Most iovecs in one vectored write (the kernel's UIO_MAXIOV). */
#define WRITE_MAX_IOV 1024

/* Host writes up to this size go to the page cache from the worker
 * itself.  A buffered write of a few pages takes microseconds, but
 * io_uring cannot do one without blocking on most file systems (ext4
 * refuses RWF_NOWAIT), so it hands each to one of its worker threads:
 * two context switches that cost more than the write.  A write can
 * still block (dirty-page throttling, a journal commit), and then this
 * worker's other connections wait: after an inline write that took
 * longer than INLINE_WRITE_SLOW_NS, the worker hands its writes to
 * io_uring again for INLINE_WRITE_BACKOFF_NS. */
#define INLINE_WRITE_MAX (64 * 1024)
#define INLINE_WRITE_SLOW_NS (1000 * 1000)
#define INLINE_WRITE_BACKOFF_NS (1000 * 1000 * 1000)

/* Never written: the source of zeros where fallocate cannot make them. */
static char zero_buf[1 << 20] __attribute__ ((aligned (4096)));

static void write_start (struct request *req);

/* The library said QCOW2_BLOCKED: an overlapping allocation is in
 * flight, maybe one of this very loop's, so the worker must not wait for
 * it.  Park the request until the next wake-up.  SEQ is wakeup_seq
 * as read before the library call: if it has moved, the wake-up that
 * ended the blocking allocation may already have been consumed, so make
 * sure another one comes. */
static void
park (struct request *req, unsigned seq)
{
  struct worker *w = req->cs->w;

  req->next = NULL;
  if (w->writes.parked_tail)
    w->writes.parked_tail->next = req;
  else
    w->writes.parked_head = req;
  w->writes.parked_tail = req;
  if (atomic_load (&wakeup_seq) != seq)
    wakeup_kick (w);
}

void
writes_retry_parked (struct worker *w)
{
  struct request *req = w->writes.parked_head;

  /* Requests blocked again are parked anew, so the order holds. */
  w->writes.parked_head = w->writes.parked_tail = NULL;
  while (req) {
    struct request *next = req->next;

    switch (req->type) {
    case NBD_CMD_WRITE: write_start (req); break;
    case NBD_CMD_WRITE_ZEROES: cmd_write_zeroes (req); break;
    case NBD_CMD_TRIM: cmd_trim (req); break;
    default: abort ();
    }
    req = next;
  }
}

void
writes_drop_parked (struct conn_state *cs)
{
  struct worker *w = cs->w;
  struct request **pp = &w->writes.parked_head;

  w->writes.parked_tail = NULL;
  while (*pp) {
    struct request *req = *pp;
    if (req->cs == cs) {
      *pp = req->next;
      session_req_free (req);
    }
    else {
      w->writes.parked_tail = req;
      pp = &req->next;
    }
  }
}

/* A modifying command has done its work (ERR is 0 or a negative errno
 * from the library): with FUA (or a writethrough export, for writes),
 * make it durable unless flushes are off, then answer. */
static void
modify_done (struct request *req, int err)
{
  const struct export *exp = req->cs->conn->exp;

  if (err < 0) {
    reply_error (req, -err, "%s at offset %" PRIu64 ": %s",
                 cmd_name (req->type), req->offset, strerror (-err));
    return;
  }
  if (((req->flags & NBD_CMD_FLAG_FUA)
       || (exp->writethrough && req->type != NBD_CMD_TRIM))
      && !exp->no_flush) {
    int r = qcow2_flush (req->cs->conn->exp->img);
    if (r < 0) {
      reply_error (req, -r, "flush after %s: %s", cmd_name (req->type),
                   strerror (-r));
      return;
    }
  }
  reply_plain (req);
}

/* A synchronous library call, made when wakeup_seq was SEQ,
 * returned R: park the request on QCOW2_BLOCKED, else answer it. */
static void
modify_done_or_park (struct request *req, int r, unsigned seq)
{
  if (r == QCOW2_BLOCKED)
    park (req, seq);
  else
    modify_done (req, r);
}

/* The fd WO's data goes through: O_DIRECT when the export wants it and
 * every piece of the write is aligned (worker_data_fd). */
static int
wop_fd (const struct wop *wo)
{
  const struct export_fds *xf = conn_fds (wo->req->cs);

  if (xf->dfds == NULL || wo->zero)
    return wo->fd;
  for (int i = 0; i < wo->iovcnt; i++)
    if (worker_data_fd (xf, wo->file, 0, wo->iov[i].iov_len,
                        wo->iov[i].iov_base) == xf->fds[wo->file])
      return wo->fd;
  return worker_data_fd (xf, wo->file, wo->off, wo->left, NULL);
}

static void
wop_submit (struct wop *wo)
{
  struct conn_state *cs = wo->req->cs;
  struct io_uring_sqe *sqe = ring_get_sqe (cs->w);
  int fd = wop_fd (wo);

  if (wo->zero && !wo->write_zeros)
    io_uring_prep_fallocate (sqe, wo->fd, FALLOC_FL_ZERO_RANGE, wo->off,
                             wo->left);
  else if (wo->zero)
    io_uring_prep_write (sqe, wo->fd, zero_buf,
                         MIN (wo->left, (uint64_t) sizeof zero_buf), wo->off);
  else if (wo->iovcnt == 1)
    io_uring_prep_write (sqe, fd, wo->iov->iov_base, wo->iov->iov_len,
                         wo->off);
  else
    io_uring_prep_writev (sqe, fd, wo->iov, wo->iovcnt, wo->off);
  io_uring_sqe_set_data (sqe, &wo->op);
  cs->ops++;
}

/* Write WO to the page cache right here if it is small and writes have
 * not been blocking lately; returns false if it must be submitted.  The
 * completion runs as for a submitted write (a short write goes on
 * through io_uring).  The last wop of a request may answer it, so the
 * caller must not touch the request after its last wop. */
static bool
wop_write_inline (struct wop *wo)
{
  struct conn_state *cs = wo->req->cs;
  struct worker *w = cs->w;
  uint64_t t0, t1;
  ssize_t n;

  if (wo->zero || wo->left > INLINE_WRITE_MAX)
    return false;
  /* A direct write waits for the device: never on the worker itself. */
  if (wop_fd (wo) != wo->fd)
    return false;
  t0 = now_ns ();
  if (t0 < w->writes.inline_after)
    return false;
  n = pwritev (wo->fd, wo->iov, wo->iovcnt, wo->off);
  t1 = now_ns ();
  if (t1 - t0 > INLINE_WRITE_SLOW_NS) {
    if (log_verbose >= 2)
      log_debug ("worker %u: a %" PRIu64 "-byte write took %" PRIu64
                 " µs: writing through io_uring for a while", w->idx,
                 wo->left, (t1 - t0) / 1000);
    w->writes.inline_after = t1 + INLINE_WRITE_BACKOFF_NS;
  }
  cs->ops++;                    /* wop_complete takes it back */
  wop_complete (wo, n < 0 ? -errno : (int) n);
  return true;
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

void
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
      if (!conn_fds (cs)->no_zero_range[wo->file])
        log_debug ("worker %u: FALLOC_FL_ZERO_RANGE on %s: %s; writing "
                   "zeros instead", cs->w->idx,
                   qcow2_file_name (cs->conn->exp->img, wo->file),
                   strerror (-res));
      conn_fds (cs)->no_zero_range[wo->file] = true;
      wo->write_zeros = true;
      wop_submit (wo);
      return;
    }
    if (res < 0)
      session_set_error (req, -res, "zeroing host offset %" PRIu64 ": %s",
                         wo->off, strerror (-res));
    wo->left = 0;
  }
  else if (res < 0)
    session_set_error (req, -res, "write at host offset %" PRIu64 ": %s",
                       wo->off, strerror (-res));
  else if (res == 0)
    session_set_error (req, EIO, "write at host offset %" PRIu64
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

/* A raw image whose format was probed: QEMU refuses a write that would
 * make its first sector probe as another format (probe.c), judging the
 * sector as it would be after the write.  Returns 0 or -EPERM (-errno
 * if the sector cannot be read). */
static int
check_probed_sector (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  uint8_t sector[512];
  size_t n;
  int r;

  if (!exp->probed_raw || req->offset >= sizeof sector
      || exp->size < sizeof sector)
    return 0;
  if (req->offset > 0 || req->length < sizeof sector) {
    r = qcow2_pread (exp->img, sector, sizeof sector, 0);
    if (r < 0)
      return r;
  }
  n = MIN ((uint64_t) req->length, sizeof sector - req->offset);
  memcpy (sector + req->offset, req->buf, n);
  if (strcmp (probe_format (sector, sizeof sector, NULL), "raw") != 0)
    return -EPERM;
  return 0;
}

static void write_submit (struct request *req, int r,
                          const struct qcow2_seg *segs, size_t nsegs,
                          unsigned seq);

/* A WRITE through QEMU's compress filter: compressing its clusters
 * takes about a millisecond per 64 KiB, so qcow2_write_compressed_begin
 * runs as a job that any worker may do (jobs.c), and the owner submits
 * the host writes when it comes back. */
static void
cwrite_run (struct djob *j)
{
  struct request *req = container_of (j, struct request, wjob);
  const struct export *exp = req->cs->conn->exp;
  unsigned flags = 0;

  /* detect-zeroes looks at the request widened to whole clusters,
   * which only the library reads. */
  if (exp->detect_zeroes != DETECT_ZEROES_OFF)
    flags |= QCOW2_DETECT_ZEROES;
  if (exp->detect_zeroes == DETECT_ZEROES_UNMAP && exp->discard_unmap)
    flags |= QCOW2_MAY_UNMAP;
  req->wseq = atomic_load (&wakeup_seq);
  j->result = qcow2_write_compressed_begin (exp->img, req->offset,
                                            req->length, req->buf, flags,
                                            &req->qw, &req->wsegs,
                                            &req->nwsegs);
}

static void
cwrite_finish (struct djob *j)
{
  struct request *req = container_of (j, struct request, wjob);

  req->cs->ops--;               /* taken by write_start */
  write_submit (req, j->result, req->wsegs, req->nwsegs, req->wseq);
}

/* Start (or, after QCOW2_BLOCKED, retry) a WRITE whose payload is in
 * req->buf: ask the library for the host writes, then submit them all
 * at once, one per host-contiguous run.  With detect-zeroes, a payload
 * of zeros is a zeroing instead (as QEMU, deallocating only with
 * detect-zeroes=unmap and --discard=unmap). */
static void
write_start (struct request *req)
{
  struct conn_state *cs = req->cs;
  const struct qcow2_seg *segs;
  size_t nsegs = 0;
  unsigned seq = atomic_load (&wakeup_seq);
  const struct export *exp = cs->conn->exp;
  int r;

  r = check_probed_sector (req);
  if (r < 0) {
    modify_done (req, r);
    return;
  }
  if (exp->compress) {
    req->wjob = (struct djob) { .run = cwrite_run, .finish = cwrite_finish,
                                .defer = true };
    cs->ops++;
    jobs_submit (cs->w, &req->wjob);
    return;
  }
  if (exp->detect_zeroes != DETECT_ZEROES_OFF
      && is_zero (req->buf, req->length)) {
    unsigned flags = 0;

    if (exp->detect_zeroes == DETECT_ZEROES_UNMAP && exp->discard_unmap)
      flags |= QCOW2_MAY_UNMAP;
    r = qcow2_zero (exp->img, req->offset, req->length, flags);
    modify_done_or_park (req, r, seq);
    return;
  }
  r = qcow2_write_begin (exp->img, req->offset, req->length, 0,
                         &req->qw, &segs, &nsegs);
  write_submit (req, r, segs, nsegs, seq);
}

/* The library answered a WRITE's begin (made when wakeup_seq was
 * SEQ) with R and SEGS: park it, fail it, or submit its host writes. */
static void
write_submit (struct request *req, int r, const struct qcow2_seg *segs,
              size_t nsegs, unsigned seq)
{
  struct conn_state *cs = req->cs;
  const struct export_fds *xf = conn_fds (cs);
  size_t nops = 0;

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
    bool bad = sg->file >= xf->nr || sg->length == 0
      || sg->host_offset > UINT64_MAX - sg->length;

    if (sg->source == QCOW2_SEG_GUEST)
      bad |= !range_fits (sg->src_offset, sg->length, req->length);
    else if (sg->source == QCOW2_SEG_BUFFER)
      bad |= sg->buf == NULL;
    else if (sg->source != QCOW2_SEG_ZERO)
      bad = true;
    if (bad) {
      session_set_error (req, EIO, "internal error: bad write segment %zu", i);
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
      session_set_error (req, ENOMEM, "out of memory for the write");
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
      wo->fd = xf->fds[sg->file];
      wo->off = sg->host_offset;
      wo->iov = iov;
      wo->zero = sg->source == QCOW2_SEG_ZERO;
      wo->write_zeros = wo->zero && xf->no_zero_range[sg->file];
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
  for (size_t i = 0; i < nops; i++) {
    if (!wop_write_inline (&req->wops[i]))
      wop_submit (&req->wops[i]);
  }
  if (nops == 0)
    write_done (req);
}

void
cmd_write (struct request *req)
{
  if (req->length == 0) {
    modify_done (req, 0);
    return;
  }
  write_start (req);
}

/* A zeroing or trim of more than SLICE bytes (extended headers allow
 * 2^64 - 1) is done a slice per turn of the worker's loop, parked and
 * retried at once between slices: the metadata work of zeroing 1 TiB
 * takes seconds, which the worker's other connections would otherwise
 * wait out.  Slices end on SLICE_ALIGN boundaries (the largest cluster),
 * so only the request's own ends can cut a cluster.  NBD does not order
 * concurrent requests, so others may see the range part done, as with
 * any write in progress.  FAST_ZERO is not sliced: it must fail with
 * nothing changed. */
#define SLICE (UINT64_C (1) << 30)
#define SLICE_ALIGN (UINT64_C (2) << 20)

/* The next slice of REQ (all of what is left if WHOLE): its offset in
 * *OFF, its length returned. */
static uint64_t
next_slice (const struct request *req, bool whole, uint64_t *off)
{
  uint64_t left = req->length - req->done;

  *off = req->offset + req->done;
  if (whole || left <= SLICE)
    return left;
  return ROUND_DOWN (*off + SLICE, SLICE_ALIGN) - *off;
}

/* A slice of N bytes ended with R: on to the next one, or as
 * modify_done_or_park. */
static void
slice_done_or_park (struct request *req, int r, unsigned seq, uint64_t n)
{
  if (r == 0 && n < req->length - req->done) {
    req->done += n;
    park (req, seq);
    wakeup_kick (req->cs->w);
    return;
  }
  modify_done_or_park (req, r, seq);
}

void
cmd_write_zeroes (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  unsigned flags = 0, seq;
  uint64_t off, n;
  int r;

  if (req->length == 0) {
    modify_done (req, 0);
    return;
  }
  /* Without NO_HOLE the client lets us deallocate, and qemu-nbd 7.2
   * does, whatever --discard says: qcow2 clusters become zero clusters
   * without a host cluster, a raw file gets a hole.  --discard=unmap
   * decides only whether freed qcow2 clusters are also punched out of
   * the file (punch_discarded). */
  if (!(req->flags & NBD_CMD_FLAG_NO_HOLE))
    flags |= QCOW2_MAY_UNMAP;
  if (req->flags & NBD_CMD_FLAG_FAST_ZERO)
    flags |= QCOW2_FAST_ZERO;
  /* Partial clusters are written compressed, as QEMU's filter does. */
  if (exp->compress)
    flags |= QCOW2_COMPRESSED;

  n = next_slice (req, flags & QCOW2_FAST_ZERO, &off);
  seq = atomic_load (&wakeup_seq);
  r = qcow2_zero (exp->img, off, n, flags);
  if (r == -ENOTSUP && (flags & QCOW2_FAST_ZERO)) {
    /* The client asked to hear at once that zeroing would be slow; it
     * will write the zeros itself. */
    reply_error (req, ENOTSUP, "fast zeroing is not possible here");
    return;
  }
  slice_done_or_park (req, r, seq, n);
}

void
cmd_trim (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  unsigned seq;
  uint64_t off, n;
  int r;

  /* --discard=ignore (the default, as in qemu-nbd): TRIM is advice and
   * may be ignored; the data stays as it was. */
  if (!exp->discard_unmap || req->length == 0) {
    reply_plain (req);
    return;
  }
  n = next_slice (req, false, &off);
  seq = atomic_load (&wakeup_seq);
  r = qcow2_discard (exp->img, off, n, 0);
  slice_done_or_park (req, r, seq, n);
}

void
cmd_flush (struct request *req)
{
  const struct export *exp = req->cs->conn->exp;
  int r;

  /* Covers every write already answered, on every connection: those
   * have all ended (qcow2_write_end) before their replies were queued,
   * and qcow2_flush covers every ended write, whatever thread made it. */
  if (exp->read_only || exp->no_flush) {
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
