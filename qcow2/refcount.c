/* SPDX-License-Identifier: MIT */
/* Refcounts: reading them (the read-only engine needs them to tell
 * whether a layer was made with preallocation=metadata, the one case in
 * which QEMU reports host-file holes under allocated clusters as zeros)
 * and, for a writable layer, the refcount block cache, increments and
 * decrements, refcount block allocation and refcount table growth, and
 * where the file ends (host_end), following qcow2/ORDERING.md.
 * Decrements of references that were on disk wait in release.c until a
 * flush commits them; release.c and the allocator (alloc.c) stand on
 * this file, which calls neither. */
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

/* The refcount of entry I of a refcount block, 2^order bits wide;
 * narrower than a byte they pack from the least significant bit. */
static uint64_t
refcount_entry (const unsigned char *block, uint32_t order, uint64_t i)
{
  switch (order) {
  case 0: case 1: case 2: {
    unsigned bits = 1u << order;
    uint64_t bit = i * bits;
    return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
  }
  case 3: return block[i];
  case 4: return load_be16 (block + 2 * i);
  case 5: return load_be32 (block + 4 * i);
  default: return load_be64 (block + 8 * i);
  }
}

/* QEMU's rule (qcow2_detect_metadata_preallocation): the layer counts as
 * metadata-preallocated when the clusters with a nonzero refcount number
 * at least max(real * 10/9, real + 2), where 'real' is the clusters the
 * host file really occupies.  A fully allocated file cannot qualify, so
 * the refcount scan only happens for sparse files and stops at the
 * threshold. */
int
refcount_detect_metadata_prealloc (struct qcow2_layer *layer)
{
  struct qcow2_image *img = layer->img;
  const struct qcow2_file *f = &img->files[layer->file];
  uint64_t allocated, real, threshold, end_cluster, count = 0;
  uint64_t entries_per_block, nr_table;
  int r;

  layer->metadata_prealloc = false;
  if (layer->format != LAYER_QCOW2 || img->io->get_allocated == NULL)
    return 0;
  if (img->io->get_allocated (img->io_opaque, f->fd, &allocated) < 0)
    return 0;                   /* unknown: take the file as allocated */
  if (allocated >= f->size)
    return 0;

  real = allocated >> layer->cluster_bits;
  threshold = MAX (real * 10 / 9, real + 2);
  end_cluster = DIV_ROUND_UP (f->size, (uint64_t) layer->cluster_size);
  entries_per_block = ((uint64_t) layer->cluster_size * 8)
    >> layer->refcount_order;
  nr_table = ((uint64_t) layer->refcount_table_clusters
              << layer->cluster_bits) / 8;

  CLEANUP_FREE unsigned char *block = malloc (layer->cluster_size);
  if (block == NULL)
    return -ENOMEM;

  for (uint64_t t = 0; t < nr_table && count < threshold; t++) {
    uint64_t first = t * entries_per_block;
    unsigned char e[8];

    if (first >= end_cluster)
      break;
    r = img->io->pread (img->io_opaque, f->fd, e, 8,
                        layer->refcount_table_offset + 8 * t);
    if (r < 0)
      return r;
    uint64_t off = load_be64 (e) & REFT_OFFSET_MASK;
    if (off == 0)
      continue;
    /* header-parse.c validated the table's place, not its entries: a
     * bad entry ends the scan (the answer only tunes block status). */
    if (!IS_ALIGNED (off, layer->cluster_size) ||
        !range_fits (off, layer->cluster_size, f->size))
      break;
    r = img->io->pread (img->io_opaque, f->fd, block, layer->cluster_size,
                        off);
    if (r < 0)
      return r;
    for (uint64_t i = 0; i < entries_per_block && count < threshold; i++) {
      if (first + i >= end_cluster)
        break;
      count += refcount_entry (block, layer->refcount_order, i) != 0;
    }
  }
  layer->metadata_prealloc = count >= threshold;
  if (layer->metadata_prealloc)
    qcow2_log (img, QCOW2_LOG_DEBUG,
               "%s: metadata-preallocated image (host holes read as zeros)",
               f->name);
  return 0;
}

