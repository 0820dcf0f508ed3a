/* SPDX-License-Identifier: MIT */
/* Parsers for command line values that more than one subcommand takes
 * (serve's --l2-cache-size, create's SIZE and --cluster-size), so the
 * subcommands agree on what "64K" means.  They report failure and leave
 * the message, which names the option, to the caller. */

#include <config.h>

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

#include "server/server.h"

int
options_parse_size (const char *s, uint64_t *size)
{
  char *end;
  uint64_t v, mult = 1;

  /* strtoull would accept leading blanks and a sign. */
  if (*s < '0' || *s > '9')
    return -1;
  errno = 0;
  v = strtoull (s, &end, 10);
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'k': case 'K': mult = UINT64_C (1) << 10; end++; break;
  case 'm': case 'M': mult = UINT64_C (1) << 20; end++; break;
  case 'g': case 'G': mult = UINT64_C (1) << 30; end++; break;
  case 't': case 'T': mult = UINT64_C (1) << 40; end++; break;
  default: return -1;
  }
  if (*end != '\0' || v > UINT64_MAX / mult)
    return -1;
  *size = v * mult;
  return 0;
}
