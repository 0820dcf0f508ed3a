/* SPDX-License-Identifier: MIT */
/* qcow2-nbd's entry point: the command line (subcommands, then getopt_long
 * options) of serve, which serve.c then runs.  Run as "qemu-nbd"
 * (argv[0]'s base name), the program takes qemu-nbd's command line
 * instead (qemu-nbd.c). */

#include <config.h>

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "server/qemu-nbd.h"
#include "server/server.h"
#include "tls/tls.h"

static void
main_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd COMMAND [OPTIONS]\n"
"\n"
"An NBD server for QCOW2 images.\n"
"\n"
"Commands:\n"
"  serve IMAGE [OPTIONS]   export IMAGE (or many images) over NBD\n"
"  create IMAGE [SIZE]     make a new, empty QCOW2 image\n"
"  attach IMAGE DEVICE     serve IMAGE to the kernel NBD device DEVICE\n"
"  detach DEVICE           flush and disconnect DEVICE\n"
"\n"
"Options:\n"
"  -h, --help              print this help\n"
"  -V, --version           print the version\n"
"\n"
"Run 'qcow2-nbd COMMAND --help' for the options of each command.\n"
"\n"
"Run under the name qemu-nbd (a link), the program takes qemu-nbd 7.2's\n"
"command line instead, -c/--connect and -d/--disconnect included:\n"
"'qemu-nbd --help', and qcow2-nbd(8), section QEMU-NBD COMPATIBILITY.\n");
}

static void
serve_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd serve IMAGE [OPTIONS]\n"
"       qcow2-nbd serve [IMAGE] --export NAME=PATH... --export-dir DIR...\n"
"\n"
"Export the QCOW2 image IMAGE (with its backing chain) over NBD, and\n"
"more images, each as an export of its own name.\n"
"\n"
"Listening:\n"
"  -p, --port=PORT             TCP port (default " NBD_DEFAULT_PORT ")\n"
"  -b, --bind=ADDR             address or host name to listen on\n"
"                              (default: all, IPv4 and IPv6)\n"
"  -k, --socket=PATH           listen on a Unix socket instead of TCP\n"
"  -e, --max-connections=N     serve at most N clients at once (0: no limit);\n"
"                              more are held ungreeted until one leaves\n"
"      --handshake-timeout=S   drop clients still negotiating after S\n"
"                              seconds (default %d; 0: never)\n"
"      --max-handshakes=N      clients negotiating or held at once (default\n"
"                              %d); a new one replaces the one idle longest\n"
"      --max-handshakes-per-source=N\n"
"                              ... from one IPv4 address, IPv6 /64 or Unix\n"
"                              user (default %d)\n"
"      --pid-file=PATH         write the pid to PATH once listening\n"
"\n"
"Export:\n"
"  -x, --export-name=NAME      export name (default \"\")\n"
"  -D, --description=TEXT      export description\n"
"  -r, --read-only             export read-only (default: read-write)\n"
"      --discard=ignore|unmap  TRIM: ignore it (default) or deallocate\n"
"      --bitmap=NAME           offer the persistent dirty bitmap NAME as\n"
"                              qemu:dirty-bitmap:NAME (repeatable)\n"
"      --load-snapshot=ID|NAME serve that internal snapshot, read-only\n"
"                              (also snapshot.id=ID,snapshot.name=NAME)\n"
"  (-x, -D, --bitmap and --load-snapshot are IMAGE's; -r and --discard\n"
"  apply to every export unless its own options say otherwise)\n"
"\n"
"Many exports:\n"
"      --export=NAME=PATH[,ro|rw][,description=TEXT][,discard=unmap|ignore]\n"
"                              [,bitmap=BITMAP]...\n"
"                              export the qcow2 or raw image PATH as NAME,\n"
"                              open from start to end (repeatable; ',,'\n"
"                              is a comma in PATH or TEXT)\n"
"      --export-dir=DIR        export every qcow2 or raw image in DIR by\n"
"                              its file name (regular files only: no\n"
"                              symlinks, subdirectories or hidden files),\n"
"                              opened on first use, closed when idle\n"
"      --idle-timeout=S        close a DIR image no client has used for S\n"
"                              seconds (default %d; 0: at once)\n"
"      --max-open-exports=N    DIR images open at once (default %d)\n"
"      --default-export=NAME   the export a client asking for \"\" gets\n"
"                              when no export is named \"\"\n"
"\n"
"Performance:\n"
"      --threads=N             worker threads (default: CPU count)\n"
"      --l2-cache-size=SIZE    L2 cache per image layer, e.g. 16M\n"
"      --max-inflight-bytes=SIZE\n"
"                              request data one client may have in the\n"
"                              server before it is read no more (default\n"
"                              32M; one request of up to 32M always fits)\n"
"\n"
"TLS:\n"
"      --tls=off|on|require    allow or require STARTTLS (default off;\n"
"                              require when credentials are given)\n"
"      --tls-certs=DIR         X.509 credentials directory\n"
"      --tls-verify-peer       require client certificates\n"
"      --tls-authz-file=FILE   allowed client certificate DNs\n"
"      --tls-psk=FILE          pre-shared keys (psktool format)\n"
"\n"
"  -v, --verbose               more messages (repeat for debugging)\n"
"  -h, --help                  print this help\n"
"  -V, --version               print the version\n",
           DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES,
           DEFAULT_MAX_HANDSHAKES_PER_SOURCE, DEFAULT_EXPORT_IDLE_TIMEOUT,
           DEFAULT_MAX_OPEN_EXPORTS);
}