/* ---- The write side ----------------------------------------------------
 *
 * A writable layer keeps its refcount table in memory (layer->reftable,
 * host byte order) and a bounded cache of refcount blocks, each a whole
 * cluster in on-disk format with a dirty flag.  Increments go into the
 * cache at once; decrements of references that were on disk are deferred
 * (release.c) until the flush that made the dropped reference durable,
 * so a cluster is never reused before that (ORDERING.md).  A
 * dirty block may be written back at any moment: it can only hold early
 * increments (leaks at worst) and decrements that are already safe.
 *
 * Locking: everything here is guarded by layer->lock, held exclusively
 * by every caller (the _locked functions; init and destroy run while the
 * image is opened or closed, single-threaded). */

/* Refcount blocks kept in memory unless the caller asks for more. */
#define REFCOUNT_CACHE_DEFAULT (UINT64_C (1) << 20)
/* Never fewer slots than this: growth touches a few blocks at once. */
#define REFCOUNT_CACHE_MIN_SLOTS 8

struct rc_slot {
  uint64_t index;               /* refcount table index + 1; 0: empty */
  uint64_t last_used;           /* cache tick of the last use */
  bool dirty;                   /* differs from the block on disk */
  unsigned char *data;          /* one cluster, NULL until used */
};

struct refcount_cache {
  uint32_t nr_slots;
  uint64_t tick;
  struct rc_slot slots[];
};

static void
set_refcount_entry (unsigned char *block, uint32_t order, uint64_t i,
                    uint64_t value)
{
  switch (order) {
  case 0: case 1: case 2: {
    unsigned bits = 1u << order;
    uint64_t bit = i * bits;
    unsigned mask = ((1u << bits) - 1) << (bit % 8);
    block[bit / 8] = (block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask);
    break;
  }
  case 3: block[i] = value; break;
  case 4: store_be16 (block + 2 * i, value); break;
  case 5: store_be32 (block + 4 * i, value); break;
  default: store_be64 (block + 8 * i, value); break;
  }
}

/* log2 of the refcounts per block. */
static inline uint32_t
block_bits (const struct qcow2_layer *layer)
{
  return layer->cluster_bits + 3 - layer->refcount_order;
}

uint64_t
refcount_max (const struct qcow2_layer *layer)
{
  unsigned bits = 1u << layer->refcount_order;
  return bits == 64 ? UINT64_MAX : (UINT64_C (1) << bits) - 1;
}

int
refcount_init (struct qcow2_layer *layer, uint64_t cache_size)
{
  struct qcow2_image *img = layer->img;
  uint64_t bytes = (uint64_t) layer->refcount_table_clusters
    << layer->cluster_bits;
  uint64_t nr;
  int r;

  layer->reftable_entries = bytes / 8;
  layer->reftable = malloc (bytes ? bytes : 1);
  if (layer->reftable == NULL)
    return -errno;
  r = img->io->pread (img->io_opaque, img->files[layer->file].fd,
                      layer->reftable, bytes, layer->refcount_table_offset);
  if (r < 0)
    return r;
  for (uint64_t i = 0; i < layer->reftable_entries; i++)
    layer->reftable[i] = load_be64 (&layer->reftable[i]);

  if (cache_size == 0)
    cache_size = REFCOUNT_CACHE_DEFAULT;
  nr = MAX (cache_size >> layer->cluster_bits,
            (uint64_t) REFCOUNT_CACHE_MIN_SLOTS);
  nr = MIN (nr, UINT64_C (1) << 16);
  layer->refcount_cache = calloc (1, sizeof *layer->refcount_cache +
                                  nr * sizeof (struct rc_slot));
  if (layer->refcount_cache == NULL)
    return -errno;
  layer->refcount_cache->nr_slots = nr;

  layer->host_end = ROUND_UP (img->files[layer->file].size,
                              (uint64_t) layer->cluster_size);
  layer->free_hint = 0;
  return 0;
}

void
refcount_note_end_locked (struct qcow2_layer *layer, uint64_t end)
{
  struct qcow2_file *f = &layer->img->files[layer->file];

  if (end > layer->host_end)
    layer->host_end = end;
  /* l2-cache.c checks L2 table offsets against the file size. */
  if (end > f->size)
    f->size = end;
}

void
refcount_destroy (struct qcow2_layer *layer)
{
  struct refcount_cache *c = layer->refcount_cache;

  if (c != NULL) {
    for (uint32_t i = 0; i < c->nr_slots; i++)
      free (c->slots[i].data);
    free (c);
    layer->refcount_cache = NULL;
  }
  free (layer->reftable);
  layer->reftable = NULL;
  layer->reftable_entries = 0;
}

