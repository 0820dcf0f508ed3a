/* SPDX-License-Identifier: MIT */
/* Rounding and power-of-two helpers.  Alignments are always powers of two
 * here (cluster sizes, sector sizes, block sizes), so these are mask-based;
 * callers must not pass a non-power-of-two alignment. */
#ifndef COMMON_ROUNDING_H
#define COMMON_ROUNDING_H

#include <stdbool.h>
#include <stdint.h>

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* Round down/up to a power-of-two alignment.  ROUND_UP may overflow for
 * values within 'align' of UINT64_MAX: check with the overflow helpers
 * first when the value came from outside. */
#define ROUND_DOWN(v, align) ((v) & ~((__typeof__ (v)) (align) - 1))
#define ROUND_UP(v, align) ROUND_DOWN ((v) + (align) - 1, (align))
#define IS_ALIGNED(v, align) (((v) & ((__typeof__ (v)) (align) - 1)) == 0)
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

static inline bool
is_power_of_2 (uint64_t v)
{
  return v && (v & (v - 1)) == 0;
}

#endif /* COMMON_ROUNDING_H */
