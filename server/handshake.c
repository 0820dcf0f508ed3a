/* SPDX-License-Identifier: MIT */
/* The fixed newstyle handshake (NBD proto.md, "Newstyle negotiation"):
 * greeting, client flags, then the option haggling until the client asks
 * for the transmission phase (EXPORT_NAME or GO), aborts, or hangs up.
 *
 * Every option comes from a hostile client: the length is checked against
 * NBD_MAX_OPTION_LENGTH before anything is allocated, every field inside
 * the payload is bounds-checked against what is left of it, and strings
 * are limited to NBD_MAX_STRING bytes.  Mistakes the protocol lets us
 * answer get an error reply with a message and negotiation goes on (so
 * probing clients keep working); mistakes it does not (bad magic,
 * unknown client flags, an unknown name in EXPORT_NAME) drop the
 * connection.  The whole handshake runs under one deadline. */

#include <config.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "server/server.h"
#include "tls/tls.h"

/* Negotiation state of one connection. */
struct hs {
  struct conn *conn;
  const struct export *exp;
  uint64_t deadline;
  bool fixed;                   /* client sent NBD_FLAG_C_FIXED_NEWSTYLE */
  bool tls;                     /* STARTTLS succeeded */
  uint32_t opt;                 /* option being answered */
};

static const char *
opt_name (uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_EXPORT_NAME: return "NBD_OPT_EXPORT_NAME";
  case NBD_OPT_ABORT: return "NBD_OPT_ABORT";
  case NBD_OPT_LIST: return "NBD_OPT_LIST";
  case NBD_OPT_PEEK_EXPORT: return "NBD_OPT_PEEK_EXPORT";
  case NBD_OPT_STARTTLS: return "NBD_OPT_STARTTLS";
  case NBD_OPT_INFO: return "NBD_OPT_INFO";
  case NBD_OPT_GO: return "NBD_OPT_GO";
  case NBD_OPT_STRUCTURED_REPLY: return "NBD_OPT_STRUCTURED_REPLY";
  case NBD_OPT_LIST_META_CONTEXT: return "NBD_OPT_LIST_META_CONTEXT";
  case NBD_OPT_SET_META_CONTEXT: return "NBD_OPT_SET_META_CONTEXT";
  case NBD_OPT_EXTENDED_HEADERS: return "NBD_OPT_EXTENDED_HEADERS";
  default: return "unknown option";
  }
}

/* Send one option reply: header plus PAYLOAD, in one write so a reply
 * never goes out as two TCP segments.  Returns 0 or -1 (logged). */
static int
send_reply (struct hs *hs, uint32_t type, const void *payload, size_t len)
{
  CLEANUP_FREE char *buf = NULL;

  /* Our own payloads: strings of at most NBD_MAX_STRING plus headers. */
  if (len > NBD_MAX_OPTION_LENGTH) {
    log_error ("%s: option reply too long", hs->conn->peer);
    return -1;
  }
  buf = malloc (NBD_OPTION_REPLY_SIZE + len);
  if (buf == NULL) {
    log_error ("%s: out of memory", hs->conn->peer);
    return -1;
  }
  store_be64 (buf, NBD_REP_MAGIC);
  store_be32 (buf + 8, hs->opt);
  store_be32 (buf + 12, type);
  store_be32 (buf + 16, len);
  if (len > 0)
    memcpy (buf + NBD_OPTION_REPLY_SIZE, payload, len);
  if (conn_write_full (hs->conn, buf, NBD_OPTION_REPLY_SIZE + len,
                       hs->deadline) == -1) {
    log_info ("%s: writing reply to %s: %m", hs->conn->peer,
              opt_name (hs->opt));
    return -1;
  }
  return 0;
}