/* Write the block in slot S back to its place on disk. */
static int
write_slot (struct qcow2_layer *layer, struct rc_slot *s)
{
  struct qcow2_image *img = layer->img;
  int r;

  if (!s->dirty)
    return 0;
  r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd, s->data,
                       layer->cluster_size, layer->reftable[s->index - 1]);
  if (r == 0)
    s->dirty = false;
  return r;
}

/* Check refcount table entry T (it is non-zero) before following it. */
static int
check_reftable_entry (struct qcow2_layer *layer, uint64_t t)
{
  uint64_t e = layer->reftable[t];
  uint64_t off = e & REFT_OFFSET_MASK;

  if ((e & REFT_RESERVED_MASK) || !IS_ALIGNED (off, layer->cluster_size) ||
      !range_fits (off, layer->cluster_size, layer->host_end))
    return qcow2_corrupt (layer, "refcount table entry %" PRIu64 " (%#"
                          PRIx64 ") is invalid or outside the file",
                          t, e);
  return 0;
}

/* Find or load the refcount block of table index T, which has a
 * non-zero entry.  With FRESH, the block is not read: the caller
 * initialises all of it. */
static int
get_block (struct qcow2_layer *layer, uint64_t t, bool fresh,
           struct rc_slot **sp)
{
  struct refcount_cache *c = layer->refcount_cache;
  struct qcow2_image *img = layer->img;
  struct rc_slot *s = NULL, *empty = NULL, *lru = NULL;
  int r;

  for (uint32_t i = 0; i < c->nr_slots; i++) {
    struct rc_slot *x = &c->slots[i];

    if (x->index == t + 1) {
      s = x;
      break;
    }
    if (x->index == 0) {
      if (empty == NULL)
        empty = x;
    }
    else if (lru == NULL || x->last_used < lru->last_used)
      lru = x;
  }
  if (s == NULL) {
    r = check_reftable_entry (layer, t);
    if (r < 0)
      return r;
    s = empty ? empty : lru;
    if (s->index != 0) {
      r = write_slot (layer, s);    /* eviction: always safe */
      if (r < 0)
        return r;
      s->index = 0;
    }
    if (s->data == NULL) {
      s->data = malloc (layer->cluster_size);
      if (s->data == NULL)
        return -errno;
    }
    if (!fresh) {
      r = img->io->pread (img->io_opaque, img->files[layer->file].fd,
                          s->data, layer->cluster_size,
                          layer->reftable[t] & REFT_OFFSET_MASK);
      if (r < 0)
        return r;
    }
    s->index = t + 1;
    s->dirty = false;
  }
  s->last_used = ++c->tick;
  *sp = s;
  return 0;
}

/* Refcount of cluster index CL. */
static int
get_cluster (struct qcow2_layer *layer, uint64_t cl, uint64_t *refcount)
{
  uint64_t t = cl >> block_bits (layer);
  struct rc_slot *s;
  int r;

  *refcount = 0;
  if (t >= layer->reftable_entries || layer->reftable[t] == 0)
    return 0;
  r = get_block (layer, t, false, &s);
  if (r < 0)
    return r;
  *refcount = refcount_entry (s->data, layer->refcount_order,
                              cl & ((UINT64_C (1) << block_bits (layer)) - 1));
  return 0;
}

/* Set the refcount of cluster index CL, whose block exists. */
static int
set_cluster (struct qcow2_layer *layer, uint64_t cl, uint64_t value)
{
  uint64_t t = cl >> block_bits (layer);
  struct rc_slot *s;
  int r;

  if (t >= layer->reftable_entries || layer->reftable[t] == 0)
    return -EIO;                /* callers ensured the block */
  r = get_block (layer, t, false, &s);
  if (r < 0)
    return r;
  set_refcount_entry (s->data, layer->refcount_order,
                      cl & ((UINT64_C (1) << block_bits (layer)) - 1),
                      value);
  s->dirty = true;
  if (value == 0 && cl < layer->free_hint)
    layer->free_hint = cl;
  /* A free cluster may be handed out as anything: compressed streams
   * must not go on filling it (ORDERING.md, "Compressed clusters"). */
  if (value == 0 && layer->free_byte_offset != 0
      && layer->free_byte_offset >> layer->cluster_bits == cl)
    layer->free_byte_offset = 0;
  return 0;
}

