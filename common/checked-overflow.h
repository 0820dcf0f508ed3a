/* SPDX-License-Identifier: MIT */
/* Overflow-checked arithmetic for values that came from a file or a
 * socket.  Each returns true when the result overflowed (and the stored
 * result must then not be used), matching the compiler builtins. */
#ifndef COMMON_CHECKED_OVERFLOW_H
#define COMMON_CHECKED_OVERFLOW_H

#include <stdbool.h>
#include <stdint.h>

#define ADD_OVERFLOW(a, b, r) __builtin_add_overflow ((a), (b), (r))
#define MUL_OVERFLOW(a, b, r) __builtin_mul_overflow ((a), (b), (r))

/* Does [off, off+len) fit inside [0, size)?  Written so that no
 * intermediate value can overflow. */
static inline bool
range_fits (uint64_t off, uint64_t len, uint64_t size)
{
  return off <= size && len <= size - off;
}

#endif /* COMMON_CHECKED_OVERFLOW_H */
