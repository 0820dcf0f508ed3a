/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the handshake state machine (server/handshake.c) fed
 * a client's bytes from memory, the way the listener feeds it from a
 * socket, and when the bytes negotiate the transmission phase, the rest
 * of them through the request parser on the connection as negotiated
 * (structured replies or extended headers, meta contexts).  The first
 * two bytes set up the
 * run:
 *   byte 0, bits 0-1  --tls: off, on, require (3: on)
 *           bit 2     a STARTTLS handshake succeeds (else it fails)
 *           bit 3     read our replies in pieces of one byte at a time
 *           bits 4-7  the export (fuzz_export's configuration bits 0-3)
 *   byte 1, bits 0-6  input arrives in pieces of at most this many bytes
 *                     (0: as much as the machine asks for)
 *           bit 7     the input ends with the time running out (a reply
 *                     that cannot be sent, or no option) instead of the
 *                     client hanging up
 * The replies are parsed as a client would: the greeting, then option
 * replies framed by their headers, always whole (and the export
 * information after NBD_OPT_EXPORT_NAME); any other byte aborts. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/rounding.h"
#include "fuzzing/nbd-fuzz.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: broken: %s\n", __FILE__, __LINE__,      \
               #cond);                                                  \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* A client's parser of the server's side of the handshake. */
struct replies {
  uint8_t buf[NBD_OPTION_REPLY_SIZE];   /* a header being gathered */
  size_t got;
  uint64_t payload_left;                /* of the current reply */
  bool greeted;
  unsigned count;
};

static void
replies_feed (struct replies *rp, const uint8_t *p, size_t len)
{
  while (len > 0) {
    size_t want = rp->greeted ? NBD_OPTION_REPLY_SIZE : 18;
    size_t n;

    if (rp->payload_left) {
      n = MIN (len, rp->payload_left);
      rp->payload_left -= n;
      p += n;
      len -= n;
      continue;
    }
    n = MIN (len, want - rp->got);
    memcpy (rp->buf + rp->got, p, n);
    rp->got += n;
    p += n;
    len -= n;
    if (rp->got < want)
      continue;
    rp->got = 0;
    if (!rp->greeted) {
      CHECK (load_be64 (rp->buf) == NBD_MAGIC);
      CHECK (load_be64 (rp->buf + 8) == NBD_IHAVEOPT);
      rp->greeted = true;
      continue;
    }
    /* The export information after EXPORT_NAME starts with the size,
     * not the reply magic: only allowed as the very end (checked by the
     * caller), so here every header is a reply. */
    CHECK (load_be64 (rp->buf) == NBD_REP_MAGIC);
    rp->payload_left = load_be32 (rp->buf + 16);
    CHECK (rp->payload_left <= 2 * NBD_MAX_STRING + 64);
    rp->count++;
  }
}

/* Take everything the machine has queued, as a client would read it.
 * The machine queues whole replies, so none is left half-parsed. */
static void
drain (struct handshake *hs, struct replies *rp, bool bytewise,
       const struct export *exp)
{
  size_t len;
  const uint8_t *p = handshake_output (hs, &len);

  if (handshake_status (hs) == HANDSHAKE_DONE && len >= 8
      && load_be64 (p) != NBD_REP_MAGIC) {
    /* NBD_OPT_EXPORT_NAME's answer: size, flags, maybe 124 zeroes. */
    CHECK (len == 10 || len == 10 + 124);
    CHECK (load_be64 (p) == exp->size);
    handshake_output_sent (hs, len);
    return;
  }
  while (len > 0) {
    size_t n = bytewise ? 1 : len;

    replies_feed (rp, p, n);
    handshake_output_sent (hs, n);
    p = handshake_output (hs, &len);
  }
  CHECK (rp->got == 0 && rp->payload_left == 0);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct export exp;
  struct conn conn;
  struct replies rp;
  struct handshake *hs;
  enum tls_mode modes[4] = { TLS_OFF, TLS_ON, TLS_REQUIRE, TLS_ON };
  bool tls_ok, bytewise, timeout;
  size_t piece;
  unsigned steps = 0;

  if (size < 2)
    return 0;
  tls_ok = data[0] & 4;
  bytewise = data[0] & 8;
  fuzz_export (&exp, data[0] >> 4);
  piece = data[1] & 0x7f ? data[1] & 0x7f : SIZE_MAX;
  timeout = data[1] & 0x80;
  memset (&conn, 0, sizeof conn);
  conn.fd = -1;
  strcpy (conn.peer, "fuzz");
  memset (&rp, 0, sizeof rp);
  fuzz_source_set (&exp);
  hs = handshake_new (&conn, &fuzz_source, modes[data[0] & 3]);
  if (hs == NULL)
    abort ();
  data += 2;
  size -= 2;

  for (;;) {
    enum handshake_status st = handshake_status (hs);
    size_t len;
    void *buf;

    CHECK (++steps < 10 * 1000 * 1000);
    if (st == HANDSHAKE_FAIL)
      break;                    /* dropped: what is queued is not sent */
    if (timeout && size == 0 && handshake_output (hs, &len) && len > 0) {
      handshake_output_error (hs, ETIMEDOUT);   /* the client stopped reading */
      CHECK (handshake_status (hs) == HANDSHAKE_FAIL
             || handshake_status (hs) == HANDSHAKE_END);
      break;
    }
    drain (hs, &rp, bytewise, &exp);
    if (st == HANDSHAKE_END)
      break;
    if (st == HANDSHAKE_DONE) {
      CHECK (conn.exp == &exp);
      CHECK (conn.meta == 0 || conn.structured_replies);
      CHECK (!conn.extended_headers || conn.structured_replies);
      fuzz_transmission (&conn, data, size);
      break;
    }
    if (st == HANDSHAKE_STARTTLS) {
      if (!tls_ok)
        break;                  /* the TLS handshake failed: closed */
      handshake_tls_done (hs);
      CHECK (!conn.structured_replies && !conn.extended_headers
             && conn.meta == 0);
      continue;
    }
    buf = handshake_input_buf (hs, &len);
    CHECK (buf != NULL && len > 0);
    if (size == 0) {
      if (!timeout)
        handshake_input_error (hs, 0);    /* the client hung up */
      else
        handshake_input_error (hs, ETIMEDOUT);
      continue;
    }
    len = MIN (len, MIN (size, piece));
    memcpy (buf, data, len);
    handshake_input (hs, len);
    data += len;
    size -= len;
  }
  handshake_free (hs);
  /* The connection's reference, if it got one, and no other. */
  CHECK (fuzz_source_refs () == (conn.exp != NULL));
  return 0;
}
