/* SPDX-License-Identifier: MIT */
/* The shared TLS context: X.509 credentials in the qemu/nbdkit directory
 * layout, client certificate verification and authorization (an
 * allow-list file, or qemu-nbd's authz rules with glob patterns), PSK
 * in psktool's file format for both protocol versions, and the SSL_CTX
 * settings that make the GnuTLS clients everyone uses (qemu, libnbd,
 * nbd-client) accept us: TLS 1.2 and 1.3 only, suites in an order those
 * clients can live with.  Everything here is read-only after
 * tls_ctx_new(), so the listener and the workers share it without
 * locks. */

#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include "common/cleanup.h"
#include "tls/internal.h"
#include "tls/tls.h"

/* Say what is wrong with the credentials: to the caller's LOG, as one
 * line starting "tls: ", or to stderr when it gave none.  The library
 * knows nothing of the server's logging. */
static void __attribute__ ((format (printf, 2, 3)))
tls_log (void (*log) (const char *msg), const char *fmt, ...)
{
  char msg[1024];
  int saved_errno = errno;      /* for %m */
  va_list ap;
  size_t n;

  n = (size_t) snprintf (msg, sizeof msg, "tls: ");
  va_start (ap, fmt);
  errno = saved_errno;
  vsnprintf (msg + n, sizeof msg - n, fmt, ap);
  va_end (ap);
  if (log)
    log (msg);
  else
    fprintf (stderr, "%s\n", msg);
}
#define ctx_log(ctx, ...) tls_log ((ctx)->log, __VA_ARGS__)

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

/* The OpenSSL error queue of this thread as one message; clears it. */
void
tls_openssl_reason (char *buf, size_t len)
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
      ctx_log (ctx, "%s:%u: expected identity:hexkey", path, lineno);
      return -1;
    }
    id_len = colon - line;
    hex = colon + 1;
    hex_len = strlen (hex);
    if (id_len > PSK_MAX_IDENTITY_LEN) {
      ctx_log (ctx, "%s:%u: identity longer than %d bytes",
                 path, lineno, PSK_MAX_IDENTITY_LEN);
      return -1;
    }
    if (hex_len == 0 || hex_len % 2 != 0 || hex_len / 2 > PSK_MAX_PSK_LEN) {
      ctx_log (ctx, "%s:%u: key must be 1 to %d bytes of hex digits",
                 path, lineno, PSK_MAX_PSK_LEN);
      return -1;
    }
    if (find_psk (ctx, (const unsigned char *) line, id_len)) {
      ctx_log (ctx, "%s:%u: identity given twice", path, lineno);
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
        ctx_log (ctx, "%s:%u: key is not hexadecimal", path, lineno);
        return -1;
      }
      e->key[i] = hi << 4 | lo;
    }
  }
  if (ferror (fp)) {
    ctx_log (ctx, "%s: read error", path);
    return -1;
  }
  if (ctx->nr_psks == 0) {
    ctx_log (ctx, "%s: no PSK identities", path);
    return -1;
  }
  return 0;

 nomem:
  ctx_log (ctx, "out of memory");
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
    ctx_log (ctx, "%s: %m", path);
    return -1;
  }
  r = parse_psk_file (ctx, path, fp, &line, &cap);
  if (line)
    OPENSSL_cleanse (line, cap);
  free (line);
  fclose (fp);
  return r;
}

/* Append a copy of RULE to the context's rules.  -1: out of memory. */
static int
add_authz_rule (struct tls_ctx *ctx, const struct tls_authz_rule *rule)
{
  struct tls_authz_rule *r;

  r = realloc (ctx->authz, (ctx->nr_authz + 1) * sizeof *r);
  if (r == NULL)
    return -1;
  ctx->authz = r;
  r[ctx->nr_authz] = *rule;
  r[ctx->nr_authz].match = strdup (rule->match);
  if (r[ctx->nr_authz].match == NULL)
    return -1;
  ctx->nr_authz++;
  return 0;
}

/* One distinguished name per line, exactly as tls_format_dn() prints it;
 * blank lines and lines starting with '#' are ignored. */
