/* SPDX-License-Identifier: MIT */
/* The handshake's options (NBD proto.md, "Option types"), each answered
 * from its payload, and the replies they queue on the handshake's
 * output: EXPORT_NAME, LIST (in batches), INFO and GO, STRUCTURED_REPLY,
 * EXTENDED_HEADERS, LIST/SET_META_CONTEXT and STARTTLS.  Below the
 * state machine (handshake.c), which reads the option and calls the
 * handler; see there for how hostile input is met.  Every field inside
 * a payload is bounds-checked against what is left of it here. */

#include <config.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "server/handshake-int.h"

const char *
hsopt_name (uint32_t opt)
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
int
hsopt_output (struct handshake *hs, const void *buf, size_t len)
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
int
hsopt_reply (struct handshake *hs, uint32_t type, const void *payload,
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
  if (hsopt_output (hs, hdr, sizeof hdr) == -1
      || (len > 0 && hsopt_output (hs, payload, len) == -1))
    return -1;
  return 0;
}

/* An error reply with a human-readable message as its payload. */
int
hsopt_error (struct handshake *hs, uint32_t type, const char *fmt, ...)
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
             hsopt_name (hs->opt), type, msg);
  return hsopt_reply (hs, type, msg, n);
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
int
hsopt_export_name (struct handshake *hs, const char *payload, uint32_t len)
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
  if (hsopt_output (hs, buf, n) == -1) {
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
  return hsopt_reply (hs, NBD_REP_SERVER, buf, 4 + nlen + dlen);
}

/* Queue the next batch of NBD_OPT_LIST replies, and the ACK after the
 * last.  Returns 0 or -1 (drop). */
