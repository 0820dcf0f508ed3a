/* SPDX-License-Identifier: MIT */
/* qcow2-nbd's entry point: the command line (subcommands, then getopt_long
 * options), startup (TLS credentials, the image, the export, listening
 * sockets, workers, pid file), signal handling and the orderly shutdown.
 *
 * Signals: SIGINT, SIGTERM and SIGHUP are blocked in every thread (the
 * mask is set before any thread exists, so threads inherit it) and
 * received by one dedicated thread with sigwait(); SIGPIPE is ignored
 * (socket sends use MSG_NOSIGNAL anyway, but TLS may write(2)).  The
 * first SIGINT/SIGTERM stops the server gracefully; a second one exits
 * at once. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "server/server.h"
#include "tls/tls.h"

/* Read by the handshake (server.h). */
enum tls_mode server_tls_mode = TLS_OFF;
struct tls_ctx *server_tls_ctx;

#define DEFAULT_HANDSHAKE_TIMEOUT 30

static void
main_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd COMMAND [OPTIONS]\n"
"\n"
"An NBD server for QCOW2 images.\n"
"\n"
"Commands:\n"
"  serve IMAGE [OPTIONS]   export IMAGE over NBD\n"
"  create IMAGE [SIZE]     make a new, empty QCOW2 image\n"
"  attach IMAGE DEVICE     serve IMAGE to the kernel NBD device DEVICE\n"
"  detach DEVICE           flush and disconnect DEVICE\n"
"\n"
"Options:\n"
"  -h, --help              print this help\n"
"  -V, --version           print the version\n"
"\n"
"Run 'qcow2-nbd COMMAND --help' for the options of each command.\n");
}

static void
serve_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd serve IMAGE [OPTIONS]\n"
"\n"
"Export the QCOW2 image IMAGE (with its backing chain) over NBD.\n"
"\n"
"Listening:\n"
"  -p, --port=PORT             TCP port (default " NBD_DEFAULT_PORT ")\n"
"  -b, --bind=ADDR             address or host name to listen on\n"
"                              (default: all, IPv4 and IPv6)\n"
"  -k, --socket=PATH           listen on a Unix socket instead of TCP\n"
"  -e, --max-connections=N     serve at most N clients at once (0: no limit)\n"
"      --handshake-timeout=S   drop clients still negotiating after S\n"
"                              seconds (default %d; 0: never)\n"
"      --pid-file=PATH         write the pid to PATH once listening\n"
"\n"
"Export:\n"
"  -x, --export-name=NAME      export name (default \"\")\n"
"  -D, --description=TEXT      export description\n"
"  -r, --read-only             export read-only (default: read-write)\n"
"      --discard=ignore|unmap  TRIM: ignore it (default) or deallocate\n"
"\n"
"Performance:\n"
"      --threads=N             worker threads (default: CPU count)\n"
"      --l2-cache-size=SIZE    L2 cache per image layer, e.g. 16M\n"
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
           DEFAULT_HANDSHAKE_TIMEOUT);
}

static void __attribute__ ((noreturn))
bad_usage (const char *msg, const char *arg)
{
  options_usage_error ("", "serve", msg, arg);
}

static void *
signal_thread (void *arg)
{
  const sigset_t *set = arg;
  bool stopped = false;

  for (;;) {
    int sig;

    if (sigwait (set, &sig) != 0)
      continue;
    if (sig == SIGHUP) {
      log_info ("SIGHUP ignored");
      continue;
    }
    if (stopped) {
      log_error ("second signal %d: exiting now", sig);
      _exit (EXIT_FAILURE);
    }
    log_info ("signal %d: shutting down", sig);
    stopped = true;
    server_stop ();
  }
  return NULL;
}