/* An error reply with a human-readable message as its payload. */
static int
send_error (struct hs *hs, uint32_t type, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static int
send_error (struct hs *hs, uint32_t type, const char *fmt, ...)
{
  char msg[256];
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (n < 0)
    n = 0;
  if ((size_t) n >= sizeof msg)
    n = sizeof msg - 1;
  log_debug ("%s: %s: error reply 0x%x: %s", hs->conn->peer,
             opt_name (hs->opt), type, msg);
  return send_reply (hs, type, msg, n);
}

/* Discard an option's payload we will not look at, then send an error. */
#define DISCARD_AND_ERROR(hs, len, type, ...)                           \
  (conn_discard ((hs)->conn, (len), (hs)->deadline) == -1               \
   ? (log_info ("%s: reading option payload: %m", (hs)->conn->peer), -1) \
   : send_error ((hs), (type), __VA_ARGS__))

static bool
name_matches (const struct export *exp, const char *name, size_t len)
{
  return strlen (exp->name) == len && memcmp (exp->name, name, len) == 0;
}

/* Transmission flags for this connection: DF only makes sense (and the
 * spec forbids advertising it) without structured replies. */
static uint16_t
conn_eflags (struct hs *hs)
{
  uint16_t eflags = hs->exp->eflags;

  if (!hs->conn->structured_replies)
    eflags &= ~NBD_FLAG_SEND_DF;
  return eflags;
}

/* ---- the options -------------------------------------------------- */

/* NBD_OPT_EXPORT_NAME: no error reply exists, so a bad name drops the
 * connection.  Returns 1 (transmission) or -1. */
static int
opt_export_name (struct hs *hs, const char *payload, uint32_t len)
{
  char buf[8 + 2 + 124] = { 0 };
  size_t n = 8 + 2 + (hs->conn->no_zeroes ? 0 : 124);

  if (!name_matches (hs->exp, payload, len)) {
    log_info ("%s: NBD_OPT_EXPORT_NAME: unknown export '%.*s'",
              hs->conn->peer, (int) MIN (len, 256u), payload);
    return -1;
  }
  store_be64 (buf, hs->exp->size);
  store_be16 (buf + 8, conn_eflags (hs));
  if (conn_write_full (hs->conn, buf, n, hs->deadline) == -1) {
    log_info ("%s: writing export info: %m", hs->conn->peer);
    return -1;
  }
  hs->conn->exp = hs->exp;
  return 1;
}

/* NBD_OPT_LIST: one NBD_REP_SERVER (name, then the description as the
 * optional details string), then ACK. */
static int
opt_list (struct hs *hs, uint32_t len)
{
  const struct export *exp = hs->exp;
  size_t nlen = strlen (exp->name);
  size_t dlen = exp->description ? strlen (exp->description) : 0;
  char buf[4 + NBD_MAX_STRING + NBD_MAX_STRING];

  if (len != 0)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_LIST must have no payload");
  /* main() refuses longer names and descriptions. */
  if (nlen > NBD_MAX_STRING || dlen > NBD_MAX_STRING)
    return -1;
  store_be32 (buf, nlen);
  memcpy (buf + 4, exp->name, nlen);
  if (dlen)
    memcpy (buf + 4 + nlen, exp->description, dlen);
  if (send_reply (hs, NBD_REP_SERVER, buf, 4 + nlen + dlen) == -1)
    return -1;
  return send_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* Send one NBD_REP_INFO of TYPE with BODY after the 16-bit type. */
static int
send_info (struct hs *hs, uint16_t type, const void *body, size_t len)
{
  char buf[2 + NBD_MAX_STRING];

  if (len > NBD_MAX_STRING)
    return -1;
  store_be16 (buf, type);
  if (len)
    memcpy (buf + 2, body, len);
  return send_reply (hs, NBD_REP_INFO, buf, 2 + len);
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Payload: u32 name length, name, u16
 * number of requests, that many u16 info types.  Returns 1 when GO
 * succeeded, 0 to go on negotiating, -1 to drop. */
static int
opt_info_go (struct hs *hs, const char *p, uint32_t len)
{
  const struct export *exp = hs->exp;
  uint32_t nlen;
  uint16_t nreq, i;
  const char *name;
  bool want_name = false, want_desc = false, want_sizes = false;
  uint32_t min_block;
  char body[12];

  if (len < 4 + 2)
    return send_error (hs, NBD_REP_ERR_INVALID, "option too short");
  nlen = load_be32 (p);
  if (nlen > len - 4 - 2)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option");
  if (nlen > NBD_MAX_STRING)
    return send_error (hs, NBD_REP_ERR_TOO_BIG, "export name too long");
  name = p + 4;
  nreq = load_be16 (p + 4 + nlen);
  /* Exactly: (len - 6 - nlen) is even and matches the count. */
  if ((uint64_t) len - 4 - nlen - 2 != (uint64_t) nreq * 2)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "information request count does not match length");
  for (i = 0; i < nreq; i++) {
    uint16_t type = load_be16 (p + 4 + nlen + 2 + 2 * i);

    log_debug ("%s: %s: client requests info %u", hs->conn->peer,
               opt_name (hs->opt), type);
    if (type == NBD_INFO_NAME)
      want_name = true;
    else if (type == NBD_INFO_DESCRIPTION)
      want_desc = true;
    else if (type == NBD_INFO_BLOCK_SIZE)
      want_sizes = true;
    /* EXPORT and BLOCK_SIZE are always sent; others are ignored, as
     * the spec asks. */
  }

  if (!name_matches (exp, name, nlen))
    return send_error (hs, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                       (int) MIN (nlen, 128u), name);

  store_be64 (body, exp->size);
  store_be16 (body + 8, conn_eflags (hs));
  if (send_info (hs, NBD_INFO_EXPORT, body, 10) == -1)
    return -1;
  if (want_name
      && send_info (hs, NBD_INFO_NAME, exp->name, strlen (exp->name)) == -1)
    return -1;
  if (want_desc && exp->description
      && send_info (hs, NBD_INFO_DESCRIPTION, exp->description,
                    strlen (exp->description)) == -1)
    return -1;
  /* Sent unasked, as qemu-nbd does: clients that did not ask may
   * still use the hint, and the spec allows it.  A client that did not
   * ask may send any alignment, so it is told so (min_block_unasked). */
  min_block = hs->opt == NBD_OPT_INFO || want_sizes ? exp->min_block
    : exp->min_block_unasked;
  store_be32 (body, min_block);
  store_be32 (body + 4, MAX (exp->pref_block, min_block));
  store_be32 (body + 8, exp->max_block);
  if (send_info (hs, NBD_INFO_BLOCK_SIZE, body, 12) == -1)
    return -1;
  if (send_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;

  if (hs->opt == NBD_OPT_GO) {
    hs->conn->exp = exp;
    return 1;
  }
  return 0;
}

static int
opt_structured_reply (struct hs *hs, uint32_t len)
{
  if (len != 0)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_STRUCTURED_REPLY must have no payload");
  if (hs->conn->structured_replies)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "structured replies already negotiated");
  hs->conn->structured_replies = true;
  return send_reply (hs, NBD_REP_ACK, NULL, 0);
}

#define BITMAP_PREFIX "qemu:dirty-bitmap:"

/* Which of the export's contexts does the query Q (QLEN bytes) select?
 * As qemu-nbd answers: for LIST, a bare namespace ("base:", "qemu:")
 * selects all of that namespace and "qemu:dirty-bitmap:" every bitmap;
 * for SET only whole names select anything. */
static uint64_t
match_query (const struct export *exp, const char *q, uint32_t qlen,
             bool list)
{
  const size_t plen = strlen (BITMAP_PREFIX);
  uint64_t mask = 0;

  for (unsigned m = 0; m < exp->nr_meta; m++) {
    const char *name = exp->meta_names[m];
    size_t nlen = strlen (name);
    size_t ns = strchr (name, ':') - name + 1;

    if (qlen == nlen && memcmp (q, name, nlen) == 0)
      mask |= UINT64_C (1) << m;
    else if (list && qlen == ns && memcmp (q, name, ns) == 0)
      mask |= UINT64_C (1) << m;
    else if (list && m >= META_DIRTY_BITMAP && qlen == plen &&
             memcmp (q, BITMAP_PREFIX, plen) == 0)
      mask |= UINT64_C (1) << m;
  }
  return mask;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.  Payload: u32
 * export name length, name, u32 number of queries, then each query as
 * u32 length and string. */
static int
opt_meta_context (struct hs *hs, const char *p, uint32_t len)
{
  bool list = hs->opt == NBD_OPT_LIST_META_CONTEXT;
  uint32_t nlen, nq, i, pos;
  uint64_t sel = 0;
  const char *name;

  if (!list && !hs->conn->structured_replies)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "negotiate structured replies first");
  if (len < 4)
    return send_error (hs, NBD_REP_ERR_INVALID, "option too short");
  nlen = load_be32 (p);
  if (nlen > len - 4 || len - 4 - nlen < 4)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option");
  if (nlen > NBD_MAX_STRING)
    return send_error (hs, NBD_REP_ERR_TOO_BIG, "export name too long");
  name = p + 4;
  pos = 4 + nlen;
  nq = load_be32 (p + pos);
  pos += 4;

  for (i = 0; i < nq; i++) {
    uint32_t qlen;

    if (len - pos < 4)
      return send_error (hs, NBD_REP_ERR_INVALID,
                         "query %u runs past the option", i);
    qlen = load_be32 (p + pos);
    pos += 4;
    if (qlen > len - pos)
      return send_error (hs, NBD_REP_ERR_INVALID,
                         "query %u runs past the option", i);
    if (qlen > NBD_MAX_STRING)
      return send_error (hs, NBD_REP_ERR_TOO_BIG, "query %u too long", i);
    log_debug ("%s: %s: query '%.*s'", hs->conn->peer, opt_name (hs->opt),
               (int) MIN (qlen, 256u), p + pos);
    sel |= match_query (hs->exp, p + pos, qlen, list);
    pos += qlen;
  }
  if (pos != len)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "trailing bytes after the queries");
  if (!name_matches (hs->exp, name, nlen))
    return send_error (hs, NBD_REP_ERR_UNKNOWN, "no export named '%.*s'",
                       (int) MIN (nlen, 128u), name);

  if (list && nq == 0)
    sel = hs->exp->nr_meta == META_MAX ? UINT64_MAX
      : (UINT64_C (1) << hs->exp->nr_meta) - 1;
  sel &= hs->exp->metas;        /* what this export offers */
  if (!list)
    hs->conn->meta = sel;

  for (unsigned m = 0; m < hs->exp->nr_meta; m++) {
    const char *mname = hs->exp->meta_names[m];
    size_t mlen = strlen (mname);
    CLEANUP_FREE char *buf = NULL;

    if (!(sel & (UINT64_C (1) << m)))
      continue;
    /* Bitmap names are at most 1023 bytes (qcow2.txt). */
    buf = malloc (4 + mlen);
    if (buf == NULL) {
      log_error ("%s: out of memory", hs->conn->peer);
      return -1;
    }
    store_be32 (buf, META_CONTEXT_ID (m));
    memcpy (buf + 4, mname, mlen);
    if (send_reply (hs, NBD_REP_META_CONTEXT, buf, 4 + mlen) == -1)
      return -1;
  }
  return send_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_STARTTLS: reply with a bare ACK, then the TLS handshake; on
 * success everything negotiated in clear text is forgotten. */
static int
opt_starttls (struct hs *hs, uint32_t len)
{
  if (server_tls_mode == TLS_OFF || server_tls_ctx == NULL)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_POLICY,
                              "TLS is not enabled on this server");
  if (hs->tls)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_INVALID,
                              "TLS is already active");
  if (len != 0)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_INVALID,
                              "NBD_OPT_STARTTLS must have no payload");
  if (send_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  if (tls_upgrade (server_tls_ctx, hs->conn, hs->deadline) == -1)
    return -1;
  hs->tls = true;
  hs->conn->structured_replies = false;
  hs->conn->meta = 0;
  log_debug ("%s: TLS established", hs->conn->peer);
  return 0;
}

