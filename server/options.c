/* SPDX-License-Identifier: MIT */
/* Command line pieces that more than one subcommand uses: parsers for
 * values they both take (serve's --l2-cache-size, create's SIZE and
 * --cluster-size), so the subcommands agree on what "64K" means, and
 * the usage error reports, so they word mistakes alike.  The parsers
 * report failure and leave the message, which names the option, to the
 * caller. */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
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

void
options_usage_error (const char *prefix, const char *subcmd, const char *msg,
                     const char *arg)
{
  if (msg)
    fprintf (stderr, "qcow2-nbd: %s%s%s%s%s\n", prefix, msg,
             arg ? " '" : "", arg ? arg : "", arg ? "'" : "");
  fprintf (stderr, "Try 'qcow2-nbd %s --help' for more information.\n",
           subcmd);
  exit (EXIT_FAILURE);
}

void
options_getopt_error (options_bad_usage_fn bad_usage, int c, char **argv)
{
  if (c == ':')
    bad_usage ("missing argument for", argv[optind - 1]);
  if (optopt > 0 && optopt < 256) {
    char opt[3] = { '-', (char) optopt, '\0' };

    bad_usage ("unknown option", opt);
  }
  bad_usage ("unknown option", argv[optind - 1]);
}
