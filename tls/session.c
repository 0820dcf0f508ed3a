/* SPDX-License-Identifier: MIT */
/* One TLS connection: the server handshake held to the negotiation
 * deadline, and a transport (struct conn_transport) that behaves like
 * recv(2)/sendmsg(2) on blocking and non-blocking sockets so the
 * protocol code cannot tell TLS is on.  Underneath is our own socket
 * BIO, which never raises SIGPIPE and passes MSG_MORE through. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "server/server.h"
#include "tls/internal.h"
#include "tls/tls.h"

void
tls_set_reason (struct tls_conn *t, const char *fmt, ...)
                {
                va_list ap;

  if (t->reason[0] != '\0')
    return;
  va_start (ap, fmt);
  vsnprintf (t->reason, sizeof t->reason, fmt, ap);
  va_end (ap);
}

/* ---- socket BIO --------------------------------------------------------- */

/* OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when the
 * client has gone; the plain transport uses MSG_NOSIGNAL and so do we.
 * The BIO also lets us pass MSG_MORE through and keep errno. */

/* The end of a socket call, as OpenSSL wants it: keep errno for the
 * transport and turn EAGAIN into a retry in the same direction
 * (RETRY_FLAG is BIO_FLAGS_READ or BIO_FLAGS_WRITE). */
static int
sock_done (BIO *bio, struct tls_conn *t, ssize_t r, int retry_flag,
           size_t *done)
{
  if (r == -1) {
    t->io_errno = errno;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      BIO_set_flags (bio, retry_flag | BIO_FLAGS_SHOULD_RETRY);
    return 0;
  }
  *done = r;
  return 1;
}

static int
bio_sock_write (BIO *bio, const char *buf, size_t len, size_t *written)
{
  struct tls_conn *t = BIO_get_data (bio);
  ssize_t r;

  BIO_clear_retry_flags (bio);
  do
    r = send (t->conn->fd, buf, len, MSG_NOSIGNAL |
              (t->more ? MSG_MORE : 0) | (t->nowait ? MSG_DONTWAIT : 0));
  while (r == -1 && errno == EINTR);
  return sock_done (bio, t, r, BIO_FLAGS_WRITE, written);
}

static int
bio_sock_read (BIO *bio, char *buf, size_t len, size_t *nread)
{
  struct tls_conn *t = BIO_get_data (bio);
  ssize_t r;

  BIO_clear_retry_flags (bio);
  do
    r = recv (t->conn->fd, buf, len, 0);
  while (r == -1 && errno == EINTR);
  if (r == 0)
    t->io_errno = 0;
  return sock_done (bio, t, r, BIO_FLAGS_READ, nread);
}

static long
bio_sock_ctrl (BIO *bio, int cmd, long num, void *ptr)
{
  (void) bio; (void) num; (void) ptr;

  switch (cmd) {
  case BIO_CTRL_FLUSH:
  case BIO_CTRL_PUSH:
  case BIO_CTRL_POP:
    return 1;
  default:
    return 0;
  }
}
BIO_METHOD *
tls_bio_method_new (void)
{
  BIO_METHOD *m = BIO_meth_new (BIO_get_new_index () | BIO_TYPE_SOURCE_SINK,
                                "qcow2-nbd socket");

  if (m == NULL ||
      !BIO_meth_set_write_ex (m, bio_sock_write) ||
      !BIO_meth_set_read_ex (m, bio_sock_read) ||
      !BIO_meth_set_ctrl (m, bio_sock_ctrl)) {
    BIO_meth_free (m);
    return NULL;
  }
  return m;
}

/* ---- transport ---------------------------------------------------------- */

static void
tls_conn_free (struct tls_conn *t)
{
  if (t == NULL)
    return;
  SSL_free (t->ssl);            /* frees the BIO too */
  free (t);
}

static ssize_t
tls_recv (struct conn *conn, void *buf, size_t len)
{
  struct tls_conn *t = conn->transport_data;
  size_t n;
  int err;
  char reason[256];

  if (len == 0)
    return 0;
  if (t->failed) {
    errno = ECONNRESET;
    return -1;
  }
  ERR_clear_error ();
  t->io_errno = 0;
  t->more = false;              /* an alert or key update goes out now */
  if (SSL_read_ex (t->ssl, buf, len, &n) == 1)
    return n;
  err = SSL_get_error (t->ssl, 0);
  switch (err) {
  case SSL_ERROR_WANT_READ:
  case SSL_ERROR_WANT_WRITE:
    errno = EAGAIN;
    return -1;
  case SSL_ERROR_ZERO_RETURN:   /* close_notify, or EOF */
    return 0;
  case SSL_ERROR_SYSCALL:
    t->failed = true;
    if (t->io_errno == 0)
      return 0;
    errno = t->io_errno;
    return -1;
  default:
    t->failed = true;
    tls_openssl_reason (reason, sizeof reason);
    log_error ("%s: TLS receive: %s", conn->peer, reason);
    errno = EPROTO;
    return -1;
  }
}