/* Read and answer one option.  Returns 1 (transmission), 0 (go on), 2
 * (client ended the session cleanly) or -1 (drop). */
static int
one_option (struct hs *hs)
{
  char hdr[NBD_OPTION_HEADER_SIZE];
  uint32_t len;
  CLEANUP_FREE char *payload = NULL;

  if (conn_read_full (hs->conn, hdr, sizeof hdr, hs->deadline) == -1) {
    if (errno == ECONNRESET)
      return 2;                 /* hung up between options: fine */
    log_info ("%s: reading option: %m", hs->conn->peer);
    return -1;
  }
  if (load_be64 (hdr) != NBD_IHAVEOPT) {
    log_info ("%s: bad option magic, dropping", hs->conn->peer);
    return -1;
  }
  hs->opt = load_be32 (hdr + 8);
  len = load_be32 (hdr + 12);
  log_debug ("%s: %s (%u), length %u", hs->conn->peer, opt_name (hs->opt),
             hs->opt, len);

  /* Without fixed newstyle the client cannot parse option replies. */
  if (!hs->fixed && hs->opt != NBD_OPT_EXPORT_NAME) {
    log_info ("%s: option %u from a client without fixed newstyle",
              hs->conn->peer, hs->opt);
    return -1;
  }

  if (server_tls_mode == TLS_REQUIRE && !hs->tls
      && hs->opt != NBD_OPT_STARTTLS && hs->opt != NBD_OPT_ABORT) {
    if (hs->opt == NBD_OPT_EXPORT_NAME) {
      log_info ("%s: NBD_OPT_EXPORT_NAME before TLS, dropping",
                hs->conn->peer);
      return -1;
    }
    /* qemu-nbd's words: its client prints them ("server reported"). */
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_TLS_REQD,
                              "Option 0x%x not permitted before TLS",
                              hs->opt);
  }

  if (hs->opt == NBD_OPT_EXPORT_NAME && len > NBD_MAX_STRING) {
    log_info ("%s: NBD_OPT_EXPORT_NAME: name too long (%u)",
              hs->conn->peer, len);
    return -1;
  }
  /* Never allocate what the client claims before checking it.  The
   * payload is drained so the stream stays in step. */
  if (len > NBD_MAX_OPTION_LENGTH)
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_TOO_BIG,
                              "option length %u is over the limit of %u",
                              len, NBD_MAX_OPTION_LENGTH);

  switch (hs->opt) {
  case NBD_OPT_LIST:
    return opt_list (hs, len);
  case NBD_OPT_STRUCTURED_REPLY:
    return opt_structured_reply (hs, len);
  case NBD_OPT_STARTTLS:
    return opt_starttls (hs, len);
  case NBD_OPT_ABORT:
    /* Best effort: the client may already be gone. */
    if (conn_discard (hs->conn, len, hs->deadline) == 0)
      send_reply (hs, NBD_REP_ACK, NULL, 0);
    return 2;
  case NBD_OPT_EXPORT_NAME:
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    break;
  default:
    /* PEEK_EXPORT, EXTENDED_HEADERS and anything we do not know. */
    return DISCARD_AND_ERROR (hs, len, NBD_REP_ERR_UNSUP,
                              "option %u is not supported", hs->opt);
  }

  /* The remaining options carry a payload we parse. */
  payload = malloc (len ? len : 1);
  if (payload == NULL) {
    log_error ("%s: out of memory", hs->conn->peer);
    return -1;
  }
  if (conn_read_full (hs->conn, payload, len, hs->deadline) == -1) {
    log_info ("%s: reading %s payload: %m", hs->conn->peer,
              opt_name (hs->opt));
    return -1;
  }
  switch (hs->opt) {
  case NBD_OPT_EXPORT_NAME:
    return opt_export_name (hs, payload, len);
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return opt_info_go (hs, payload, len);
  default:
    return opt_meta_context (hs, payload, len);
  }
}

