/* SPDX-License-Identifier: MIT */
/* The create subcommand: "qcow2-nbd create [OPTIONS] IMAGE [SIZE]" makes a
 * new, empty QCOW2 image through qcow2_create(), so scripts and CI can make
 * throwaway overlays without qemu-img.  This file only turns the command
 * line into struct qcow2_create_opts and reports the result the way
 * qemu-img create does ("Formatting 'x', fmt=qcow2 ..."); every check of
 * the options themselves is the library's, so there is one set of rules. */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "server/server.h"

static void
create_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd create [OPTIONS] IMAGE [SIZE]\n"
"\n"
"Make a new, empty QCOW2 image IMAGE with a virtual size of SIZE bytes\n"
"(suffixes K, M, G, T: powers of 1024).  With a backing file SIZE may be\n"
"left out: the image then has the backing file's size.  IMAGE must not\n"
"exist.\n"
"\n"
"  -b, --backing=FILE            backing file, stored as given (a relative\n"
"                                name is relative to IMAGE's directory)\n"
"  -F, --backing-format=FMT      format of the backing file: qcow2 or raw\n"
"                                (required with --backing)\n"
"      --cluster-size=SIZE       cluster size, a power of two from 512\n"
"                                to 2M (default 64K)\n"
"      --compat=0.10|1.1         image version: 0.10 (version 2) or 1.1\n"
"                                (version 3, the default); v2 and v3 work too\n"
"      --compression-type=TYPE   zlib (default) or zstd (version 3 only)\n"
"      --extended-l2             extended L2 entries (subclusters); needs\n"
"                                version 3 and clusters of 16K or more\n"
"      --refcount-bits=N         refcount width: 1, 2, 4, 8, 16 (default),\n"
"                                32 or 64 (version 3 for other than 16)\n"
"      --lazy-refcounts          set the lazy_refcounts feature (version 3)\n"
"  -q, --quiet                   print nothing on success\n"
"  -h, --help                    print this help\n");
}

static void __attribute__ ((noreturn))
create_bad_usage (const char *msg, const char *arg)
{
  options_usage_error ("create: ", "create", msg, arg);
}

/* Did the library say why it failed?  Then we need not. */
static bool create_logged_error;

static void
create_log (void *opaque, enum qcow2_log_level level, const char *msg)
{
  switch (level) {
  case QCOW2_LOG_ERROR:
    create_logged_error = true;
    log_error ("%s", msg);
    break;
  case QCOW2_LOG_WARNING: log_error ("warning: %s", msg); break;
  default: log_debug ("%s", msg); break;
  }
}

enum {
  OPT_CLUSTER_SIZE = 256,
  OPT_COMPAT,
  OPT_COMPRESSION_TYPE,
  OPT_EXTENDED_L2,
  OPT_REFCOUNT_BITS,
  OPT_LAZY_REFCOUNTS,
};

static const char create_short_opts[] = ":b:F:qh";
static const struct option create_long_opts[] = {
  { "backing", required_argument, NULL, 'b' },
  { "backing-format", required_argument, NULL, 'F' },
  { "cluster-size", required_argument, NULL, OPT_CLUSTER_SIZE },
  { "compat", required_argument, NULL, OPT_COMPAT },
  { "compression-type", required_argument, NULL, OPT_COMPRESSION_TYPE },
  { "extended-l2", no_argument, NULL, OPT_EXTENDED_L2 },
  { "refcount-bits", required_argument, NULL, OPT_REFCOUNT_BITS },
  { "lazy-refcounts", no_argument, NULL, OPT_LAZY_REFCOUNTS },
  { "quiet", no_argument, NULL, 'q' },
  { "help", no_argument, NULL, 'h' },
  { NULL, 0, NULL, 0 },
};

/* The image's virtual size for the message: the library may have
 * rounded the size asked for up to whole sectors, or taken the backing
 * file's.  Opening the new image also proves we can serve it. */
static uint64_t
created_size (const char *path, uint64_t asked)
{
  struct qcow2_open_opts oo = {
    .l2_cache_size = QCOW2_MIN_L2_CACHE_SIZE,
    .log = create_log,
  };
  struct qcow2_image *img;
  uint64_t size;

  if (qcow2_open (path, &oo, &img) < 0)
    return asked;
  size = qcow2_virtual_size (img);
  qcow2_close (img);
  return size;
}

