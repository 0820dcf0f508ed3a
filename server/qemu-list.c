/* SPDX-License-Identifier: MIT */
/* qemu-nbd -L: list the exports of an NBD server, in qemu-nbd's words
 * and layout, doing what QEMU's client does (nbd/client.c): the fixed
 * newstyle greeting, structured replies, NBD_OPT_LIST, then for each
 * export NBD_OPT_INFO asking for block sizes and NBD_OPT_LIST_META_CONTEXT
 * with no query, then NBD_OPT_ABORT.  The server is hostile like any
 * peer: every length is checked before anything is read into memory. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "server/qemu-nbd.h"

struct export_info {
  char *name, *desc;
  uint64_t size;
  uint16_t flags;
  uint32_t min_block, opt_block, max_block;
  char **contexts;
  size_t n_contexts;
};

struct lister {
  int fd;
  struct tls_client *tls;       /* after STARTTLS */
  char err[512];
  bool err_reply;               /* the last error was a whole error reply:
                                 * the stream is still in step */
};

static int __attribute__ ((format (printf, 2, 3)))
fail (struct lister *l, const char *fmt, ...)
{
  va_list ap;

  if (l->err[0] == '\0') {
    va_start (ap, fmt);
    vsnprintf (l->err, sizeof l->err, fmt, ap);
    va_end (ap);
  }
  return -1;
}

static int
read_full (struct lister *l, void *buf, size_t len, const char *what)
{
  char *p = buf;

  while (len > 0) {
    ssize_t n = l->tls ? tls_client_read (l->tls, p, len)
      : recv (l->fd, p, len, 0);

    if (n == 0)
      return fail (l, "Failed to read %s: Unexpected end-of-file before all "
                   "data were read", what);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return fail (l, "Failed to read %s: %s", what, strerror (errno));
    }
    p += n;
    len -= n;
  }
  return 0;
}

static int
write_full (struct lister *l, const void *buf, size_t len)
{
  const char *p = buf;

  while (len > 0) {
    ssize_t n = l->tls ? tls_client_write (l->tls, p, len)
      : send (l->fd, p, len, MSG_NOSIGNAL);

    if (n < 0) {
      if (errno == EINTR)
        continue;
      return fail (l, "Failed to send option request: %s", strerror (errno));
    }
    p += n;
    len -= n;
  }
  return 0;
}

static const char *
opt_lookup (uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_ABORT: return "abort";
  case NBD_OPT_LIST: return "list";
  case NBD_OPT_STARTTLS: return "starttls";
  case NBD_OPT_INFO: return "info";
  case NBD_OPT_STRUCTURED_REPLY: return "structured reply";
  case NBD_OPT_LIST_META_CONTEXT: return "list meta context";
  default: return "<unknown>";
  }
}

static int
send_opt (struct lister *l, uint32_t opt, const void *data, uint32_t len)
{
  char hdr[NBD_OPTION_HEADER_SIZE];

  store_be64 (hdr, NBD_IHAVEOPT);
  store_be32 (hdr + 8, opt);
  store_be32 (hdr + 12, len);
  if (write_full (l, hdr, sizeof hdr) < 0
      || (len && write_full (l, data, len) < 0))
    return -1;
  return 0;
}

/* One option reply header; an error reply is read whole and turned
 * into *KIND: 1 = a normal reply (TYPE, LEN set, payload unread), 0 =
 * NBD_REP_ERR_UNSUP (skip the option), -1 = error (message set). */
