/* SPDX-License-Identifier: MIT */
/* Big-endian loads and stores for on-disk (QCOW2) and on-wire (NBD)
 * structures.  Both formats are big-endian throughout; these helpers work
 * on unaligned byte pointers so parsers never cast a buffer to a struct.
 * One little-endian load, for recognising other formats' headers. */
#ifndef COMMON_BYTEORDER_H
#define COMMON_BYTEORDER_H

#include <stdint.h>
#include <string.h>
#include <endian.h>

static inline uint16_t
load_be16 (const void *p)
{
  uint16_t v;
  memcpy (&v, p, sizeof v);
  return be16toh (v);
}

static inline uint32_t
load_be32 (const void *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return be32toh (v);
}

static inline uint64_t
load_be64 (const void *p)
{
  uint64_t v;
  memcpy (&v, p, sizeof v);
  return be64toh (v);
}

static inline uint32_t
load_le32 (const void *p)
{
  uint32_t v;
  memcpy (&v, p, sizeof v);
  return le32toh (v);
}

static inline void
store_be16 (void *p, uint16_t v)
{
  v = htobe16 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
store_be32 (void *p, uint32_t v)
{
  v = htobe32 (v);
  memcpy (p, &v, sizeof v);
}

static inline void
store_be64 (void *p, uint64_t v)
{
  v = htobe64 (v);
  memcpy (p, &v, sizeof v);
}

#endif /* COMMON_BYTEORDER_H */
