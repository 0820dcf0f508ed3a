/* SPDX-License-Identifier: MIT */
/* qemu-nbd's --object: the user-creatable objects a server needs, created
 * as the option is met (QEMU does the same, so errors come in the same
 * order) and kept by id for --tls-creds and --tls-authz.
 *
 *   secret              checked and kept (nothing here reads secrets: we
 *                       serve no encrypted images)
 *   tls-creds-x509      dir, endpoint, verify-peer (on by default: the
 *                       server then demands client certificates)
 *   tls-creds-psk       dir (keys.psk), endpoint, username
 *   authz-simple        one allowed certificate DN
 *   authz-list-file     rules in a JSON file, exact or glob
 *   authz-list          the same rules inline (JSON --object only)
 *
 * Credentials files must exist when the object is created, as in QEMU;
 * their contents are loaded when the server starts.  Every other QEMU
 * object type is refused by name. */

#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "server/qemu-nbd.h"

enum obj_type { OBJ_SECRET, OBJ_X509, OBJ_PSK, OBJ_AUTHZ };

struct object {
  enum obj_type type;
  char *id;
  /* tls-creds-* */
  bool server;                  /* endpoint=server */
  char *dir;
  char *psk_file;               /* tls-creds-psk: DIR/keys.psk */
  bool verify_peer;
  char *username;
  /* authz-* */
  struct tls_authz_rule *rules;
  size_t nr_rules;
  bool default_allow;
};

static struct object *objects;
static size_t nr_objects;

/* QEMU 7.2's user-creatable types (--object help), in its order. */
static const char *const qemu_types[] = {
  "authz-list", "authz-list-file", "authz-simple", "iothread", "main-loop",
  "pr-manager-helper", "secret", "secret_keyring", "thread-context",
  "throttle-group", "tls-cipher-suites", "tls-creds-anon", "tls-creds-psk",
  "tls-creds-x509", NULL,
};

static struct object *
find (const char *id)
{
  for (size_t i = 0; i < nr_objects; i++)
    if (strcmp (objects[i].id, id) == 0)
      return &objects[i];
  return NULL;
}

/* QEMU's id_wellformed(). */
static bool
id_ok (const char *id)
{
  if (!isalpha ((unsigned char) id[0]))
    return false;
  for (const char *p = id; *p; p++)
    if (!isalnum ((unsigned char) *p) && *p != '-' && *p != '.' && *p != '_')
      return false;
  return true;
}

/* The rules of an authz-list (from its options or its file): "policy"
 * and "rules.N.match", "rules.N.policy", "rules.N.format". */
static int
parse_rules (struct qdict *d, struct object *o)
{
  const char *v;
  bool found;

  v = qdict_take (d, "policy", &found);
  o->default_allow = false;
  if (found) {
    if (v && strcmp (v, "allow") == 0)
      o->default_allow = true;
    else if (!v || strcmp (v, "deny") != 0) {
      qnbd_error ("Parameter 'policy' does not accept value '%s'",
                  v ? v : "null");
      return -1;
    }
  }
  for (unsigned i = 0;; i++) {
    char key[64];
    struct tls_authz_rule r = { .allow = false };
    struct tls_authz_rule *rules;
    const char *match, *policy, *format;

    snprintf (key, sizeof key, "rules.%u.match", i);
    match = qdict_take (d, key, &found);
    if (!found)
      break;
    snprintf (key, sizeof key, "rules.%u.policy", i);
    policy = qdict_take (d, key, NULL);
    snprintf (key, sizeof key, "rules.%u.format", i);
    format = qdict_take (d, key, NULL);
    if (match == NULL || policy == NULL) {
      qnbd_error ("Parameter 'rules[%u].%s' is missing", i,
                  match == NULL ? "match" : "policy");
      return -1;
    }
    if (strcmp (policy, "allow") == 0)
      r.allow = true;
    else if (strcmp (policy, "deny") != 0) {
      qnbd_error ("Parameter 'rules[%u].policy' does not accept value '%s'",
                  i, policy);
      return -1;
    }
    if (format && strcmp (format, "glob") == 0)
      r.glob = true;
    else if (format && strcmp (format, "exact") != 0) {
      qnbd_error ("Parameter 'rules[%u].format' does not accept value '%s'",
                  i, format);
      return -1;
    }
    r.match = strdup (match);
    rules = realloc (o->rules, (o->nr_rules + 1) * sizeof *rules);
    if (r.match == NULL || rules == NULL) {
      free ((char *) r.match);
      qnbd_error ("out of memory");
      return -1;
    }
    o->rules = rules;
    o->rules[o->nr_rules++] = r;
  }
  return 0;
}