int
refcount_get_locked (struct qcow2_layer *layer, uint64_t host,
                     uint64_t *refcount)
{
  return get_cluster (layer, host >> layer->cluster_bits, refcount);
}

/* Is cluster index CL free for a new refcount block or table: refcount
 * 0 as far as the cache knows, and (during repair) not referenced. */
static int
cluster_unused (struct qcow2_layer *layer, uint64_t cl, bool *unused)
{
  uint64_t rc;
  int r;

  *unused = false;
  if (cl < layer->repair_nr && layer->repair_counts[cl] != 0)
    return 0;
  if (cl == 0)
    return 0;
  r = get_cluster (layer, cl, &rc);
  if (r < 0)
    return r;
  *unused = rc == 0;
  return 0;
}

/* The layout of a refcount table growth (ORDERING.md, "Refcount table
 * growth"): clusters [e, e+k) at the end of the file hold the nb new
 * refcount blocks, then the new table of nt clusters (new_entries). */
struct reftable_growth {
  uint64_t e, k, nb, nt, new_entries;
};

/* Choose E, the first cluster past everything in use, and lay out
 * [E, E+k) until k is stable, stepping over clusters a block already
 * counts in use. */
static int
growth_layout (struct qcow2_layer *layer, uint64_t min_entries,
               struct reftable_growth *g)
{
  const uint32_t bb = block_bits (layer);
  const uint64_t cs = layer->cluster_size;
  const uint64_t per_cluster = cs / 8;
  const uint64_t max_entries = QCOW2_MAX_REFTABLE_BYTES / 8;
  uint64_t e, k = 1, nb = 0, nt = 0, new_entries = 0;
  int r;

  /* The first cluster past everything in use; clusters that a refcount
   * block claims in use past the file end are stepped over. */
  e = MAX (layer->host_end / cs, layer->repair_nr);
  e = MAX (e, layer->avoid_hi);
 again:
  for (int iter = 0; iter < 64; iter++) {
    uint64_t last_t, knew;

    if (e > (UINT64_C (1) << (56 - layer->cluster_bits)) - k)
      return -EFBIG;
    last_t = (e + k - 1) >> bb;
    new_entries = MAX (min_entries, last_t + 1);
    new_entries = MAX (new_entries, layer->reftable_entries);
    /* Headroom, so that growth is rare. */
    new_entries += new_entries / 2;
    new_entries = ROUND_UP (new_entries, per_cluster);
    if (new_entries > max_entries)
      new_entries = max_entries;
    if (new_entries < MAX (min_entries, last_t + 1))
      return -EFBIG;
    nt = new_entries / per_cluster;
    nb = 0;
    for (uint64_t t = e >> bb; t <= last_t; t++)
      if (t >= layer->reftable_entries || layer->reftable[t] == 0)
        nb++;
    knew = nb + nt;
    if (knew == k)
      break;
    k = knew;
  }
  /* The chosen clusters must be free where a block already counts them. */
  for (uint64_t i = 0; i < k; i++) {
    bool unused;

    r = cluster_unused (layer, e + i, &unused);
    if (r < 0)
      return r;
    if (!unused) {
      e += i + 1;
      k = 1;
      goto again;
    }
  }
  *g = (struct reftable_growth) {
    .e = e, .k = k, .nb = nb, .nt = nt, .new_entries = new_entries,
  };
  return 0;
}

/* Write the new refcount blocks of G at e, e+1, ...; each counts the
 * new clusters it covers (blocks that already exist count them in the
 * cache).  TABLE is the new table in memory, whose entries for the new
 * blocks are set here. */
