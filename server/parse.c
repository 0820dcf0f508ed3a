/* SPDX-License-Identifier: MIT */
/* The transmission phase's parser: request headers off the wire into a
 * struct nbd_request, and the checks a request must pass before a
 * command handler may run it ("Request message", "Request types",
 * "Command flags").  Pure functions of the bytes and what the connection
 * negotiated, so request.c and the fuzz targets share them.
 *
 * Extended headers (NBD_OPT_EXTENDED_HEADERS) change the header: 32
 * bytes with a 64-bit length, which is an effect length (TRIM,
 * WRITE_ZEROES, CACHE and BLOCK_STATUS may cover more than 4 GiB) unless
 * NBD_CMD_FLAG_PAYLOAD_LEN says a payload of that length follows (WRITE
 * must, BLOCK_STATUS may, to name the contexts it wants).  The
 * rest of the server sees the same struct nbd_request. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/rounding.h"
#include "server/nbd-protocol.h"
#include "server/server.h"

size_t
parse_header_size (const struct conn *conn)
{
  return conn->extended_headers ? NBD_EXTENDED_REQUEST_SIZE
    : NBD_REQUEST_SIZE;
}

enum parse_result
parse_request (const struct conn *conn, const uint8_t *p, size_t avail,
               struct nbd_request *r)
{
  if (avail < parse_header_size (conn))
    return PARSE_NEED_MORE;
  /* Each side uses the one header negotiated: the other magic is as
   * bad as any. */
  if (load_be32 (p) != (conn->extended_headers ? NBD_EXTENDED_REQUEST_MAGIC
                        : NBD_REQUEST_MAGIC))
    return PARSE_BAD_MAGIC;
  r->flags = load_be16 (p + 4);
  r->type = load_be16 (p + 6);
  r->cookie = load_be64 (p + 8);
  r->offset = load_be64 (p + 16);
  r->length = conn->extended_headers ? load_be64 (p + 24) : load_be32 (p + 24);
  r->meta = r->type == NBD_CMD_BLOCK_STATUS ? conn->meta : 0;
  return PARSE_OK;
}

uint64_t
parse_payload_len (const struct conn *conn, const struct nbd_request *r)
{
  /* Compact headers: only WRITE carries a payload.  Extended: whatever
   * says so, whether or not its command takes one ("Request message":
   * the server consumes it and fails the command). */
  if (conn->extended_headers)
    return r->flags & NBD_CMD_FLAG_PAYLOAD_LEN ? r->length : 0;
  return r->type == NBD_CMD_WRITE ? r->length : 0;
}

bool
parse_bs_payload_ok (const struct conn *conn)
{
  /* "Transmission flags": only with extended headers, and not worth
   * advertising when no context was selected. */
  return conn->extended_headers && conn->meta != 0;
}

/* The BLOCK_STATUS payload: a 64-bit effect length, then at least one
 * 32-bit context id, none repeated, so at most META_MAX of them. */
#define BS_PAYLOAD_MIN (8 + 4)
#define BS_PAYLOAD_MAX (8 + 4 * META_MAX)

int
parse_check_payload (const struct conn *conn, const struct nbd_request *r,
                     char *msg, size_t len)
{
  switch (r->type) {
  case NBD_CMD_WRITE:
    return parse_check (conn, r, msg, len);
  case NBD_CMD_BLOCK_STATUS:
    if (parse_bs_payload_ok (conn)) {
      if (r->length < BS_PAYLOAD_MIN || r->length > BS_PAYLOAD_MAX
          || (r->length - 8) % 4 != 0) {
        snprintf (msg, len, "bad BLOCK_STATUS payload length %" PRIu64,
                  r->length);
        return EINVAL;
      }
      return 0;
    }
    break;
  }
  snprintf (msg, len, "%s takes no payload", cmd_name (r->type));
  return EINVAL;
}

int
parse_payload (const struct conn *conn, struct nbd_request *r,
               const uint8_t *p, uint64_t len, char *msg, size_t msglen)
{
  uint64_t seen = 0;

  if (r->type != NBD_CMD_BLOCK_STATUS)
    return 0;                   /* a WRITE's payload is its data */
  /* parse_check_payload let only a sane length through. */
  if (len < BS_PAYLOAD_MIN || len > BS_PAYLOAD_MAX || (len - 8) % 4 != 0) {
    snprintf (msg, msglen, "bad BLOCK_STATUS payload length %" PRIu64, len);
    return EINVAL;
  }
  r->length = load_be64 (p);
  r->meta = 0;
  for (uint64_t i = 8; i < len; i += 4) {
    uint32_t id = load_be32 (p + i);
    uint64_t bit;

    /* Ids are META_CONTEXT_ID (m) for the selected contexts m. */
    if (id == 0 || id > META_MAX
        || !(conn->meta & (bit = UINT64_C (1) << (id - 1)))) {
      snprintf (msg, msglen, "unknown metadata context id %" PRIu32, id);
      return EINVAL;
    }
    if (seen & bit) {
      snprintf (msg, msglen, "metadata context id %" PRIu32 " repeated",
                id);
      return EINVAL;
    }
    seen |= bit;
  }
  r->meta = seen;
  return 0;
}

