/* SPDX-License-Identifier: MIT */
/* TLS for NBD connections, with OpenSSL, behind the connection transport
 * seam (server/server.h, struct conn_transport): after tls_upgrade() the
 * connection's recv/send go through the TLS session and the protocol code
 * does not know the difference. */
#ifndef TLS_TLS_H
#define TLS_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct conn;

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
};

struct tls_ctx;

/* Load credentials.  Returns NULL (logged) if they cannot be used. */
struct tls_ctx *tls_ctx_new (const struct tls_config *cfg);
void tls_ctx_free (struct tls_ctx *ctx);

/* Run the server side of the TLS handshake on CONN's blocking socket
 * before DEADLINE (CLOCK_MONOTONIC ns, 0 = none) and install the TLS
 * transport on the connection.  Returns 0, or -1 after logging the peer
 * and the reason; the caller then drops the connection. */
int tls_upgrade (struct tls_ctx *ctx, struct conn *conn, uint64_t deadline);

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
