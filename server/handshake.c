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
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/rounding.h"
#include "server/handshake-int.h"

/* Where dropped payload bytes go: one buffer per thread serves every
 * handshake of that thread, since nothing is kept. */
static _Thread_local char discard_buf[16384];

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
    return hsopt_error (hs, NBD_REP_ERR_TLS_REQD,
                       "Option 0x%x not permitted before TLS", hs->opt);
  case ACT_TOO_BIG:
    return hsopt_error (hs, NBD_REP_ERR_TOO_BIG,
                       "option length %u is over the limit of %u",
                       len, NBD_MAX_OPTION_LENGTH);
  case ACT_OPTION:
    break;
  }

  switch (hs->opt) {
  case NBD_OPT_LIST:
    return hsopt_list (hs, len);
  case NBD_OPT_STRUCTURED_REPLY:
    return hsopt_structured_reply (hs, len);
  case NBD_OPT_EXTENDED_HEADERS:
    return hsopt_extended_headers (hs, len);
  case NBD_OPT_STARTTLS:
    return hsopt_starttls (hs, len);
  case NBD_OPT_ABORT:
    /* Best effort: the client may already be gone. */
    hsopt_reply (hs, NBD_REP_ACK, NULL, 0);
    return OPT_END;
  case NBD_OPT_EXPORT_NAME:
    return hsopt_export_name (hs, hs->payload, len);
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    return hsopt_info_go (hs, hs->payload, len);
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    return hsopt_meta_context (hs, hs->payload, len);
  default:
    /* PEEK_EXPORT and anything we do not know. */
    return hsopt_error (hs, NBD_REP_ERR_UNSUP,
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
  log_debug ("%s: %s (%u), length %u", hs->conn->peer, hsopt_name (hs->opt),
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
  if (hsopt_output (hs, greet, sizeof greet) == -1) {
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
              hsopt_name (hs->opt), what);
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
    if (hs->listing && hsopt_list_batch (hs) == -1) {
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
              hsopt_name (hs->opt), strerror (err));
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
