/* SPDX-License-Identifier: MIT */
/* The L2 slice cache: a bounded, lazily allocated set of L2 table slices
 * per qcow2 layer, with LRU eviction.
 *
 * A slice is min(cluster_size, 4096) bytes of one L2 table (like QEMU's
 * l2-cache-entry-size), so a lookup costs a small read and the cache
 * covers many tables; slice memory is allocated the first time a cache
 * slot is filled, so a sparse 1 TiB image costs no more than its cache.
 * A slice is named by its host offset (L2 table offset + index * slice
 * size), which is unique and never 0 (cluster 0 is the header), so 0
 * marks an empty slot.  Lookups hash that offset into buckets chained
 * through the slot array.
 *
 * Locking: everything here is guarded by layer->lock.  A hit runs with
 * the lock shared and only touches the slot's 'last_used', an atomic
 * stamped from the cache's atomic tick (as QEMU's lru_counter); the
 * structure (keys, chains, data) changes only with the lock exclusive,
 * so a slice pointer handed out stays valid until the lock is released.
 * Misses evict the slot with the oldest stamp (a linear scan, paid only
 * next to a disk read).  qcow2_corrupt() is called with the lock held; it
 * must never take a layer lock.
 *
 * Writes change entries in the cached slices (l2_cache_get_dirty_locked)
 * and leave them dirty; they reach the file at a flush, or when a dirty
 * slice is evicted.  Either way qcow2/ORDERING.md applies: the refcount
 * cache is written back and every file of the layer synced first, so the
 * clusters a dirty entry names have durable refcounts and data before
 * the entry can be read back from disk. */

#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/rounding.h"
#include "qcow2/internal.h"

/* A cache never has fewer slots than this, whatever the option says. */
#define MIN_SLICES 16

struct l2_slot {
  uint64_t key;                 /* host offset of the slice; 0: empty */
  _Atomic uint64_t last_used;   /* tick of the last hit; 0: never */
  int32_t next;                 /* next slot in the bucket, -1: end */
  bool dirty;                   /* changed since read or written back */
  uint8_t *data;                /* slice_size bytes, NULL until used */
};

struct l2_cache {
  uint32_t slice_size;          /* bytes */
  uint32_t slice_entries;       /* L2 entries per slice */
  uint32_t nr_slots;
  uint32_t nr_used;             /* slots [0, nr_used) have held a slice */
  uint32_t bucket_mask;         /* buckets: power of two */
  _Atomic uint64_t tick;
  int32_t *buckets;             /* -1: empty */
  uint32_t nr_dirty;            /* slots with 'dirty' set */
  struct l2_slot slots[];
};

int
l2_cache_create (struct qcow2_layer *layer, uint64_t cache_size)
{
  uint32_t slice_size = MIN (layer->cluster_size, 4096u);
  uint64_t nr;
  uint32_t nr_buckets = 1;
  struct l2_cache *c;

  if (cache_size == 0)
    cache_size = QCOW2_DEFAULT_L2_CACHE_SIZE;
  if (cache_size < QCOW2_MIN_L2_CACHE_SIZE)
    cache_size = QCOW2_MIN_L2_CACHE_SIZE;
  nr = cache_size / slice_size;
  /* More slots than the image has slices is memory never used; but the
   * slots are small and the data is lazy, so only cap absurd sizes. */
  nr = MAX (nr, MIN_SLICES);
  nr = MIN (nr, UINT64_C (1) << 24);
  while (nr_buckets < 2 * nr)
    nr_buckets <<= 1;

  c = calloc (1, sizeof *c + nr * sizeof c->slots[0]);
  if (c == NULL)
    return -errno;
  c->buckets = malloc (nr_buckets * sizeof c->buckets[0]);
  if (c->buckets == NULL) {
    int err = errno;
    free (c);
    return -err;
  }
  memset (c->buckets, 0xff, nr_buckets * sizeof c->buckets[0]);
  c->slice_size = slice_size;
  c->slice_entries = slice_size / layer->l2_entry_size;
  c->nr_slots = nr;
  c->bucket_mask = nr_buckets - 1;
  for (uint32_t i = 0; i < nr; i++)
    c->slots[i].next = -1;
  layer->l2_cache = c;
  return 0;
}