static void __attribute__ ((noreturn))
bad_usage (const char *msg, const char *arg)
{
  options_usage_error ("", "serve", msg, arg);
}

/* A size with an optional binary suffix K, M, G or T (either case). */
static uint64_t
parse_size (const char *opt, const char *s)
{
  uint64_t v;

  if (options_parse_size (s, &v) == -1)
    bad_usage ("invalid size for", opt);
  return v;
}

enum {
  OPT_THREADS = 256,
  OPT_HANDSHAKE_TIMEOUT,
  OPT_MAX_HANDSHAKES,
  OPT_MAX_HANDSHAKES_PER_SOURCE,
  OPT_L2_CACHE_SIZE,
  OPT_MAX_INFLIGHT_BYTES,
  OPT_PID_FILE,
  OPT_DISCARD,
  OPT_TLS,
  OPT_TLS_CERTS,
  OPT_TLS_VERIFY_PEER,
  OPT_TLS_AUTHZ_FILE,
  OPT_TLS_PSK,
  OPT_BITMAP,
  OPT_LOAD_SNAPSHOT,
  OPT_EXPORT,
  OPT_EXPORT_DIR,
  OPT_IDLE_TIMEOUT,
  OPT_MAX_OPEN_EXPORTS,
  OPT_DEFAULT_EXPORT,
};

/* Leading ':' so a missing argument is told apart from an unknown
 * option; no '+', so options may follow IMAGE. */