static int
reply (struct lister *l, uint32_t opt, uint32_t *type, uint32_t *len)
{
  char hdr[NBD_OPTION_REPLY_SIZE];
  CLEANUP_FREE char *msg = NULL;

  if (read_full (l, hdr, sizeof hdr, "option reply") < 0)
    return -1;
  if (load_be64 (hdr) != NBD_REP_MAGIC)
    return fail (l, "Unexpected option reply magic");
  if (load_be32 (hdr + 8) != opt)
    return fail (l, "Unexpected option type %u (%s), expected %u (%s)",
                 load_be32 (hdr + 8), opt_lookup (load_be32 (hdr + 8)),
                 opt, opt_lookup (opt));
  *type = load_be32 (hdr + 12);
  *len = load_be32 (hdr + 16);
  if (!(*type & (1u << 31)))
    return 1;
  if (*len > NBD_MAX_STRING)
    return fail (l, "server error %u (%s) message is too long", *type,
                 opt_lookup (opt));
  msg = calloc (1, *len + 1);
  if (msg == NULL || read_full (l, msg, *len, "option error message") < 0)
    return fail (l, "out of memory");
  if (*type == NBD_REP_ERR_UNSUP)
    return 0;
  l->err_reply = true;
  switch (*type) {
  case NBD_REP_ERR_POLICY:
    fail (l, "Denied by server for option %u (%s)", opt, opt_lookup (opt));
    break;
  case NBD_REP_ERR_INVALID:
    fail (l, "Invalid parameters for option %u (%s)", opt, opt_lookup (opt));
    break;
  case NBD_REP_ERR_TLS_REQD:
    fail (l, "TLS negotiation required before option %u (%s)\n"
          "Did you forget a valid tls-creds?%s%s", opt, opt_lookup (opt),
          *msg ? "\nserver reported: " : "", msg);
    return -1;
  case NBD_REP_ERR_UNKNOWN:
    fail (l, "Requested export not available");
    break;
  default:
    fail (l, "Unknown error code when asking for option %u (%s)", opt,
          opt_lookup (opt));
    break;
  }
  if (*msg) {
    size_t n = strlen (l->err);

    snprintf (l->err + n, sizeof l->err - n, "\nserver reported: %s", msg);
  }
  return -1;
}

static int
drop (struct lister *l, uint32_t len)
{
  char buf[4096];

  while (len > 0) {
    uint32_t n = len < sizeof buf ? len : sizeof buf;

    if (read_full (l, buf, n, "option reply") < 0)
      return -1;
    len -= n;
  }
  return 0;
}

/* NBD_OPT_LIST into *OUT, *COUNT entries (also on failure, for the
 * caller to free).  Returns the number of exports, or -1. */
static int
list (struct lister *l, struct export_info **out, int *count)
{
  struct export_info *a = NULL;
  int n = 0;

  if (send_opt (l, NBD_OPT_LIST, NULL, 0) < 0)
    return -1;
  for (;;) {
    uint32_t type, len, nlen;
    char b4[4];
    int r = reply (l, NBD_OPT_LIST, &type, &len);

    if (r <= 0)
      return r < 0 ? -1 : (*out = a, n);
    if (type == NBD_REP_ACK) {
      if (len != 0)
        return fail (l, "length too long for option end");
      *out = a;
      return n;
    }
    if (type != NBD_REP_SERVER)
      return fail (l, "Unexpected reply type %u, expected %u", type,
                   NBD_REP_SERVER);
    if (len < 4 || len > NBD_MAX_OPTION_LENGTH)
      return fail (l, "incorrect option length %u", len);
    if (read_full (l, b4, 4, "option name length") < 0)
      return -1;
    nlen = load_be32 (b4);
    len -= 4;
    if (len < nlen || nlen > NBD_MAX_STRING
        || len - nlen > NBD_MAX_STRING)
      return fail (l, "incorrect name length in server's list response");
    {
      struct export_info *g = realloc (a, (n + 1) * sizeof *a);

      if (g == NULL)
        return fail (l, "out of memory");
      a = g;
      memset (&a[n], 0, sizeof a[n]);
      a[n].name = calloc (1, nlen + 1);
      a[n].desc = calloc (1, len - nlen + 1);
      n++;
      *out = a;
      *count = n;
      if (a[n - 1].name == NULL || a[n - 1].desc == NULL)
        return fail (l, "out of memory");
      if (read_full (l, a[n - 1].name, nlen, "export name") < 0
          || read_full (l, a[n - 1].desc, len - nlen,
                        "export description") < 0)
        return -1;
    }
  }
}