enum {
  OPT_THREADS = 256,
  OPT_HANDSHAKE_TIMEOUT,
  OPT_L2_CACHE_SIZE,
  OPT_PID_FILE,
  OPT_DISCARD,
  OPT_TLS,
  OPT_TLS_CERTS,
  OPT_TLS_VERIFY_PEER,
  OPT_TLS_AUTHZ_FILE,
  OPT_TLS_PSK,
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
  { "max-connections", required_argument, NULL, 'e' },
  { "threads", required_argument, NULL, OPT_THREADS },
  { "handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT },
  { "l2-cache-size", required_argument, NULL, OPT_L2_CACHE_SIZE },
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

static void
parse_serve (int argc, char **argv, struct server_config *cfg)
{
  bool tls_given = false, port_given = false;
  int c;

  cfg->export_name = "";
  cfg->port = NBD_DEFAULT_PORT;
  cfg->threads = options_cpu_count ();
  cfg->handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT;
  cfg->tls.mode = TLS_OFF;

  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, short_opts, long_opts, NULL)) != -1) {
    switch (c) {
    case 'p':
      options_unsigned (bad_usage, "--port", optarg, 1, 65535);
      cfg->port = optarg;
      port_given = true;
      break;
    case 'b':
      if (*optarg == '\0')
        bad_usage ("empty --bind address", NULL);
      cfg->bind_addr = optarg;
      break;
    case 'k':
      if (*optarg == '\0')
        bad_usage ("empty --socket path", NULL);
      cfg->socket_path = optarg;
      break;
    case 'x':
      if (strlen (optarg) > NBD_MAX_STRING)
        bad_usage ("export name longer than 4096 bytes", NULL);
      cfg->export_name = optarg;
      break;
    case 'D':
      if (strlen (optarg) > NBD_MAX_STRING)
        bad_usage ("description longer than 4096 bytes", NULL);
      cfg->description = optarg;
      break;
    case 'r':
      cfg->read_only = true;
      break;
    case OPT_DISCARD:
      cfg->discard_unmap = options_discard (bad_usage, optarg);
      break;
    case 'e':
      cfg->max_connections = options_unsigned (bad_usage,
                                               "--max-connections", optarg,
                                               0, 1000000);
      break;
    case OPT_THREADS:
      cfg->threads = options_unsigned (bad_usage, "--threads", optarg, 1,
                                       OPTIONS_MAX_THREADS);
      break;
    case OPT_HANDSHAKE_TIMEOUT:
      cfg->handshake_timeout = options_unsigned (bad_usage,
                                                 "--handshake-timeout",
                                                 optarg, 0, 86400);
      break;
    case OPT_L2_CACHE_SIZE:
      cfg->l2_cache_size = options_l2_cache_size (bad_usage, optarg);
      break;
    case OPT_PID_FILE:
      cfg->pid_file = optarg;
      break;
    case 'v':
      cfg->verbose++;
      break;
    case OPT_TLS:
      if (strcmp (optarg, "off") == 0)
        cfg->tls.mode = TLS_OFF;
      else if (strcmp (optarg, "on") == 0)
        cfg->tls.mode = TLS_ON;
      else if (strcmp (optarg, "require") == 0)
        cfg->tls.mode = TLS_REQUIRE;
      else
        bad_usage ("--tls must be off, on or require, not", optarg);
      tls_given = true;
      break;
    case OPT_TLS_CERTS:
      cfg->tls.certs_dir = optarg;
      break;
    case OPT_TLS_VERIFY_PEER:
      cfg->tls.verify_peer = true;
      break;
    case OPT_TLS_AUTHZ_FILE:
      cfg->tls.authz_file = optarg;
      break;
    case OPT_TLS_PSK:
      cfg->tls.psk_file = optarg;
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

  if (optind >= argc)
    bad_usage ("missing IMAGE", NULL);
  if (argc - optind > 1)
    bad_usage ("unexpected argument", argv[optind + 1]);
  cfg->image = argv[optind];

  if (cfg->socket_path && (cfg->bind_addr || port_given))
    bad_usage ("--socket cannot be combined with --bind or --port", NULL);

  /* Credentials without --tls mean the user wants TLS: the safe
   * reading is "require". */
  if (!tls_given && (cfg->tls.certs_dir || cfg->tls.psk_file))
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

static int
serve (struct server_config *cfg)
{
  struct export exp;
  static sigset_t set;          /* read by the signal thread */
  pthread_t sig_thread;
  int *fds = NULL, nfds, r;

  log_verbose = cfg->verbose;

  /* Before any thread exists, so every thread inherits the mask. */
  signal (SIGPIPE, SIG_IGN);
  sigemptyset (&set);
  sigaddset (&set, SIGINT);
  sigaddset (&set, SIGTERM);
  sigaddset (&set, SIGHUP);
  sigaddset (&set, SIGPIPE);
  pthread_sigmask (SIG_BLOCK, &set, NULL);
  sigdelset (&set, SIGPIPE);

  server_tls_mode = cfg->tls.mode;
  if (cfg->tls.mode != TLS_OFF) {
    server_tls_ctx = tls_ctx_new (&cfg->tls);
    if (server_tls_ctx == NULL) {
      log_error ("cannot set up TLS");
      return EXIT_FAILURE;
    }
  }

  if (export_open (cfg, &exp) == -1) {
    if (server_tls_ctx)
      tls_ctx_free (server_tls_ctx);
    return EXIT_FAILURE;
  }

  /* Sockets before workers: a busy port is the likeliest failure, and
   * finding it first costs no thread or ring set-up. */
  nfds = sockets_listen (cfg, &fds);
  if (nfds < 0) {
    export_close (&exp);
    if (server_tls_ctx)
      tls_ctx_free (server_tls_ctx);
    return EXIT_FAILURE;
  }

  r = pthread_create (&sig_thread, NULL, signal_thread, &set);
  if (r != 0) {
    errno = r;
    log_error ("creating the signal thread: %m");
    goto fail_sockets;
  }
  pthread_detach (sig_thread);

  if (workers_start (&exp, cfg->threads) == -1)
    goto fail_sockets;

  if (cfg->pid_file && pid_file_write (cfg->pid_file) == -1) {
    workers_shutdown ();
    goto fail_sockets;
  }
  log_info ("serving %s (%" PRIu64 " bytes) as export '%s' with %u "
            "thread%s", cfg->image, exp.size, exp.name, cfg->threads,
            cfg->threads == 1 ? "" : "s");

  listener_run (cfg, &exp, fds, nfds);   /* closes fds */
  free (fds);

  workers_shutdown ();
  export_close (&exp);
  if (server_tls_ctx)
    tls_ctx_free (server_tls_ctx);
  if (cfg->pid_file)
    unlink (cfg->pid_file);
  if (cfg->socket_path)
    unlink (cfg->socket_path);
  log_info ("exiting");
  return EXIT_SUCCESS;

 fail_sockets:
  while (nfds > 0)
    close (fds[--nfds]);
  free (fds);
  if (cfg->socket_path)
    unlink (cfg->socket_path);
  export_close (&exp);
  if (server_tls_ctx)
    tls_ctx_free (server_tls_ctx);
  return EXIT_FAILURE;
}

int
main (int argc, char **argv)
{
  struct server_config cfg = { 0 };

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
    parse_serve (argc - 1, argv + 1, &cfg);
    return serve (&cfg);
  }
  fprintf (stderr, "qcow2-nbd: unknown command '%s'\n"
           "Try 'qcow2-nbd --help' for more information.\n", argv[1]);
  return EXIT_FAILURE;
}