static int
load_authz_file (struct tls_ctx *ctx, const char *path)
{
  FILE *fp = fopen (path, "r");
  CLEANUP_FREE char *line = NULL;
  size_t cap = 0;
  ssize_t n;

  if (fp == NULL) {
    ctx_log (ctx, "%s: %m", path);
    return -1;
  }
  /* An empty allow-list is legal: it admits nobody. */
  ctx->authz_on = true;
  while ((n = getline (&line, &cap, fp)) != -1) {
    char *s = line;
    struct tls_authz_rule rule = { .allow = true };

    chomp (s);
    while (isspace ((unsigned char) *s))
      s++;
    if (*s == '\0' || *s == '#')
      continue;
    rule.match = s;
    if (add_authz_rule (ctx, &rule) == -1)
      goto nomem;
  }
  if (ferror (fp)) {
    ctx_log (ctx, "%s: read error", path);
    fclose (fp);
    return -1;
  }
  fclose (fp);
  return 0;

 nomem:
  ctx_log (ctx, "out of memory");
  fclose (fp);
  return -1;
}

/* A certificate name as RFC 4514 (RFC 2253) prints it, most specific
 * RDN first, e.g. "CN=client,O=Example,C=GB": the format GnuTLS (hence
 * qemu's tls-authz objects) uses.  UTF-8 is kept as is rather than
 * escaped, also like GnuTLS. */
char *
tls_format_dn (const X509_NAME *name)
{
  return tls_format_dn_order (name, false);
}

