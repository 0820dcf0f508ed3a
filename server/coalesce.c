/* SPDX-License-Identifier: MIT */
/* Receive coalescing: a client that keeps many requests in flight is
 * read in batches, not one wake-up per request.
 *
 * Clients send each request as soon as it is issued, so even at queue
 * depth 32 requests reach the socket one at a time, and a server that
 * is faster than its client wakes, receives, reads and replies once per
 * request.  Nearly all of that time is the kernel's per-packet TCP work
 * and the wake-ups, not ours.  Waiting until several requests are queued
 * pays those once per batch and lets their replies leave in one send.
 *
 * Waiting is only free when the client sends the batch without waiting
 * for us, that is while it works through the replies to the batch
 * before.  So a client that keeps D requests in flight is served in
 * batches of D/2 (at most RXC_MAX), and only from D = RXC_MIN_DEPTH up.
 * D is not on the wire; it is measured:
 *
 * - A receive that finds more requests queued than the client was
 *   thought to keep in flight (at depth 1 that never happens) starts a
 *   probe: a wait for twice that many, doubled while it fills, up to
 *   2 * RXC_MAX.  A probe that does not fill in time leaves everything
 *   the client has in flight queued (it is waiting for us): the next
 *   receive takes it all and counts it.  A batching client is probed
 *   again every RXC_REPROBE_ROUNDS receives.
 * - A batch that does not fill in time is taken as it is; after
 *   RXC_MISSES of them in a row the client's count is measured again
 *   the same way (it may have gone down to 1).
 * - A batch that arrives while earlier requests of the connection are
 *   still being served (slow decompression, cold reads) means the
 *   server sets the pace: requests queue up on their own, and waiting
 *   would only hold back a client that waits for replies.  Batching
 *   stops for RXC_BUSY_ROUNDS receives, as it does after a request
 *   larger than RXC_SMALL (a batch of those takes long to arrive).
 *
 * Only TCP connections: a Unix socket's poll ignores SO_RCVLOWAT.
 *
 * The wait is the socket's SO_RCVLOWAT (the kernel does not even wake
 * us before enough bytes are queued) on a recv armed with
 * IORING_RECVSEND_POLL_FIRST, with a linked timeout of three times the
 * time the batch should take at the client's recent request rate
 * (RXC_LIMIT_MIN_NS to RXC_LIMIT_MAX_NS).  When it runs out, the recv
 * is cancelled and the next one takes whatever is queued: nothing is
 * lost, a stalled batch only waits that long.
 *
 * Only between requests: while a header or a payload is half in, the
 * rest is owed and any wait for more would be a stall, so those recvs
 * keep the low-water mark at or below what is owed, and have no time
 * limit. */

#include <config.h>

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "common/rounding.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

/* Requests per wake-up at most.  A batch waits in the socket while the
 * client works through the replies to the one before, so a client that
 * keeps D requests in flight is served in batches of D/2. */
#define RXC_MAX 16
/* Batching starts at this many in flight: below, a batch saves little
 * and a client's pause stalls it. */
#define RXC_MIN_DEPTH 8
/* Batch waits in a row that must run out before the client is thought
 * to keep fewer in flight: one can be a pause of the client. */
#define RXC_MISSES 3
/* Receives between probes for a larger in-flight count, and between
 * checks that a batching client's count is still what it was. */
#define RXC_PROBE_ROUNDS 256
#define RXC_REPROBE_ROUNDS 4096
/* Receives without batching after the server fell behind, or after
 * requests larger than RXC_SMALL. */
#define RXC_BUSY_ROUNDS 4096
#define RXC_SMALL (64 * 1024)
/* Bounds of a batch's time limit. */
#define RXC_LIMIT_MIN_NS UINT64_C (200000)
#define RXC_LIMIT_MAX_NS UINT64_C (1000000)

/* Set once the kernel refuses any part of it: plain recvs from then on. */
static atomic_bool rxc_off;

/* For tests: QCOW2_NBD_TEST_RXC_DEPTH=N serves every new TCP client as
 * one known to keep N requests in flight, so the batch paths (waits,
 * their time limits, headers split across a wait, hang-ups during one)
 * run whatever the machine's load does to the measurement.  0: off. */
static unsigned
test_depth (void)
{
  static atomic_uint depth = UINT_MAX;
  unsigned d = atomic_load (&depth);

  if (d == UINT_MAX) {
    const char *s = getenv ("QCOW2_NBD_TEST_RXC_DEPTH");

    d = s ? (unsigned) strtoul (s, NULL, 10) : 0;
    if (d > 2 * RXC_MAX)
      d = 2 * RXC_MAX;
    atomic_store (&depth, d);
  }
  return d;
}