static int
growth_write_blocks (struct qcow2_layer *layer,
                     const struct reftable_growth *g, uint64_t *table)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  const uint32_t bb = block_bits (layer);
  const uint64_t cs = layer->cluster_size;
  const uint64_t e = g->e, k = g->k;
  CLEANUP_FREE unsigned char *block = malloc (cs);
  uint64_t next = e;
  int r;

  if (block == NULL)
    return -ENOMEM;
  for (uint64_t t = e >> bb; t <= (e + k - 1) >> bb; t++) {
    if (t < layer->reftable_entries && layer->reftable[t] != 0)
      continue;
    table[t] = next++ << layer->cluster_bits;
  }
  for (uint64_t t = e >> bb; t <= (e + k - 1) >> bb; t++) {
    uint64_t lo = MAX (e, t << bb), hi = MIN (e + k, (t + 1) << bb);

    if (t < layer->reftable_entries && layer->reftable[t] != 0) {
      for (uint64_t cl = lo; cl < hi; cl++) {
        r = set_cluster (layer, cl, 1);
        if (r < 0)
          return r;
      }
      continue;
    }
    memset (block, 0, cs);
    for (uint64_t cl = lo; cl < hi; cl++)
      set_refcount_entry (block, layer->refcount_order,
                          cl - (t << bb), 1);
    r = img->io->pwrite (img->io_opaque, fd, block, cs, table[t]);
    if (r < 0)
      return r;
  }
  return 0;
}

/* Write the new table TABLE of G, make it and everything it names
 * durable, switch the header to it with one write, sync, and switch in
 * memory (the layer takes TABLE over: *TABLEP becomes NULL). */
static int
growth_switch_table (struct qcow2_layer *layer,
                     const struct reftable_growth *g, uint64_t **tablep)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  const uint64_t e = g->e, k = g->k, nb = g->nb, nt = g->nt;
  const uint64_t new_entries = g->new_entries;
  const uint64_t *table = *tablep;
  uint64_t toff = (e + nb) << layer->cluster_bits;
  CLEANUP_FREE uint64_t *be = malloc (new_entries * 8);
  unsigned char hdr[12];
  int r;

  /* The table, big-endian, at e + nb. */
  if (be == NULL)
    return -ENOMEM;
  for (uint64_t t = 0; t < new_entries; t++)
    store_be64 (&be[t], table[t]);
  r = img->io->pwrite (img->io_opaque, fd, be, new_entries * 8, toff);
  if (r < 0)
    return r;
  refcount_note_end_locked (layer, (e + k) << layer->cluster_bits);
  r = refcount_writeback_locked (layer);
  if (r == 0)
    r = sync_layer (layer);
  if (r < 0)
    return r;

  /* Switch: offset (u64) and clusters (u32) are adjacent, one write. */
  store_be64 (hdr, toff);
  store_be32 (hdr + 8, nt);
  r = img->io->pwrite (img->io_opaque, fd, hdr, sizeof hdr,
                       QCOW2_HDR_REFCOUNT_TABLE_OFFSET);
  if (r == 0)
    r = sync_layer (layer);
  if (r < 0)
    return r;
  qcow2_log (img, QCOW2_LOG_DEBUG, "refcount table grown to %" PRIu64
             " entries at %#" PRIx64, new_entries, toff);

  free (layer->reftable);
  layer->reftable = *tablep;
  *tablep = NULL;
  layer->reftable_entries = new_entries;
  layer->refcount_table_offset = toff;
  layer->refcount_table_clusters = nt;
  return 0;
}

/* The old table at OLD_OFF (OLD_CLUSTERS clusters) is unreferenced on
 * disk now: free it at once. */
static int
growth_free_old_table (struct qcow2_layer *layer, uint64_t old_off,
                       uint64_t old_clusters)
{
  int r;

  for (uint64_t i = 0; i < old_clusters; i++) {
    uint64_t cl = (old_off >> layer->cluster_bits) + i;
    uint64_t rc;

    if (cl < layer->repair_nr) {
      layer->repair_counts[cl] = 0;
      r = set_cluster (layer, cl, 0);
    }
    else {
      r = get_cluster (layer, cl, &rc);
      if (r == 0 && rc == 0)
        r = qcow2_corrupt (layer, "refcount of the old refcount table "
                           "cluster %#" PRIx64 " is 0",
                           cl << layer->cluster_bits);
      if (r == 0)
        r = set_cluster (layer, cl, rc - 1);
    }
    if (r < 0)
      return r;
  }
  return 0;
}

/* Grow the refcount table to at least MIN_ENTRIES entries.  The new
 * table and the refcount blocks it needs to describe itself go at the
 * end of the file, [E, E+k); see ORDERING.md. */
