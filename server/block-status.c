/* SPDX-License-Identifier: MIT */
/* BLOCK_STATUS for the metadata contexts the client selected:
 * base:allocation (data, hole, zero; host holes looked up with
 * SEEK_DATA/SEEK_HOLE where the layer says they matter),
 * qemu:allocation-depth and qemu:dirty-bitmap:NAME.  The range is mapped
 * batch by batch, the first two fed from the same extents, within a work
 * cap; a bitmap's extents are its runs of like bits, read from memory,
 * cut where qemu-nbd cuts them and capped where it caps them (1 MiB of
 * extents), so both servers give the same answer.  The reply is one
 * chunk per context, each covering a prefix of the range:
 * NBD_REPLY_TYPE_BLOCK_STATUS with 32-bit extent lengths, or with
 * extended headers NBD_REPLY_TYPE_BLOCK_STATUS_EXT with 64-bit lengths
 * and status, where one extent may cover a whole huge range.  The
 * contexts are those selected in the handshake, or the subset the
 * request's payload names (NBD_FLAG_BLOCK_STAT_PAYLOAD, parse.c). */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/byteorder.h"
#include "common/rounding.h"
#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "server/server.h"
#include "server/transmission.h"

/* Work cap: at most this many extents per mapped context in a reply,
 * and this many mapped extents looked at; a bitmap context has qemu-nbd's
 * cap (NBD_MAX_BLOCK_STATUS_EXTENTS). */
#define BS_MAX_EXTENTS 2048
#define BS_MAX_RAW 8192
#define BS_MAX_BITMAP_EXTENTS ((1u << 20) / 8)

struct bs_list {
  uint32_t id;
  /* Extents in wire order: (u32 length, u32 status) pairs, or with
   * extended headers (u64 length, u64 status). */
  uint8_t *ents;
  unsigned esz;                 /* 8 or 16 bytes per extent */
  size_t n, cap, max;           /* cap grows up to max */
  uint64_t last_len;
  uint32_t last_flags;
  bool full;
};

static void
bs_put (struct bs_list *l, size_t i, uint64_t len, uint32_t flags)
{
  uint8_t *p = l->ents + l->esz * i;

  if (l->esz == 16) {
    /* Our contexts' status is 32 bits: the top half is zero. */
    store_be64 (p, len);
    store_be64 (p + 8, flags);
  }
  else {
    /* Compact requests cover less than 4 GiB, and so does any sum of
     * extents inside one. */
    store_be32 (p, len);
    store_be32 (p + 4, flags);
  }
}

static void
bs_add (struct bs_list *l, uint64_t len, uint32_t flags)
{
  if (l->full || len == 0)
    return;
  if (l->n > 0 && l->last_flags == flags) {
    l->last_len += len;
    bs_put (l, l->n - 1, l->last_len, flags);
    return;
  }
  if (l->n == l->cap) {
    size_t cap = MIN (l->max, 4 * l->cap);
    uint8_t *ents = cap > l->cap ? realloc (l->ents, l->esz * cap) : NULL;

    /* At the cap, or out of memory: the reply covers a prefix. */
    if (ents == NULL) {
      l->full = true;
      return;
    }
    l->ents = ents;
    l->cap = cap;
  }
  bs_put (l, l->n, len, flags);
  l->last_len = len;
  l->last_flags = flags;
  l->n++;
}

/* base:allocation of a DATA extent whose layer says host holes matter
 * (qcow2_layer_host_holes): a hole in the host file reads as zeros and is
 * reported with HOLE_FLAGS (ZERO for a metadata-preallocated qcow2 layer,
 * HOLE|ZERO for a raw layer), as qemu-nbd does through its file layer. */