void
l2_cache_destroy (struct qcow2_layer *layer)
{
  struct l2_cache *c = layer->l2_cache;

  if (c == NULL)
    return;
  for (uint32_t i = 0; i < c->nr_used; i++)
    free (c->slots[i].data);
  free (c->buckets);
  free (c);
  layer->l2_cache = NULL;
}

uint32_t
l2_cache_slice_entries (const struct qcow2_layer *layer)
{
  return layer->l2_cache->slice_entries;
}

static inline uint32_t
bucket_of (const struct l2_cache *c, uint64_t key)
{
  /* Keys are multiples of 512: drop those bits, then Fibonacci hash. */
  return ((key >> 9) * UINT64_C (0x9e3779b97f4a7c15)) >> 32 & c->bucket_mask;
}

static struct l2_slot *
find (struct l2_cache *c, uint64_t key)
{
  for (int32_t i = c->buckets[bucket_of (c, key)]; i >= 0;
       i = c->slots[i].next)
    if (c->slots[i].key == key)
      return &c->slots[i];
  return NULL;
}

static void
unlink_slot (struct l2_cache *c, struct l2_slot *s)
{
  int32_t *p = &c->buckets[bucket_of (c, s->key)];
  int32_t self = s - c->slots;

  while (*p != self)
    p = &c->slots[*p].next;
  *p = s->next;
  s->next = -1;
  s->key = 0;
}

/* Pick the slot to fill: a never used one while there are any (their
 * memory gets allocated now), else the least recently used clean one, else
 * the least recently used (the caller writes it back first). */
static struct l2_slot *
victim (struct l2_cache *c)
{
  struct l2_slot *best = NULL, *best_clean = NULL;
  uint64_t best_tick = UINT64_MAX, best_clean_tick = UINT64_MAX;

  if (c->nr_used < c->nr_slots)
    return &c->slots[c->nr_used++];
  for (uint32_t i = 0; i < c->nr_slots; i++) {
    uint64_t t = atomic_load_explicit (&c->slots[i].last_used,
                                       memory_order_relaxed);
    if (t < best_tick) {
      best_tick = t;
      best = &c->slots[i];
    }
    if (!c->slots[i].dirty && t < best_clean_tick) {
      best_clean_tick = t;
      best_clean = &c->slots[i];
    }
  }
  return best_clean ? best_clean : best;
}

/* Write every dirty slice to the file, without syncing. */
static int
write_dirty_locked (struct qcow2_layer *layer)
{
  struct l2_cache *c = layer->l2_cache;
  struct qcow2_image *img = layer->img;

  for (uint32_t i = 0; i < c->nr_used && c->nr_dirty > 0; i++) {
    struct l2_slot *s = &c->slots[i];
    int r;

    if (!s->dirty)
      continue;
    r = img->io->pwrite (img->io_opaque, img->files[layer->file].fd,
                         s->data, c->slice_size, s->key);
    if (r < 0)
      return r;         /* stays dirty: retried at the next writeback */
    s->dirty = false;
    c->nr_dirty--;
  }
  return 0;
}

int
l2_cache_writeback_locked (struct qcow2_layer *layer)
{
  if (layer->l2_cache == NULL)
    return 0;
  return write_dirty_locked (layer);
}

/* Make room by writing back dirty slices: steps 1-2 of the flush order
 * (qcow2/ORDERING.md) first, so the entries written never name clusters
 * whose refcounts or data are not durable.  All of them go, to amortize
 * the sync. */
static int
evict_dirty_locked (struct qcow2_layer *layer)
{
  int r;

  r = refcount_writeback_locked (layer);
  if (r == 0)
    r = sync_layer (layer);
  if (r < 0)
    return r;
  return write_dirty_locked (layer);
}

/* Check an L1 entry and return the L2 table offset it holds (0: no
 * table).  The table must be cluster aligned, inside the metadata file,
 * and not overlap the header. */