static const char short_opts[] = ":p:b:k:x:D:re:vVh";
static const struct option long_opts[] = {
  { "port", required_argument, NULL, 'p' },
  { "bind", required_argument, NULL, 'b' },
  { "socket", required_argument, NULL, 'k' },
  { "export-name", required_argument, NULL, 'x' },
  { "description", required_argument, NULL, 'D' },
  { "read-only", no_argument, NULL, 'r' },
  { "discard", required_argument, NULL, OPT_DISCARD },
  { "bitmap", required_argument, NULL, OPT_BITMAP },
  { "load-snapshot", required_argument, NULL, OPT_LOAD_SNAPSHOT },
  { "export", required_argument, NULL, OPT_EXPORT },
  { "export-dir", required_argument, NULL, OPT_EXPORT_DIR },
  { "idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT },
  { "max-open-exports", required_argument, NULL, OPT_MAX_OPEN_EXPORTS },
  { "default-export", required_argument, NULL, OPT_DEFAULT_EXPORT },
  { "max-connections", required_argument, NULL, 'e' },
  { "threads", required_argument, NULL, OPT_THREADS },
  { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
  { "max-handshakes", required_argument, NULL, OPT_MAX_HANDSHAKES },
  { "max-handshakes-per-source", required_argument, NULL,
    OPT_MAX_HANDSHAKES_PER_SOURCE },
  { "l2-cache-size", required_argument, NULL, OPT_L2_CACHE_SIZE },
  { "max-inflight-bytes", required_argument, NULL, OPT_MAX_INFLIGHT_BYTES },
  { "pid-file", required_argument, NULL, OPT_PID_FILE },
  { "verbose", no_argument, NULL, 'v' },
  { "tls", required_argument, NULL, OPT_TLS },
  { "tls-certs", required_argument, NULL, OPT_TLS_CERTS },
  { "tls-verify-peer", no_argument, NULL, OPT_TLS_VERIFY_PEER },
  { "tls-authz-file", required_argument, NULL, OPT_TLS_AUTHZ_FILE },
  { "tls-psk", required_argument, NULL, OPT_TLS_PSK },
  { "version", no_argument, NULL, 'V' },
  { "help", no_argument, NULL, 'h' },
  { NULL, 0, NULL, 0 },
};

static char *
xstrndup (const char *s, size_t n)
{
  char *p = strndup (s, n);

  if (p == NULL) {
    perror ("qcow2-nbd");
    exit (EXIT_FAILURE);
  }
  return p;
}

static char *
xstrdup (const char *s)
{
  return xstrndup (s, strlen (s));
}

/* The next comma-separated field of *P (",," is a comma in it), as a
 * new string; *P moves past it and its comma.  NULL at the end. */
static char *
next_field (const char **p)
{
  const char *s = *p;
  char *out, *o;

  if (s == NULL)
    return NULL;
  out = o = malloc (strlen (s) + 1);
  if (out == NULL) {
    perror ("qcow2-nbd");
    exit (EXIT_FAILURE);
  }
  for (;;) {
    if (*s == ',' && s[1] == ',') {
      *o++ = ',';
      s += 2;
    }
    else if (*s == ',' || *s == '\0')
      break;
    else
      *o++ = *s++;
  }
  *o = '\0';
  *p = *s == ',' ? s + 1 : NULL;
  return out;
}

/* --export NAME=PATH[,OPTION]...: add it to CFG's exports. */
static void
parse_export (const char *arg, struct server_config *cfg)
{
  const char *eq = strchr (arg, '='), *p;
  struct export_spec *sp;
  char *f;

  if (eq == NULL || eq[1] == '\0')
    bad_usage ("--export takes NAME=PATH[,OPTIONS], not", arg);
  if ((size_t) (eq - arg) > NBD_MAX_STRING)
    bad_usage ("export name longer than 4096 bytes", NULL);
  sp = realloc (cfg->exports, (cfg->nr_exports + 1) * sizeof *sp);
  if (sp == NULL) {
    perror ("qcow2-nbd");
    exit (EXIT_FAILURE);
  }
  cfg->exports = sp;
  sp = &cfg->exports[cfg->nr_exports++];
  memset (sp, 0, sizeof *sp);
  sp->name = xstrndup (arg, eq - arg);
  sp->read_only = sp->discard_unmap = -1;
  p = eq + 1;
  sp->path = next_field (&p);
  if (*sp->path == '\0')
    bad_usage ("--export takes NAME=PATH[,OPTIONS], not", arg);
  while ((f = next_field (&p)) != NULL) {
    if (strcmp (f, "ro") == 0)
      sp->read_only = 1;
    else if (strcmp (f, "rw") == 0)
      sp->read_only = 0;
    else if (strncmp (f, "description=", 12) == 0) {
      if (strlen (f + 12) > NBD_MAX_STRING)
        bad_usage ("description longer than 4096 bytes", NULL);
      free ((char *) sp->description);
      sp->description = xstrdup (f + 12);
    }
    else if (strcmp (f, "discard=unmap") == 0)
      sp->discard_unmap = 1;
    else if (strcmp (f, "discard=ignore") == 0)
      sp->discard_unmap = 0;
    else if (strncmp (f, "bitmap=", 7) == 0) {
      if (f[7] == '\0' || strlen (f + 7) > NBD_MAX_STRING - 18)
        bad_usage ("invalid bitmap name", f + 7);
      if (sp->nr_bitmaps == MAX_EXPORT_BITMAPS)
        bad_usage ("too many bitmaps for one export (at most 62)", NULL);
      sp->bitmaps[sp->nr_bitmaps++] = xstrdup (f + 7);
    }
    else
      bad_usage ("unknown --export option", f);
    free (f);
  }
}

/* What parse_serve remembers between options, for the checks at the
 * end. */
struct serve_args {
  bool tls_given, port_given;
  bool image_opts;              /* -x, -D, --bitmap, --load-snapshot */
};

/* The option groups of "serve": each takes option C (its argument in
 * optarg) into CFG and returns true, or returns false if C is none of
 * its own. */

/* Where to listen. */
static bool
listen_option (int c, struct server_config *cfg, struct serve_args *a)
{
  switch (c) {
  case 'p':
    options_unsigned (bad_usage, "--port", optarg, 1, 65535);
    cfg->port = optarg;
    a->port_given = true;
    return true;
  case 'b':
    if (*optarg == '\0')
      bad_usage ("empty --bind address", NULL);
    cfg->bind_addr = optarg;
    return true;
  case 'k':
    if (*optarg == '\0')
      bad_usage ("empty --socket path", NULL);
    cfg->socket_path = optarg;
    return true;
  default:
    return false;
  }
}

/* How the positional IMAGE is exported. */
static bool
image_option (int c, struct server_config *cfg, struct serve_args *a)
{
  switch (c) {
  case 'x':
    if (strlen (optarg) > NBD_MAX_STRING)
      bad_usage ("export name longer than 4096 bytes", NULL);
    cfg->export_name = optarg;
    a->image_opts = true;
    return true;
  case 'D':
    if (strlen (optarg) > NBD_MAX_STRING)
      bad_usage ("description longer than 4096 bytes", NULL);
    cfg->description = optarg;
    a->image_opts = true;
    return true;
  case 'r':
    cfg->read_only = true;
    return true;
  case OPT_DISCARD:
    cfg->discard_unmap = options_discard (bad_usage, optarg);
    return true;
  case OPT_BITMAP:
    if (*optarg == '\0' || strlen (optarg) > NBD_MAX_STRING - 18)
      bad_usage ("invalid bitmap name", optarg);
    if (cfg->nr_bitmaps == MAX_EXPORT_BITMAPS)
      bad_usage ("too many --bitmap options (at most 62)", NULL);
    cfg->bitmaps[cfg->nr_bitmaps++] = optarg;
    a->image_opts = true;
    return true;
  case OPT_LOAD_SNAPSHOT:
    if (options_parse_snapshot (optarg, cfg) == -1)
      bad_usage ("invalid --load-snapshot", optarg);
    /* A snapshot is a past state of the disk: it is never written. */
    cfg->read_only = true;
    a->image_opts = true;
    return true;
  default:
    return false;
  }
}

/* More exports: --export, --export-dir and what goes with them. */
static bool
exports_option (int c, struct server_config *cfg)
{
  switch (c) {
  case OPT_EXPORT:
    parse_export (optarg, cfg);
    return true;
  case OPT_EXPORT_DIR:
    if (*optarg == '\0')
      bad_usage ("empty --export-dir", NULL);
    if (cfg->export_dir)
      bad_usage ("--export-dir given twice", NULL);
    cfg->export_dir = optarg;
    return true;
  case OPT_IDLE_TIMEOUT:
    cfg->idle_timeout = options_unsigned (bad_usage, "--idle-timeout",
                                          optarg, 0, 86400);
    return true;
  case OPT_MAX_OPEN_EXPORTS:
    cfg->max_open_exports = options_unsigned (bad_usage,
                                              "--max-open-exports",
                                              optarg, 1, 100000);
    return true;
  case OPT_DEFAULT_EXPORT:
    if (strlen (optarg) > NBD_MAX_STRING)
      bad_usage ("export name longer than 4096 bytes", NULL);
    cfg->default_export = optarg;
    return true;
  default:
    return false;
  }
}

/* Limits and sizes. */
static bool
limits_option (int c, struct server_config *cfg)
{
  switch (c) {
  case 'e':
    cfg->max_connections = options_unsigned (bad_usage,
                                             "--max-connections", optarg,
                                             0, 1000000);
    return true;
  case OPT_THREADS:
    cfg->threads = options_unsigned (bad_usage, "--threads", optarg, 1,
                                     OPTIONS_MAX_THREADS);
    return true;
  case OPT_HANDSHAKE_TIMEOUT:
    cfg->handshake_timeout = options_unsigned (bad_usage,
                                               "--handshake-timeout",
                                               optarg, 0, 86400);
    return true;
  case OPT_MAX_HANDSHAKES:
    cfg->max_handshakes = options_unsigned (bad_usage, "--max-handshakes",
                                            optarg, 1, 1000000);
    return true;
  case OPT_MAX_HANDSHAKES_PER_SOURCE:
    cfg->max_handshakes_per_source =
      options_unsigned (bad_usage, "--max-handshakes-per-source", optarg,
                        1, 1000000);
    return true;
  case OPT_L2_CACHE_SIZE:
    cfg->l2_cache_size = options_l2_cache_size (bad_usage, optarg);
    return true;
  case OPT_MAX_INFLIGHT_BYTES:
    cfg->max_inflight_bytes = parse_size ("--max-inflight-bytes", optarg);
    if (cfg->max_inflight_bytes < 4096)
      bad_usage ("--max-inflight-bytes is below the minimum of 4K", NULL);
    return true;
  default:
    return false;
  }
}

/* TLS. */
static bool
tls_option (int c, struct server_config *cfg, struct serve_args *a)
{
  switch (c) {
  case OPT_TLS:
    if (strcmp (optarg, "off") == 0)
      cfg->tls.mode = TLS_OFF;
    else if (strcmp (optarg, "on") == 0)
      cfg->tls.mode = TLS_ON;
    else if (strcmp (optarg, "require") == 0)
      cfg->tls.mode = TLS_REQUIRE;
    else
      bad_usage ("--tls must be off, on or require, not", optarg);
    a->tls_given = true;
    return true;
  case OPT_TLS_CERTS:
    cfg->tls.certs_dir = optarg;
    return true;
  case OPT_TLS_VERIFY_PEER:
    cfg->tls.verify_peer = true;
    return true;
  case OPT_TLS_AUTHZ_FILE:
    cfg->tls.authz_file = optarg;
    return true;
  case OPT_TLS_PSK:
    cfg->tls.psk_file = optarg;
    return true;
  default:
    return false;
  }
}

/* The TLS options taken together. */
static void
check_tls (struct server_config *cfg, const struct serve_args *a)
{
  /* Credentials without --tls mean the user wants TLS: the safe
   * reading is "require". */
  if (!a->tls_given && (cfg->tls.certs_dir || cfg->tls.psk_file))
    cfg->tls.mode = TLS_REQUIRE;
  if ((cfg->tls.verify_peer || cfg->tls.authz_file) && !cfg->tls.certs_dir)
    bad_usage ("--tls-verify-peer and --tls-authz-file need --tls-certs",
               NULL);
  if (cfg->tls.mode == TLS_OFF
      && (cfg->tls.certs_dir || cfg->tls.psk_file || cfg->tls.verify_peer
          || cfg->tls.authz_file))
    bad_usage ("TLS options given with --tls=off", NULL);
  if (cfg->tls.mode != TLS_OFF && !cfg->tls.certs_dir && !cfg->tls.psk_file)
    bad_usage ("--tls needs --tls-certs or --tls-psk", NULL);
}

static void
parse_serve (int argc, char **argv, struct server_config *cfg)
{
  struct serve_args a = { 0 };
  int c;

  serve_config_init (cfg);

  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, short_opts, long_opts, NULL)) != -1) {
    if (listen_option (c, cfg, &a) || image_option (c, cfg, &a)
        || exports_option (c, cfg) || limits_option (c, cfg)
        || tls_option (c, cfg, &a))
      continue;
    switch (c) {
    case OPT_PID_FILE:
      cfg->pid_file = optarg;
      break;
    case 'v':
      cfg->verbose++;
      break;
    case 'V':
      printf ("qcow2-nbd %s\n", PACKAGE_VERSION);
      exit (EXIT_SUCCESS);
    case 'h':
      serve_usage (stdout);
      exit (EXIT_SUCCESS);
    default:
      options_getopt_error (bad_usage, c, argv);
    }
  }

  if (argc - optind > 1)
    bad_usage ("unexpected argument", argv[optind + 1]);
  if (optind < argc)
    cfg->image = argv[optind];
  else if (cfg->nr_exports == 0 && cfg->export_dir == NULL)
    bad_usage ("missing IMAGE", NULL);
  else if (a.image_opts)
    bad_usage ("-x, -D, --bitmap and --load-snapshot are options of IMAGE; "
               "there is none", NULL);

  if (cfg->socket_path && (cfg->bind_addr || a.port_given))
    bad_usage ("--socket cannot be combined with --bind or --port", NULL);
  check_tls (cfg, &a);
}