static void
bs_add_data (struct bs_list *l, int fd, uint64_t host, uint64_t len,
             uint32_t hole_flags)
{
  uint64_t pos = host, end = host + len;

  while (pos < end && !l->full) {
    off_t d = lseek (fd, pos, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO)       /* no data up to EOF */
        bs_add (l, end - pos, hole_flags);
      else                      /* no SEEK_DATA: assume data */
        bs_add (l, end - pos, 0);
      return;
    }
    if ((uint64_t) d > pos) {
      uint64_t h = MIN ((uint64_t) d, end);
      bs_add (l, h - pos, hole_flags);
      pos = h;
      if (pos >= end)
        return;
    }
    off_t hole = lseek (fd, pos, SEEK_HOLE);
    uint64_t dend = hole < 0 || (uint64_t) hole <= pos ? end
      : MIN ((uint64_t) hole, end);
    bs_add (l, dend - pos, 0);
    pos = dend;
  }
}

/* The runs of BM over [offset, offset+length), as qemu-nbd's
 * bitmap_to_extents gives them: dirty (1) or clean (0), cut at the
 * range's ends. */
static void
bs_bitmap (struct bs_list *l, const struct qcow2_bitmap *bm,
           uint64_t offset, uint64_t length)
{
  while (length > 0 && !l->full) {
    bool dirty;
    uint64_t n = qcow2_bitmap_extent (bm, offset, length, &dirty);

    bs_add (l, n, dirty ? NBD_STATE_DIRTY : 0);
    offset += n;
    length -= n;
  }
}

static void
bs_free_lists (struct bs_list *lists, size_t nlists)
{
  for (size_t i = 0; i < nlists; i++)
    free (lists[i].ents);
}

/* Set up a list for each context REQ asks for, in LISTS (META_MAX of
 * them, zeroed); bitmaps are filled at once, the contexts that come
 * from the mapping (*BASE, *DEPTH, or NULL) by bs_map.  Returns how
 * many, or -1 when out of memory (what was set up is freed). */
static int
bs_setup_lists (struct request *req, struct bs_list *lists,
                struct bs_list **base, struct bs_list **depth)
{
  const struct export *exp = req->cs->conn->exp;
  bool req_one = req->flags & NBD_CMD_FLAG_REQ_ONE;
  const unsigned esz = req->cs->conn->extended_headers ? 16 : 8;
  /* The reply's extents go out from one pool buffer (at most 32 MiB):
   * with many bitmaps selected each gets a share of it. */
  unsigned nbitmaps = __builtin_popcountll (req->meta >> META_DIRTY_BITMAP);
  size_t bitmap_max = MIN ((size_t) BS_MAX_BITMAP_EXTENTS,
                           ((size_t) 32 << 20) / esz / MAX (nbitmaps, 1u)
                           - BS_MAX_EXTENTS);
  size_t nlists = 0;

  for (unsigned m = 0; m < exp->nr_meta; m++) {
    if (!(req->meta & (UINT64_C (1) << m)))
      continue;
    struct bs_list *l = &lists[nlists++];
    l->id = META_CONTEXT_ID (m);
    l->esz = esz;
    l->max = req_one ? 1 : m >= META_DIRTY_BITMAP ? bitmap_max
      : BS_MAX_EXTENTS;
    l->cap = MIN (l->max, (size_t) 64);
    l->ents = malloc (esz * l->cap);
    if (l->ents == NULL) {
      bs_free_lists (lists, nlists);
      return -1;
    }
    if (m == META_BASE_ALLOCATION)
      *base = l;
    else if (m == META_ALLOCATION_DEPTH)
      *depth = l;
    else
      bs_bitmap (l, exp->bitmaps[m - META_DIRTY_BITMAP], req->offset,
                 req->length);
  }
  return nlists;
}

/* Map REQ's range batch by batch, feeding the mapped contexts (BASE,
 * DEPTH: either may be NULL), until the range is covered, they are full
 * (with REQ_ONE: their one extent has ended) or the work cap is
 * reached.  Each context's reply then covers a prefix of the range,
 * which the protocol allows.  A mapping failure sets the request's
 * error. */
