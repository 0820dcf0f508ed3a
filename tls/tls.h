/* SPDX-License-Identifier: MIT */
/* TLS for NBD connections, with OpenSSL.  A session wraps one
 * connection's non-blocking socket: the server side of the handshake is
 * stepped by the caller's event loop (tls_session_handshake says which
 * way the socket must be ready before the next step), then recv and
 * send behave like recv(2) and sendmsg(2) on a non-blocking socket, so
 * the server can put them behind its transport seam and the protocol
 * code does not know TLS is on.  Nothing here knows the server: errors
 * come back as errno values and a reason string. */
#ifndef TLS_TLS_H
#define TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

enum tls_mode {
  TLS_OFF,        /* STARTTLS refused with NBD_REP_ERR_POLICY */
  TLS_ON,         /* clients may upgrade */
  TLS_REQUIRE,    /* every option but STARTTLS and ABORT: ERR_TLS_REQD */
};

/* One authorization rule, as QEMU's authz-list objects have them. */
struct tls_authz_rule {
  const char *match;       /* a client certificate's DN, or a pattern */
  bool glob;               /* MATCH is an fnmatch(3) pattern */
  bool allow;              /* a match allows (else denies) the client */
};

struct tls_config {
  enum tls_mode mode;
  const char *certs_dir;   /* ca-cert.pem, server-cert.pem, server-key.pem,
                            * optional ca-crl.pem */
  bool verify_peer;        /* demand a client certificate signed by the CA */
  const char *authz_file;  /* allowed client DNs, one per line */
  const char *psk_file;    /* psktool format: identity:hexkey */
  /* Authorization rules (qemu-nbd's authz objects), used when not NULL:
   * the first rule matching the client certificate's DN decides, and
   * AUTHZ_DEFAULT_ALLOW when none does.  Implies verify_peer; not with
   * authz_file. */
  const struct tls_authz_rule *authz_rules;
  size_t nr_authz_rules;
  bool authz_default_allow;
  /* The rules name certificates as QEMU's authz objects see them
   * (GnuTLS's gnutls_x509_crt_get_dn: RDNs in certificate order,
   * "C=GB,O=Example,CN=client"), not in RFC 4514's reversed order. */
  bool authz_cert_order;
  /* Where tls_ctx_new says what is wrong with the credentials (and
   * warns of an expired certificate): one line, without a newline.
   * NULL: stderr. */
  void (*log) (const char *msg);
};

struct tls_ctx;
struct tls_session;

/* Load credentials.  Returns NULL (logged) if they cannot be used. */
struct tls_ctx *tls_ctx_new (const struct tls_config *cfg);
void tls_ctx_free (struct tls_ctx *ctx);

/* A server session on the non-blocking socket FD (which stays the
 * caller's to close).  NULL when OpenSSL cannot make one; the reason is
 * written to REASON (LEN bytes). */
struct tls_session *tls_session_new (struct tls_ctx *ctx, int fd,
                                     char *reason, size_t len);

/* What a handshake step needs next. */
enum tls_step {
  TLS_STEP_DONE,        /* established, the client's credentials checked */
  TLS_STEP_WANT_READ,   /* call again once the socket is readable */
  TLS_STEP_WANT_WRITE,  /* ... writable */
  TLS_STEP_FAILED,      /* refused or broken: tls_session_reason() says why;
                         * the caller closes the connection */
};

/* Run the handshake as far as the socket allows without blocking. */
enum tls_step tls_session_handshake (struct tls_session *s);

/* Bytes the session has moved through the socket, both ways: a
 * handshake whose count stands still is stalled. */
uint64_t tls_session_bytes (const struct tls_session *s);

/* The first reason the session failed ("" if none was recorded). */
const char *tls_session_reason (const struct tls_session *s);

/* After the handshake: protocol, cipher, and how the client proved who
 * it is ("TLSv1.3 TLS_AES_128_GCM_SHA256, PSK"), for the log. */
void tls_session_describe (struct tls_session *s, char *buf, size_t len);

/* Like recv(2) on a non-blocking socket: bytes, 0 at the end of the
 * stream, or -1 with errno (EAGAIN: try again when the socket is
 * readable; EPROTO: a TLS error, see tls_session_reason).  OpenSSL may
 * hold decrypted bytes the socket no longer shows, so a caller reads
 * until EAGAIN before it waits for readiness. */
ssize_t tls_session_recv (struct tls_session *s, void *buf, size_t len);

/* Like sendmsg(2): sends a prefix of IOV as whole records, or -1 with
 * errno (EAGAIN: retry with the same unsent bytes first, when the
 * socket is writable; EPROTO or EIO: see tls_session_reason).  MORE:
 * more bytes follow soon (MSG_MORE). */
ssize_t tls_session_send (struct tls_session *s, const struct iovec *iov,
                          int iovcnt, bool more);

/* Send close_notify if that cannot block, and free the session. */
void tls_session_close (struct tls_session *s);

/* ---- client.c: the client side, for qemu-nbd -L ----------------------- */

struct tls_client;

/* Run the client side of the TLS handshake on the blocking socket FD
 * with CFG's credentials: X.509 (certs_dir: ca-cert.pem, optional
 * client-cert.pem and client-key.pem; the server checked when
 * verify_peer, against HOSTNAME when not NULL) or PSK (psk_file, the
 * key of USERNAME, "qemu" if NULL).  NULL with ERR set on failure. */
struct tls_client *tls_client_new (int fd, const struct tls_config *cfg,
                                   const char *hostname,
                                   const char *username,
                                   char *err, size_t errlen);
/* Like recv(2) and send(2): bytes, 0 at the end (read), -1 (errno). */
ssize_t tls_client_read (struct tls_client *c, void *buf, size_t len);
ssize_t tls_client_write (struct tls_client *c, const void *buf, size_t len);
void tls_client_free (struct tls_client *c);

#endif /* TLS_TLS_H */