/* Copy up to LEN bytes from the start of IOV into BUF; returns the count. */
static size_t
gather (unsigned char *buf, size_t len, const struct iovec *iov, int iovcnt)
{
  size_t done = 0;
  int i;

  for (i = 0; i < iovcnt && done < len; i++) {
    size_t n = MIN (iov[i].iov_len, len - done);

    memcpy (buf + done, iov[i].iov_base, n);
    done += n;
  }
  return done;
}

/* Like sendmsg(2): send a prefix of IOV, as many whole records as the
 * socket takes.  Small leading pieces (reply headers) are gathered into
 * one record with what follows instead of going out as tiny records;
 * large buffers are encrypted in place.  When OpenSSL cannot finish a
 * record it keeps its state and wants the same bytes again, which the
 * caller provides by retrying the same unsent bytes (pending_len). */
static ssize_t
tls_send (struct conn *conn, const struct iovec *iov, int iovcnt, bool more)
{
  struct tls_conn *t = conn->transport_data;
  size_t total = 0, remaining = 0, skip = 0;
  int i;
  char reason[256];

  if (t->failed) {
    errno = EPIPE;
    return -1;
  }
  for (i = 0; i < iovcnt; i++)
    remaining += iov[i].iov_len;

  i = 0;
  while (remaining > 0) {
    const void *p;
    size_t len, n;
    int err;

    /* Skip the iovecs (and the part of iov[i]) already sent. */
    while (i < iovcnt && skip >= iov[i].iov_len) {
      skip -= iov[i].iov_len;
      i++;
    }
    if (t->pending_len > 0) {
      if (remaining < t->pending_len) {
        /* The caller changed the bytes under a half-sent record. */
        t->failed = true;
        log_error ("%s: TLS send retried with fewer bytes", conn->peer);
        errno = EIO;
        return -1;
      }
      len = t->pending_len;
    }
    else if (iov[i].iov_len - skip >= RECORD_MAX)
      len = MIN (iov[i].iov_len - skip, (size_t) DIRECT_MAX);
    else
      len = MIN (remaining, (size_t) RECORD_MAX);

    if (len <= iov[i].iov_len - skip)
      p = (const unsigned char *) iov[i].iov_base + skip;
    else {
      struct iovec first = {
        .iov_base = (unsigned char *) iov[i].iov_base + skip,
        .iov_len = iov[i].iov_len - skip,
      };
      size_t got;

      got = gather (t->stage, MIN (len, sizeof t->stage), &first, 1);
      got += gather (t->stage + got, MIN (len, sizeof t->stage) - got,
                     &iov[i + 1], iovcnt - i - 1);
      if (got != len) {
        /* Only possible if a pending direct write is retried with the
         * bytes split differently and longer than the stage. */
        t->failed = true;
        log_error ("%s: TLS send retried with a different layout",
                   conn->peer);
        errno = EIO;
        return -1;
      }
      p = t->stage;
    }

    /* Partial-write mode sends one record per call: cork it unless it
     * is the last of this send and the caller expects no more. */
    t->more = more || MIN (len, (size_t) RECORD_MAX) < remaining;
    ERR_clear_error ();
    t->io_errno = 0;
    if (SSL_write_ex (t->ssl, p, len, &n) == 1) {
      t->pending_len = 0;
      total += n;
      skip += n;
      remaining -= n;
      continue;
    }
    err = SSL_get_error (t->ssl, 0);
    if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
      t->pending_len = len;
      if (total > 0)
        return total;
      errno = EAGAIN;
      return -1;
    }
    t->failed = true;
    if (err == SSL_ERROR_SYSCALL) {
      errno = t->io_errno ? t->io_errno : EPIPE;
      return -1;
    }
    tls_openssl_reason (reason, sizeof reason);
    log_error ("%s: TLS send: %s", conn->peer, reason);
    errno = EPROTO;
    return -1;
  }
  return total;
}

static void
tls_shutdown (struct conn *conn)
{
  struct tls_conn *t = conn->transport_data;

  if (t == NULL)
    return;
  /* Best effort close_notify: one attempt that never blocks, even on
   * the handshake's blocking socket with a client that stopped reading;
   * OpenSSL forbids it after a fatal error. */
  if (!t->failed && SSL_is_init_finished (t->ssl)) {
    t->more = false;
    t->nowait = true;
    ERR_clear_error ();
    SSL_shutdown (t->ssl);
  }
  ERR_clear_error ();
  tls_conn_free (t);
  conn->transport_data = NULL;
}

static const struct conn_transport tls_transport = {
  .recv = tls_recv,
  .send = tls_send,
  .shutdown = tls_shutdown,
};

/* ---- handshake ---------------------------------------------------------- */

/* Wait until the socket is ready for what OpenSSL wants, or the
 * deadline.  Returns 0, or -1 with errno set. */
static int
wait_for (int fd, short events, uint64_t deadline)
{
  struct pollfd pfd = { .fd = fd, .events = events };
  int timeout, r;

  for (;;) {
    if (deadline == 0)
      timeout = -1;
    else {
      uint64_t now = now_ns ();

      if (now >= deadline) {
        errno = ETIMEDOUT;
        return -1;
      }
      timeout = MIN (DIV_ROUND_UP (deadline - now, 1000000), (uint64_t) INT_MAX);
    }
    r = poll (&pfd, 1, timeout);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r > 0)
      return 0;
  }
}

