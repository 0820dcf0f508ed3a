/* SPDX-License-Identifier: MIT */
/* QEMU's two spellings of option dictionaries, for --image-opts, json:
 * file names, --object and authz-list-file's rule file: "key=value"
 * lists (QemuOpts/keyval: elements split at ',', ",," standing for a
 * comma, an optional implied key for a first element without '=', a
 * bare "flag" meaning flag=on) and JSON objects.  Both produce one flat
 * dictionary (qemu-nbd.h says how); the consumers take the keys they
 * know and complain, as QEMU does, about the first one left.
 *
 * Everything here comes from the command line or a file named on it:
 * strings are bounded by their input, nesting depth is limited, and
 * every malformed input gets a message, never a crash. */

#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "server/qemu-nbd.h"

/* JSON nesting we accept (QEMU's limit is 1024; real options use 3). */
#define MAX_DEPTH 64

static int
add (struct qdict *d, const char *key, size_t klen, const char *value,
     size_t vlen, bool null)
{
  struct qdict_entry *e;

  e = realloc (d->e, (d->n + 1) * sizeof *e);
  if (e == NULL)
    return -1;
  d->e = e;
  e = &d->e[d->n];
  e->key = strndup (key, klen);
  e->value = null ? NULL : strndup (value, vlen);
  e->used = false;
  if (e->key == NULL || (!null && e->value == NULL)) {
    free (e->key);
    free (e->value);
    return -1;
  }
  d->n++;
  return 0;
}

void
qdict_free (struct qdict *d)
{
  for (size_t i = 0; i < d->n; i++) {
    free (d->e[i].key);
    free (d->e[i].value);
  }
  free (d->e);
  d->e = NULL;
  d->n = 0;
}

const char *
qdict_take (struct qdict *d, const char *key, bool *found)
{
  const char *v = NULL;
  bool f = false;

  /* The last one wins, as when QEMU merges repeated options. */
  for (size_t i = 0; i < d->n; i++)
    if (strcmp (d->e[i].key, key) == 0) {
      d->e[i].used = true;
      v = d->e[i].value;
      f = true;
    }
  if (found)
    *found = f;
  return v;
}

bool
qdict_has_prefix (const struct qdict *d, const char *prefix)
{
  size_t n = strlen (prefix);

  for (size_t i = 0; i < d->n; i++)
    if (strncmp (d->e[i].key, prefix, n) == 0)
      return true;
  return false;
}

const char *
qdict_unused (const struct qdict *d)
{
  for (size_t i = 0; i < d->n; i++)
    if (!d->e[i].used)
      return d->e[i].key;
  return NULL;
}

int
qopt_bool (const char *s)
{
  static const char *const on[] = { "on", "yes", "true", "y" };
  static const char *const off[] = { "off", "no", "false", "n" };

  if (s == NULL)
    return -1;
  for (size_t i = 0; i < 4; i++) {
    if (strcmp (s, on[i]) == 0)
      return 1;
    if (strcmp (s, off[i]) == 0)
      return 0;
  }
  return -1;
}

/* ---- key=value lists ---------------------------------------------------*/

/* Copy the text at *P up to an unescaped DELIM (or ',') into a new
 * string, turning ",," into ','; advance *P to the delimiter. */
static char *
take_part (const char **p, char delim)
{
  const char *s = *p;
  size_t n = 0, cap = strlen (s) + 1;
  char *out = malloc (cap);

  if (out == NULL)
    return NULL;
  while (*s) {
    if (*s == ',') {
      if (s[1] != ',')
        break;
      s++;                      /* ",," is one comma */
    }
    else if (*s == delim)
      break;
    out[n++] = *s++;
  }
  out[n] = '\0';
  *p = s;
  return out;
}

int
qdict_parse_opts (struct qdict *d, const char *s, const char *implied,
                  char *err, size_t errlen)
{
  const char *p = s;
  bool first = true;

  while (*p) {
    char *name, *value = NULL;
    const char *start = p;
    int r;

    name = take_part (&p, '=');
    if (name == NULL)
      goto oom;
    if (*p == '=') {
      p++;
      value = take_part (&p, '\0');
      if (value == NULL) {
        free (name);
        goto oom;
      }
    }
    else if (first && implied) {
      /* "file.qcow2,..." is file=file.qcow2: the whole element. */
      p = start;
      free (name);
      value = take_part (&p, '\0');
      if (value == NULL)
        goto oom;
      name = strdup (implied);
      if (name == NULL) {
        free (value);
        goto oom;
      }
    }
    if (*name == '\0') {
      snprintf (err, errlen, "Invalid parameter ''");
      free (name);
      free (value);
      return -1;
    }
    /* A bare "flag" is flag=on. */
    r = add (d, name, strlen (name), value ? value : "on",
             value ? strlen (value) : 2, false);
    free (name);
    free (value);
    if (r == -1)
      goto oom;
    if (*p == ',')
      p++;
    first = false;
  }
  return 0;

 oom:
  snprintf (err, errlen, "out of memory");
  return -1;
}