static int
l2_table_offset (struct qcow2_layer *layer, uint64_t l1_index,
                 uint64_t l1e, uint64_t *l2_offset)
{
  const struct qcow2_file *f = &layer->img->files[layer->file];
  uint64_t off = l1e & L1E_OFFSET_MASK;

  *l2_offset = 0;
  if (l1e & L1E_RESERVED_MASK)
    return qcow2_corrupt (layer, "L1 entry %" PRIu64 " (%#" PRIx64 ") "
                          "has reserved bits set", l1_index, l1e);
  if (off == 0)
    return 0;
  if (!IS_ALIGNED (off, layer->cluster_size))
    return qcow2_corrupt (layer, "L2 table offset %#" PRIx64 " in L1 "
                          "entry %" PRIu64 " is not cluster aligned",
                          off, l1_index);
  if (!range_fits (off, layer->cluster_size, f->size))
    return qcow2_corrupt (layer, "L2 table offset %#" PRIx64 " in L1 "
                          "entry %" PRIu64 " is past the end of the file "
                          "(%" PRIu64 " bytes)", off, l1_index, f->size);
  *l2_offset = off;
  return 0;
}

int
l2_cache_get_locked (struct qcow2_layer *layer, uint64_t l1_index,
                     uint32_t slice_index, bool *exclusive,
                     const uint8_t **slice)
{
  struct l2_cache *c = layer->l2_cache;
  struct qcow2_image *img = layer->img;
  struct l2_slot *s;
  uint64_t l1e, l2_offset, key;
  int r;

  *slice = NULL;
 again:
  l1e = l1_index < layer->l1_size ? layer->l1[l1_index] : 0;
  r = l2_table_offset (layer, l1_index, l1e, &l2_offset);
  if (r < 0 || l2_offset == 0)
    return r;
  key = l2_offset + (uint64_t) slice_index * c->slice_size;

  s = find (c, key);
  if (s != NULL) {
    uint64_t t = atomic_fetch_add_explicit (&c->tick, 1,
                                            memory_order_relaxed) + 1;
    atomic_store_explicit (&s->last_used, t, memory_order_relaxed);
    *slice = s->data;
    return 0;
  }

  if (!*exclusive) {
    /* Another thread may load the same slice (or change the L1 entry)
     * between the two locks: start over once exclusive. */
    rwlock_unlock_checked (&layer->lock);
    rwlock_wrlock_checked (&layer->lock);
    *exclusive = true;
    goto again;
  }

  s = victim (c);
  if (s->dirty) {
    r = evict_dirty_locked (layer);
    if (r < 0)
      return r;
  }
  if (s->key != 0)
    unlink_slot (c, s);
  atomic_store_explicit (&s->last_used, 0, memory_order_relaxed);
  if (s->data == NULL) {
    s->data = malloc (c->slice_size);
    if (s->data == NULL)
      return -errno;
  }
  r = img->io->pread (img->io_opaque, img->files[layer->file].fd,
                      s->data, c->slice_size, key);
  if (r < 0)
    return r;           /* the slot stays empty */

  s->key = key;
  s->next = c->buckets[bucket_of (c, key)];
  c->buckets[bucket_of (c, key)] = s - c->slots;
  atomic_store_explicit (&s->last_used,
                         atomic_fetch_add_explicit (&c->tick, 1,
                                                    memory_order_relaxed) + 1,
                         memory_order_relaxed);
  *slice = s->data;
  return 0;
}

int
l2_cache_get_dirty_locked (struct qcow2_layer *layer, uint64_t l1_index,
                           uint32_t slice_index, uint8_t **slice)
{
  struct l2_cache *c = layer->l2_cache;
  const uint8_t *p;
  bool exclusive = true;
  struct l2_slot *s;
  int r;

  *slice = NULL;
  r = l2_cache_get_locked (layer, l1_index, slice_index, &exclusive, &p);
  if (r < 0 || p == NULL)
    return r;
  s = find (c, (layer->l1[l1_index] & L1E_OFFSET_MASK)
            + (uint64_t) slice_index * c->slice_size);
  if (s == NULL || s->data != p)
    return -EIO;        /* cannot happen: the lookup just found it */
  if (!s->dirty) {
    s->dirty = true;
    c->nr_dirty++;
  }
  *slice = s->data;
  return 0;
}

void
l2_cache_forget_table_locked (struct qcow2_layer *layer, uint64_t host)
{
  struct l2_cache *c = layer->l2_cache;

  for (uint64_t off = 0; off < layer->cluster_size; off += c->slice_size) {
    struct l2_slot *s = find (c, host + off);

    if (s == NULL)
      continue;
    unlink_slot (c, s);
    atomic_store_explicit (&s->last_used, 0, memory_order_relaxed);
    if (s->dirty) {
      s->dirty = false;
      c->nr_dirty--;
    }
  }
}