static int
grow_table (struct qcow2_layer *layer, uint64_t min_entries)
{
  uint64_t old_off = layer->refcount_table_offset;
  uint64_t old_clusters = layer->refcount_table_clusters;
  struct reftable_growth g;
  CLEANUP_FREE uint64_t *table = NULL;
  int r;

  r = growth_layout (layer, min_entries, &g);
  if (r < 0)
    return r;
  table = calloc (g.new_entries, 8);
  if (table == NULL)
    return -ENOMEM;
  for (uint64_t t = 0; t < layer->reftable_entries; t++)
    table[t] = layer->reftable[t];
  r = growth_write_blocks (layer, &g, table);
  if (r == 0)
    r = growth_switch_table (layer, &g, &table);
  if (r == 0)
    r = growth_free_old_table (layer, old_off, old_clusters);
  return r;
}

/* Does cluster index CL hold the refcount or L1 table we have in
 * memory?  (Their clusters have refcounts; this guards against handing
 * them out of a range whose block is missing, i.e. a corrupt image.) */
static bool
in_memory_table (const struct qcow2_layer *layer, uint64_t cl)
{
  uint64_t rt = layer->refcount_table_offset >> layer->cluster_bits;
  uint64_t l1c = layer->l1_table_offset >> layer->cluster_bits;
  uint64_t l1n = DIV_ROUND_UP ((uint64_t) layer->l1_size * 8,
                               (uint64_t) layer->cluster_size);

  return (cl >= rt && cl - rt < layer->refcount_table_clusters) ||
    (layer->l1_size > 0 && cl >= l1c && cl - l1c < l1n);
}

/* Install BLOCK (a whole refcount block, its own count already in it or
 * in another block) at cluster index B as the block of table index T:
 * write and sync it before the table entry names it (ORDERING.md, rule
 * 3), then write that entry without a sync (a lost entry only leaks the
 * block), and put the block in the cache, clean, without reading it
 * back. */
static int
install_block (struct qcow2_layer *layer, uint64_t t, uint64_t b,
               const unsigned char *block)
{
  struct qcow2_image *img = layer->img;
  const int fd = img->files[layer->file].fd;
  unsigned char e[8];
  struct rc_slot *s;
  int r;

  r = img->io->pwrite (img->io_opaque, fd, block, layer->cluster_size,
                       b << layer->cluster_bits);
  if (r == 0)
    r = sync_layer (layer);
  if (r < 0)
    return r;
  refcount_note_end_locked (layer, (b + 1) << layer->cluster_bits);
  store_be64 (e, b << layer->cluster_bits);
  r = img->io->pwrite (img->io_opaque, fd, e, 8,
                       layer->refcount_table_offset + 8 * t);
  if (r < 0)
    return r;
  layer->reftable[t] = b << layer->cluster_bits;
  if (b < layer->repair_nr)
    layer->repair_counts[b] = 1;
  r = get_block (layer, t, true, &s);
  if (r < 0)
    return r;
  memcpy (s->data, block, layer->cluster_size);
  s->dirty = false;
  return 0;
}

/* Create the refcount block of table index T, whose whole range is
 * being allocated (layer->avoid_lo/hi): it goes to the first free
 * cluster past that allocation, counted by the block of its own range
 * (created first if needed, covering itself). */
static int
place_elsewhere (struct qcow2_layer *layer, uint64_t t)
{
  const uint32_t bb = block_bits (layer);
  CLEANUP_FREE unsigned char *block = NULL;
  uint64_t b, rc;
  int r;

  for (b = MAX (layer->avoid_hi, 1);; b++) {
    uint64_t tb = b >> bb;

    if (b >= UINT64_C (1) << (56 - layer->cluster_bits))
      return -EFBIG;
    if (in_memory_table (layer, b) ||
        (b < layer->repair_nr && layer->repair_counts[b] != 0))
      continue;
    if (tb >= layer->reftable_entries || layer->reftable[tb] == 0) {
      r = refcount_ensure_block_locked (layer, b);
      if (r < 0)
        return r;
    }
    r = get_cluster (layer, b, &rc);
    if (r < 0)
      return r;
    if (rc == 0)
      break;
  }
  if (layer->reftable[t] != 0)    /* a growth on the way created it */
    return 1;

  /* Count the new block, durably, before anything points at it. */
  r = set_cluster (layer, b, 1);
  if (r == 0)
    r = refcount_writeback_locked (layer);
  if (r < 0)
    return r;
  block = calloc (1, layer->cluster_size);
  if (block == NULL)
    return -ENOMEM;
  r = install_block (layer, t, b, block);
  return r < 0 ? r : 1;
}