/* ---- JSON --------------------------------------------------------------*/

struct json {
  const char *p;
  struct qdict *d;
  char *err;
  size_t errlen;
  int depth;
};

static void
skip_ws (struct json *j)
{
  while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
    j->p++;
}

/* QEMU's words for JSON errors (qobject/json-parser.c). */
static int
json_fail (struct json *j, const char *what)
{
  if (j->err[0] == '\0')
    snprintf (j->err, j->errlen, "JSON parse error, %s",
              *j->p == '\0' ? "premature EOI" : what);
  return -1;
}

/* Where a value was wanted: say what QEMU says about what is there. */
static int
json_bad_value (struct json *j)
{
  if ((*j->p >= 'a' && *j->p <= 'z') || (*j->p >= 'A' && *j->p <= 'Z')) {
    const char *s = j->p;
    char word[64];

    while ((*j->p >= 'a' && *j->p <= 'z') || (*j->p >= 'A' && *j->p <= 'Z'))
      j->p++;
    snprintf (word, sizeof word, "invalid keyword '%.*s'",
              (int) (j->p - s > 40 ? 40 : j->p - s), s);
    j->p = s + 1;               /* not at the end: no "premature EOI" */
    return json_fail (j, word);
  }
  return json_fail (j, "expecting value");
}

static int
hex4 (const char *s, unsigned *v)
{
  *v = 0;
  for (int i = 0; i < 4; i++) {
    int c = s[i], x;

    if (c >= '0' && c <= '9') x = c - '0';
    else if (c >= 'a' && c <= 'f') x = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') x = c - 'A' + 10;
    else return -1;
    *v = *v << 4 | x;
  }
  return 0;
}

/* A JSON string at j->p (the opening quote) into a new buffer. */
static char *
json_string (struct json *j)
{
  size_t cap = strlen (j->p) + 1, n = 0;
  char *out = malloc (cap);

  if (out == NULL)
    return NULL;
  j->p++;
  while (*j->p != '"') {
    unsigned c = (unsigned char) *j->p++;

    if (c == '\0' || c < 0x20) {
      json_fail (j, "unterminated or invalid string");
      free (out);
      return NULL;
    }
    if (c == '\\') {
      c = (unsigned char) *j->p++;
      switch (c) {
      case '"': case '\\': case '/': break;
      case 'b': c = '\b'; break;
      case 'f': c = '\f'; break;
      case 'n': c = '\n'; break;
      case 'r': c = '\r'; break;
      case 't': c = '\t'; break;
      case 'u': {
        unsigned u;

        if (hex4 (j->p, &u) == -1 || u == 0) {
          json_fail (j, "invalid \\u escape");
          free (out);
          return NULL;
        }
        j->p += 4;
        /* UTF-8; surrogate pairs are not needed for file names here
         * and are refused rather than mangled. */
        if (u >= 0xd800 && u <= 0xdfff) {
          json_fail (j, "surrogate in \\u escape");
          free (out);
          return NULL;
        }
        if (u < 0x80)
          out[n++] = u;
        else if (u < 0x800) {
          out[n++] = 0xc0 | u >> 6;
          out[n++] = 0x80 | (u & 0x3f);
        }
        else {
          out[n++] = 0xe0 | u >> 12;
          out[n++] = 0x80 | ((u >> 6) & 0x3f);
          out[n++] = 0x80 | (u & 0x3f);
        }
        continue;
      }
      default:
        json_fail (j, "invalid escape sequence in string");
        free (out);
        return NULL;
      }
    }
    out[n++] = c;
  }
  j->p++;
  out[n] = '\0';
  return out;
}

static int json_value (struct json *j, const char *key);
static int json_member (struct json *j, const char *key, char close);

/* Join PREFIX and NAME with a dot (just NAME at the top). */
static char *
join_key (const char *prefix, const char *name)
{
  char *k;

  if (*prefix == '\0')
    return strdup (name);
  if (asprintf (&k, "%s.%s", prefix, name) == -1)
    return NULL;
  return k;
}