int
handshake_run (struct conn *conn, const struct export *exp,
               uint64_t deadline)
{
  struct hs hs = { .conn = conn, .exp = exp, .deadline = deadline };
  char greet[8 + 8 + 2];
  char cflags_buf[4];
  uint32_t cflags;

  store_be64 (greet, NBD_MAGIC);
  store_be64 (greet + 8, NBD_IHAVEOPT);
  store_be16 (greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (conn_write_full (conn, greet, sizeof greet, deadline) == -1) {
    log_info ("%s: writing greeting: %m", conn->peer);
    return -1;
  }
  if (conn_read_full (conn, cflags_buf, sizeof cflags_buf, deadline) == -1) {
    log_info ("%s: reading client flags: %m", conn->peer);
    return -1;
  }
  cflags = load_be32 (cflags_buf);
  if (cflags & ~(uint32_t) (NBD_FLAG_C_FIXED_NEWSTYLE
                            | NBD_FLAG_C_NO_ZEROES)) {
    log_info ("%s: unknown client flags 0x%x, dropping", conn->peer,
              cflags);
    return -1;
  }
  hs.fixed = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;
  conn->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
  log_debug ("%s: client flags 0x%x", conn->peer, cflags);

  for (;;) {
    int r = one_option (&hs);

    if (r == 1) {
      log_info ("%s: export '%s' in transmission phase%s%s", conn->peer,
                exp->name, conn->structured_replies
                ? ", structured replies" : "", hs.tls ? ", TLS" : "");
      return 1;
    }
    if (r == 2)
      return 0;
    if (r == -1)
      return -1;
  }
}