int
hsopt_list_batch (struct handshake *hs)
{
  int r = hs->src->list (hs->list_after, list_one, hs);

  if (r == -1)
    return -1;
  if (r == 1)
    return 0;                   /* more once this batch is sent */
  free (hs->list_after);
  hs->list_after = NULL;
  hs->listing = false;
  return hsopt_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST: an NBD_REP_SERVER per export, then ACK. */
int
hsopt_list (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_LIST must have no payload");
  hs->listing = true;
  return hsopt_list_batch (hs);
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
  return hsopt_reply (hs, NBD_REP_INFO, buf, 2 + len);
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
    return hsopt_error (hs, NBD_REP_ERR_BLOCK_SIZE_REQD,
                       "request NBD_INFO_BLOCK_SIZE to use this export");
  if (hsopt_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  return hs->opt == NBD_OPT_GO;
}

/* NBD_OPT_INFO and NBD_OPT_GO.  Payload: u32 name length, name, u16
 * number of requests, that many u16 info types.  Returns 1 when GO
 * succeeded, 0 to go on negotiating, -1 to drop. */
int
hsopt_info_go (struct handshake *hs, const char *p, uint32_t len)
{
  const struct export *exp;
  uint32_t nlen, err;
  uint16_t nreq, i;
  const char *name;
  bool want_name = false, want_desc = false, want_sizes = false;
  char msg[256];
  int r;

  if (len < 4 + 2)
    return hsopt_error (hs, NBD_REP_ERR_INVALID, "option too short");
  nlen = load_be32 (p);
  if (nlen > len - 4 - 2)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option");
  if (nlen > NBD_MAX_STRING)
    return hsopt_error (hs, NBD_REP_ERR_TOO_BIG, "export name too long");
  name = p + 4;
  nreq = load_be16 (p + 4 + nlen);
  /* Exactly: (len - 6 - nlen) is even and matches the count. */
  if ((uint64_t) len - 4 - nlen - 2 != (uint64_t) nreq * 2)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "information request count does not match length");
  for (i = 0; i < nreq; i++) {
    uint16_t type = load_be16 (p + 4 + nlen + 2 + 2 * i);

    log_debug ("%s: %s: client requests info %u", hs->conn->peer,
               hsopt_name (hs->opt), type);
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
    return hsopt_error (hs, err, "%s", msg);
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

int
hsopt_structured_reply (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_STRUCTURED_REPLY must have no payload");
  /* "NBD_OPT_STRUCTURED_REPLY": no going back from extended headers. */
  if (hs->conn->extended_headers)
    return hsopt_error (hs, NBD_REP_ERR_EXT_HEADER_REQD,
                       "extended headers already negotiated");
  if (hs->conn->structured_replies)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "structured replies already negotiated");
  hs->conn->structured_replies = true;
  return hsopt_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_EXTENDED_HEADERS: 32-byte headers both ways.  Allowed with or
 * without structured replies before it, which it supersedes (chunks are
 * then the only replies); meta contexts selected before it stay. */
int
hsopt_extended_headers (struct handshake *hs, uint32_t len)
{
  if (len != 0)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_EXTENDED_HEADERS must have no payload");
  if (hs->conn->extended_headers)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "extended headers already negotiated");
  hs->conn->extended_headers = true;
  hs->conn->structured_replies = true;
  return hsopt_reply (hs, NBD_REP_ACK, NULL, 0);
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
    if (hsopt_reply (hs, NBD_REP_META_CONTEXT, buf, 4 + mlen) == -1)
      return -1;
  }
  return hsopt_reply (hs, NBD_REP_ACK, NULL, 0);
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.  Payload: u32
 * export name length, name, u32 number of queries, then each query as
 * u32 length and string.  The queries are checked whole before the
 * export is looked up, then matched against its contexts. */
int
hsopt_meta_context (struct handshake *hs, const char *p, uint32_t len)
{
  bool list = hs->opt == NBD_OPT_LIST_META_CONTEXT;
  uint32_t nlen, nq, i, pos, qstart, err;
  uint64_t sel = 0;
  const struct export *exp;
  const char *name;
  char msg[256];
  int r;

  if (!list && !hs->conn->structured_replies)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "negotiate structured replies first");
  if (len < 4)
    return hsopt_error (hs, NBD_REP_ERR_INVALID, "option too short");
  nlen = load_be32 (p);
  if (nlen > len - 4 || len - 4 - nlen < 4)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "export name length exceeds the option");
  if (nlen > NBD_MAX_STRING)
    return hsopt_error (hs, NBD_REP_ERR_TOO_BIG, "export name too long");
  name = p + 4;
  pos = 4 + nlen;
  nq = load_be32 (p + pos);
  pos += 4;
  qstart = pos;

  for (i = 0; i < nq; i++) {
    uint32_t qlen;

    if (len - pos < 4)
      return hsopt_error (hs, NBD_REP_ERR_INVALID,
                         "query %u runs past the option", i);
    qlen = load_be32 (p + pos);
    pos += 4;
    if (qlen > len - pos)
      return hsopt_error (hs, NBD_REP_ERR_INVALID,
                         "query %u runs past the option", i);
    if (qlen > NBD_MAX_STRING)
      return hsopt_error (hs, NBD_REP_ERR_TOO_BIG, "query %u too long", i);
    log_debug ("%s: %s: query '%.*s'", hs->conn->peer, hsopt_name (hs->opt),
               (int) MIN (qlen, 256u), p + pos);
    pos += qlen;
  }
  if (pos != len)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "trailing bytes after the queries");
  err = hs->src->get (name, nlen, &exp, msg, sizeof msg);
  if (err != 0)
    return hsopt_error (hs, err, "%s", msg);

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

/* NBD_OPT_STARTTLS: reply with a bare ACK; the caller runs the TLS
 * handshake once it is sent, and handshake_tls_done forgets everything
 * negotiated in clear text. */
int
hsopt_starttls (struct handshake *hs, uint32_t len)
{
  if (hs->tls_mode == TLS_OFF)
    return hsopt_error (hs, NBD_REP_ERR_POLICY,
                       "TLS is not enabled on this server");
  if (hs->tls)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "TLS is already active");
  if (len != 0)
    return hsopt_error (hs, NBD_REP_ERR_INVALID,
                       "NBD_OPT_STARTTLS must have no payload");
  if (hsopt_reply (hs, NBD_REP_ACK, NULL, 0) == -1)
    return -1;
  return OPT_STARTTLS;
}