/* The value of the member or element KEY, then ',' (returns 1: another
 * follows) or CLOSE (0: the end of the object or array); -1 on error. */
static int
json_member (struct json *j, const char *key, char close)
{
  if (json_value (j, key) == -1)
    return -1;
  skip_ws (j);
  if (*j->p == ',' || *j->p == close)
    return *j->p++ == ',';
  return json_fail (j, close == '}' ? "expected ',' or '}'"
                    : "expected ',' or ']'");
}

static int
json_object (struct json *j, const char *prefix)
{
  j->p++;                       /* '{' */
  skip_ws (j);
  if (*j->p == '}') {
    j->p++;
    return 0;
  }
  for (;;) {
    char *name, *key;
    int r;

    skip_ws (j);
    if (*j->p != '"')
      return *j->p == '}' ? json_fail (j, "expecting value")
        : json_bad_value (j);
    name = json_string (j);
    if (name == NULL)
      return json_fail (j, "bad key");
    skip_ws (j);
    if (*j->p != ':') {
      free (name);
      return json_fail (j, "expected ':'");
    }
    j->p++;
    key = join_key (prefix, name);
    free (name);
    if (key == NULL)
      return json_fail (j, "out of memory");
    r = json_member (j, key, '}');
    free (key);
    if (r <= 0)
      return r;
  }
}

static int
json_array (struct json *j, const char *prefix)
{
  unsigned i = 0;

  j->p++;                       /* '[' */
  skip_ws (j);
  if (*j->p == ']') {
    j->p++;
    return 0;
  }
  for (;; i++) {
    char idx[16], *key;
    int r;

    snprintf (idx, sizeof idx, "%u", i);
    key = join_key (prefix, idx);
    if (key == NULL)
      return json_fail (j, "out of memory");
    r = json_member (j, key, ']');
    free (key);
    if (r <= 0)
      return r;
  }
}

static int
json_value (struct json *j, const char *key)
{
  int r = -1;

  skip_ws (j);
  if (++j->depth > MAX_DEPTH)
    return json_fail (j, "nesting too deep");
  if (*j->p == '{')
    r = json_object (j, key);
  else if (*j->p == '[')
    r = json_array (j, key);
  else if (*j->p == '"') {
    char *s = json_string (j);

    if (s != NULL) {
      r = add (j->d, key, strlen (key), s, strlen (s), false);
      free (s);
    }
  }
  else if (strncmp (j->p, "true", 4) == 0) {
    j->p += 4;
    r = add (j->d, key, strlen (key), "on", 2, false);
  }
  else if (strncmp (j->p, "false", 5) == 0) {
    j->p += 5;
    r = add (j->d, key, strlen (key), "off", 3, false);
  }
  else if (strncmp (j->p, "null", 4) == 0) {
    j->p += 4;
    r = add (j->d, key, strlen (key), NULL, 0, true);
  }
  else if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
    const char *s = j->p;

    j->p += *j->p == '-';
    while ((*j->p >= '0' && *j->p <= '9') || *j->p == '.' || *j->p == 'e'
           || *j->p == 'E' || *j->p == '+' || *j->p == '-')
      j->p++;
    r = add (j->d, key, strlen (key), s, j->p - s, false);
  }
  else
    return json_bad_value (j);
  j->depth--;
  if (r == -1)
    return json_fail (j, "out of memory");
  return 0;
}

int
qdict_parse_json (struct qdict *d, const char *s, char *err, size_t errlen)
{
  struct json j = { .p = s, .d = d, .err = err, .errlen = errlen };

  err[0] = '\0';
  skip_ws (&j);
  if (*j.p == '\0') {
    snprintf (err, errlen, "Expecting a JSON value");
    return -1;
  }
  if (*j.p != '{') {
    /* A valid value that is no object is refused as such. */
    struct qdict scratch = { 0 };

    j.d = &scratch;
    if (json_value (&j, "x") == 0) {
      qdict_free (&scratch);
      snprintf (err, errlen, "Invalid JSON object given");
      return -2;
    }
    qdict_free (&scratch);
    return -1;
  }
  if (json_value (&j, "") == -1)
    return -1;
  skip_ws (&j);
  if (*j.p != '\0') {
    snprintf (err, errlen, "Expecting at most one JSON value");
    return -1;
  }
  return 0;
}
