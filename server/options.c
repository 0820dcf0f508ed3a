/* SPDX-License-Identifier: MIT */
/* Command line pieces that more than one subcommand uses: parsers for
 * values they both take (serve's --l2-cache-size, create's SIZE and
 * --cluster-size), so the subcommands agree on what "64K" means, the
 * snapshot selector serve's --load-snapshot shares with qemu-nbd's -l,
 * and the usage error reports, so they word mistakes alike.  The
 * parsers report failure and leave the message, which names the option,
 * to the caller. */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
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

/* One value of a QemuOpts list, ",," standing for a comma; *S moves
 * past it and its separator.  NULL when out of memory. */
static char *
opts_value (const char **s)
{
  char *v = malloc (strlen (*s) + 1), *o = v;

  if (v == NULL)
    return NULL;
  while (**s && (**s != ',' || (*s)[1] == ',')) {
    *o++ = **s;
    *s += **s == ',' ? 2 : 1;
  }
  *o = '\0';
  if (**s == ',')
    (*s)++;
  return v;
}

int
options_parse_snapshot (const char *arg, struct server_config *cfg)
{
  static const char base[] = "snapshot.";
  /* The values live as long as the process, like the argv strings. */
  static char *kept_id, *kept_name;

  if (strncmp (arg, base, strlen (base)) != 0) {
    cfg->snapshot = arg;
    cfg->snapshot_id = cfg->snapshot_name = NULL;
    return 0;
  }
  cfg->snapshot = cfg->snapshot_id = cfg->snapshot_name = NULL;
  while (*arg) {
    const char **field;
    char **kept;

    if (strncmp (arg, "snapshot.id=", 12) == 0) {
      field = &cfg->snapshot_id;
      kept = &kept_id;
      arg += 12;
    }
    else if (strncmp (arg, "snapshot.name=", 14) == 0) {
      field = &cfg->snapshot_name;
      kept = &kept_name;
      arg += 14;
    }
    else
      return -1;
    free (*kept);
    *kept = opts_value (&arg);
    if (*kept == NULL)
      return -1;
    *field = *kept;
  }
  return cfg->snapshot_id || cfg->snapshot_name ? 0 : -1;
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

unsigned
options_unsigned (options_bad_usage_fn bad_usage, const char *opt,
                  const char *s, unsigned min, unsigned max)
{
  char *end;
  unsigned long v;

  errno = 0;
  if (*s < '0' || *s > '9')
    bad_usage ("invalid number for", opt);
  v = strtoul (s, &end, 10);
  if (errno || *end || v < min || v > max) {
    fprintf (stderr, "qcow2-nbd: %s: '%s' must be a number from %u to %u\n",
             opt, s, min, max);
    bad_usage (NULL, NULL);
  }
  return v;
}

uint64_t
options_l2_cache_size (options_bad_usage_fn bad_usage, const char *s)
{
  uint64_t v;

  if (options_parse_size (s, &v) == -1)
    bad_usage ("invalid size for", "--l2-cache-size");
  if (v != 0 && v < QCOW2_MIN_L2_CACHE_SIZE)
    bad_usage ("--l2-cache-size is below the minimum of 64K", NULL);
  return v;
}

bool
options_discard (options_bad_usage_fn bad_usage, const char *s)
{
  /* qemu-nbd's names; "off" is its synonym of "ignore". */
  if (strcmp (s, "ignore") == 0 || strcmp (s, "off") == 0)
    return false;
  if (strcmp (s, "unmap") == 0 || strcmp (s, "on") == 0)
    return true;
  bad_usage ("--discard must be ignore or unmap, not", s);
}