/* Send option OPT whose payload is an export NAME (u32 length, bytes)
 * followed by the 4 bytes of TAIL. */
static int
send_name_opt (struct lister *l, uint32_t opt, const char *name,
               const char tail[4])
{
  size_t nlen = strlen (name);
  CLEANUP_FREE char *buf = malloc (4 + nlen + 4);

  if (buf == NULL)
    return fail (l, "out of memory");
  store_be32 (buf, nlen);
  memcpy (buf + 4, name, nlen);
  memcpy (buf + 4 + nlen, tail, 4);
  return send_opt (l, opt, buf, 4 + nlen + 4);
}

/* NBD_OPT_INFO with a block size request: 1 done, 0 unsupported, -1. */
static int
info (struct lister *l, struct export_info *e)
{
  char tail[4];

  store_be16 (tail, 1);                       /* one request: */
  store_be16 (tail + 2, NBD_INFO_BLOCK_SIZE);
  if (send_name_opt (l, NBD_OPT_INFO, e->name, tail) < 0)
    return -1;
  for (;;) {
    uint32_t type, len;
    char body[2 + 12];
    int r = reply (l, NBD_OPT_INFO, &type, &len);

    if (r <= 0)
      return r;
    if (type == NBD_REP_ACK) {
      if (len)
        return fail (l, "server sent invalid NBD_REP_ACK");
      if (!e->flags)
        return fail (l, "broken server omitted NBD_INFO_EXPORT");
      return 1;
    }
    if (type != NBD_REP_INFO || len < 2)
      return fail (l, "unexpected reply type %u (%s), expected %u (%s)",
                   type, "?", NBD_REP_INFO, "info");
    if (len > NBD_MAX_OPTION_LENGTH)
      return fail (l, "incorrect option length %u", len);
    if (read_full (l, body, 2, "info type") < 0)
      return -1;
    len -= 2;
    switch (load_be16 (body)) {
    case NBD_INFO_EXPORT:
      if (len != 10)
        return fail (l, "remaining export info len %u is unexpected size",
                     len);
      if (read_full (l, body, 10, "info size") < 0)
        return -1;
      e->size = load_be64 (body);
      e->flags = load_be16 (body + 8);
      break;
    case NBD_INFO_BLOCK_SIZE:
      if (len != 12)
        return fail (l, "remaining export info len %u is unexpected size",
                     len);
      if (read_full (l, body, 12, "info block sizes") < 0)
        return -1;
      e->min_block = load_be32 (body);
      e->opt_block = load_be32 (body + 4);
      e->max_block = load_be32 (body + 8);
      break;
    default:
      if (drop (l, len) < 0)
        return -1;
    }
  }
}

/* NBD_OPT_LIST_META_CONTEXT with no query: every context. */
static int
meta_contexts (struct lister *l, struct export_info *e)
{
  static const char no_queries[4];

  if (send_name_opt (l, NBD_OPT_LIST_META_CONTEXT, e->name, no_queries) < 0)
    return -1;
  for (;;) {
    uint32_t type, len;
    char id[4], **c;
    int r = reply (l, NBD_OPT_LIST_META_CONTEXT, &type, &len);

    if (r <= 0)
      return r;
    if (type == NBD_REP_ACK)
      return len ? fail (l, "server sent invalid NBD_REP_ACK") : 1;
    if (type != NBD_REP_META_CONTEXT || len < 4 || len - 4 > NBD_MAX_STRING)
      return fail (l, "unexpected meta context reply");
    if (read_full (l, id, 4, "context id") < 0)
      return -1;
    c = realloc (e->contexts, (e->n_contexts + 1) * sizeof *c);
    if (c == NULL)
      return fail (l, "out of memory");
    e->contexts = c;
    c[e->n_contexts] = calloc (1, len - 4 + 1);
    if (c[e->n_contexts] == NULL)
      return fail (l, "out of memory");
    e->n_contexts++;
    if (read_full (l, c[e->n_contexts - 1], len - 4, "context name") < 0)
      return -1;
  }
}