static int
accept_loop (struct tls_conn *t, uint64_t deadline)
{
  for (;;) {
    int r, err;

    ERR_clear_error ();
    t->io_errno = 0;
    r = SSL_accept (t->ssl);
    if (r == 1)
      return 0;
    err = SSL_get_error (t->ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      if (wait_for (t->conn->fd,
                    err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT,
                    deadline) == -1) {
        if (errno == ETIMEDOUT)
          tls_set_reason (t, "handshake timed out");
        else
          tls_set_reason (t, "poll: %s", strerror (errno));
        return -1;
      }
      continue;
    }
    t->failed = true;
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error () == 0) {
      if (t->io_errno)
        tls_set_reason (t, "%s", strerror (t->io_errno));
      else
        tls_set_reason (t, "client hung up during the handshake");
    }
    else {
      char reason[256];

      tls_openssl_reason (reason, sizeof reason);
      tls_set_reason (t, "%s", reason);
    }
    return -1;
  }
}

/* Read and drop what the client already sent (a plaintext option where
 * the ClientHello belonged, say), a bounded amount and without waiting:
 * closing a socket with unread bytes sends a reset, which can overtake
 * our alert and leave the client with ECONNRESET instead of the reason. */
static void
drain (int fd)
{
  char buf[4096];
  int i;

  for (i = 0; i < 16; i++)
    if (recv (fd, buf, sizeof buf, MSG_DONTWAIT) <= 0)
      break;
}

/* Was the client authenticated by a PSK rather than a certificate? */
static bool
used_psk (SSL *ssl)
{
  const SSL_CIPHER *c = SSL_get_current_cipher (ssl);

  if (SSL_version (ssl) >= TLS1_3_VERSION)
    return SSL_session_reused (ssl);
  return c && SSL_CIPHER_get_auth_nid (c) == NID_auth_psk;
}

int
tls_upgrade (struct tls_ctx *ctx, struct conn *conn, uint64_t deadline)
{
  struct tls_conn *t;
  BIO *bio;
  int flags, r;

  t = calloc (1, sizeof *t);
  if (t == NULL) {
    log_error ("%s: TLS: out of memory", conn->peer);
    return -1;
  }
  t->ctx = ctx;
  t->conn = conn;
  t->ssl = SSL_new (ctx->ssl_ctx);
  bio = BIO_new (ctx->bio_method);
  if (t->ssl == NULL || bio == NULL) {
    char reason[256];

    tls_openssl_reason (reason, sizeof reason);
    log_error ("%s: TLS: %s", conn->peer, reason);
    BIO_free (bio);
    tls_conn_free (t);
    return -1;
  }
  BIO_set_data (bio, t);
  BIO_set_init (bio, 1);
  SSL_set_bio (t->ssl, bio, bio);
  SSL_set_app_data (t->ssl, t);

  /* The socket is blocking; run the handshake non-blocking so that
   * poll() can hold it to the deadline, then give the socket back as it
   * was. */
  flags = fcntl (conn->fd, F_GETFL);
  if (flags == -1 || fcntl (conn->fd, F_SETFL, flags | O_NONBLOCK) == -1) {
    log_error ("%s: TLS: fcntl: %m", conn->peer);
    tls_conn_free (t);
    return -1;
  }
  r = accept_loop (t, deadline);
  if (fcntl (conn->fd, F_SETFL, flags) == -1 && r == 0) {
    log_error ("%s: TLS: fcntl: %m", conn->peer);
    r = -1;
  }
  if (r == 0 && !used_psk (t->ssl) && ctx->verify_peer) {
    X509 *peer = SSL_get0_peer_certificate (t->ssl);

    /* OpenSSL enforced both already; this only guards the policy
     * against a future change of options. */
    if (peer == NULL) {
      tls_set_reason (t, "client sent no certificate");
      r = -1;
    }
    else if (SSL_get_verify_result (t->ssl) != X509_V_OK) {
      tls_set_reason (t, "client certificate: %s",
                      X509_verify_cert_error_string
                      (SSL_get_verify_result (t->ssl)));
      r = -1;
    }
  }
  if (r == -1) {
    log_error ("%s: TLS handshake failed: %s", conn->peer,
               t->reason[0] ? t->reason : "unknown reason");
    ERR_clear_error ();
    drain (conn->fd);
    tls_conn_free (t);
    return -1;
  }

  if (log_verbose) {
    X509 *peer = SSL_get0_peer_certificate (t->ssl);
    CLEANUP_FREE char *dn =
      peer ? tls_format_dn (X509_get_subject_name (peer)) : NULL;

    log_debug ("%s: %s %s%s%s%s", conn->peer, SSL_get_version (t->ssl),
               SSL_get_cipher_name (t->ssl),
               used_psk (t->ssl) ? ", PSK" : "",
               dn ? ", client " : "", dn ? dn : "");
  }
  conn->transport = &tls_transport;
  conn->transport_data = t;
  return 0;
}
