/* SPDX-License-Identifier: MIT */
/* TLS for NBD connections with OpenSSL, tuned so that the GnuTLS clients
 * everyone uses (qemu, libnbd, nbd-client) accept it: TLS 1.2 and 1.3
 * only, X.509 credentials in the qemu/nbdkit directory layout, PSK in
 * psktool's file format for both protocol versions, an allow-list of
 * client certificate names, and a transport (struct conn_transport) that
 * behaves like recv(2)/sendmsg(2) on blocking and non-blocking sockets so
 * the protocol code cannot tell TLS is on.  The SSL_CTX and everything in
 * struct tls_ctx are read-only after tls_ctx_new(), so handshake threads
 * and workers share them without locks. */

#include <config.h>

#include <ctype.h>
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
#include <openssl/x509_vfy.h>

#include "common/cleanup.h"
#include "common/rounding.h"
#include "server/server.h"
#include "tls/tls.h"

/* TLS 1.2 suites in server preference order.  PSK suites come first: a
 * GnuTLS client with PSK credentials (qemu: "NORMAL:+ECDHE-PSK:+DHE-PSK:
 * +PSK") offers certificate suites too, and would fail to verify our
 * certificate if we picked one; clients without PSK credentials do not
 * offer PSK suites, and without --tls-psk OpenSSL disables them.  GnuTLS
 * has no ECDHE-PSK with GCM, so its ECDHE-PSK choices are CHACHA20 and
 * CBC.  Certificate suites all have forward secrecy. */
#define TLS12_CIPHERS                                                   \
  "ECDHE-PSK-CHACHA20-POLY1305:"                                        \
  "DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:"                \
  "DHE-PSK-CHACHA20-POLY1305:"                                          \
  "ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:"            \
  "PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-CHACHA20-POLY1305:"  \
  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"          \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"          \
  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"          \
  "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:"                \
  "DHE-RSA-CHACHA20-POLY1305"

/* TLS 1.3 suites in server preference order.  SHA-256 suites come first
 * because OpenSSL picks the suite before it looks at the client's PSK,
 * then drops a PSK whose hash differs from the suite's; GnuTLS binds
 * external PSKs with SHA-256 and prefers AES-256-GCM-SHA384, so client
 * preference would make every TLS 1.3 PSK handshake fail. */
#define TLS13_CIPHERS                                                   \
  "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"                \
  "TLS_AES_256_GCM_SHA384"

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
  SSL_CTX *ssl_ctx;
  BIO_METHOD *bio_method;       /* socket BIO that never raises SIGPIPE */
  bool verify_peer;
  struct psk_entry *psks;       /* NULL when PSK is off */
  size_t nr_psks;
  char **authz;                 /* allowed client DNs, NULL when off */
  size_t nr_authz;
};

/* Per-connection state, in conn->transport_data after tls_upgrade(). */
struct tls_conn {
  struct tls_ctx *ctx;
  struct conn *conn;
  SSL *ssl;
  int io_errno;                 /* errno of the last failed socket call */
  bool failed;                  /* fatal TLS error: no close_notify */
  bool more;                    /* MSG_MORE for the next socket write */
  bool nowait;                  /* MSG_DONTWAIT: never block (shutdown) */
  /* Length of the SSL_write that last returned WANT_WRITE: OpenSSL has
   * part of it in flight and must be called again with at least that
   * many of the same bytes (0: nothing pending). */
  size_t pending_len;
  char reason[256];             /* first handshake failure reason */
  unsigned char stage[RECORD_MAX];
};

static void
set_reason (struct tls_conn *t, const char *fmt, ...)
{
  va_list ap;

  if (t->reason[0] != '\0')
    return;
  va_start (ap, fmt);
  vsnprintf (t->reason, sizeof t->reason, fmt, ap);
  va_end (ap);
}

/* The OpenSSL error queue of this thread as one message; clears it. */
static void
openssl_reason (char *buf, size_t len)
{
  unsigned long e, first = 0;

  while ((e = ERR_get_error ()) != 0)
    if (first == 0)
      first = e;
  if (first == 0)
    snprintf (buf, len, "unknown OpenSSL error");
  else
    ERR_error_string_n (first, buf, len);
}

