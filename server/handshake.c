/* SPDX-License-Identifier: MIT */
/* The fixed newstyle handshake (NBD proto.md, "Newstyle negotiation"):
 * greeting, client flags, then the option haggling until the client asks
 * for the transmission phase (EXPORT_NAME or GO), aborts, or hangs up.
 *
 * It is a state machine that never touches a socket: bytes come in
 * through handshake_input_buf/handshake_input, replies go out through
 * handshake_output, and the caller (listener.c's event loop, or a fuzz
 * target with memory) moves them.  It asks for exactly the bytes of the
 * unit it is reading (client flags, an option header, a payload), so
 * nothing after the last option (transmission requests, a TLS
 * ClientHello) is ever taken from the socket; and it takes no input
 * while replies are unsent, so a client that stops reading holds one
 * option's replies at most.
 *
 * Every option comes from a hostile client: the length is checked against
 * NBD_MAX_OPTION_LENGTH before anything is allocated, every field inside
 * the payload is bounds-checked against what is left of it, and strings
 * are limited to NBD_MAX_STRING bytes.  Mistakes the protocol lets us
 * answer get an error reply with a message and negotiation goes on (so
 * probing clients keep working); mistakes it does not (bad magic,
 * unknown client flags, an unknown name in EXPORT_NAME) drop the
 * connection.  Time limits are the caller's. */

#include <config.h>

#include <assert.h>
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

/* Where the negotiation is. */
enum stage {
  ST_FLAGS,                     /* reading the client flags */
  ST_OPTION,                    /* reading an option header */
  ST_PAYLOAD,                   /* reading the payload of an option */
  ST_DISCARD,                   /* dropping the payload of an option */
  ST_STARTTLS,                  /* ACK queued: the caller runs TLS */
  ST_DONE,                      /* transmission phase */
  ST_END,                       /* the client ended the session */
  ST_FAIL,                      /* drop the connection */
};

/* What answers an option once its payload is in (or dropped). */
enum action {
  ACT_OPTION,                   /* the option's own handler */
  ACT_TLS_REQD,                 /* NBD_REP_ERR_TLS_REQD */
  ACT_TOO_BIG,                  /* NBD_REP_ERR_TOO_BIG */
};

/* NBDMAGIC, IHAVEOPT, handshake flags. */
#define GREETING_SIZE (8 + 8 + 2)

/* Longest reply output of one option (an export with a 4096-byte name
 * and description is the longest we make).  LIST answers in batches of
 * LIST_BATCH bytes at most, the next made once the last is sent, so a
 * long list costs no more memory than a short one. */
#define OUTPUT_MAX (32 * 1024)
#define LIST_BATCH (16 * 1024)

/* Negotiation state of one connection. */
struct handshake {
  struct conn *conn;
  const struct export_source *src;      /* where exports are looked up */
  /* The export of the last NBD_OPT_SET_META_CONTEXT (a reference): its
   * contexts hold for a GO of that export only. */
  const struct export *meta_exp;
  /* NBD_OPT_LIST in progress: the name of the last export sent (its
   * next batch starts after it). */
  char *list_after;
  bool listing;                 /* more batches to come */
  enum tls_mode tls_mode;       /* TLS_OFF when the server has no context */
  enum stage stage;
  bool fixed;                   /* client sent NBD_FLAG_C_FIXED_NEWSTYLE */
  bool tls;                     /* STARTTLS succeeded */
  uint32_t opt;                 /* option being answered */
  uint32_t len;                 /* ... and its payload length */
  enum action action;

  /* Input: the unit being read.  Client flags and option headers go to
   * hdr, a payload to payload (LEN bytes, allocated once LEN has been
   * checked), a dropped payload nowhere. */
  uint8_t hdr[NBD_OPTION_HEADER_SIZE];
  uint32_t got;                 /* bytes of the unit so far */
  char *payload;
  uint32_t discard_left;

  /* Output: replies not yet sent, out[out_off .. out_len). */
  char *out;
  size_t out_len, out_off;
};

/* Where dropped payload bytes go: one buffer per thread serves every
 * handshake of that thread, since nothing is kept. */