static void
print_exports (const struct export_info *a, int n)
{
  static const char *const flag_names[] = {
    [0] = NULL, [1] = "readonly", [2] = "flush", [3] = "fua",
    [4] = "rotational", [5] = "trim", [6] = "zeroes", [7] = "df",
    [8] = "multi", [9] = "resize", [10] = "cache", [11] = "fast-zero",
  };

  printf ("exports available: %d\n", n);
  for (int i = 0; i < n; i++) {
    printf (" export: '%s'\n", a[i].name);
    if (a[i].desc && *a[i].desc)
      printf ("  description: %s\n", a[i].desc);
    if (a[i].flags & NBD_FLAG_HAS_FLAGS) {
      printf ("  size:  %" PRIu64 "\n", a[i].size);
      printf ("  flags: 0x%x (", a[i].flags);
      for (unsigned b = 0; b < sizeof flag_names / sizeof *flag_names; b++)
        if (flag_names[b] && (a[i].flags & (1u << b)))
          printf (" %s", flag_names[b]);
      printf (" )\n");
    }
    if (a[i].min_block) {
      printf ("  min block: %u\n", a[i].min_block);
      printf ("  opt block: %u\n", a[i].opt_block);
      printf ("  max block: %u\n", a[i].max_block);
    }
    if (a[i].n_contexts) {
      printf ("  available meta contexts: %zu\n", a[i].n_contexts);
      for (size_t j = 0; j < a[i].n_contexts; j++)
        printf ("   %s\n", a[i].contexts[j]);
    }
  }
}

/* Connect as QEMU's socket code does, with its messages. */
static int
connect_to (struct lister *l, const char *sock, const char *host,
            const char *port)
{
  struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res, *ai;
  int r, err = 0;

  if (sock) {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };

    if (strlen (sock) >= sizeof sun.sun_path)
      return fail (l, "UNIX socket path '%s' is too long", sock);
    strcpy (sun.sun_path, sock);
    l->fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l->fd < 0 || connect (l->fd, (struct sockaddr *) &sun,
                              sizeof sun) < 0)
      return fail (l, "Failed to connect to '%s': %s", sock,
                   strerror (errno));
    return 0;
  }
  r = getaddrinfo (host, port, &hints, &res);
  if (r != 0)
    return fail (l, "address resolution failed for %s:%s: %s", host, port,
                 gai_strerror (r));
  for (ai = res; ai; ai = ai->ai_next) {
    l->fd = socket (ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
                    ai->ai_protocol);
    if (l->fd < 0) {
      err = errno;
      continue;
    }
    if (connect (l->fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      freeaddrinfo (res);
      return 0;
    }
    err = errno;
    close (l->fd);
    l->fd = -1;
  }
  freeaddrinfo (res);
  return fail (l, "Failed to connect to '%s:%s': %s", host, port,
               strerror (err));
}

/* Connect, and take the server's greeting as QEMU's client does,
 * answering with our flags.  0, or -1 (L's error set). */
static int
greet (struct lister *l, const char *socket_path, const char *bind,
       const char *port)
{
  char greet[18];
  uint32_t cflags;

  if (connect_to (l, socket_path, bind ? bind : "0.0.0.0",
                  port ? port : NBD_DEFAULT_PORT) < 0)
    return -1;
  if (read_full (l, greet, sizeof greet, "initial magic") < 0)
    return -1;
  if (load_be64 (greet) != NBD_MAGIC) {
    fail (l, "Bad initial magic received: 0x%" PRIx64, load_be64 (greet));
    return -1;
  }
  if (load_be64 (greet + 8) != NBD_IHAVEOPT) {
    fail (l, "Server does not support export lists");
    return -1;
  }
  if (!(load_be16 (greet + 16) & NBD_FLAG_FIXED_NEWSTYLE)) {
    fail (l, "Server does not support export lists");
    return -1;
  }
  cflags = NBD_FLAG_C_FIXED_NEWSTYLE;
  if (load_be16 (greet + 16) & NBD_FLAG_NO_ZEROES)
    cflags |= NBD_FLAG_C_NO_ZEROES;
  store_be32 (greet, cflags);
  return write_full (l, greet, 4) < 0 ? -1 : 0;
}

