/* SPDX-License-Identifier: MIT */
/* One connection's negotiation, moved without blocking: the bytes
 * between its socket and its handshake state machine (handshake.c), and
 * the TLS handshake after STARTTLS (tls/), stepped as far as the socket
 * allows.  negotiate_run says what to wait for next; the listener's
 * event loop waits, runs it again, and applies the time limit.  No
 * thread and no blocking call per connection: an idle or stalled client
 * costs its socket and a few hundred bytes. */

#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "server/server.h"
#include "tls/tls.h"

/* Socket calls in one negotiate_run: a client pipelining many options
 * must not hold the event loop (it is run again on the next round). */
#define RUN_BUDGET 64

struct negotiation {
  struct conn *conn;
  struct handshake *hs;
  /* After STARTTLS, until the TLS handshake is done; then it belongs to
   * the connection's transport (conn_start_tls). */
  struct tls_session *tls;
  uint64_t tls_bytes;           /* tls_session_bytes at the last step */
};

struct negotiation *
negotiate_new (struct conn *conn)
{
  struct negotiation *n = calloc (1, sizeof *n);

  if (n == NULL)
    return NULL;
  n->conn = conn;
  n->hs = handshake_new (conn, &exports_source,
                         server_tls_ctx ? server_tls_mode : TLS_OFF);
  if (n->hs == NULL) {
    free (n);
    return NULL;
  }
  return n;
}

void
negotiate_free (struct negotiation *n)
{
  if (n == NULL)
    return;
  tls_session_close (n->tls);
  handshake_free (n->hs);
  free (n);
}

bool negotiate_qemu_words;
/* Set by serve.c before the listener starts (server.h). */
enum tls_mode server_tls_mode = TLS_OFF;
struct tls_ctx *server_tls_ctx;

/* Say why a TLS handshake failed.  qemu-nbd reports every failure of
 * the negotiation as "option negotiation failed: REASON" and scripts
 * match that; its mode says it so, with the peer after. */
static void
tls_failed (const struct conn *conn, const char *reason)
{
  if (negotiate_qemu_words)
    log_error ("option negotiation failed: %s (%s)", reason, conn->peer);
  else
    log_error ("%s: TLS handshake failed: %s", conn->peer, reason);
}

/* One step of the TLS handshake. */
static enum negotiate_next
tls_step (struct negotiation *n, bool *active)
{
  struct conn *conn = n->conn;
  enum tls_step st = tls_session_handshake (n->tls);
  uint64_t bytes = tls_session_bytes (n->tls);

  if (bytes != n->tls_bytes) {
    n->tls_bytes = bytes;
    *active = true;
  }
  switch (st) {
  case TLS_STEP_DONE:
    if (log_verbose >= 2) {
      char desc[512];

      tls_session_describe (n->tls, desc, sizeof desc);
      log_debug ("%s: %s", conn->peer, desc);
    }
    conn_start_tls (conn, n->tls);
    n->tls = NULL;
    handshake_tls_done (n->hs);
    return NEGOTIATE_AGAIN;
  case TLS_STEP_WANT_READ:
    return NEGOTIATE_WAIT_READ;
  case TLS_STEP_WANT_WRITE:
    return NEGOTIATE_WAIT_WRITE;
  case TLS_STEP_FAILED:
  default:
    tls_failed (conn, tls_session_reason (n->tls));
    return NEGOTIATE_CLOSE;
  }
}

/* Send what the machine has queued, and what it queues as that goes (a
 * long NBD_OPT_LIST comes in batches).  Returns NEGOTIATE_AGAIN when all
 * of it went, or what to do instead. */
static enum negotiate_next
flush (struct negotiation *n, bool *active)
{
  struct conn *conn = n->conn;
  struct iovec iov;
  ssize_t r;

  for (;;) {
    iov.iov_base = (void *) handshake_output (n->hs, &iov.iov_len);
    if (iov.iov_len == 0)
      return NEGOTIATE_AGAIN;
    r = conn->transport->send (conn, &iov, 1, false);
    if (r <= 0)
      break;
    handshake_output_sent (n->hs, r);
    *active = true;
  }
  if (r == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
    return NEGOTIATE_WAIT_WRITE;
  handshake_output_error (n->hs, r == 0 ? EPIPE : errno);
  return NEGOTIATE_CLOSE;
}

/* Feed the machine what the socket has for it. */
static enum negotiate_next
receive (struct negotiation *n, bool *active)
{
  struct conn *conn = n->conn;
  size_t len;
  void *buf = handshake_input_buf (n->hs, &len);
  ssize_t r;

  if (len == 0)
    abort ();                   /* output is flushed first */
  r = conn->transport->recv (conn, buf, len);
  if (r > 0) {
    handshake_input (n->hs, r);
    *active = true;
  }
  else if (r == 0)
    handshake_input_error (n->hs, 0);
  else if (errno == EAGAIN || errno == EWOULDBLOCK)
    return NEGOTIATE_WAIT_READ;
  else if (errno != EINTR)
    handshake_input_error (n->hs, errno);
  return NEGOTIATE_AGAIN;
}

enum negotiate_next
negotiate_run (struct negotiation *n, bool *active)
{
  int budget;

  for (budget = 0; budget < RUN_BUDGET; budget++) {
    enum handshake_status st = handshake_status (n->hs);
    enum negotiate_next next;

    if (n->tls) {
      next = tls_step (n, active);
      if (next != NEGOTIATE_AGAIN)
        return next;
      continue;
    }
    if (st == HANDSHAKE_FAIL)
      return NEGOTIATE_CLOSE;   /* nothing more is said */
    next = flush (n, active);
    if (next != NEGOTIATE_AGAIN)
      return next;
    /* Everything queued is sent. */
    switch (st) {
    case HANDSHAKE_INPUT:
      next = receive (n, active);
      if (next != NEGOTIATE_AGAIN)
        return next;
      break;
    case HANDSHAKE_STARTTLS: {
      char reason[256];

      n->tls = tls_session_new (server_tls_ctx, n->conn->fd, reason,
                                sizeof reason);
      if (n->tls == NULL) {
        log_error ("%s: TLS: %s", n->conn->peer, reason);
        return NEGOTIATE_CLOSE;
      }
      n->tls_bytes = 0;
      break;
    }
    case HANDSHAKE_DONE:
      return NEGOTIATE_TRANSMISSION;
    case HANDSHAKE_END:
    case HANDSHAKE_FAIL:
      return NEGOTIATE_CLOSE;
    }
  }
  return NEGOTIATE_AGAIN;
}

bool
negotiate_ended_cleanly (const struct negotiation *n)
{
  return handshake_status (n->hs) == HANDSHAKE_END;
}

void
negotiate_timed_out (struct negotiation *n)
{
  size_t len;

  if (n->tls) {
    tls_failed (n->conn, "handshake timed out");
    return;
  }
  switch (handshake_status (n->hs)) {
  case HANDSHAKE_INPUT:
    handshake_output (n->hs, &len);
    if (len > 0)
      handshake_output_error (n->hs, ETIMEDOUT);
    else
      handshake_input_error (n->hs, ETIMEDOUT);
    break;
  case HANDSHAKE_END:
    break;                      /* the ACK of an ABORT: best effort */
  default:
    handshake_output_error (n->hs, ETIMEDOUT);
    break;
  }
}