/* Free what parse_export allocated. */
static void
free_exports (struct server_config *cfg)
{
  for (unsigned i = 0; i < cfg->nr_exports; i++) {
    struct export_spec *sp = &cfg->exports[i];

    free ((char *) sp->name);
    free ((char *) sp->path);
    free ((char *) sp->description);
    for (unsigned b = 0; b < sp->nr_bitmaps; b++)
      free ((char *) sp->bitmaps[b]);
  }
  free (cfg->exports);
  cfg->exports = NULL;
  cfg->nr_exports = 0;
}

/* Run as qemu-nbd (a link named qemu-nbd, or qemu-nbd-SOMETHING)? */
static bool
called_as_qemu_nbd (const char *argv0)
{
  const char *slash = strrchr (argv0, '/');
  const char *base = slash ? slash + 1 : argv0;

  return strncmp (base, "qemu-nbd", 8) == 0
    && (base[8] == '\0' || base[8] == '-' || base[8] == '.');
}

int
main (int argc, char **argv)
{
  struct server_config cfg;

  if (argc > 0 && called_as_qemu_nbd (argv[0]))
    return qemu_nbd_main (argc, argv);

  if (argc < 2) {
    main_usage (stderr);
    return EXIT_FAILURE;
  }
  if (strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "--help") == 0) {
    main_usage (stdout);
    return EXIT_SUCCESS;
  }
  if (strcmp (argv[1], "-V") == 0 || strcmp (argv[1], "--version") == 0) {
    printf ("qcow2-nbd %s\n", PACKAGE_VERSION);
    return EXIT_SUCCESS;
  }
  if (strcmp (argv[1], "create") == 0)
    return create_main (argc - 1, argv + 1);
  if (strcmp (argv[1], "attach") == 0)
    return attach_main (argc - 1, argv + 1);
  if (strcmp (argv[1], "detach") == 0)
    return detach_main (argc - 1, argv + 1);
  if (strcmp (argv[1], "serve") == 0) {
    int status;

    parse_serve (argc - 1, argv + 1, &cfg);
    status = serve_run (&cfg);
    free_exports (&cfg);
    return status;
  }
  fprintf (stderr, "qcow2-nbd: unknown command '%s'\n"
           "Try 'qcow2-nbd --help' for more information.\n", argv[1]);
  return EXIT_FAILURE;
}