/* ---- socket BIO --------------------------------------------------------- */

/* OpenSSL's socket BIO writes with write(2), which raises SIGPIPE when the
 * client has gone; the plain transport uses MSG_NOSIGNAL and so do we.
 * The BIO also lets us pass MSG_MORE through and keep errno. */

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
  if (r == -1) {
    t->io_errno = errno;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      BIO_set_retry_write (bio);
    return 0;
  }
  *written = r;
  return 1;
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
  if (r == -1) {
    t->io_errno = errno;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      BIO_set_retry_read (bio);
    return 0;
  }
  if (r == 0)
    t->io_errno = 0;
  *nread = r;
  return 1;
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

/* ---- credentials -------------------------------------------------------- */

static char *
path_join (const char *dir, const char *name)
{
  char *p;

  if (asprintf (&p, "%s/%s", dir, name) == -1)
    return NULL;
  return p;
}

static bool
file_exists (const char *path)
{
  return access (path, F_OK) == 0;
}

/* Strip a trailing newline, CR and blanks in place. */
static void
chomp (char *s)
{
  size_t n = strlen (s);

  while (n > 0 && isspace ((unsigned char) s[n - 1]))
    s[--n] = '\0';
}

static const struct psk_entry *find_psk (const struct tls_ctx *ctx,
                                        const unsigned char *id, size_t len);

