/* SPDX-License-Identifier: MIT */
/* The transmission phase's parser: request headers off the wire into a
 * struct nbd_request, and the checks a request must pass before a
 * command handler may run it ("Request message", "Request types",
 * "Command flags").  Pure functions of the bytes and what the connection
 * negotiated, so request.c and the fuzz targets share them.
 *
 * Extended headers (issue 16: NBD_OPT_EXTENDED_HEADERS, 32-byte requests
 * with a 64-bit length, NBD_CMD_FLAG_PAYLOAD_LEN) belong here: a
 * connection that negotiated them gets a different header size and
 * layout in parse_request and payload rules in parse_payload_len; the
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
  return NBD_REQUEST_SIZE;      /* extended headers: 32 */
}

enum parse_result
parse_request (const struct conn *conn, const uint8_t *p, size_t avail,
               struct nbd_request *r)
{
  if (avail < parse_header_size (conn))
    return PARSE_NEED_MORE;
  if (load_be32 (p) != NBD_REQUEST_MAGIC)
    return PARSE_BAD_MAGIC;
  r->flags = load_be16 (p + 4);
  r->type = load_be16 (p + 6);
  r->cookie = load_be64 (p + 8);
  r->offset = load_be64 (p + 16);
  r->length = load_be32 (p + 24);
  return PARSE_OK;
}

uint64_t
parse_payload_len (const struct conn *conn, const struct nbd_request *r)
{
  /* Only WRITE carries a payload. */
  return r->type == NBD_CMD_WRITE ? r->length : 0;
}

/* What a BLOCK_STATUS holds at most until its reply is sent: 2048
 * extents of 8 bytes for each of the two contexts, and the mapping
 * batch (block-status.c). */
#define BLOCK_STATUS_COST (64 * 1024)

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
    return r->length;
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
    if (conn->meta == 0) {
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
