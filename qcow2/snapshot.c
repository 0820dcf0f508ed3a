/* SPDX-License-Identifier: MIT */
/* Internal snapshots, read-only ("Snapshots" in qcow2.txt): serving one
 * means reading the guest through the snapshot's L1 table instead of the
 * active one, exactly what qemu-nbd -l and qemu-img convert -l do
 * (QEMU's qcow2_snapshot_load_tmp): the L2 tables and clusters it names
 * are shared with the active layer and other snapshots, and map.c reads
 * them like any other.  The disk keeps the active layer's virtual size,
 * as in QEMU: a snapshot L1 table shorter than that reads as unallocated
 * past its end (backing file, or zeros).
 *
 * Lookup follows QEMU's find_snapshot_by_id_and_name: the first entry
 * whose ID and/or name match what was given; qemu-nbd -l ID_OR_NAME
 * tries it as an ID first, then as a name.  header-parse.c has already
 * walked the table and bounded every entry to the file; the snapshot's L1
 * table is checked here (aligned, at most QEMU's size, inside the file)
 * before it is read. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* Does the entry at POS (header H) match ID and NAME (each NULL: not
 * compared)?  Sets *LEN to the entry's size with padding. */
static int
entry_matches (struct qcow2_layer *l, uint64_t pos, const uint8_t *h,
               const char *id, const char *name, uint64_t *len,
               bool *match)
{
  struct qcow2_image *img = l->img;
  uint32_t extra = load_be32 (h + QCOW2_SN_EXTRA_DATA_SIZE);
  uint16_t id_len = load_be16 (h + QCOW2_SN_ID_STR_SIZE);
  uint16_t name_len = load_be16 (h + QCOW2_SN_NAME_SIZE);
  CLEANUP_FREE char *s = NULL;
  int r;

  *len = ROUND_UP (QCOW2_SN_HEADER_SIZE + (uint64_t) extra + id_len
                   + name_len, 8);
  *match = false;
  s = malloc ((size_t) id_len + name_len + 1);
  if (s == NULL)
    return -ENOMEM;
  r = img->io->pread (img->io_opaque, img->files[l->file].fd, s,
                      (size_t) id_len + name_len,
                      pos + QCOW2_SN_HEADER_SIZE + extra);
  if (r < 0)
    return r;
  /* QEMU compares them as C strings: a NUL inside ends them. */
  *match = (id == NULL || (strnlen (s, id_len) == strlen (id) &&
                           strncmp (s, id, id_len) == 0)) &&
    (name == NULL || (strnlen (s + id_len, name_len) == strlen (name) &&
                      strncmp (s + id_len, name, name_len) == 0));
  return 0;
}

/* Find the snapshot ID and/or NAME; set *POS to its entry, or return
 * -ENOENT. */
static int
find (struct qcow2_layer *l, const char *id, const char *name,
      uint64_t *pos, uint8_t *h)
{
  struct qcow2_image *img = l->img;
  uint64_t p = l->snapshots_offset;

  for (uint32_t i = 0; i < l->nb_snapshots; i++) {
    uint64_t len = 0;
    bool match = false;
    int r;

    r = img->io->pread (img->io_opaque, img->files[l->file].fd, h,
                        QCOW2_SN_HEADER_SIZE, p);
    if (r == 0)
      r = entry_matches (l, p, h, id, name, &len, &match);
    if (r < 0)
      return r;
    if (match) {
      *pos = p;
      return 0;
    }
    p += len;
  }
  return -ENOENT;
}

int
snapshot_select (struct qcow2_layer *l, const struct qcow2_open_opts *opts)
{
  struct qcow2_image *img = l->img;
  const char *id = opts->snapshot_id, *name = opts->snapshot_name;
  uint8_t h[QCOW2_SN_HEADER_SIZE];
  uint64_t pos = 0, l1_off, l1_bytes;
  uint32_t l1_size;
  uint64_t *l1;
  char buf[256];
  int r;

  if (!opts->snapshot && !id && !name)
    return 0;
  if (img->writable)
    return qcow2_error (l, -EINVAL, "a snapshot can only be served "
                        "read-only");
  if (opts->snapshot) {
    /* qemu-nbd -l: an ID first, then a name. */
    r = find (l, opts->snapshot, NULL, &pos, h);
    if (r == -ENOENT)
      r = find (l, NULL, opts->snapshot, &pos, h);
  }
  else
    r = find (l, id, name, &pos, h);
  if (r == -ENOENT)
    return qcow2_error (l, r, "cannot find snapshot '%s'",
                        qcow2_printable (opts->snapshot ? opts->snapshot
                                         : name ? name : id, buf,
                                         sizeof buf));
  if (r < 0)
    return qcow2_error (l, r, "reading the snapshot table: %s",
                        strerror (-r));

  l1_off = load_be64 (h + QCOW2_SN_L1_TABLE_OFFSET);
  l1_size = load_be32 (h + QCOW2_SN_L1_SIZE);
  l1_bytes = (uint64_t) l1_size * QCOW2_L1E_SIZE;
  if (l1_bytes > QCOW2_MAX_L1_BYTES ||
      (l1_size > 0 && (l1_off == 0 || !IS_ALIGNED (l1_off, l->cluster_size)
                       || !range_fits (l1_off, l1_bytes,
                                       img->files[l->file].size))))
    return qcow2_error (l, -EINVAL, "the snapshot's L1 table at %#" PRIx64
                        " (%u entries) is too large, unaligned or outside "
                        "the file", l1_off, l1_size);
  l1 = malloc (l1_bytes ? l1_bytes : 1);
  if (l1 == NULL)
    return -ENOMEM;
  r = l1_bytes ? img->io->pread (img->io_opaque, img->files[l->file].fd, l1,
                                 l1_bytes, l1_off) : 0;
  if (r < 0) {
    free (l1);
    return qcow2_error (l, r, "reading the snapshot's L1 table: %s",
                        strerror (-r));
  }
  for (uint32_t i = 0; i < l1_size; i++)
    l1[i] = load_be64 (&l1[i]);
  free (l->l1);
  l->l1 = l1;
  l->l1_size = l1_size;
  l->l1_table_offset = l1_off;
  qcow2_log (img, QCOW2_LOG_DEBUG, "%s: serving the snapshot at table "
             "entry %#" PRIx64, img->files[l->file].name, pos);
  return 0;
}
