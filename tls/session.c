/* SPDX-License-Identifier: MIT */
/* One TLS session: the server handshake, stepped without blocking by the
 * caller's event loop, and recv/send that behave like recv(2) and
 * sendmsg(2) on a non-blocking socket.  Underneath is our own socket
 * BIO, which never raises SIGPIPE and passes MSG_MORE through.  Errors
 * are kept as a reason string for the caller's log: nothing here knows
 * the server. */

#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "tls/internal.h"
#include "tls/tls.h"

void
tls_set_reason (struct tls_session *t, const char *fmt, ...)
{
  va_list ap;

  if (t->reason[0] != '\0')
    return;
  va_start (ap, fmt);
  vsnprintf (t->reason, sizeof t->reason, fmt, ap);
  va_end (ap);
}

/* The OpenSSL error queue as the session's reason. */
static void
set_openssl_reason (struct tls_session *t)
{
  char reason[256];

  tls_openssl_reason (reason, sizeof reason);
  tls_set_reason (t, "%s", reason);
}

/* ---- socket BIO --------------------------------------------------------- */

/* OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when the
 * client has gone; the plain transport uses MSG_NOSIGNAL and so do we.
 * The BIO also lets us pass MSG_MORE through and keep errno. */

/* The end of a socket call, as OpenSSL wants it: keep errno for the
 * caller and turn EAGAIN into a retry in the same direction
 * (RETRY_FLAG is BIO_FLAGS_READ or BIO_FLAGS_WRITE). */
static int
sock_done (BIO *bio, struct tls_session *t, ssize_t r, int retry_flag,
           size_t *done)
{
  if (r == -1) {
    t->io_errno = errno;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      BIO_set_flags (bio, retry_flag | BIO_FLAGS_SHOULD_RETRY);
    return 0;
  }
  *done = r;
  t->bytes += r;
  return 1;
}

static int
bio_sock_write (BIO *bio, const char *buf, size_t len, size_t *written)
{
  struct tls_session *t = BIO_get_data (bio);
  ssize_t r;

  BIO_clear_retry_flags (bio);
  do
    r = send (t->fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT |
              (t->more ? MSG_MORE : 0));
  while (r == -1 && errno == EINTR);
  return sock_done (bio, t, r, BIO_FLAGS_WRITE, written);
}