/* What a BLOCK_STATUS holds at most until its reply is sent: 2048
 * extents of 8 bytes (16 with extended headers) for each of the two
 * mapped contexts, and the mapping batch (block-status.c). */
#define BLOCK_STATUS_COST (128 * 1024)

uint64_t
parse_cost (const struct nbd_request *r)
{
  switch (r->type) {
  case NBD_CMD_BLOCK_STATUS:
    return BLOCK_STATUS_COST;
  case NBD_CMD_READ:
    /* A READ over the limit is refused before any buffer is taken. */
    return MIN (r->length, (uint64_t) NBD_MAX_PAYLOAD);
  case NBD_CMD_WRITE:
    /* Likewise a payload over it; and an extended WRITE without one
     * (refused) holds nothing. */
    return MIN (r->length, (uint64_t) NBD_MAX_PAYLOAD);
  default:
    return 0;
  }
}

/* Which flags each command accepts, beyond FUA (valid everywhere once
 * negotiated, "Command flags"). */
static uint16_t
valid_flags (const struct conn *conn, uint16_t type)
{
  uint16_t f = 0;

  if (conn->exp->eflags & NBD_FLAG_SEND_FUA)
    f |= NBD_CMD_FLAG_FUA;
  switch (type) {
  case NBD_CMD_READ:
    if (conn->structured_replies && (conn->exp->eflags & NBD_FLAG_SEND_DF))
      f |= NBD_CMD_FLAG_DF;
    break;
  case NBD_CMD_WRITE_ZEROES:
    f |= NBD_CMD_FLAG_NO_HOLE;
    if (conn->exp->eflags & NBD_FLAG_SEND_FAST_ZERO)
      f |= NBD_CMD_FLAG_FAST_ZERO;
    break;
  case NBD_CMD_BLOCK_STATUS:
    f |= NBD_CMD_FLAG_REQ_ONE;
    if (parse_bs_payload_ok (conn))
      f |= NBD_CMD_FLAG_PAYLOAD_LEN;
    break;
  case NBD_CMD_WRITE:
    if (conn->extended_headers)
      f |= NBD_CMD_FLAG_PAYLOAD_LEN;
    break;
  }
  return f;
}

/* The command names, for messages. */
const char *
cmd_name (uint16_t type)
{
  switch (type) {
  case NBD_CMD_READ: return "READ";
  case NBD_CMD_WRITE: return "WRITE";
  case NBD_CMD_DISC: return "DISC";
  case NBD_CMD_FLUSH: return "FLUSH";
  case NBD_CMD_TRIM: return "TRIM";
  case NBD_CMD_CACHE: return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  default: return "unknown";
  }
}

int
parse_check (const struct conn *conn, const struct nbd_request *r,
             char *msg, size_t len)
{
  const struct export *exp = conn->exp;

  if (r->flags & ~valid_flags (conn, r->type)) {
    snprintf (msg, len, "invalid flags %#x for %s", r->flags,
              cmd_name (r->type));
    return EINVAL;
  }
  /* "Command flags": with extended headers a WRITE MUST say that its
   * length is a payload; without the flag no data came. */
  if (conn->extended_headers && r->type == NBD_CMD_WRITE
      && !(r->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
    snprintf (msg, len, "WRITE without NBD_CMD_FLAG_PAYLOAD_LEN");
    return EINVAL;
  }

  switch (r->type) {
  case NBD_CMD_READ:
  case NBD_CMD_CACHE:
  case NBD_CMD_BLOCK_STATUS:
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    if (!range_fits (r->offset, r->length, exp->size)) {
      snprintf (msg, len, "request out of range: offset %" PRIu64
                " length %" PRIu64 " size %" PRIu64, r->offset, r->length,
                exp->size);
      /* Writing past the end: ENOSPC, as qemu-nbd says. */
      return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES
        ? ENOSPC : EINVAL;
    }
    break;
  }

  switch (r->type) {
  case NBD_CMD_READ:
    if (r->length > NBD_MAX_PAYLOAD) {
      snprintf (msg, len, "read of %" PRIu64 " bytes is over the %u byte "
                "limit", r->length, NBD_MAX_PAYLOAD);
      /* Structured replies allow the more precise EOVERFLOW. */
      return conn->structured_replies ? EOVERFLOW : EINVAL;
    }
    return 0;
  case NBD_CMD_BLOCK_STATUS:
    if (r->meta == 0) {
      snprintf (msg, len, "no metadata context selected");
      return EINVAL;
    }
    if (r->length == 0) {
      snprintf (msg, len, "zero length block status");
      return EINVAL;
    }
    return 0;
  case NBD_CMD_CACHE:
  case NBD_CMD_FLUSH:
    return 0;
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    if (exp->read_only) {
      snprintf (msg, len, "%s on a read-only export", cmd_name (r->type));
      return EPERM;
    }
    return 0;
  default:
    snprintf (msg, len, "unknown command %u", r->type);
    return EINVAL;
  }
}
