/* SPDX-License-Identifier: MIT */
/* The transmission half of the NBD fuzz targets: the request parser
 * (server/parse.c) over a byte stream, with the promises request.c and
 * the command handlers rely on checked for every request. */
#include <config.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked-overflow.h"
#include "common/rounding.h"
#include "fuzzing/nbd-fuzz.h"

#define CHECK(cond)                                                     \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "%s:%d: contract broken: %s\n", __FILE__,        \
               __LINE__, #cond);                                        \
      abort ();                                                         \
    }                                                                   \
  } while (0)

void
fuzz_export (struct export *exp, uint8_t cfg)
{
  static const uint64_t sizes[4] = {
    1 << 20, 0, (UINT64_C (1) << 63) - 512, (32 << 20) + 1,
  };

  memset (exp, 0, sizeof *exp);
  exp->name = cfg & 8 ? "fuzz" : "";
  exp->description = cfg & 8 ? "a fuzzed export" : NULL;
  exp->size = sizes[cfg & 3];
  exp->read_only = cfg & 4;
  exp->eflags = handshake_eflags (exp->read_only);
  exp->min_block = 1;
  exp->min_block_unasked = 1;
  exp->pref_block = 4096;
  exp->max_block = NBD_MAX_PAYLOAD;
  /* The contexts of contexts.c, and two dirty bitmaps by name (the
   * handshake never looks at the bitmaps themselves). */
  exp->meta_names[META_BASE_ALLOCATION] = "base:allocation";
  exp->meta_names[META_ALLOCATION_DEPTH] = "qemu:allocation-depth";
  exp->meta_names[META_DIRTY_BITMAP] = "qemu:dirty-bitmap:b0";
  exp->meta_names[META_DIRTY_BITMAP + 1] = "qemu:dirty-bitmap:fuzz";
  exp->nr_meta = META_DIRTY_BITMAP + 2;
  exp->metas = (UINT64_C (1) << exp->nr_meta) - 1;
}

static const struct export *fsource_exp;
static unsigned fsource_refs;

void
fuzz_source_set (const struct export *exp)
{
  fsource_exp = exp;
  fsource_refs = 0;
}

unsigned
fuzz_source_refs (void)
{
  return fsource_refs;
}

static uint32_t
fsource_get (const char *name, size_t len, const struct export **expp,
            char *msg, size_t msglen)
{
  if (strlen (fsource_exp->name) != len
      || memcmp (fsource_exp->name, name, len) != 0) {
    snprintf (msg, msglen, "no export named '%.*s'", (int) MIN (len, 64u),
              name);
    return NBD_REP_ERR_UNKNOWN;
  }
  fsource_refs++;
  *expp = fsource_exp;
  return 0;
}

static void
fsource_put (const struct export *exp)
{
  if (exp == NULL)
    return;
  CHECK (exp == fsource_exp && fsource_refs > 0);
  fsource_refs--;
}

static int
fsource_list (const char *after,
             int (*fn) (void *opaque, const char *name,
                        const char *description),
             void *opaque)
{
  if (after && strcmp (fsource_exp->name, after) <= 0)
    return 0;
  return fn (opaque, fsource_exp->name, fsource_exp->description);
}

const struct export_source fuzz_source = {
  .get = fsource_get,
  .put = fsource_put,
  .list = fsource_list,
};

/* What the command handlers rely on for a request parse_check let
 * through. */
static void
check_accepted (const struct conn *conn, const struct nbd_request *r)
{
  const struct export *exp = conn->exp;
  uint16_t known = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF
    | NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO
    | NBD_CMD_FLAG_PAYLOAD_LEN;

  CHECK ((r->flags & ~known) == 0);
  /* A payload only where extended headers let a command have one: the
   * WRITE that must, the BLOCK_STATUS that may once advertised. */
  CHECK (!(r->flags & NBD_CMD_FLAG_PAYLOAD_LEN)
         || (conn->extended_headers
             && (r->type == NBD_CMD_WRITE
                 || (r->type == NBD_CMD_BLOCK_STATUS
                     && parse_bs_payload_ok (conn)))));
  CHECK (!conn->extended_headers || r->type != NBD_CMD_WRITE
         || (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN));
  CHECK (!(r->flags & NBD_CMD_FLAG_FUA)
         || (exp->eflags & NBD_FLAG_SEND_FUA));
  CHECK (!(r->flags & NBD_CMD_FLAG_DF)
         || (r->type == NBD_CMD_READ && conn->structured_replies));
  switch (r->type) {
  case NBD_CMD_READ:
    CHECK (r->length <= NBD_MAX_PAYLOAD);
    /* fall through */
  case NBD_CMD_CACHE:
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    CHECK (range_fits (r->offset, r->length, exp->size));
    CHECK (r->type == NBD_CMD_READ || r->type == NBD_CMD_CACHE
           || !exp->read_only);
    break;
  case NBD_CMD_BLOCK_STATUS:
    CHECK (r->length > 0);
    CHECK (range_fits (r->offset, r->length, exp->size));
    CHECK (r->meta != 0 && (r->meta & ~conn->meta) == 0);
    break;
  case NBD_CMD_FLUSH:
    break;
  default:
    CHECK (!"an unknown command was accepted");
  }
}

void
fuzz_transmission (const struct conn *conn, const uint8_t *data,
                   size_t size)
{
  size_t hsz = parse_header_size (conn);

  for (;;) {
    struct nbd_request r;
    char msg[96];
    uint64_t plen;
    int err;

    switch (parse_request (conn, data, size, &r)) {
    case PARSE_NEED_MORE:
      CHECK (size < hsz);
      return;
    case PARSE_BAD_MAGIC:
      return;                   /* the connection is dropped */
    case PARSE_OK:
      break;
    }
    data += hsz;
    size -= hsz;
    if (r.type == NBD_CMD_DISC)
      return;
    plen = parse_payload_len (conn, &r);
    CHECK (plen == 0 || r.type == NBD_CMD_WRITE || conn->extended_headers);
    if (plen > NBD_MAX_PAYLOAD)
      return;                   /* dropped: the stream cannot stay in step */
    CHECK (parse_cost (&r) <= MAX ((uint64_t) NBD_MAX_PAYLOAD, 128 * 1024));

    /* As request.c: a payload is kept only if parse_check_payload says
     * so, then parsed (a BLOCK_STATUS's length and ids) before the
     * request is checked; one thrown away answers its refusal. */
    msg[0] = '\0';
    err = 0;
    if (plen > 0) {
      err = parse_check_payload (conn, &r, msg, sizeof msg);
      if (plen > size)
        return;                 /* the client hung up in the payload */
      if (err == 0) {
        CHECK (r.type == NBD_CMD_WRITE || r.type == NBD_CMD_BLOCK_STATUS);
        err = parse_payload (conn, &r, data, plen, msg, sizeof msg);
        CHECK (r.type != NBD_CMD_WRITE || r.length == plen);
      }
    }
    if (err == 0)
      err = parse_check (conn, &r, msg, sizeof msg);
    if (err == 0)
      check_accepted (conn, &r);
    else {
      CHECK (err == EINVAL || err == ENOSPC || err == EOVERFLOW
             || err == EPERM);
      CHECK (msg[0] != '\0' && strlen (msg) < sizeof msg);
      CHECK (err != EOVERFLOW || conn->structured_replies);
    }
    CHECK (strcmp (cmd_name (r.type), "") != 0);

    /* The payload follows, kept or thrown away alike. */
    if (plen > size)
      return;
    data += plen;
    size -= plen;
  }
}