/* QEMU's client: STARTTLS first, everything else inside.  0, or -1
 * (L's error set). */
static int
starttls (struct lister *l, const struct tls_config *tls,
          const char *tls_hostname, const char *tls_username)
{
  uint32_t type, len;
  int r;

  if (send_opt (l, NBD_OPT_STARTTLS, NULL, 0) < 0)
    return -1;
  r = reply (l, NBD_OPT_STARTTLS, &type, &len);
  if (r == 0 || (r == 1 && (type != NBD_REP_ACK || len != 0))) {
    fail (l, "Server don't support STARTTLS option");
    return -1;
  }
  if (r < 0)
    return -1;
  l->tls = tls_client_new (l->fd, tls, tls_hostname, tls_username, l->err,
                           sizeof l->err);
  return l->tls == NULL ? -1 : 0;
}

/* Ask for structured replies, politely, as QEMU's client does: an error
 * reply of any kind (a server that wants TLS first included) only means
 * no structured replies, and the error that counts comes with the
 * listing.  0 (*STRUCTURED set), or -1 (L's error set). */
static int
ask_structured (struct lister *l, bool *structured)
{
  uint32_t type, len;
  int r;

  if (send_opt (l, NBD_OPT_STRUCTURED_REPLY, NULL, 0) < 0)
    return -1;
  r = reply (l, NBD_OPT_STRUCTURED_REPLY, &type, &len);
  if (r < 0 && l->err_reply) {
    l->err[0] = '\0';
    r = 0;
  }
  if (r < 0)
    return -1;
  if (r == 1) {
    if (type != NBD_REP_ACK || len != 0) {
      fail (l, "server sent invalid structured reply answer");
      return -1;
    }
    *structured = true;
  }
  return 0;
}

/* Ask about each of the N exports at A (and, with STRUCTURED replies,
 * their meta contexts), until the server has no more to say.  0, or -1
 * (L's error set). */
static int
describe (struct lister *l, struct export_info *a, int n, bool structured)
{
  for (int i = 0; i < n; i++) {
    int r = info (l, &a[i]);

    if (r < 0)
      return -1;
    if (r == 0)
      break;
    if (structured && meta_contexts (l, &a[i]) < 0)
      return -1;
  }
  return 0;
}

int
qnbd_list (const char *socket_path, const char *bind, const char *port,
           const struct tls_config *tls, const char *tls_hostname,
           const char *tls_username)
{
  struct lister l = { .fd = -1 };
  struct export_info *a = NULL;
  bool structured = false;
  int n = -1, count = 0;

  if (greet (&l, socket_path, bind, port) < 0
      || (tls && starttls (&l, tls, tls_hostname, tls_username) < 0)
      || ask_structured (&l, &structured) < 0)
    goto out;
  n = list (&l, &a, &count);
  if (n < 0)
    goto out;
  if (describe (&l, a, n, structured) < 0) {
    n = -1;
    goto out;
  }
  send_opt (&l, NBD_OPT_ABORT, NULL, 0);

 out:
  tls_client_free (l.tls);
  if (l.fd >= 0)
    close (l.fd);
  if (n >= 0)
    print_exports (a, n);
  else
    qnbd_error ("%s", l.err);
  for (int i = 0; i < count; i++) {
    free (a[i].name);
    free (a[i].desc);
    for (size_t j = 0; j < a[i].n_contexts; j++)
      free (a[i].contexts[j]);
    free (a[i].contexts);
  }
  free (a);
  return n >= 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