static int
bio_sock_read (BIO *bio, char *buf, size_t len, size_t *nread)
{
  struct tls_session *t = BIO_get_data (bio);
  ssize_t r;

  BIO_clear_retry_flags (bio);
  do
    r = recv (t->fd, buf, len, MSG_DONTWAIT);
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

/* ---- the session -------------------------------------------------------- */

struct tls_session *
tls_session_new (struct tls_ctx *ctx, int fd, char *reason, size_t len)
{
  struct tls_session *t;
  BIO *bio;

  t = calloc (1, sizeof *t);
  if (t == NULL) {
    snprintf (reason, len, "out of memory");
    return NULL;
  }
  t->ctx = ctx;
  t->fd = fd;
  t->ssl = SSL_new (ctx->ssl_ctx);
  bio = BIO_new (ctx->bio_method);
  if (t->ssl == NULL || bio == NULL) {
    tls_openssl_reason (reason, len);
    BIO_free (bio);
    SSL_free (t->ssl);
    free (t);
    return NULL;
  }
  BIO_set_data (bio, t);
  BIO_set_init (bio, 1);
  SSL_set_bio (t->ssl, bio, bio);
  SSL_set_app_data (t->ssl, t);
  return t;
}

uint64_t
tls_session_bytes (const struct tls_session *t)
{
  return t->bytes;
}

const char *
tls_session_reason (const struct tls_session *t)
{
  return t->reason;
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

static enum tls_step
handshake_failed (struct tls_session *t)
{
  t->failed = true;
  if (t->reason[0] == '\0')
    tls_set_reason (t, "unknown reason");
  ERR_clear_error ();
  drain (t->fd);
  return TLS_STEP_FAILED;
}

enum tls_step
tls_session_handshake (struct tls_session *t)
{
  int r, err;

  if (t->failed)
    return TLS_STEP_FAILED;
  ERR_clear_error ();
  t->io_errno = 0;
  r = SSL_accept (t->ssl);
  if (r != 1) {
    err = SSL_get_error (t->ssl, r);
    if (err == SSL_ERROR_WANT_READ)
      return TLS_STEP_WANT_READ;
    if (err == SSL_ERROR_WANT_WRITE)
      return TLS_STEP_WANT_WRITE;
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error () == 0) {
      if (t->io_errno)
        tls_set_reason (t, "%s", strerror (t->io_errno));
      else
        tls_set_reason (t, "client hung up during the handshake");
    }
    else
      set_openssl_reason (t);
    return handshake_failed (t);
  }

  if (!used_psk (t->ssl) && t->ctx->verify_peer) {
    X509 *peer = SSL_get0_peer_certificate (t->ssl);

    /* OpenSSL enforced both already; this only guards the policy
     * against a future change of options. */
    if (peer == NULL) {
      tls_set_reason (t, "client sent no certificate");
      return handshake_failed (t);
    }
    if (SSL_get_verify_result (t->ssl) != X509_V_OK) {
      tls_set_reason (t, "client certificate: %s",
                      X509_verify_cert_error_string
                      (SSL_get_verify_result (t->ssl)));
      return handshake_failed (t);
    }
  }
  return TLS_STEP_DONE;
}

void
tls_session_describe (struct tls_session *t, char *buf, size_t len)
{
  X509 *peer = SSL_get0_peer_certificate (t->ssl);
  CLEANUP_FREE char *dn =
    peer ? tls_format_dn (X509_get_subject_name (peer)) : NULL;

  snprintf (buf, len, "%s %s%s%s%s", SSL_get_version (t->ssl),
            SSL_get_cipher_name (t->ssl),
            used_psk (t->ssl) ? ", PSK" : "",
            dn ? ", client " : "", dn ? dn : "");
}

ssize_t
tls_session_recv (struct tls_session *t, void *buf, size_t len)
{
  size_t n;
  int err;

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
    set_openssl_reason (t);
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

/* Send a prefix of IOV, as many whole records as the socket takes.
 * Small leading pieces (reply headers) are gathered into one record
 * with what follows instead of going out as tiny records; large buffers
 * are encrypted in place.  When OpenSSL cannot finish a record it keeps
 * its state and wants the same bytes again, which the caller provides
 * by retrying the same unsent bytes (pending_len). */
ssize_t
tls_session_send (struct tls_session *t, const struct iovec *iov,
                  int iovcnt, bool more)
{
  size_t total = 0, remaining = 0, skip = 0;
  int i;

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
        tls_set_reason (t, "TLS send retried with fewer bytes");
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

      /* Only pieces smaller than a record are gathered: a session that
       * sends nothing but handshake replies never needs the stage. */
      if (t->stage == NULL && (t->stage = malloc (RECORD_MAX)) == NULL) {
        errno = ENOMEM;
        return total > 0 ? (ssize_t) total : -1;
      }
      got = gather (t->stage, MIN (len, (size_t) RECORD_MAX), &first, 1);
      got += gather (t->stage + got, MIN (len, (size_t) RECORD_MAX) - got,
                     &iov[i + 1], iovcnt - i - 1);
      if (got != len) {
        /* Only possible if a pending direct write is retried with the
         * bytes split differently and longer than the stage. */
        t->failed = true;
        tls_set_reason (t, "TLS send retried with a different layout");
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
    set_openssl_reason (t);
    errno = EPROTO;
    return -1;
  }
  return total;
}

void
tls_session_close (struct tls_session *t)
{
  if (t == NULL)
    return;
  /* Best effort close_notify: one attempt that never blocks (the BIO
   * never waits), even with a client that stopped reading; OpenSSL
   * forbids it after a fatal error. */
  if (!t->failed && SSL_is_init_finished (t->ssl)) {
    t->more = false;
    ERR_clear_error ();
    SSL_shutdown (t->ssl);
  }
  ERR_clear_error ();
  SSL_free (t->ssl);            /* frees the BIO too */
  free (t->stage);
  free (t);
}