static void
rxc_disable (struct conn_state *cs, const char *what, int err)
{
  if (!atomic_exchange (&rxc_off, true))
    log_info ("%s: receive coalescing off: %s: %s", cs->conn->peer, what,
              strerror (err));
}

static bool
set_lowat (struct conn_state *cs, unsigned bytes)
{
  int v = bytes;

  if (setsockopt (cs->conn->fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) < 0) {
    rxc_disable (cs, "SO_RCVLOWAT", errno);
    return false;
  }
  cs->rxc.lowat = bytes;
  return true;
}

/* Serve a client that keeps DEPTH requests in flight. */
static void
set_depth (struct conn_state *cs, unsigned depth)
{
  struct rx_coalesce *x = &cs->rxc;
  unsigned target = depth >= RXC_MIN_DEPTH ? MIN (depth / 2, RXC_MAX) : 1;

  x->depth = depth;
  if (target != x->target)
    log_debug ("%s: client keeps %u request%s in flight: receiving up to "
               "%u per wake-up", cs->conn->peer, depth, depth == 1 ? "" : "s",
               target);
  x->target = target;
}

/* A round (from one recv arm to the next) ended at NOW: learn from it,
 * and choose how many requests the next recv waits for (x->want). */
static void
end_round (struct conn_state *cs, uint64_t now)
{
  struct rx_coalesce *x = &cs->rxc;
  unsigned got = x->parsed;
  unsigned waited = x->want;

  x->parsed = 0;
  x->rounds++;
  /* The client's pace, from rounds it set: not one that took a backlog
   * queued at once. */
  if (got > 0 && x->armed_at != 0 && !x->measure) {
    uint64_t gap = (now - x->armed_at) / got;
    x->gap_ns = x->gap_ns ? (3 * x->gap_ns + gap) / 4 : gap;
  }
  x->want = x->target;

  if (x->timed_out) {
    /* The batch did not fill in time.  The next recv takes what is
     * queued; after a probe, or RXC_MISSES misses in a row, that is
     * everything the client has in flight (it waits for us). */
    x->timed_out = false;
    x->measure = x->probing || ++x->misses >= RXC_MISSES;
    log_debug ("%s: batch of %u not filled in %ld us", cs->conn->peer,
               waited, (long) x->limit.tv_nsec / 1000);
    x->want = 1;
    return;
  }
  if (x->measure) {
    x->measure = x->probing = false;
    x->misses = 0;
    x->last_probe = x->rounds;
    set_depth (cs, MAX (got, 1));
    x->want = x->target;
    return;
  }
  bool large = x->large;
  x->large = false;
  if ((x->busy || large) && (x->target > 1 || x->probing || x->depth)) {
    /* Requests came while others were still being served: the server
     * sets the pace, they queue up without waiting, and a client
     * waiting for our replies cannot send a batch.  Large requests take
     * long enough on the wire that a batch of them would not fill in
     * time.  Start again from nothing later. */
    log_debug ("%s: %s: receiving one request per wake-up", cs->conn->peer,
               large ? "large requests" : "server busy");
    x->target = x->want = 1;
    x->depth = 0;
    x->probing = false;
    x->calm = RXC_BUSY_ROUNDS;
    return;
  }
  if (x->calm > 0) {
    x->calm--;
    return;
  }
  if (waited > 1)
    x->misses = 0;
  if (x->probing) {
    /* The probe filled: probe further, up to twice the largest batch. */
    if (waited < 2 * RXC_MAX)
      x->want = MIN (2 * waited, 2 * RXC_MAX);
    else {
      x->probing = false;
      set_depth (cs, got);
    }
    return;
  }
  /* More queued than the client was thought to keep in flight, or time
   * to check again: probe, by waiting for more than it may send. */
  if ((got >= RXC_MIN_DEPTH / 2 && got > x->depth + x->depth / 4
       && x->depth < 2 * RXC_MAX
       && x->rounds - x->last_probe >= RXC_PROBE_ROUNDS)
      || (x->target > 1 && x->rounds - x->last_probe >= RXC_REPROBE_ROUNDS)) {
    x->probing = true;
    x->last_probe = x->rounds;
    x->want = MIN (MAX (2 * got, 2 * x->target), 2 * RXC_MAX);
  }
}