char *
tls_format_dn_order (const X509_NAME *name, bool cert_order)
{
  BIO *mem = BIO_new (BIO_s_mem ());
  unsigned long flags = XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB;
  char *data, *s = NULL;
  long len;

  if (cert_order)
    flags &= ~XN_FLAG_DN_REV;
  if (mem == NULL)
    return NULL;
  if (X509_NAME_print_ex (mem, name, 0, flags) >= 0) {
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

  for (i = 0; i < ctx->nr_authz; i++) {
    const struct tls_authz_rule *r = &ctx->authz[i];

    if (r->glob ? fnmatch (r->match, dn, 0) == 0 : strcmp (r->match, dn) == 0)
      return r->allow;
  }
  return ctx->authz_default_allow;
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
  struct tls_session *t = SSL_get_app_data (ssl);
  const struct psk_entry *e;
  char id[4 * 64];

  if (identity == NULL)
    identity = "";
  e = find_psk (t->ctx, (const unsigned char *) identity, strlen (identity));
  if (e == NULL || e->key_len > max_psk_len) {
    printable (id, sizeof id, (const unsigned char *) identity,
               strlen (identity));
    tls_set_reason (t, "unknown PSK identity \"%s\"", id);
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
  struct tls_session *t = SSL_get_app_data (ssl);
  const struct psk_entry *e;
  const SSL_CIPHER *cipher;
  SSL_SESSION *sess;
  char id[4 * 64];

  *sessp = NULL;
  e = find_psk (t->ctx, identity, identity_len);
  if (e == NULL) {
    printable (id, sizeof id, identity, identity_len);
    tls_set_reason (t, "unknown PSK identity \"%s\"", id);
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
  struct tls_session *t = SSL_get_app_data (ssl);
  X509 *cert = X509_STORE_CTX_get_current_cert (store);
  int depth = X509_STORE_CTX_get_error_depth (store);
  CLEANUP_FREE char *dn = NULL;

  if (cert)
    dn = tls_format_dn_order (X509_get_subject_name (cert),
                              t->ctx->authz_cert_order);
  if (!ok) {
    int err = X509_STORE_CTX_get_error (store);

    tls_set_reason (t, "client certificate \"%s\" (depth %d): %s",
                    dn ? dn : "?", depth, X509_verify_cert_error_string (err));
    return 0;
  }
  if (depth == 0 && t->ctx->authz_on) {
    if (dn == NULL || !authz_allows (t->ctx, dn)) {
      if (t->ctx->authz_qemu_words)
        tls_set_reason (t, "TLS x509 authz check for %s is denied",
                        dn ? dn : "?");
      else
        tls_set_reason (t, "client certificate \"%s\" is not in the "
                        "authz file", dn ? dn : "?");
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
    ctx_log (ctx, "out of memory");
    return -1;
  }
  if (SSL_CTX_use_certificate_chain_file (ctx->ssl_ctx, cert) != 1) {
    tls_openssl_reason (err, sizeof err);
    ctx_log (ctx, "%s: %s", cert, err);
    return -1;
  }
  if (SSL_CTX_use_PrivateKey_file (ctx->ssl_ctx, key, SSL_FILETYPE_PEM) != 1) {
    tls_openssl_reason (err, sizeof err);
    ctx_log (ctx, "%s: %s", key, err);
    return -1;
  }
  if (SSL_CTX_check_private_key (ctx->ssl_ctx) != 1) {
    tls_openssl_reason (err, sizeof err);
    ctx_log (ctx, "%s does not match %s: %s", key, cert, err);
    return -1;
  }
  if (X509_cmp_current_time (X509_get0_notAfter
                             (SSL_CTX_get0_certificate (ctx->ssl_ctx))) < 0)
    ctx_log (ctx, "warning: %s has expired; clients will refuse it", cert);

  /* The CA is what client certificates are checked against.  Without
   * --tls-verify-peer it is optional, as nothing is checked. */
  if (!file_exists (ca)) {
    if (ctx->verify_peer) {
      ctx_log (ctx, "%s is needed to verify client certificates", ca);
      return -1;
    }
    return 0;
  }
  if (SSL_CTX_load_verify_locations (ctx->ssl_ctx, ca, NULL) != 1) {
    tls_openssl_reason (err, sizeof err);
    ctx_log (ctx, "%s: %s", ca, err);
    return -1;
  }
  if (ctx->verify_peer) {
    STACK_OF (X509_NAME) *names = SSL_load_client_CA_file (ca);

    /* GnuTLS clients only send a certificate issued by a CA named in
     * the CertificateRequest, so name them. */
    if (names == NULL) {
      tls_openssl_reason (err, sizeof err);
      ctx_log (ctx, "%s: %s", ca, err);
      return -1;
    }
    SSL_CTX_set_client_CA_list (ctx->ssl_ctx, names);
  }
  if (file_exists (crl)) {
    X509_STORE *store = SSL_CTX_get_cert_store (ctx->ssl_ctx);
    X509_LOOKUP *lookup = X509_STORE_add_lookup (store, X509_LOOKUP_file ());

    if (lookup == NULL ||
        X509_load_crl_file (lookup, crl, X509_FILETYPE_PEM) <= 0) {
      tls_openssl_reason (err, sizeof err);
      ctx_log (ctx, "%s: %s", crl, err);
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
    tls_log (cfg->log, "TLS needs --tls-certs or --tls-psk");
    return NULL;
  }
  if ((cfg->verify_peer || cfg->authz_file) && cfg->certs_dir == NULL) {
    tls_log (cfg->log, "checking client certificates needs --tls-certs");
    return NULL;
  }
  ctx = calloc (1, sizeof *ctx);
  if (ctx == NULL) {
    tls_log (cfg->log, "out of memory");
    return NULL;
  }
  ctx->log = cfg->log;
  ctx->verify_peer = cfg->verify_peer || cfg->authz_file != NULL
    || cfg->authz_rules != NULL;

  ctx->bio_method = tls_bio_method_new ();
  if (ctx->bio_method == NULL)
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
  if (cfg->authz_rules) {
    ctx->authz_on = true;
    ctx->authz_qemu_words = true;
    ctx->authz_default_allow = cfg->authz_default_allow;
    ctx->authz_cert_order = cfg->authz_cert_order;
    for (size_t i = 0; i < cfg->nr_authz_rules; i++)
      if (add_authz_rule (ctx, &cfg->authz_rules[i]) == -1) {
        ctx_log (ctx, "out of memory");
        goto err;
      }
  }
  if (ctx->verify_peer)
    SSL_CTX_set_verify (s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                        verify_cb);
  else
    SSL_CTX_set_verify (s, SSL_VERIFY_NONE, NULL);
  return ctx;

 openssl_err:
  tls_openssl_reason (err, sizeof err);
  ctx_log (ctx, "%s", err);
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
    free ((char *) ctx->authz[i].match);
  free (ctx->authz);
  free (ctx);
}