static int
load_rules_file (const char *path, struct object *o)
{
  FILE *fp = fopen (path, "r");
  CLEANUP_FREE char *text = NULL;
  struct qdict d = { 0 };
  size_t len = 0;
  char err[256];
  int r;

  if (fp == NULL) {
    qnbd_error ("Failed to open file “%s”: %m", path);
    return -1;
  }
  /* Rule files are small: a MiB is already absurd. */
  text = calloc (1, 1 << 20);
  if (text == NULL) {
    fclose (fp);
    qnbd_error ("out of memory");
    return -1;
  }
  len = fread (text, 1, (1 << 20) - 1, fp);
  fclose (fp);
  if (qdict_parse_json (&d, text, err, sizeof err) < 0) {
    qnbd_error ("%s", err);
    qdict_free (&d);
    return -1;
  }
  (void) len;
  r = parse_rules (&d, o);
  if (r == 0 && qdict_unused (&d)) {
    qnbd_error ("Parameter '%s' is unexpected", qdict_unused (&d));
    r = -1;
  }
  qdict_free (&d);
  return r;
}

/* Required credentials file NAME in DIR (QEMU's message if missing). */
static int
creds_file (const char *dir, const char *name)
{
  CLEANUP_FREE char *path = NULL;

  if (asprintf (&path, "%s/%s", dir, name) == -1) {
    path = NULL;
    qnbd_error ("out of memory");
    return -1;
  }
  if (access (path, R_OK) == -1) {
    qnbd_error ("Unable to access credentials %s: %m", path);
    return -1;
  }
  return 0;
}

static int
tls_creds (struct qdict *d, struct object *o, bool x509)
{
  const char *v;
  bool found;

  v = qdict_take (d, "endpoint", &found);
  if (found) {
    if (v && strcmp (v, "server") == 0)
      o->server = true;
    else if (!v || strcmp (v, "client") != 0) {
      qnbd_error ("Parameter 'endpoint' does not accept value '%s'",
                  v ? v : "null");
      return -1;
    }
  }
  o->verify_peer = true;
  v = qdict_take (d, "verify-peer", &found);
  if (found) {
    int b = qopt_bool (v);

    if (b < 0) {
      qnbd_error ("Parameter 'verify-peer' expects 'on' or 'off'");
      return -1;
    }
    o->verify_peer = b;
  }
  qdict_take (d, "priority", NULL);
  qdict_take (d, "loaded", NULL);
  if (x509) {
    qdict_take (d, "sanity-check", NULL);
    qdict_take (d, "passwordid", NULL);
  }
  else {
    v = qdict_take (d, "username", NULL);
    if (v && (o->username = strdup (v)) == NULL)
      return -1;
  }
  v = qdict_take (d, "dir", NULL);
  if (v == NULL) {
    qnbd_error ("Missing 'dir' property value");
    return -1;
  }
  o->dir = strdup (v);
  if (o->dir == NULL)
    return -1;
  return 0;
}

/* QEMU's "complete" step of credentials, once every property is known:
 * the files must be there. */
static int
tls_creds_complete (struct object *o)
{
  if (o->type == OBJ_PSK) {
    if (asprintf (&o->psk_file, "%s/keys.psk", o->dir) == -1) {
      o->psk_file = NULL;
      qnbd_error ("out of memory");
      return -1;
    }
    return creds_file (o->dir, "keys.psk");
  }
  if (creds_file (o->dir, "ca-cert.pem") < 0)
    return -1;
  if (o->server && (creds_file (o->dir, "server-cert.pem") < 0
                    || creds_file (o->dir, "server-key.pem") < 0))
    return -1;
  return 0;
}