static int
hex_value (int c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

/* psktool's format: "identity:hexkey" per line.  Like GnuTLS, the
 * identity ends at the first colon.  LINE is the caller's so that it
 * can wipe the key text whatever happens here. */
static int
parse_psk_file (struct tls_ctx *ctx, const char *path, FILE *fp,
                char **linep, size_t *capp)
{
  ssize_t n;
  unsigned lineno = 0;

  while ((n = getline (linep, capp, fp)) != -1) {
    char *line = *linep;
    char *colon, *hex;
    size_t id_len, hex_len, i;
    struct psk_entry *e, *psks;

    lineno++;
    chomp (line);
    if (line[0] == '\0' || line[0] == '#')
      continue;
    colon = strchr (line, ':');
    if (colon == NULL || colon == line) {
      log_error ("tls: %s:%u: expected identity:hexkey", path, lineno);
      return -1;
    }
    id_len = colon - line;
    hex = colon + 1;
    hex_len = strlen (hex);
    if (id_len > PSK_MAX_IDENTITY_LEN) {
      log_error ("tls: %s:%u: identity longer than %d bytes",
                 path, lineno, PSK_MAX_IDENTITY_LEN);
      return -1;
    }
    if (hex_len == 0 || hex_len % 2 != 0 || hex_len / 2 > PSK_MAX_PSK_LEN) {
      log_error ("tls: %s:%u: key must be 1 to %d bytes of hex digits",
                 path, lineno, PSK_MAX_PSK_LEN);
      return -1;
    }
    if (find_psk (ctx, (const unsigned char *) line, id_len)) {
      log_error ("tls: %s:%u: identity given twice", path, lineno);
      return -1;
    }
    psks = realloc (ctx->psks, (ctx->nr_psks + 1) * sizeof *psks);
    if (psks == NULL)
      goto nomem;
    ctx->psks = psks;
    e = &ctx->psks[ctx->nr_psks];
    e->identity = strndup (line, id_len);
    e->key = malloc (hex_len / 2);
    e->key_len = hex_len / 2;
    if (e->identity == NULL || e->key == NULL) {
      free (e->identity);
      free (e->key);
      goto nomem;
    }
    ctx->nr_psks++;
    for (i = 0; i < e->key_len; i++) {
      int hi = hex_value (hex[2 * i]), lo = hex_value (hex[2 * i + 1]);

      if (hi < 0 || lo < 0) {
        log_error ("tls: %s:%u: key is not hexadecimal", path, lineno);
        return -1;
      }
      e->key[i] = hi << 4 | lo;
    }
  }
  if (ferror (fp)) {
    log_error ("tls: %s: read error", path);
    return -1;
  }
  if (ctx->nr_psks == 0) {
    log_error ("tls: %s: no PSK identities", path);
    return -1;
  }
  return 0;

 nomem:
  log_error ("tls: out of memory");
  return -1;
}

static int
load_psk_file (struct tls_ctx *ctx, const char *path)
{
  FILE *fp = fopen (path, "r");
  char *line = NULL;
  size_t cap = 0;
  int r;

  if (fp == NULL) {
    log_error ("tls: %s: %m", path);
    return -1;
  }
  r = parse_psk_file (ctx, path, fp, &line, &cap);
  if (line)
    OPENSSL_cleanse (line, cap);
  free (line);
  fclose (fp);
  return r;
}

/* One distinguished name per line, exactly as format_dn() prints it;
 * blank lines and lines starting with '#' are ignored. */
static int
load_authz_file (struct tls_ctx *ctx, const char *path)
{
  FILE *fp = fopen (path, "r");
  CLEANUP_FREE char *line = NULL;
  size_t cap = 0;
  ssize_t n;

  if (fp == NULL) {
    log_error ("tls: %s: %m", path);
    return -1;
  }
  /* An empty allow-list is legal: it admits nobody.  Keep the array
   * non-NULL so that "authz on" is visible. */
  ctx->authz = calloc (1, sizeof *ctx->authz);
  if (ctx->authz == NULL)
    goto nomem;
  while ((n = getline (&line, &cap, fp)) != -1) {
    char *s = line, **authz;

    chomp (s);
    while (isspace ((unsigned char) *s))
      s++;
    if (*s == '\0' || *s == '#')
      continue;
    authz = realloc (ctx->authz, (ctx->nr_authz + 2) * sizeof *authz);
    if (authz == NULL)
      goto nomem;
    ctx->authz = authz;
    ctx->authz[ctx->nr_authz] = strdup (s);
    if (ctx->authz[ctx->nr_authz] == NULL)
      goto nomem;
    ctx->authz[++ctx->nr_authz] = NULL;
  }
  if (ferror (fp)) {
    log_error ("tls: %s: read error", path);
    fclose (fp);
    return -1;
  }
  fclose (fp);
  return 0;

 nomem:
  log_error ("tls: out of memory");
  fclose (fp);
  return -1;
}

/* A certificate name as RFC 4514 (RFC 2253) prints it, most specific
 * RDN first, e.g. "CN=client,O=Example,C=GB": the format GnuTLS (hence
 * qemu's tls-authz objects) uses.  UTF-8 is kept as is rather than
 * escaped, also like GnuTLS. */
static char *
format_dn (const X509_NAME *name)
{
  BIO *mem = BIO_new (BIO_s_mem ());
  char *data, *s = NULL;
  long len;

  if (mem == NULL)
    return NULL;
  if (X509_NAME_print_ex (mem, name, 0,
                          XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
    len = BIO_get_mem_data (mem, &data);
    if (len >= 0)
      s = strndup (data, len);
  }
  BIO_free (mem);
  return s;
}

static bool
authz_allows (const struct tls_ctx *ctx, const char *dn)
{
  size_t i;

  for (i = 0; i < ctx->nr_authz; i++)
    if (strcmp (ctx->authz[i], dn) == 0)
      return true;
  return false;
}

/* ---- OpenSSL callbacks -------------------------------------------------- */

static const struct psk_entry *
find_psk (const struct tls_ctx *ctx, const unsigned char *id, size_t len)
{
  size_t i;

  for (i = 0; i < ctx->nr_psks; i++)
    if (strlen (ctx->psks[i].identity) == len &&
        memcmp (ctx->psks[i].identity, id, len) == 0)
      return &ctx->psks[i];
  return NULL;
}

/* Print an identity from the wire for a log: printable ASCII only. */
static void
printable (char *out, size_t outlen, const unsigned char *in, size_t len)
{
  size_t i, o = 0;

  for (i = 0; i < len && o + 5 < outlen; i++) {
    if (in[i] >= 0x20 && in[i] < 0x7f && in[i] != '\\')
      out[o++] = in[i];
    else
      o += snprintf (out + o, outlen - o, "\\x%02x", in[i]);
  }
  out[o] = '\0';
}

/* TLS 1.2 PSK. */
static unsigned int
psk_server_cb (SSL *ssl, const char *identity, unsigned char *psk,
               unsigned int max_psk_len)
{
  struct tls_conn *t = SSL_get_app_data (ssl);
  const struct psk_entry *e;
  char id[4 * 64];

  if (identity == NULL)
    identity = "";
  e = find_psk (t->ctx, (const unsigned char *) identity, strlen (identity));
  if (e == NULL || e->key_len > max_psk_len) {
    printable (id, sizeof id, (const unsigned char *) identity,
               strlen (identity));
    set_reason (t, "unknown PSK identity \"%s\"", id);
    return 0;
  }
  memcpy (psk, e->key, e->key_len);
  return e->key_len;
}

/* TLS 1.3 external PSK: a session made up on the spot whose suite has
 * the hash of the suite OpenSSL already chose (see TLS13_CIPHERS). */
static int
psk_find_session_cb (SSL *ssl, const unsigned char *identity,
                     size_t identity_len, SSL_SESSION **sessp)
{
  static const unsigned char aes128gcmsha256[] = { 0x13, 0x01 };
  struct tls_conn *t = SSL_get_app_data (ssl);
  const struct psk_entry *e;
  const SSL_CIPHER *cipher;
  SSL_SESSION *sess;
  char id[4 * 64];

  *sessp = NULL;
  e = find_psk (t->ctx, identity, identity_len);
  if (e == NULL) {
    printable (id, sizeof id, identity, identity_len);
    set_reason (t, "unknown PSK identity \"%s\"", id);
    return 1;                   /* not fatal: certificates may follow */
  }
  cipher = SSL_get_pending_cipher (ssl);
  if (cipher == NULL ||
      SSL_CIPHER_get_handshake_digest (cipher) != EVP_sha256 ())
    cipher = SSL_CIPHER_find (ssl, aes128gcmsha256);
  if (cipher == NULL)
    return 0;
  sess = SSL_SESSION_new ();
  if (sess == NULL ||
      !SSL_SESSION_set1_master_key (sess, e->key, e->key_len) ||
      !SSL_SESSION_set_cipher (sess, cipher) ||
      !SSL_SESSION_set_protocol_version (sess, TLS1_3_VERSION)) {
    SSL_SESSION_free (sess);
    return 0;
  }
  *sessp = sess;
  return 1;
}

/* Remember why a client certificate was refused, and apply the authz
 * allow-list here rather than after the handshake so that the client is
 * told with an alert instead of seeing the connection drop. */
static int
verify_cb (int ok, X509_STORE_CTX *store)
{
  SSL *ssl = X509_STORE_CTX_get_ex_data (store,
                                         SSL_get_ex_data_X509_STORE_CTX_idx ());
  struct tls_conn *t = SSL_get_app_data (ssl);
  X509 *cert = X509_STORE_CTX_get_current_cert (store);
  int depth = X509_STORE_CTX_get_error_depth (store);
  CLEANUP_FREE char *dn = NULL;

  if (cert)
    dn = format_dn (X509_get_subject_name (cert));
  if (!ok) {
    int err = X509_STORE_CTX_get_error (store);

    set_reason (t, "client certificate \"%s\" (depth %d): %s",
                dn ? dn : "?", depth, X509_verify_cert_error_string (err));
    return 0;
  }
  if (depth == 0 && t->ctx->authz) {
    if (dn == NULL || !authz_allows (t->ctx, dn)) {
      set_reason (t, "client certificate \"%s\" is not in the authz file",
                  dn ? dn : "?");
      X509_STORE_CTX_set_error (store, X509_V_ERR_APPLICATION_VERIFICATION);
      return 0;
    }
  }
  return 1;
}

/* ---- context ------------------------------------------------------------ */

static int
load_certs (struct tls_ctx *ctx, const char *dir)
{
  CLEANUP_FREE char *ca = path_join (dir, "ca-cert.pem");
  CLEANUP_FREE char *cert = path_join (dir, "server-cert.pem");
  CLEANUP_FREE char *key = path_join (dir, "server-key.pem");
  CLEANUP_FREE char *crl = path_join (dir, "ca-crl.pem");
  char err[256];

  if (!ca || !cert || !key || !crl) {
    log_error ("tls: out of memory");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file (ctx->ssl_ctx, cert) != 1) {
    openssl_reason (err, sizeof err);
    log_error ("tls: %s: %s", cert, err);
    return -1;
  }
  if (SSL_CTX_use_PrivateKey_file (ctx->ssl_ctx, key, SSL_FILETYPE_PEM) != 1) {
    openssl_reason (err, sizeof err);
    log_error ("tls: %s: %s", key, err);
    return -1;
  }
  if (SSL_CTX_check_private_key (ctx->ssl_ctx) != 1) {
    openssl_reason (err, sizeof err);
    log_error ("tls: %s does not match %s: %s", key, cert, err);
    return -1;
  }
  if (X509_cmp_current_time (X509_get0_notAfter
                             (SSL_CTX_get0_certificate (ctx->ssl_ctx))) < 0)
    log_error ("tls: warning: %s has expired; clients will refuse it", cert);

  /* The CA is what client certificates are checked against.  Without
   * --tls-verify-peer it is optional, as nothing is checked. */
  if (!file_exists (ca)) {
    if (ctx->verify_peer) {
      log_error ("tls: %s is needed to verify client certificates", ca);
      return -1;
    }
    return 0;
  }
  if (SSL_CTX_load_verify_locations (ctx->ssl_ctx, ca, NULL) != 1) {
    openssl_reason (err, sizeof err);
    log_error ("tls: %s: %s", ca, err);
    return -1;
  }
  if (ctx->verify_peer) {
    STACK_OF (X509_NAME) *names = SSL_load_client_CA_file (ca);

    /* GnuTLS clients only send a certificate issued by a CA named in
     * the CertificateRequest, so name them. */
    if (names == NULL) {
      openssl_reason (err, sizeof err);
      log_error ("tls: %s: %s", ca, err);
      return -1;
    }
    SSL_CTX_set_client_CA_list (ctx->ssl_ctx, names);
  }
  if (file_exists (crl)) {
    X509_STORE *store = SSL_CTX_get_cert_store (ctx->ssl_ctx);
    X509_LOOKUP *lookup = X509_STORE_add_lookup (store, X509_LOOKUP_file ());

    if (lookup == NULL ||
        X509_load_crl_file (lookup, crl, X509_FILETYPE_PEM) <= 0) {
      openssl_reason (err, sizeof err);
      log_error ("tls: %s: %s", crl, err);
      return -1;
    }
    X509_STORE_set_flags (store, X509_V_FLAG_CRL_CHECK);
  }
  return 0;
}

struct tls_ctx *
tls_ctx_new (const struct tls_config *cfg)
{
  struct tls_ctx *ctx;
  SSL_CTX *s;
  char err[256];

  if (cfg->certs_dir == NULL && cfg->psk_file == NULL) {
    log_error ("tls: TLS needs --tls-certs or --tls-psk");
    return NULL;
  }
  if ((cfg->verify_peer || cfg->authz_file) && cfg->certs_dir == NULL) {
    log_error ("tls: checking client certificates needs --tls-certs");
    return NULL;
  }
  ctx = calloc (1, sizeof *ctx);
  if (ctx == NULL) {
    log_error ("tls: out of memory");
    return NULL;
  }
  ctx->verify_peer = cfg->verify_peer || cfg->authz_file != NULL;

  ctx->bio_method = BIO_meth_new (BIO_get_new_index () | BIO_TYPE_SOURCE_SINK,
                                  "qcow2-nbd socket");
  if (ctx->bio_method == NULL ||
      !BIO_meth_set_write_ex (ctx->bio_method, bio_sock_write) ||
      !BIO_meth_set_read_ex (ctx->bio_method, bio_sock_read) ||
      !BIO_meth_set_ctrl (ctx->bio_method, bio_sock_ctrl))
    goto openssl_err;

  s = ctx->ssl_ctx = SSL_CTX_new (TLS_server_method ());
  if (s == NULL ||
      !SSL_CTX_set_min_proto_version (s, TLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version (s, TLS1_3_VERSION) ||
      !SSL_CTX_set_cipher_list (s, TLS12_CIPHERS) ||
      !SSL_CTX_set_ciphersuites (s, TLS13_CIPHERS) ||
      !SSL_CTX_set_dh_auto (s, 1) ||
      /* No resumption: every connection is a full handshake and no
       * tickets follow it, which keeps the socket quiet after
       * SSL_accept() returns. */
      !SSL_CTX_set_num_tickets (s, 0))
    goto openssl_err;
  SSL_CTX_set_options (s, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                       SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
                       /* NBD frames every message, so a missing
                        * close_notify cannot truncate anything; clients
                        * that just hang up are ending normally. */
                       SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_session_cache_mode (s, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_mode (s, SSL_MODE_ENABLE_PARTIAL_WRITE |
                    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);

  if (cfg->certs_dir && load_certs (ctx, cfg->certs_dir) == -1)
    goto err;
  if (cfg->psk_file) {
    if (load_psk_file (ctx, cfg->psk_file) == -1)
      goto err;
    SSL_CTX_set_psk_server_callback (s, psk_server_cb);
    SSL_CTX_set_psk_find_session_callback (s, psk_find_session_cb);
  }
  if (cfg->authz_file && load_authz_file (ctx, cfg->authz_file) == -1)
    goto err;
  if (ctx->verify_peer)
    SSL_CTX_set_verify (s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                        verify_cb);
  else
    SSL_CTX_set_verify (s, SSL_VERIFY_NONE, NULL);
  return ctx;

 openssl_err:
  openssl_reason (err, sizeof err);
  log_error ("tls: %s", err);
 err:
  tls_ctx_free (ctx);
  return NULL;
}

void
tls_ctx_free (struct tls_ctx *ctx)
{
  size_t i;

  if (ctx == NULL)
    return;
  SSL_CTX_free (ctx->ssl_ctx);
  BIO_meth_free (ctx->bio_method);
  for (i = 0; i < ctx->nr_psks; i++) {
    free (ctx->psks[i].identity);
    OPENSSL_cleanse (ctx->psks[i].key, ctx->psks[i].key_len);
    free (ctx->psks[i].key);
  }
  free (ctx->psks);
  for (i = 0; i < ctx->nr_authz; i++)
    free (ctx->authz[i]);
  free (ctx->authz);
  free (ctx);
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
    openssl_reason (reason, sizeof reason);
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
    openssl_reason (reason, sizeof reason);
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
          set_reason (t, "handshake timed out");
        else
          set_reason (t, "poll: %s", strerror (errno));
        return -1;
      }
      continue;
    }
    t->failed = true;
    if (err == SSL_ERROR_SYSCALL && ERR_peek_error () == 0) {
      if (t->io_errno)
        set_reason (t, "%s", strerror (t->io_errno));
      else
        set_reason (t, "client hung up during the handshake");
    }
    else {
      char reason[256];

      openssl_reason (reason, sizeof reason);
      set_reason (t, "%s", reason);
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

    openssl_reason (reason, sizeof reason);
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
      set_reason (t, "client sent no certificate");
      r = -1;
    }
    else if (SSL_get_verify_result (t->ssl) != X509_V_OK) {
      set_reason (t, "client certificate: %s",
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
    CLEANUP_FREE char *dn = peer ? format_dn (X509_get_subject_name (peer))
                                 : NULL;

    log_debug ("%s: %s %s%s%s%s", conn->peer, SSL_get_version (t->ssl),
               SSL_get_cipher_name (t->ssl),
               used_psk (t->ssl) ? ", PSK" : "",
               dn ? ", client " : "", dn ? dn : "");
  }
  conn->transport = &tls_transport;
  conn->transport_data = t;
  return 0;
}
