/* SPDX-License-Identifier: MIT */
/* Is a buffer all zeros?  For detect-zeroes, in the server's write path
 * and in compressed writes (which judge the request widened to whole
 * clusters). */
#ifndef COMMON_ISZERO_H
#define COMMON_ISZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static inline bool
is_zero (const void *buf, size_t len)
{
  const unsigned char *p = buf;

  /* The first 16 bytes by hand, then the buffer against itself shifted
   * by 16: memcmp is vectorised, a byte loop is not. */
  for (size_t i = 0; i < len && i < 16; i++)
    if (p[i] != 0)
      return false;
  return len <= 16 || memcmp (p, p + 16, len - 16) == 0;
}

#endif /* COMMON_ISZERO_H */