static int
secret (struct qdict *d, const char **file_to_check)
{
  bool has_data, has_file;
  const char *fmt, *file;

  qdict_take (d, "data", &has_data);
  file = qdict_take (d, "file", &has_file);
  fmt = qdict_take (d, "format", NULL);
  qdict_take (d, "keyid", NULL);
  qdict_take (d, "iv", NULL);
  qdict_take (d, "loaded", NULL);
  if (fmt && strcmp (fmt, "raw") != 0 && strcmp (fmt, "base64") != 0) {
    qnbd_error ("Parameter 'format' does not accept value '%s'", fmt);
    return -1;
  }
  if (has_data && has_file) {
    qnbd_error ("'file' and 'data' are mutually exclusive");
    return -1;
  }
  if (!has_data && !has_file) {
    qnbd_error ("Either 'file' or 'data' must be provided");
    return -1;
  }
  *file_to_check = has_file ? (file ? file : "") : NULL;
  return 0;
}

static void
print_types (void)
{
  printf ("List of user creatable objects:\n");
  for (size_t i = 0; qemu_types[i]; i++)
    printf ("  %s\n", qemu_types[i]);
}

/* The object type named TYPE, in *T.  0, or -1 (qemu-nbd's message
 * for a type it does not know, or one we do not support). */
static int
object_type (const char *type, enum obj_type *t)
{
  bool known = false;

  if (strcmp (type, "secret") == 0)
    *t = OBJ_SECRET;
  else if (strcmp (type, "tls-creds-x509") == 0)
    *t = OBJ_X509;
  else if (strcmp (type, "tls-creds-psk") == 0)
    *t = OBJ_PSK;
  else if (strcmp (type, "authz-simple") == 0
           || strcmp (type, "authz-list") == 0
           || strcmp (type, "authz-list-file") == 0)
    *t = OBJ_AUTHZ;
  else if (strcmp (type, "authz-listfile") == 0) {
    /* QEMU 7.2's QAPI name of authz-list-file, which it cannot create. */
    qnbd_error ("invalid object type: %s", type);
    return -1;
  }
  else {
    for (size_t i = 0; qemu_types[i]; i++)
      known |= strcmp (type, qemu_types[i]) == 0;
    if (known)
      qnbd_error ("object type '%s' is not supported by qcow2-nbd", type);
    else
      qnbd_error ("Parameter 'qom-type' does not accept value '%s'", type);
    return -1;
  }
  return 0;
}

/* The properties of an authz-* object of TYPE from D into O; an
 * authz-list-file's file name in *RULES_FILE, read once every property
 * is known.  0, or -1 (logged). */
static int
authz_props (struct qdict *d, const char *type, struct object *o,
             const char **rules_file)
{
  if (strcmp (type, "authz-simple") == 0) {
    struct tls_authz_rule rule = { .allow = true };
    const char *v = qdict_take (d, "identity", NULL);

    if (v == NULL) {
      qnbd_error ("Parameter 'identity' is missing");
      return -1;
    }
    rule.match = strdup (v);
    o->rules = malloc (sizeof *o->rules);
    if (rule.match == NULL || o->rules == NULL) {
      free ((char *) rule.match);
      return -1;
    }
    o->rules[0] = rule;
    o->nr_rules = 1;
    return 0;
  }
  if (strcmp (type, "authz-list") == 0)
    return parse_rules (d, o);
  *rules_file = qdict_take (d, "filename", NULL);
  qdict_take (d, "refresh", NULL);
  if (*rules_file == NULL) {
    qnbd_error ("Parameter 'filename' is missing");
    return -1;
  }
  return 0;
}

/* Every property is known: what they name must be usable (the secret's
 * file readable, the credentials complete, the rules file loaded), and
 * the id new.  0, or -1 (logged). */
static int
object_check (struct object *o, const char *id, const char *secret_file,
              const char *rules_file)
{
  if (secret_file && access (secret_file, R_OK) == -1) {
    qnbd_error ("Unable to read %s: %m", secret_file);
    return -1;
  }
  if ((o->type == OBJ_X509 || o->type == OBJ_PSK)
      && tls_creds_complete (o) < 0)
    return -1;
  if (rules_file && load_rules_file (rules_file, o) < 0)
    return -1;
  if (find (id)) {
    qnbd_error ("attempt to add duplicate property '%s' to object (type "
                "'container')", id);
    return -1;
  }
  return 0;
}