static void
bs_map (struct request *req, struct bs_list *base, struct bs_list *depth)
{
  const struct export_fds *xf = conn_fds (req->cs);
  uint64_t pos = req->offset, end = req->offset + req->length;
  size_t nraw = 0;

  while ((base || depth) && pos < end && nraw < BS_MAX_RAW) {
    if ((!base || base->full) && (!depth || depth->full))
      break;

    req->nr_ext = 0;
    if (read_map_range (req, pos, end - pos, MAP_BATCH) < 0)
      break;
    for (size_t i = 0; i < req->nr_ext; i++) {
      const struct qcow2_extent *e = &req->ext[i];

      if (base) {
        enum qcow2_host_holes hh = e->type == QCOW2_EXTENT_DATA
          ? qcow2_layer_host_holes (e->layer) : QCOW2_HOST_HOLES_DATA;

        if (hh != QCOW2_HOST_HOLES_DATA && e->file < xf->nr)
          bs_add_data (base, xf->fds[e->file], e->host_offset, e->length,
                       hh == QCOW2_HOST_HOLES_ZERO ? NBD_STATE_ZERO
                       : NBD_STATE_HOLE | NBD_STATE_ZERO);
        else if (extent_is_hole (e))
          bs_add (base, e->length, NBD_STATE_HOLE | NBD_STATE_ZERO);
        else
          bs_add (base, e->length, 0);
      }
      if (depth)
        bs_add (depth, e->length,
                e->type == QCOW2_EXTENT_UNALLOCATED ? 0 : e->depth);
      pos += e->length;
    }
    nraw += req->nr_ext;
  }
}

/* Build and queue the reply: one chunk per context (header, context id
 * and with extended headers the count, then the extents), the extents
 * copied into one pool buffer.  The lists are freed either way. */
static void
bs_reply (struct request *req, struct bs_list *lists, size_t nlists)
{
  struct conn_state *cs = req->cs;
  const bool ext = cs->conn->extended_headers;
  const unsigned esz = ext ? 16 : 8;
  /* Chunk header, context id (and with extended headers the count). */
  const size_t chsz = reply_hdr_size (req) + (ext ? 8 : 4);
  size_t total = 0;

  for (size_t i = 0; i < nlists; i++)
    total += lists[i].n;
  if (reply_alloc (req, 2 * nlists, nlists * chsz) == -1
      || (req->buf = bufpool_get (cs->w, MAX (total * esz, (size_t) 1),
                                  &req->buf_cls)) == NULL) {
    bs_free_lists (lists, nlists);
    reply_release_iov (req);
    reply_error (req, ENOMEM, "out of memory");
    return;
  }
  char *data = req->buf;
  for (size_t i = 0; i < nlists; i++) {
    uint8_t *h = req->hdrs + i * chsz;
    size_t elen = (size_t) esz * lists[i].n;
    uint8_t *p = reply_put_struct_hdr (h, req,
                                       i == nlists - 1
                                       ? NBD_REPLY_FLAG_DONE : 0,
                                       ext ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                                       : NBD_REPLY_TYPE_BLOCK_STATUS,
                                       chsz - reply_hdr_size (req) + elen);
    store_be32 (p, lists[i].id);
    if (ext)
      store_be32 (p + 4, lists[i].n);
    reply_put_iov (req, h, chsz);
    memcpy (data, lists[i].ents, elen);
    reply_put_iov (req, data, elen);
    data += elen;
    free (lists[i].ents);
  }
  if (log_verbose >= 3)
    log_debug ("%s: BLOCK_STATUS cookie %#" PRIx64 " offset %" PRIu64
               " length %" PRIu64 ": %zu extents", cs->conn->peer,
               req->cookie, req->offset, req->length, total);
  reply_enqueue (req);
}

void
cmd_block_status (struct request *req)
{
  struct bs_list lists[META_MAX];
  struct bs_list *base = NULL, *depth = NULL;
  int nlists;

  memset (lists, 0, sizeof lists);
  nlists = bs_setup_lists (req, lists, &base, &depth);
  if (nlists < 0) {
    reply_error (req, ENOMEM, "out of memory");
    return;
  }
  bs_map (req, base, depth);
  if (req->err) {
    bs_free_lists (lists, nlists);
    reply_plain (req);
    return;
  }
  bs_reply (req, lists, nlists);
}