int
refcount_ensure_block_locked (struct qcow2_layer *layer, uint64_t cluster)
{
  const uint32_t bb = block_bits (layer);
  const uint64_t t = cluster >> bb;
  uint64_t b, first = t << bb, last = ((t + 1) << bb) - 1;
  CLEANUP_FREE unsigned char *block = NULL;
  int r;

  if (t >= layer->reftable_entries) {
    r = grow_table (layer, t + 1);
    if (r < 0)
      return r;
    /* The growth may have created the block. */
    if (layer->reftable[t] != 0)
      return 1;
  }
  if (layer->reftable[t] != 0)
    return 0;

  /* No block: every cluster of its range has refcount 0.  Put the block
   * in the first one nothing references and no allocation in progress
   * is taking, so it counts itself. */
  for (b = first; b <= last; b++) {
    if (b == 0 || in_memory_table (layer, b) ||
        (b >= layer->avoid_lo && b < layer->avoid_hi))
      continue;
    if (b < layer->repair_nr && layer->repair_counts[b] != 0)
      continue;
    break;
  }
  if (b > last)
    return place_elsewhere (layer, t);
  block = calloc (1, layer->cluster_size);
  if (block == NULL)
    return -ENOMEM;
  set_refcount_entry (block, layer->refcount_order, b - first, 1);
  r = install_block (layer, t, b, block);
  return r < 0 ? r : 1;
}

/* Check that adding DELTA to each of the N clusters from cluster index
 * CL keeps them in range; create missing blocks for increments. */
static int
check_adjust (struct qcow2_layer *layer, uint64_t cl, uint64_t n,
              int64_t delta)
{
  uint64_t maxv = refcount_max (layer);
  int r;

  for (uint64_t i = 0; i < n; i++) {
    uint64_t rc;

    if (delta > 0) {
      r = refcount_ensure_block_locked (layer, cl + i);
      if (r < 0)
        return r;
      if (r > 0 && i > 0)
        /* New metadata may have landed on the clusters checked so far:
         * check them again. */
        return check_adjust (layer, cl, n, delta);
    }
    r = get_cluster (layer, cl + i, &rc);
    if (r < 0)
      return r;
    if (delta < 0 && rc < (uint64_t) -(delta + 1) + 1)
      return qcow2_corrupt (layer, "refcount of cluster %#" PRIx64
                            " would drop below zero (it is %" PRIu64 ")",
                            (cl + i) << layer->cluster_bits, rc);
    if (delta > 0 && (uint64_t) delta > maxv - rc)
      return -EINVAL;           /* overflow: an error, never a wrap */
  }
  return 0;
}

int
refcount_adjust_locked (struct qcow2_layer *layer, uint64_t host,
                        uint64_t n, int64_t delta)
{
  uint64_t cl = host >> layer->cluster_bits;
  int r;

  if (delta == 0 || n == 0)
    return 0;
  if (!IS_ALIGNED (host, layer->cluster_size))
    return -EINVAL;
  /* Two passes: nothing changes unless every cluster can take it. */
  r = check_adjust (layer, cl, n, delta);
  if (r < 0)
    return r;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t rc;

    r = get_cluster (layer, cl + i, &rc);
    if (r == 0)
      r = set_cluster (layer, cl + i, rc + (uint64_t) delta);
    if (r < 0)
      return r;
  }
  return 0;
}

int
refcount_set_locked (struct qcow2_layer *layer, uint64_t host,
                     uint64_t value)
{
  uint64_t cl = host >> layer->cluster_bits;
  int r;

  if (value > refcount_max (layer))
    return -EINVAL;
  if (value != 0) {
    r = refcount_ensure_block_locked (layer, cl);
    if (r < 0)
      return r;
  }
  else {
    uint64_t t = cl >> block_bits (layer);
    if (t >= layer->reftable_entries || layer->reftable[t] == 0)
      return 0;
  }
  return set_cluster (layer, cl, value);
}

int
refcount_writeback_locked (struct qcow2_layer *layer)
{
  struct refcount_cache *c = layer->refcount_cache;
  int r;

  for (uint32_t i = 0; i < c->nr_slots; i++) {
    if (c->slots[i].index == 0)
      continue;
    r = write_slot (layer, &c->slots[i]);
    if (r < 0)
      return r;
  }
  return 0;
}
