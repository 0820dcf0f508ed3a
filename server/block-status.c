/* SPDX-License-Identifier: MIT */
/* BLOCK_STATUS for the metadata contexts the client selected:
 * base:allocation (data, hole, zero; host holes looked up with
 * SEEK_DATA/SEEK_HOLE where the layer says they matter) and
 * qemu:allocation-depth.  The range is mapped batch by batch, every
 * context fed from the same extents, and the reply is one chunk per
 * context covering a prefix of the range, within a work cap. */

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

/* Work cap: at most this many extents per context in a reply, and this
 * many mapped extents looked at. */
#define BS_MAX_EXTENTS 2048
#define BS_MAX_RAW 8192

struct bs_list {
  uint32_t id;
  uint8_t *ents;                /* (u32 length, u32 flags) pairs, wire order */
  size_t n, max;
  uint32_t last_len, last_flags;
  bool full;
};

static void
bs_add (struct bs_list *l, uint64_t len, uint32_t flags)
{
  if (l->full || len == 0)
    return;
  if (l->n > 0 && l->last_flags == flags) {
    /* Lengths stay below 4 GiB: the request length is a u32. */
    l->last_len += len;
    store_be32 (l->ents + 8 * (l->n - 1), l->last_len);
    return;
  }
  if (l->n == l->max) {
    l->full = true;
    return;
  }
  store_be32 (l->ents + 8 * l->n, len);
  store_be32 (l->ents + 8 * l->n + 4, flags);
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

static void
bs_free_lists (struct bs_list *lists, size_t nlists)
{
  for (size_t i = 0; i < nlists; i++)
    free (lists[i].ents);
}

void
cmd_block_status (struct request *req)
{
  struct conn_state *cs = req->cs;
  struct worker *w = cs->w;
  struct bs_list lists[META_NR];
  size_t nlists = 0, nraw = 0;
  bool req_one = req->flags & NBD_CMD_FLAG_REQ_ONE;
  uint64_t pos = req->offset, end = req->offset + req->length;
  struct bs_list *base = NULL, *depth = NULL;

  memset (lists, 0, sizeof lists);
  for (unsigned m = 0; m < META_NR; m++) {
    if (!(cs->conn->meta & (1u << m)))
      continue;
    struct bs_list *l = &lists[nlists++];
    l->id = META_CONTEXT_ID (m);
    l->max = req_one ? 1 : BS_MAX_EXTENTS;
    l->ents = malloc (8 * l->max);
    if (l->ents == NULL) {
      bs_free_lists (lists, nlists);
      reply_error (req, ENOMEM, "out of memory");
      return;
    }
    if (m == META_BASE_ALLOCATION)
      base = l;
    else if (m == META_ALLOCATION_DEPTH)
      depth = l;
  }

  /* Map batch by batch, feeding every context, until the range is
   * covered, every context is full (with REQ_ONE: its one extent has
   * ended) or the work cap is reached.  Each context's reply then covers
   * a prefix of the range, which the protocol allows. */
  while (pos < end && nraw < BS_MAX_RAW) {
    bool all_full = true;
    for (size_t i = 0; i < nlists; i++)
      all_full &= lists[i].full;
    if (all_full)
      break;

    req->nr_ext = 0;
    if (read_map_range (req, pos, end - pos, MAP_BATCH) < 0)
      break;
    for (size_t i = 0; i < req->nr_ext; i++) {
      const struct qcow2_extent *e = &req->ext[i];

      if (base) {
        enum qcow2_host_holes hh = e->type == QCOW2_EXTENT_DATA
          ? qcow2_layer_host_holes (e->layer) : QCOW2_HOST_HOLES_DATA;

        if (hh != QCOW2_HOST_HOLES_DATA && e->file < w->nr_fds)
          bs_add_data (base, w->fds[e->file], e->host_offset, e->length,
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

  if (req->err) {
    bs_free_lists (lists, nlists);
    reply_plain (req);
    return;
  }

  /* One chunk per context: header + context id, then the extents. */
  size_t total = 0;
  for (size_t i = 0; i < nlists; i++)
    total += lists[i].n;
  if (reply_alloc (req, 2 * nlists, nlists * (STRUCT_HDR + 4)) == -1
      || (req->buf = bufpool_get (w, MAX (total * 8, (size_t) 1),
                                  &req->buf_cls)) == NULL) {
    bs_free_lists (lists, nlists);
    reply_release_iov (req);
    reply_error (req, ENOMEM, "out of memory");
    return;
  }
  char *data = req->buf;
  for (size_t i = 0; i < nlists; i++) {
    uint8_t *h = req->hdrs + i * (STRUCT_HDR + 4);
    uint8_t *p = reply_put_struct_hdr (h, req,
                                       i == nlists - 1
                                       ? NBD_REPLY_FLAG_DONE : 0,
                                       NBD_REPLY_TYPE_BLOCK_STATUS,
                                       4 + 8 * lists[i].n);
    store_be32 (p, lists[i].id);
    reply_put_iov (req, h, STRUCT_HDR + 4);
    memcpy (data, lists[i].ents, 8 * lists[i].n);
    reply_put_iov (req, data, 8 * lists[i].n);
    data += 8 * lists[i].n;
    free (lists[i].ents);
  }
  if (log_verbose >= 3)
    log_debug ("%s: BLOCK_STATUS cookie %#" PRIx64 " offset %" PRIu64
               " length %" PRIu32 ": %zu extents", cs->conn->peer,
               req->cookie, req->offset, req->length, total);
  reply_enqueue (req);
}