void
rxc_arm_recv (struct conn_state *cs, void *buf, size_t len, size_t owed)
{
  struct worker *w = cs->w;
  struct rx_coalesce *x = &cs->rxc;
  uint64_t now = now_ns ();
  bool batch = false;

  if (x->target == 0) {         /* new connection */
    int domain = 0;
    socklen_t dlen = sizeof domain;

    x->target = x->want = 1;
    x->lowat = 1;
    /* Only TCP wakes pollers by the low-water mark. */
    x->able = getsockopt (cs->conn->fd, SOL_SOCKET, SO_DOMAIN, &domain,
                          &dlen) == 0
      && (domain == AF_INET || domain == AF_INET6);
    if (x->able && test_depth () >= RXC_MIN_DEPTH) {
      set_depth (cs, test_depth ());
      x->want = x->target;
    }
  }
  if (owed == 0 && x->able) {
    end_round (cs, now);
    batch = x->want > 1 && !atomic_load (&rxc_off);
  }

  /* Headers are 28 or (extended) 32 bytes. */
  size_t hsz = parse_header_size (cs->conn);
  if (batch && x->lowat != x->want * hsz && !set_lowat (cs, x->want * hsz))
    batch = false;
  if (!batch && x->lowat > MAX (owed, 1))
    set_lowat (cs, 1);
  /* Never a wait without a time limit for more than is owed (only if
   * the mark could not be lowered). */
  bool timed = batch || x->lowat > MAX (owed, 1);

  if (timed)
    ring_reserve_sqes (w, 2);
  struct io_uring_sqe *sqe = ring_get_sqe (w);
  io_uring_prep_recv (sqe, cs->conn->fd, buf, len, 0);
  cs->recv_slot ^= 1;
  io_uring_sqe_set_data (sqe, &cs->recv_op[cs->recv_slot]);
  x->timed = timed;
  x->armed_at = now;
  if (!timed)
    return;

  /* Wait for the batch rather than take what is there now. */
  if (batch)
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
  sqe->flags |= IOSQE_IO_LINK;

  uint64_t limit = 3 * x->want * x->gap_ns;
  limit = MAX (limit, RXC_LIMIT_MIN_NS);
  limit = MIN (limit, RXC_LIMIT_MAX_NS);
  x->limit.tv_sec = 0;
  x->limit.tv_nsec = limit;
  x->timeout_op.kind = OP_RECV_TIMEOUT;
  sqe = ring_get_sqe (w);
  io_uring_prep_link_timeout (sqe, &x->limit, 0);
  io_uring_sqe_set_data (sqe, &x->timeout_op);
  cs->ops++;
}

void
rxc_count (struct conn_state *cs, uint32_t length)
{
  cs->rxc.parsed++;
  if (length > RXC_SMALL)
    cs->rxc.large = true;
}

bool
rxc_recv_complete (struct conn_state *cs, int res)
{
  struct rx_coalesce *x = &cs->rxc;
  bool timed = x->timed;

  x->timed = false;
  /* Requests of this connection still being served when input came?
   * Answered ones waiting to be sent, and the one whose payload is
   * coming in, do not count. */
  x->busy = cs->nr_reqs > cs->nr_queued + (cs->payload_req != NULL)
    + (cs->discard_req != NULL);
  if (res >= 0)
    return false;
  /* A cancelled recv took nothing: ours ran out of time, or (with no
   * time limit of its own) a time limit that fired as the recv before it
   * completed hit it, as those cancel by user_data. */
  if (res == -ECANCELED || (timed && (res == -EAGAIN || res == -EINTR))) {
    /* The next recv takes what is queued, with the low-water mark back
     * at 1, before anything could poll on it. */
    if (timed)
      x->timed_out = true;
    return true;
  }
  if (timed && res == -EINVAL) {
    /* A kernel without IORING_RECVSEND_POLL_FIRST. */
    rxc_disable (cs, "recv", EINVAL);
    x->target = x->want = 1;
    return true;
  }
  return false;
}

void
rxc_timeout_complete (struct conn_state *cs, int res)
{
  cs->ops--;
  if (res == -ETIME || res == -ECANCELED || res == -ENOENT
      || res == -EALREADY)
    return;
  /* The time limit never took hold (the kernel cut the submission
   * between it and its recv): the recv may wait for a batch that never
   * comes.  Lowering the mark wakes it. */
  rxc_disable (cs, "linked timeout", -res);
  cs->rxc.target = cs->rxc.want = 1;
  if (cs->recv_armed)
    set_lowat (cs, 1);
}
