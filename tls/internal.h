/* SPDX-License-Identifier: MIT */
/* Inside tls/: the context and connection state, and the few calls the
 * two halves make of each other.  Grouped by the file that defines them.
 * Public interface: tls/tls.h. */
#ifndef TLS_INTERNAL_H
#define TLS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Plaintext bytes in a full TLS record: small pieces are gathered up to
 * this.  A large buffer is passed to OpenSSL in place, DIRECT_MAX at a
 * time, which bounds what a WANT_WRITE retry must present again. */
#define RECORD_MAX 16384
#define DIRECT_MAX (1024 * 1024)

struct psk_entry {
  char *identity;
  unsigned char *key;
  size_t key_len;
};

struct tls_ctx {
  void (*log) (const char *msg);  /* tls_config.log */
  SSL_CTX *ssl_ctx;
  BIO_METHOD *bio_method;       /* socket BIO that never raises SIGPIPE */
  bool verify_peer;
  struct psk_entry *psks;       /* NULL when PSK is off */
  size_t nr_psks;
  /* Authorization of client certificates: rules tried in order, the
   * first match deciding, else authz_default_allow.  authz_on false:
   * every verified certificate is allowed. */
  bool authz_on;
  struct tls_authz_rule *authz;  /* match strings owned */
  size_t nr_authz;
  bool authz_default_allow;
  /* A refusal in qemu-nbd's words: the rules came from its authz
   * objects, and scripts match what it says.  Else ours, naming the
   * authz file. */
  bool authz_qemu_words;
  bool authz_cert_order;         /* tls_config.authz_cert_order */
};

/* One connection's session (tls.h). */
struct tls_session {
  struct tls_ctx *ctx;
  int fd;                       /* the caller's non-blocking socket */
  SSL *ssl;
  int io_errno;                 /* errno of the last failed socket call */
  uint64_t bytes;               /* moved through the socket, both ways */
  bool failed;                  /* fatal TLS error: no close_notify */
  bool more;                    /* MSG_MORE for the next socket write */
  /* Length of the SSL_write that last returned WANT_WRITE: OpenSSL has
   * part of it in flight and must be called again with at least that
   * many of the same bytes (0: nothing pending). */
  size_t pending_len;
  char reason[256];             /* first failure reason */
  unsigned char *stage;         /* RECORD_MAX bytes, made on first use */
};

/* ---- context.c: credentials, client verification, the SSL_CTX ---------- */

/* The OpenSSL error queue of this thread as one message; clears it. */
void tls_openssl_reason (char *buf, size_t len);

/* A certificate name as RFC 4514 prints it (see context.c), or with
 * CERT_ORDER in the certificate's own order as GnuTLS's legacy
 * gnutls_x509_crt_get_dn prints it; NULL if out of memory.  The caller
 * frees it. */
char *tls_format_dn (const X509_NAME *name);
char *tls_format_dn_order (const X509_NAME *name, bool cert_order);

/* ---- session.c: socket BIO, transport, handshake ----------------------- */

/* Record the first reason a handshake failed, for its log line. */
void tls_set_reason (struct tls_session *t, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

/* The BIO method for connection sockets; NULL on error (OpenSSL queue). */
BIO_METHOD *tls_bio_method_new (void);

#endif /* TLS_INTERNAL_H */