int
qnbd_object_add (const char *arg)
{
  struct qdict d = { 0 };
  struct object o = { 0 }, *grown;
  const char *type, *id, *secret_file = NULL, *rules_file = NULL;
  bool found;
  char err[256];
  int r = -1;

  if (strcmp (arg, "help") == 0 || strcmp (arg, "?") == 0) {
    print_types ();
    exit (EXIT_SUCCESS);
  }
  if (arg[0] == '{' ? qdict_parse_json (&d, arg, err, sizeof err)
      : qdict_parse_opts (&d, arg, "qom-type", err, sizeof err)) {
    qnbd_error ("%s", err);
    goto out;
  }
  type = qdict_take (&d, "qom-type", &found);
  if (!found || type == NULL) {
    qnbd_error ("Parameter 'qom-type' is missing");
    goto out;
  }
  if (object_type (type, &o.type) == -1)
    goto out;
  id = qdict_take (&d, "id", &found);
  if (!found || id == NULL) {
    qnbd_error ("Parameter 'id' is missing");
    goto out;
  }
  if (!id_ok (id)) {
    qnbd_error ("Parameter 'id' expects an identifier\n"
                "Identifiers consist of letters, digits, '-', '.', '_', "
                "starting with a letter.");
    goto out;
  }

  switch (o.type) {
  case OBJ_SECRET:
    r = secret (&d, &secret_file);
    break;
  case OBJ_X509:
  case OBJ_PSK:
    r = tls_creds (&d, &o, o.type == OBJ_X509);
    break;
  case OBJ_AUTHZ:
    r = authz_props (&d, type, &o, &rules_file);
    break;
  }
  if (r < 0)
    goto out;
  r = -1;
  if (qdict_unused (&d)) {
    qnbd_error ("Parameter '%s' is unexpected", qdict_unused (&d));
    goto out;
  }
  if (object_check (&o, id, secret_file, rules_file) == -1)
    goto out;
  o.id = strdup (id);
  grown = realloc (objects, (nr_objects + 1) * sizeof *objects);
  if (o.id == NULL || grown == NULL) {
    qnbd_error ("out of memory");
    goto out;
  }
  objects = grown;
  objects[nr_objects++] = o;
  memset (&o, 0, sizeof o);
  r = 0;

 out:
  free (o.id);
  free (o.dir);
  free (o.psk_file);
  free (o.username);
  for (size_t i = 0; i < o.nr_rules; i++)
    free ((char *) o.rules[i].match);
  free (o.rules);
  qdict_free (&d);
  return r;
}

int
qnbd_tls_config (const char *id, const char *authz_id, bool list,
                 struct tls_config *tls, char *err, size_t errlen)
{
  const struct object *o = find (id), *a;
  static const struct tls_authz_rule deny_all[1];

  if (o == NULL) {
    snprintf (err, errlen, "No TLS credentials with id '%s'", id);
    return -1;
  }
  if (o->type != OBJ_X509 && o->type != OBJ_PSK) {
    snprintf (err, errlen, "Object with id '%s' is not TLS credentials", id);
    return -1;
  }
  if (o->server == list) {
    snprintf (err, errlen, "Expected TLS credentials for a %s endpoint",
              list ? "client" : "server");
    return -1;
  }
  memset (tls, 0, sizeof *tls);
  tls->mode = TLS_REQUIRE;
  if (o->type == OBJ_X509) {
    tls->certs_dir = o->dir;
    tls->verify_peer = o->verify_peer;
  }
  else
    tls->psk_file = o->psk_file;
  /* QEMU checks the authorization only of a verified x509 client (and
   * denies everyone when the authz object does not exist). */
  if (authz_id && o->type == OBJ_X509 && o->verify_peer) {
    tls->authz_cert_order = true;
    a = find (authz_id);
    if (a == NULL || a->type != OBJ_AUTHZ) {
      tls->authz_rules = deny_all;
      tls->nr_authz_rules = 0;
      tls->authz_default_allow = false;
    }
    else {
      tls->authz_rules = a->rules ? a->rules : deny_all;
      tls->nr_authz_rules = a->nr_rules;
      tls->authz_default_allow = a->default_allow;
    }
  }
  return 0;
}

const char *
qnbd_tls_username (const char *id)
{
  const struct object *o = find (id);

  return o && o->type == OBJ_PSK ? o->username : NULL;
}
