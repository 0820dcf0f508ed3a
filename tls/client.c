/* SPDX-License-Identifier: MIT */
/* The client side of TLS, for qemu-nbd -L against a server that wants
 * TLS: X.509 in the qemu layout (ca-cert.pem to check the server, with
 * its name when one is given; client-cert.pem and client-key.pem when
 * present) or a pre-shared key looked up by user name in keys.psk, for
 * TLS 1.2 and 1.3 alike.  A blocking socket, one connection, no
 * resumption: this side lists exports and hangs up. */

#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/cleanup.h"
#include "tls/internal.h"
#include "tls/tls.h"

struct tls_client {
  SSL_CTX *ctx;
  SSL *ssl;
  char *identity;
  unsigned char key[256];
  size_t key_len;
};

static int
fail (char *err, size_t errlen, const char *what)
{
  char reason[256];

  tls_openssl_reason (reason, sizeof reason);
  snprintf (err, errlen, "%s%s%s", what, reason[0] ? ": " : "", reason);
  return -1;
}

static int
hexval (int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* USER's key from a psktool file.  0, or -1 with ERR set. */
static int
load_key (struct tls_client *c, const char *file, const char *user,
          char *err, size_t errlen)
{
  FILE *fp = fopen (file, "r");
  CLEANUP_FREE char *line = NULL;
  size_t cap = 0, ulen = strlen (user);

  if (fp == NULL) {
    snprintf (err, errlen, "Unable to read %s: %s", file, strerror (errno));
    return -1;
  }
  while (getline (&line, &cap, fp) != -1) {
    const char *hex = line + ulen + 1;
    size_t n = 0;

    if (strncmp (line, user, ulen) != 0 || line[ulen] != ':')
      continue;
    while (hexval (hex[0]) >= 0 && hexval (hex[1]) >= 0
           && n < sizeof c->key)
      c->key[n++] = hexval (hex[0]) << 4 | hexval (hex[1]), hex += 2;
    fclose (fp);
    if (n == 0) {
      snprintf (err, errlen, "%s: bad key for user %s", file, user);
      return -1;
    }
    c->key_len = n;
    return 0;
  }
  fclose (fp);
  snprintf (err, errlen, "Key for username %s not found in %s", user, file);
  return -1;
}

static unsigned int
psk_client_cb (SSL *ssl, const char *hint, char *identity,
               unsigned int max_identity_len, unsigned char *psk,
               unsigned int max_psk_len)
{
  struct tls_client *c = SSL_get_app_data (ssl);

  if (strlen (c->identity) + 1 > max_identity_len || c->key_len > max_psk_len)
    return 0;
  strcpy (identity, c->identity);
  memcpy (psk, c->key, c->key_len);
  return c->key_len;
}

/* TLS 1.3: an external PSK as a made-up session with a SHA-256 suite,
 * the hash GnuTLS servers bind external PSKs with. */
static int
psk_use_session_cb (SSL *ssl, const EVP_MD *md, const unsigned char **id,
                    size_t *idlen, SSL_SESSION **sessp)
{
  static const unsigned char aes128gcmsha256[] = { 0x13, 0x01 };
  struct tls_client *c = SSL_get_app_data (ssl);
  const SSL_CIPHER *cipher = SSL_CIPHER_find (ssl, aes128gcmsha256);
  SSL_SESSION *sess;

  *sessp = NULL;
  if (cipher == NULL || (md != NULL && md != SSL_CIPHER_get_handshake_digest
                         (cipher)))
    return 1;
  sess = SSL_SESSION_new ();
  if (sess == NULL
      || !SSL_SESSION_set1_master_key (sess, c->key, c->key_len)
      || !SSL_SESSION_set_cipher (sess, cipher)
      || !SSL_SESSION_set_protocol_version (sess, TLS1_3_VERSION)) {
    SSL_SESSION_free (sess);
    return 0;
  }
  *sessp = sess;
  *id = (const unsigned char *) c->identity;
  *idlen = strlen (c->identity);
  return 1;
}

static bool
exists (const char *dir, const char *name, char *path, size_t len)
{
  snprintf (path, len, "%s/%s", dir, name);
  return access (path, R_OK) == 0;
}

struct tls_client *
tls_client_new (int fd, const struct tls_config *cfg, const char *hostname,
                const char *username, char *err, size_t errlen)
{
  struct tls_client *c = calloc (1, sizeof *c);
  char path[4096];

  if (c == NULL) {
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  c->ctx = SSL_CTX_new (TLS_client_method ());
  if (c->ctx == NULL
      || !SSL_CTX_set_min_proto_version (c->ctx, TLS1_2_VERSION)) {
    fail (err, errlen, "TLS set-up failed");
    goto error;
  }
  SSL_CTX_set_options (c->ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET
                       | SSL_OP_IGNORE_UNEXPECTED_EOF);
  if (cfg->psk_file) {
    c->identity = strdup (username ? username : "qemu");
    if (c->identity == NULL
        || load_key (c, cfg->psk_file, c->identity, err, errlen) < 0)
      goto error;
    SSL_CTX_set_psk_client_callback (c->ctx, psk_client_cb);
    SSL_CTX_set_psk_use_session_callback (c->ctx, psk_use_session_cb);
    SSL_CTX_set_cipher_list (c->ctx, "PSK:ECDHEPSK:DHEPSK:!aNULL");
    SSL_CTX_set_verify (c->ctx, SSL_VERIFY_NONE, NULL);
  }
  else {
    if (!exists (cfg->certs_dir, "ca-cert.pem", path, sizeof path)
        || SSL_CTX_load_verify_locations (c->ctx, path, NULL) != 1) {
      fail (err, errlen, "Unable to load CA certificate");
      goto error;
    }
    if (exists (cfg->certs_dir, "client-cert.pem", path, sizeof path)) {
      if (SSL_CTX_use_certificate_chain_file (c->ctx, path) != 1
          || !exists (cfg->certs_dir, "client-key.pem", path, sizeof path)
          || SSL_CTX_use_PrivateKey_file (c->ctx, path, SSL_FILETYPE_PEM) != 1) {
        fail (err, errlen, "Unable to load the client certificate");
        goto error;
      }
    }
    SSL_CTX_set_verify (c->ctx, cfg->verify_peer ? SSL_VERIFY_PEER
                        : SSL_VERIFY_NONE, NULL);
  }
  c->ssl = SSL_new (c->ctx);
  if (c->ssl == NULL || !SSL_set_fd (c->ssl, fd)) {
    fail (err, errlen, "TLS set-up failed");
    goto error;
  }
  SSL_set_app_data (c->ssl, c);
  if (!cfg->psk_file && hostname && cfg->verify_peer) {
    SSL_set_tlsext_host_name (c->ssl, hostname);
    if (!SSL_set1_host (c->ssl, hostname)) {
      fail (err, errlen, "TLS set-up failed");
      goto error;
    }
  }
  if (SSL_connect (c->ssl) != 1) {
    long v = SSL_get_verify_result (c->ssl);

    if (v != X509_V_OK) {
      snprintf (err, errlen, "TLS handshake failed: %s",
                X509_verify_cert_error_string (v));
      ERR_clear_error ();
    }
    else
      fail (err, errlen, "TLS handshake failed");
    goto error;
  }
  return c;

 error:
  tls_client_free (c);
  return NULL;
}

ssize_t
tls_client_read (struct tls_client *c, void *buf, size_t len)
{
  int n = SSL_read (c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int) len);

  if (n > 0)
    return n;
  if (SSL_get_error (c->ssl, n) == SSL_ERROR_ZERO_RETURN)
    return 0;
  errno = ECONNRESET;
  return -1;
}

ssize_t
tls_client_write (struct tls_client *c, const void *buf, size_t len)
{
  int n = SSL_write (c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int) len);

  if (n > 0)
    return n;
  errno = EPIPE;
  return -1;
}

void
tls_client_free (struct tls_client *c)
{
  if (c == NULL)
    return;
  if (c->ssl)
    SSL_shutdown (c->ssl);
  SSL_free (c->ssl);
  SSL_CTX_free (c->ctx);
  OPENSSL_cleanse (c->key, sizeof c->key);
  free (c->identity);
  free (c);
}