static _Thread_local char discard_buf[16384];

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

/* Append LEN bytes to the output.  Returns 0 or -1 (logged). */
static int
output (struct handshake *hs, const void *buf, size_t len)
{
  char *p;

  if (hs->out_len + len > OUTPUT_MAX) {
    log_error ("%s: option reply too long", hs->conn->peer);
    return -1;
  }
  p = realloc (hs->out, hs->out_len + len);
  if (p == NULL) {
    log_error ("%s: out of memory", hs->conn->peer);
    return -1;
  }
  memcpy (p + hs->out_len, buf, len);
  hs->out = p;
  hs->out_len += len;
  return 0;
}

/* Queue one option reply: header plus PAYLOAD, kept together so a reply
 * never goes out as two TCP segments.  Returns 0 or -1 (logged). */
static int
send_reply (struct handshake *hs, uint32_t type, const void *payload,
            size_t len)
{
  char hdr[NBD_OPTION_REPLY_SIZE];

  /* Our own payloads: strings of at most NBD_MAX_STRING plus headers. */
  if (len > NBD_MAX_OPTION_LENGTH) {
    log_error ("%s: option reply too long", hs->conn->peer);
    return -1;
  }
  store_be64 (hdr, NBD_REP_MAGIC);
  store_be32 (hdr + 8, hs->opt);
  store_be32 (hdr + 12, type);
  store_be32 (hdr + 16, len);
  if (output (hs, hdr, sizeof hdr) == -1
      || (len > 0 && output (hs, payload, len) == -1))
    return -1;
  return 0;
}