/* Take option C (its argument in optarg), one of the image's format,
 * into O and return true; false if C is not one of them. */
static bool
format_option (int c, struct qcow2_create_opts *o)
{
  uint64_t v;

  switch (c) {
  case 'b':
    o->backing_file = optarg;
    return true;
  case 'F':
    o->backing_format = optarg;
    return true;
  case OPT_CLUSTER_SIZE:
    if (options_parse_size (optarg, &v) == -1 || v > UINT32_MAX)
      create_bad_usage ("invalid --cluster-size", optarg);
    if (v == 0)
      create_bad_usage ("--cluster-size must not be 0", NULL);
    o->cluster_size = v;
    return true;
  case OPT_COMPAT:
    if (strcmp (optarg, "0.10") == 0 || strcmp (optarg, "v2") == 0)
      o->version = 2;
    else if (strcmp (optarg, "1.1") == 0 || strcmp (optarg, "v3") == 0)
      o->version = 3;
    else
      create_bad_usage ("--compat must be 0.10 or 1.1, not", optarg);
    return true;
  case OPT_COMPRESSION_TYPE:
    o->compression_type = optarg;
    return true;
  case OPT_EXTENDED_L2:
    o->extended_l2 = true;
    return true;
  case OPT_REFCOUNT_BITS: {
    char *end;
    unsigned long n;

    errno = 0;
    n = strtoul (optarg, &end, 10);
    if (*optarg < '0' || *optarg > '9' || errno || *end || n == 0 ||
        n > 64)
      create_bad_usage ("--refcount-bits must be 1, 2, 4, 8, 16, 32 or "
                        "64, not", optarg);
    o->refcount_bits = n;
    return true;
  }
  case OPT_LAZY_REFCOUNTS:
    o->lazy_refcounts = true;
    return true;
  default:
    return false;
  }
}

/* Say what was created at PATH, in qemu-img create's words. */
static void
print_created (const char *path, const struct qcow2_create_opts *o)
{
  printf ("Formatting '%s', fmt=qcow2 cluster_size=%" PRIu32
          " extended_l2=%s compression_type=%s size=%" PRIu64,
          path, o->cluster_size ? o->cluster_size : 65536,
          o->extended_l2 ? "on" : "off",
          o->compression_type ? o->compression_type : "zlib",
          created_size (path, o->size));
  if (o->backing_file)
    printf (" backing_file=%s backing_fmt=%s", o->backing_file,
            o->backing_format);
  printf (" compat=%s lazy_refcounts=%s refcount_bits=%" PRIu32 "\n",
          o->version == 2 ? "0.10" : "1.1",
          o->lazy_refcounts ? "on" : "off",
          o->refcount_bits ? o->refcount_bits : 16);
}

int
create_main (int argc, char **argv)
{
  struct qcow2_create_opts o = { .version = 3 };
  const char *path;
  bool quiet = false;
  int c, r;

  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, create_short_opts, create_long_opts,
                           NULL)) != -1) {
    if (format_option (c, &o))
      continue;
    switch (c) {
    case 'q':
      quiet = true;
      break;
    case 'h':
      create_usage (stdout);
      exit (EXIT_SUCCESS);
    default:
      options_getopt_error (create_bad_usage, c, argv);
    }
  }

  if (optind >= argc)
    create_bad_usage ("missing IMAGE", NULL);
  path = argv[optind++];
  if (optind < argc) {
    if (options_parse_size (argv[optind], &o.size) == -1)
      create_bad_usage ("invalid SIZE", argv[optind]);
    if (o.size == 0)
      create_bad_usage ("SIZE must be greater than 0", NULL);
    optind++;
  }
  else if (o.backing_file == NULL)
    create_bad_usage ("missing SIZE (needed without a backing file)", NULL);
  if (optind < argc)
    create_bad_usage ("unexpected argument", argv[optind]);

  r = qcow2_create (path, &o, create_log, NULL);
  if (r < 0) {
    if (!create_logged_error)
      log_error ("%s: cannot create image: %s", path, strerror (-r));
    return EXIT_FAILURE;
  }
  if (!quiet)
    print_created (path, &o);
  return EXIT_SUCCESS;
}