/* An error reply with a human-readable message as its payload. */
static int
send_error (struct handshake *hs, uint32_t type, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

static int
send_error (struct handshake *hs, uint32_t type, const char *fmt, ...)
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

uint16_t
handshake_eflags (bool read_only)
{
  /* CAN_MULTI_CONN is honest: a FLUSH on any connection covers the
   * writes answered on all of them (qcow2_flush).  TRIM is advertised
   * even with --discard=ignore, as qemu-nbd does. */
  uint16_t eflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH
    | NBD_FLAG_SEND_DF | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;

  if (read_only)
    return eflags | NBD_FLAG_READ_ONLY;
  return eflags | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM
    | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
}

/* Transmission flags for this connection: DF only makes sense (and the
 * spec forbids advertising it) without structured replies;
 * BLOCK_STAT_PAYLOAD only with extended headers and contexts. */
static uint16_t
conn_eflags (struct handshake *hs, const struct export *exp)
{
  uint16_t eflags = exp->eflags;

  if (!hs->conn->structured_replies)
    eflags &= ~NBD_FLAG_SEND_DF;
  if (parse_bs_payload_ok (hs->conn))
    eflags |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
  return eflags;
}

/* ---- the options -------------------------------------------------- */

/* NBD_OPT_EXPORT_NAME: no error reply exists, so a bad name drops the
 * connection.  Returns 1 (transmission) or -1. */
static int
opt_export_name (struct handshake *hs, const char *payload, uint32_t len)
{
  char buf[8 + 2 + 124] = { 0 };
  size_t n = 8 + 2 + (hs->conn->no_zeroes ? 0 : 124);
  const struct export *exp;
  char msg[256];

  /* "NBD_OPT_EXPORT_NAME": a client that negotiated extended headers
   * MUST NOT use it, and it has no error reply. */
  if (hs->conn->extended_headers) {
    log_info ("%s: NBD_OPT_EXPORT_NAME after extended headers, dropping",
              hs->conn->peer);
    return -1;
  }
  if (hs->src->get (payload, len, &exp, msg, sizeof msg) != 0) {
    log_info ("%s: NBD_OPT_EXPORT_NAME: %s", hs->conn->peer, msg);
    return -1;
  }
  store_be64 (buf, exp->size);
  store_be16 (buf + 8, conn_eflags (hs, exp));
  if (output (hs, buf, n) == -1) {
    hs->src->put (exp);
    return -1;
  }
  hs->conn->exp = exp;          /* its reference goes with it */
  return 1;
}

/* One NBD_REP_SERVER of NBD_OPT_LIST (the name, then the description as
 * the optional details string), while the batch has room.  Returns 0
 * for the next, 1 when the batch is full (this export not sent), -1 to
 * drop. */
static int
list_one (void *opaque, const char *name, const char *description)
{
  struct handshake *hs = opaque;
  size_t nlen = strlen (name);
  size_t dlen = description ? strlen (description) : 0;
  CLEANUP_FREE char *buf = NULL;
  char *after;

  /* The command line and exports.c refuse longer ones. */
  if (nlen > NBD_MAX_STRING || dlen > NBD_MAX_STRING)
    return 0;
  if (hs->out_len > 0
      && hs->out_len + NBD_OPTION_REPLY_SIZE + 4 + nlen + dlen > LIST_BATCH)
    return 1;
  buf = malloc (4 + nlen + dlen);
  after = strdup (name);
  if (buf == NULL || after == NULL) {
    free (after);
    log_error ("%s: out of memory", hs->conn->peer);
    return -1;
  }
  store_be32 (buf, nlen);
  memcpy (buf + 4, name, nlen);
  if (dlen)
    memcpy (buf + 4 + nlen, description, dlen);
  free (hs->list_after);
  hs->list_after = after;
  return send_reply (hs, NBD_REP_SERVER, buf, 4 + nlen + dlen);
}

/* Queue the next batch of NBD_OPT_LIST replies, and the ACK after the
 * last.  Returns 0 or -1 (drop). */
static int
list_batch (struct handshake *hs)
{
  int r = hs->src->list (hs->list_after, list_one, hs);

  if (r == -1)
    return -1;
  if (r == 1)
    return 0;                   /* more once this batch is sent */
  free (hs->list_after);
  hs->list_after = NULL;
  hs->listing = false;
  return send_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST: an NBD_REP_SERVER per export, then ACK. */
static int
opt_list (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_LIST must have no payload");
  hs->listing = true;
  return list_batch (hs);
}

/* Send one NBD_REP_INFO of TYPE with BODY after the 16-bit type. */
static int
send_info (struct handshake *hs, uint16_t type, const void *body, size_t len)
{
  char buf[2 + NBD_MAX_STRING];

  if (len > NBD_MAX_STRING)
    return -1;
  store_be16 (buf, type);
  if (len)
    memcpy (buf + 2, body, len);
  return send_reply (hs, NBD_REP_INFO, buf, 2 + len);
}

/* The replies of NBD_OPT_INFO and NBD_OPT_GO for EXP, the client having
 * asked for the WANT_* information.  Returns 1 when GO succeeded, 0 to
 * go on negotiating, -1 to drop. */
static int
info_replies (struct handshake *hs, const struct export *exp,
              bool want_name, bool want_desc, bool want_sizes)
{
  uint32_t min_block;
  char body[12];

  store_be64 (body, exp->size);
  store_be16 (body + 8, conn_eflags (hs, exp));
  if (send_info (hs, NBD_INFO_EXPORT, body, 10) == -1)
    return -1;
  /* The export's own name: the client may have asked for "". */
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
  /* As qemu-nbd: INFO from a client that would not hear of a minimum
   * block size it must keep to is refused (GO is served anyway). */
  if (hs->opt == NBD_OPT_INFO && !want_sizes && exp->min_block > 1)
    return send_error (hs, NBD_REP_ERR_BLOCK_SIZE_REQD,
                       "request NBD_INFO_BLOCK_SIZE to use this export");
  if (send_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  return hs->opt == NBD_OPT_GO;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Payload: u32 name length, name, u16
 * number of requests, that many u16 info types.  Returns 1 when GO
 * succeeded, 0 to go on negotiating, -1 to drop. */
static int
opt_info_go (struct handshake *hs, const char *p, uint32_t len)
{
  const struct export *exp;
  uint32_t nlen, err;
  uint16_t nreq, i;
  const char *name;
  bool want_name = false, want_desc = false, want_sizes = false;
  char msg[256];
  int r;

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

  err = hs->src->get (name, nlen, &exp, msg, sizeof msg);
  if (err != 0)
    return send_error (hs, err, "%s", msg);
  r = info_replies (hs, exp, want_name, want_desc, want_sizes);
  if (r == 1) {
    /* Contexts chosen for another export mean nothing for this one
     * (proto.md, NBD_OPT_SET_META_CONTEXT). */
    if (hs->meta_exp != exp)
      hs->conn->meta = 0;
    hs->conn->exp = exp;        /* with the reference */
    return 1;
  }
  hs->src->put (exp);
  return r;
}

static int
opt_structured_reply (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_STRUCTURED_REPLY must have no payload");
  /* "NBD_OPT_STRUCTURED_REPLY": no going back from extended headers. */
  if (hs->conn->extended_headers)
    return send_error (hs, NBD_REP_ERR_EXT_HEADER_REQD,
                       "extended headers already negotiated");
  if (hs->conn->structured_replies)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "structured replies already negotiated");
  hs->conn->structured_replies = true;
  return send_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXTENDED_HEADERS: 32-byte headers both ways.  Allowed with or
 * without structured replies before it, which it supersedes (chunks are
 * then the only replies); meta contexts selected before it stay. */
static int
opt_extended_headers (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_EXTENDED_HEADERS must have no payload");
  if (hs->conn->extended_headers)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "extended headers already negotiated");
  hs->conn->extended_headers = true;
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

/* An NBD_REP_META_CONTEXT for each context of EXP in SEL, then ACK. */
static int
meta_replies (struct handshake *hs, const struct export *exp, uint64_t sel)
{
  for (unsigned m = 0; m < exp->nr_meta; m++) {
    const char *mname = exp->meta_names[m];
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

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.  Payload: u32
 * export name length, name, u32 number of queries, then each query as
 * u32 length and string.  The queries are checked whole before the
 * export is looked up, then matched against its contexts. */
static int
opt_meta_context (struct handshake *hs, const char *p, uint32_t len)
{
  bool list = hs->opt == NBD_OPT_LIST_META_CONTEXT;
  uint32_t nlen, nq, i, pos, qstart, err;
  uint64_t sel = 0;
  const struct export *exp;
  const char *name;
  char msg[256];
  int r;

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
  qstart = pos;

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
    pos += qlen;
  }
  if (pos != len)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "trailing bytes after the queries");
  err = hs->src->get (name, nlen, &exp, msg, sizeof msg);
  if (err != 0)
    return send_error (hs, err, "%s", msg);

  /* The queries, checked above. */
  for (i = 0, pos = qstart; i < nq; i++) {
    uint32_t qlen = load_be32 (p + pos);

    sel |= match_query (exp, p + pos + 4, qlen, list);
    pos += 4 + qlen;
  }
  if (list && nq == 0)
    sel = exp->nr_meta == META_MAX ? UINT64_MAX
      : (UINT64_C (1) << exp->nr_meta) - 1;
  sel &= exp->metas;            /* what this export offers */
  if (!list) {
    hs->conn->meta = sel;
    hs->src->put (hs->meta_exp);
    hs->meta_exp = exp;
    exp = NULL;                 /* kept as meta_exp */
  }
  r = meta_replies (hs, exp ? exp : hs->meta_exp, sel);
  hs->src->put (exp);
  return r;
}

/* The handlers below return one of these (or -1: drop). */
enum {
  OPT_NEXT = 0,                 /* go on negotiating */
  OPT_TRANSMISSION = 1,         /* EXPORT_NAME or GO succeeded */
  OPT_END = 2,                  /* the client ended the session cleanly */
  OPT_STARTTLS = 3,             /* ACK queued: run the TLS handshake */
};

/* NBD_OPT_STARTTLS: reply with a bare ACK; the caller runs the TLS
 * handshake once it is sent, and handshake_tls_done forgets everything
 * negotiated in clear text. */
static int
opt_starttls (struct handshake *hs, uint32_t len)
{
  if (hs->tls_mode == TLS_OFF)
    return send_error (hs, NBD_REP_ERR_POLICY,
                       "TLS is not enabled on this server");
  if (hs->tls)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "TLS is already active");
  if (len != 0)
    return send_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_STARTTLS must have no payload");
  if (send_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  return OPT_STARTTLS;
}

/* The payload of the current option is in (ACT_OPTION of an option we
 * parse) or has been dropped: answer the option.  Returns an OPT_*
 * value or -1. */
static int
run_option (struct handshake *hs)
{
  uint32_t len = hs->len;

  switch (hs->action) {
  case ACT_TLS_REQD:
    /* qemu-nbd's words: its client prints them ("server reported"). */
    return send_error (hs, NBD_REP_ERR_TLS_REQD,
                       "Option 0x%x not permitted before TLS", hs->opt);
  case ACT_TOO_BIG:
    return send_error (hs, NBD_REP_ERR_TOO_BIG,
                       "option length %u is over the limit of %u",
                       len, NBD_MAX_OPTION_LENGTH);
  case ACT_OPTION:
    break;
  }

  switch (hs->opt) {
  case NBD_OPT_LIST:
    return opt_list (hs, len);
  case NBD_OPT_STRUCTURED_REPLY:
    return opt_structured_reply (hs, len);
  case NBD_OPT_EXTENDED_HEADERS:
    return opt_extended_headers (hs, len);
  case NBD_OPT_STARTTLS:
    return opt_starttls (hs, len);
  case NBD_OPT_ABORT:
    /* Best effort: the client may already be gone. */
    send_reply (hs, NBD_REP_ACK, NULL, 0);
    return OPT_END;
  case NBD_OPT_EXPORT_NAME:
    return opt_export_name (hs, hs->payload, len);
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return opt_info_go (hs, hs->payload, len);
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    return opt_meta_context (hs, hs->payload, len);
  default:
    /* PEEK_EXPORT and anything we do not know. */
    return send_error (hs, NBD_REP_ERR_UNSUP,
                       "option %u is not supported", hs->opt);
  }
}

/* Does the handler of OPT parse its payload?  The others look only at
 * its length, so theirs is dropped as it comes. */
static bool
parses_payload (uint32_t opt)
{
  switch (opt) {
  case NBD_OPT_EXPORT_NAME:
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    return true;
  default:
    return false;
  }
}

/* Answer the current option (its payload in or dropped) and move on. */
static void
answer (struct handshake *hs)
{
  int r = run_option (hs);

  free (hs->payload);
  hs->payload = NULL;
  hs->got = 0;
  switch (r) {
  case OPT_NEXT:
    hs->stage = ST_OPTION;
    break;
  case OPT_TRANSMISSION:
    log_info ("%s: export '%s' in transmission phase%s%s", hs->conn->peer,
              hs->conn->exp->name, hs->conn->extended_headers
              ? ", extended headers" : hs->conn->structured_replies
              ? ", structured replies" : "", hs->tls ? ", TLS" : "");
    hs->stage = ST_DONE;
    break;
  case OPT_END:
    hs->stage = ST_END;
    break;
  case OPT_STARTTLS:
    hs->stage = ST_STARTTLS;
    break;
  default:
    hs->stage = ST_FAIL;
    break;
  }
}

/* An option header is in hs->hdr: check it, then read or drop its
 * payload (the checks that need no payload come first, in the order
 * the protocol rules rank them). */
static void
option_header (struct handshake *hs)
{
  uint32_t len;

  hs->got = 0;
  if (load_be64 (hs->hdr) != NBD_IHAVEOPT) {
    log_info ("%s: bad option magic, dropping", hs->conn->peer);
    hs->stage = ST_FAIL;
    return;
  }
  hs->opt = load_be32 (hs->hdr + 8);
  hs->len = len = load_be32 (hs->hdr + 12);
  hs->action = ACT_OPTION;
  log_debug ("%s: %s (%u), length %u", hs->conn->peer, opt_name (hs->opt),
             hs->opt, len);

  /* Without fixed newstyle the client cannot parse option replies. */
  if (!hs->fixed && hs->opt != NBD_OPT_EXPORT_NAME) {
    log_info ("%s: option %u from a client without fixed newstyle",
              hs->conn->peer, hs->opt);
    hs->stage = ST_FAIL;
    return;
  }

  if (hs->tls_mode == TLS_REQUIRE && !hs->tls
      && hs->opt != NBD_OPT_STARTTLS && hs->opt != NBD_OPT_ABORT) {
    if (hs->opt == NBD_OPT_EXPORT_NAME) {
      log_info ("%s: NBD_OPT_EXPORT_NAME before TLS, dropping",
                hs->conn->peer);
      hs->stage = ST_FAIL;
      return;
    }
    hs->action = ACT_TLS_REQD;
  }
  else if (hs->opt == NBD_OPT_EXPORT_NAME && len > NBD_MAX_STRING) {
    log_info ("%s: NBD_OPT_EXPORT_NAME: name too long (%u)",
              hs->conn->peer, len);
    hs->stage = ST_FAIL;
    return;
  }
  /* Never allocate what the client claims before checking it.  The
   * payload is drained so the stream stays in step. */
  else if (len > NBD_MAX_OPTION_LENGTH)
    hs->action = ACT_TOO_BIG;

  if (hs->action != ACT_OPTION || !parses_payload (hs->opt)) {
    hs->discard_left = len;
    hs->stage = ST_DISCARD;
  }
  else {
    hs->payload = malloc (len ? len : 1);
    if (hs->payload == NULL) {
      log_error ("%s: out of memory", hs->conn->peer);
      hs->stage = ST_FAIL;
      return;
    }
    hs->stage = ST_PAYLOAD;
  }
  if (len == 0)
    answer (hs);
}

static void
client_flags (struct handshake *hs)
{
  uint32_t cflags = load_be32 (hs->hdr);

  hs->got = 0;
  if (cflags & ~(uint32_t) (NBD_FLAG_C_FIXED_NEWSTYLE
                            | NBD_FLAG_C_NO_ZEROES)) {
    log_info ("%s: unknown client flags 0x%x, dropping", hs->conn->peer,
              cflags);
    hs->stage = ST_FAIL;
    return;
  }
  hs->fixed = cflags & NBD_FLAG_C_FIXED_NEWSTYLE;
  hs->conn->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
  log_debug ("%s: client flags 0x%x", hs->conn->peer, cflags);
  hs->stage = ST_OPTION;
}

/* ---- the machine's interface ------------------------------------------ */

struct handshake *
handshake_new (struct conn *conn, const struct export_source *src,
               enum tls_mode tls_mode)
{
  struct handshake *hs = calloc (1, sizeof *hs);
  char greet[GREETING_SIZE];

  if (hs == NULL)
    return NULL;
  hs->conn = conn;
  hs->src = src;
  hs->tls_mode = tls_mode;
  hs->stage = ST_FLAGS;
  store_be64 (greet, NBD_MAGIC);
  store_be64 (greet + 8, NBD_IHAVEOPT);
  store_be16 (greet + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  if (output (hs, greet, sizeof greet) == -1) {
    free (hs);
    return NULL;
  }
  return hs;
}

void
handshake_free (struct handshake *hs)
{
  if (hs == NULL)
    return;
  free (hs->payload);
  free (hs->out);
  free (hs->list_after);
  if (hs->meta_exp)
    hs->src->put (hs->meta_exp);
  free (hs);
}

enum handshake_status
handshake_status (const struct handshake *hs)
{
  switch (hs->stage) {
  case ST_STARTTLS: return HANDSHAKE_STARTTLS;
  case ST_DONE: return HANDSHAKE_DONE;
  case ST_END: return HANDSHAKE_END;
  case ST_FAIL: return HANDSHAKE_FAIL;
  default: return HANDSHAKE_INPUT;
  }
}

void *
handshake_input_buf (struct handshake *hs, size_t *len)
{
  *len = 0;
  if (hs->out_len > hs->out_off || hs->listing)
    return NULL;                /* replies first */
  switch (hs->stage) {
  case ST_FLAGS:
    *len = 4 - hs->got;
    return hs->hdr + hs->got;
  case ST_OPTION:
    *len = NBD_OPTION_HEADER_SIZE - hs->got;
    return hs->hdr + hs->got;
  case ST_PAYLOAD:
    *len = hs->len - hs->got;
    return hs->payload + hs->got;
  case ST_DISCARD:
    *len = MIN (hs->discard_left, (uint32_t) sizeof discard_buf);
    return discard_buf;
  default:
    return NULL;
  }
}

void
handshake_input (struct handshake *hs, size_t n)
{
  switch (hs->stage) {
  case ST_FLAGS:
    hs->got += n;
    if (hs->got == 4)
      client_flags (hs);
    break;
  case ST_OPTION:
    hs->got += n;
    if (hs->got == NBD_OPTION_HEADER_SIZE)
      option_header (hs);
    break;
  case ST_PAYLOAD:
    hs->got += n;
    if (hs->got == hs->len)
      answer (hs);
    break;
  case ST_DISCARD:
    hs->discard_left -= n;
    if (hs->discard_left == 0)
      answer (hs);
    break;
  default:
    abort ();                   /* no input was asked for */
  }
}

void
handshake_input_error (struct handshake *hs, int err)
{
  const char *what = strerror (err ? err : ECONNRESET);

  switch (hs->stage) {
  case ST_FLAGS:
    log_info ("%s: reading client flags: %s", hs->conn->peer, what);
    break;
  case ST_OPTION:
    /* Hung up between options (or in a header): that is how many
     * clients end, fine. */
    if (err == 0 || err == ECONNRESET) {
      hs->stage = ST_END;
      return;
    }
    log_info ("%s: reading option: %s", hs->conn->peer, what);
    break;
  case ST_PAYLOAD:
    log_info ("%s: reading %s payload: %s", hs->conn->peer,
              opt_name (hs->opt), what);
    break;
  case ST_DISCARD:
    /* No ACK for an ABORT whose payload never came, and no fuss. */
    if (hs->opt == NBD_OPT_ABORT && hs->action == ACT_OPTION) {
      hs->stage = ST_END;
      return;
    }
    log_info ("%s: reading option payload: %s", hs->conn->peer, what);
    break;
  default:
    log_info ("%s: %s", hs->conn->peer, what);
    break;
  }
  hs->stage = ST_FAIL;
}

const void *
handshake_output (const struct handshake *hs, size_t *len)
{
  *len = hs->out_len - hs->out_off;
  return *len ? hs->out + hs->out_off : NULL;
}

void
handshake_output_sent (struct handshake *hs, size_t n)
{
  hs->out_off += n;
  if (hs->out_off == hs->out_len) {
    /* An idle connection keeps no buffer. */
    free (hs->out);
    hs->out = NULL;
    hs->out_len = hs->out_off = 0;
    if (hs->listing && list_batch (hs) == -1) {
      hs->listing = false;
      hs->stage = ST_FAIL;
    }
  }
}

void
handshake_output_error (struct handshake *hs, int err)
{
  if (hs->stage == ST_FLAGS && hs->out_off < GREETING_SIZE)
    log_info ("%s: writing greeting: %s", hs->conn->peer, strerror (err));
  else if (hs->stage == ST_DONE && hs->opt == NBD_OPT_EXPORT_NAME)
    log_info ("%s: writing export info: %s", hs->conn->peer,
              strerror (err));
  else
    log_info ("%s: writing reply to %s: %s", hs->conn->peer,
              opt_name (hs->opt), strerror (err));
  /* The ACK of an ABORT is best effort. */
  if (hs->stage != ST_END)
    hs->stage = ST_FAIL;
}

void
handshake_tls_done (struct handshake *hs)
{
  assert (hs->stage == ST_STARTTLS);
  hs->tls = true;
  hs->conn->structured_replies = false;
  hs->conn->extended_headers = false;
  hs->conn->meta = 0;
  hs->src->put (hs->meta_exp);
  hs->meta_exp = NULL;
  log_debug ("%s: TLS established", hs->conn->peer);
  hs->stage = ST_OPTION;
}
