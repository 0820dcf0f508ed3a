/* SPDX-License-Identifier: MIT */
/* qemu-nbd's command line: run as "qemu-nbd", the program parses
 * qemu-nbd 7.2's options with the same getopt_long table (so
 * abbreviations, ambiguities and getopt's own messages come out the
 * same), checks them in qemu-nbd's order with qemu-nbd's messages, and
 * then runs the server through serve_run() with qemu-nbd's lifecycle:
 * exit after the last client unless -t, one client at a time unless -e,
 * --fork returning once a connect would be served, the pid file left at
 * exit, SIGHUP stopping like SIGTERM.  -c DEV serves the image to the
 * local kernel device through attach_serve() instead (in the background
 * once the device is up, unless -v), and -d DEV disconnects one.
 *
 * Differences from qemu-nbd are the ones the manual lists (qemu-nbd
 * compatibility in qcow2-nbd(8)); in short: only qcow2 and raw images,
 * the image is opened before anything listens, -c listens on no socket,
 * and -T is accepted but traces nothing. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/qemu-nbd.h"

/* --fork: we are the daemon, whose stderr is the parent's pipe until
 * the server is ready. */
static bool forked;

static void
usage (const char *name)
{
  printf (
"Usage: %s [OPTIONS] FILE\n"
"  or:  %s -L [OPTIONS]\n"
"QEMU Disk Network Block Device Utility\n"
"\n"
"  -h, --help                display this help and exit\n"
"  -V, --version             output version information and exit\n"
"\n"
"Connection properties:\n"
"  -p, --port=PORT           port to listen on (default `%s')\n"
"  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
"  -k, --socket=PATH         path to the unix socket\n"
"                            (default '/var/lock/qemu-nbd-DEVICE')\n"
"  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n"
"  -t, --persistent          don't exit on the last connection\n"
"  -v, --verbose             display extra debugging information\n"
"  -x, --export-name=NAME    expose export by name (default is empty string)\n"
"  -D, --description=TEXT    export a human-readable description\n"
"\n"
"Exposing part of the image:\n"
"  -o, --offset=OFFSET       offset into the image\n"
"  -A, --allocation-depth    expose the allocation depth\n"
"  -B, --bitmap=NAME         expose a persistent dirty bitmap\n"
"\n"
"General purpose options:\n"
"  -L, --list                list exports available from another NBD server\n"
"  --object type,id=ID,...   define an object such as 'secret' for providing\n"
"                            passwords and/or encryption keys\n"
"  --tls-creds=ID            use id of an earlier --object to provide TLS\n"
"  --tls-authz=ID            use id of an earlier --object to provide\n"
"                            authorization\n"
"  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]\n"
"                            specify tracing options\n"
"  --fork                    fork off the server process and exit the parent\n"
"                            once the server is running\n"
"  --pid-file=PATH           store the server's process ID in the given file\n"
"  --selinux-label=LABEL     set SELinux process label on listening socket\n"
"\n"
"Kernel NBD client support:\n"
"  -c, --connect=DEV         connect FILE to the local NBD device DEV\n"
"  -d, --disconnect          disconnect the specified device\n"
"\n"
"Block device options:\n"
"  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
"  -r, --read-only           export read-only\n"
"  -s, --snapshot            use FILE as an external snapshot, create a temporary\n"
"                            file with backing_file=FILE, redirect the write to\n"
"                            the temporary one\n"
"  -l, --load-snapshot=SNAPSHOT_PARAM\n"
"                            load an internal snapshot inside FILE and export it\n"
"                            as an read-only device, SNAPSHOT_PARAM format is\n"
"                            'snapshot.id=[ID],snapshot.name=[NAME]', or\n"
"                            '[ID_OR_NAME]'\n"
"  -n, --nocache             disable host cache\n"
"      --cache=MODE          set cache mode used to access the disk image, the\n"
"                            valid options are: 'none', 'writeback' (default),\n"
"                            'writethrough', 'directsync' and 'unsafe'\n"
"      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
"      --discard=MODE        set discard mode (ignore, unmap)\n"
"      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
"      --image-opts          treat FILE as a full set of image options\n"
"\n"
"This is qcow2-nbd %s in qemu-nbd mode: it serves qcow2 and raw images.\n"
"What differs from qemu-nbd: qcow2-nbd(8), section QEMU-NBD COMPATIBILITY.\n",
          name, name, NBD_DEFAULT_PORT, PACKAGE_VERSION);
}

static void
version (const char *name)
{
  printf ("%s " QEMU_NBD_VERSION " (qcow2-nbd %s)\n"
          "qcow2-nbd in qemu-nbd mode: qemu-nbd's command line, messages "
          "and lifecycle,\n"
          "for qcow2 and raw images.\n"
          "\n"
          "qcow2-nbd is free software (MIT licence).  There is NO warranty; "
          "not even for\n"
          "MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.\n",
          name, PACKAGE_VERSION);
}

/* qemu's bdrv_parse_cache_mode(). */
static int
parse_cache (const char *mode, struct qnbd_image_args *a)
{
  a->direct = a->writethrough = a->no_flush = false;
  if (strcmp (mode, "off") == 0 || strcmp (mode, "none") == 0)
    a->direct = true;
  else if (strcmp (mode, "directsync") == 0)
    a->direct = a->writethrough = true;
  else if (strcmp (mode, "writeback") == 0)
    ;
  else if (strcmp (mode, "unsafe") == 0)
    a->no_flush = true;
  else if (strcmp (mode, "writethrough") == 0)
    a->writethrough = true;
  else
    return -1;
  return 0;
}

/* qemu_strtoi/qemu_strtou64 with base 0: all of S a number. */
static int
parse_num (const char *s, long long min, unsigned long long *v, bool neg_ok)
{
  char *end;

  if (*s == '\0')
    return -1;
  errno = 0;
  if (neg_ok)
    *v = strtoull (s, &end, 0);         /* "-1" wraps, as in QEMU */
  else {
    long long x = strtoll (s, &end, 0);

    if (x < min)
      return -1;
    *v = x;
  }
  if (errno || *end)
    return -1;
  return 0;
}

/* systemd socket activation as QEMU's check_socket_activation() sees it:
 * the number of fds passed to this process, or 0. */
static unsigned
socket_activation (void)
{
  const char *pid = getenv ("LISTEN_PID"), *fds = getenv ("LISTEN_FDS");
  char *end;
  unsigned long n;

  if (pid == NULL || fds == NULL)
    return 0;
  errno = 0;
  if (strtoul (pid, &end, 10) != (unsigned long) getpid () || *end || errno)
    return 0;
  n = strtoul (fds, &end, 10);
  if (*end || errno || n == 0 || n > INT_MAX)
    return 0;
  return n;
}

/* The server is up (serve.c calls this once a connect would be served):
 * leave the working directory, and with --fork release the parent. */
static void
ready (const struct server_config *cfg)
{
  if (chdir ("/") == -1) {
    qnbd_error ("Could not chdir to root directory: %m");
    exit (EXIT_FAILURE);
  }
  if (forked)
    dup2 (STDOUT_FILENO, STDERR_FILENO);
}

/* -c: the device is up.  -v says so, as qemu-nbd's client thread does
 * (in the foreground only: a daemon's words would make the waiting
 * parent exit 1). */
static const char *connect_device;
static int connect_verbose;

static void
device_ready (const struct server_config *cfg)
{
  if (connect_verbose && !forked)
    fprintf (stderr, "NBD device %s is now connected to %s\n",
             connect_device, qnbd_image_arg);
  ready (cfg);
}

/* --fork: the parent waits, copying what the server says to its own
 * stderr, until the server is ready or gone, and exits 1 if anything
 * was said (qemu-nbd's rule: even a warning makes it 1), else 0.  The
 * child becomes a daemon whose stderr is that pipe until ready. */
static void
do_fork (bool said_something)
{
  int fds[2];
  pid_t pid;

  if (pipe2 (fds, O_CLOEXEC) == -1) {
    qnbd_error ("Error setting up communication pipe: %m");
    exit (EXIT_FAILURE);
  }
  pid = fork ();
  if (pid < 0) {
    qnbd_error ("Failed to fork: %m");
    exit (EXIT_FAILURE);
  }
  if (pid == 0) {
    close (fds[0]);
    if (daemon (1, 0) == -1) {
      dup2 (fds[1], STDERR_FILENO);
      qnbd_error ("Failed to daemonize: %m");
      exit (EXIT_FAILURE);
    }
    dup2 (fds[1], STDERR_FILENO);
    close (fds[1]);
    forked = true;
    return;
  }

  close (fds[1]);
  for (;;) {
    char buf[1024];
    ssize_t n = read (fds[0], buf, sizeof buf);

    if (n == 0)
      break;
    if (n < 0) {
      if (errno == EINTR)
        continue;
      qnbd_error ("Cannot read from daemon: %m");
      exit (EXIT_FAILURE);
    }
    said_something = true;
    if (write (STDERR_FILENO, buf, n) != n)
      exit (EXIT_FAILURE);
  }
  exit (said_something ? EXIT_FAILURE : EXIT_SUCCESS);
}

enum {
  OPT_CACHE = 256,
  OPT_AIO,
  OPT_DISCARD,
  OPT_DETECT_ZEROES,
  OPT_OBJECT,
  OPT_TLSCREDS,
  OPT_IMAGE_OPTS,
  OPT_FORK,
  OPT_TLSAUTHZ,
  OPT_PID_FILE,
  OPT_SELINUX_LABEL,
  OPT_TLSHOSTNAME,
};

/* qemu-nbd's tables, in its order: getopt_long lists ambiguous
 * abbreviations in table order. */
static const char sopt[] = "hVb:o:p:rsnc:dvk:e:f:tl:x:T:D:AB:L";
static const struct option lopt[] = {
  { "help", no_argument, NULL, 'h' },
  { "version", no_argument, NULL, 'V' },
  { "bind", required_argument, NULL, 'b' },
  { "port", required_argument, NULL, 'p' },
  { "socket", required_argument, NULL, 'k' },
  { "offset", required_argument, NULL, 'o' },
  { "read-only", no_argument, NULL, 'r' },
  { "allocation-depth", no_argument, NULL, 'A' },
  { "bitmap", required_argument, NULL, 'B' },
  { "connect", required_argument, NULL, 'c' },
  { "disconnect", no_argument, NULL, 'd' },
  { "list", no_argument, NULL, 'L' },
  { "snapshot", no_argument, NULL, 's' },
  { "load-snapshot", required_argument, NULL, 'l' },
  { "nocache", no_argument, NULL, 'n' },
  { "cache", required_argument, NULL, OPT_CACHE },
  { "aio", required_argument, NULL, OPT_AIO },
  { "discard", required_argument, NULL, OPT_DISCARD },
  { "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
  { "shared", required_argument, NULL, 'e' },
  { "format", required_argument, NULL, 'f' },
  { "persistent", no_argument, NULL, 't' },
  { "verbose", no_argument, NULL, 'v' },
  { "object", required_argument, NULL, OPT_OBJECT },
  { "export-name", required_argument, NULL, 'x' },
  { "description", required_argument, NULL, 'D' },
  { "tls-creds", required_argument, NULL, OPT_TLSCREDS },
  { "tls-hostname", required_argument, NULL, OPT_TLSHOSTNAME },
  { "tls-authz", required_argument, NULL, OPT_TLSAUTHZ },
  { "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
  { "trace", required_argument, NULL, 'T' },
  { "fork", no_argument, NULL, OPT_FORK },
  { "pid-file", required_argument, NULL, OPT_PID_FILE },
  { "selinux-label", required_argument, NULL, OPT_SELINUX_LABEL },
  { NULL, 0, NULL, 0 },
};

/* Everything the command line says, as qemu-nbd's main() keeps it. */
struct cmdline {
  struct qnbd_image_args img;
  unsigned long long dev_offset;
  const char *bindto, *port, *sockpath, *device;
  bool disconnect, list, fork_process, alloc_depth, seen_cache, seen_aio;
  bool seen_discard, persistent;
  const char *sn_id_or_name;
  struct server_config sn;      /* -l, as options_parse_snapshot keeps it */
  bool load_snapshot;
  const char *bitmaps[MAX_EXPORT_BITMAPS];
  unsigned nr_bitmaps;
  const char *export_name, *description;
  const char *tlscredsid, *tlshostname, *tlsauthz;
  const char *pid_file, *selinux_label;
  int shared, verbose;
};

/* The option groups of qemu-nbd's command line: each takes option CH
 * (its argument in optarg) into C and returns true, or returns false if
 * CH is none of its own.  Errors exit, with qemu-nbd's messages. */

static void
take_aio (struct cmdline *c, const char *arg)
{
  if (c->seen_aio) {
    qnbd_error ("--aio can only be specified once");
    exit (EXIT_FAILURE);
  }
  c->seen_aio = true;
  if (strcmp (arg, "native") == 0)
    c->img.aio_native = true;
  else if (strcmp (arg, "threads") == 0 || strcmp (arg, "io_uring") == 0)
    c->img.aio_native = false;
  else {
    qnbd_error ("Invalid aio mode '%s'", arg);
    exit (EXIT_FAILURE);
  }
}

static void
take_discard (struct cmdline *c, const char *arg)
{
  if (c->seen_discard) {
    qnbd_error ("--discard can only be specified once");
    exit (EXIT_FAILURE);
  }
  c->seen_discard = true;
  if (strcmp (arg, "off") == 0 || strcmp (arg, "ignore") == 0)
    c->img.discard_unmap = false;
  else if (strcmp (arg, "on") == 0 || strcmp (arg, "unmap") == 0)
    c->img.discard_unmap = true;
  else {
    qnbd_error ("Invalid discard mode `%s'", arg);
    exit (EXIT_FAILURE);
  }
}

static void
take_detect_zeroes (struct cmdline *c, const char *arg)
{
  if (strcmp (arg, "off") == 0)
    c->img.detect_zeroes = DETECT_ZEROES_OFF;
  else if (strcmp (arg, "on") == 0)
    c->img.detect_zeroes = DETECT_ZEROES_ON;
  else if (strcmp (arg, "unmap") == 0)
    c->img.detect_zeroes = DETECT_ZEROES_UNMAP;
  else {
    qnbd_error ("Failed to parse detect_zeroes mode: invalid parameter "
                "value: %s", arg);
    exit (EXIT_FAILURE);
  }
  /* Checked here, so the order of the options matters, as in
   * qemu-nbd. */
  if (c->img.detect_zeroes == DETECT_ZEROES_UNMAP && !c->img.discard_unmap) {
    qnbd_error ("setting detect-zeroes to unmap is not allowed "
                "without setting discard operation to unmap");
    exit (EXIT_FAILURE);
  }
}

/* -l: the internal snapshot to export (read-only). */
static void
take_snapshot (struct cmdline *c, const char *arg)
{
  if (options_parse_snapshot (arg, &c->sn) == -1) {
    const char *bad = arg;

    /* Name the first key that is not snapshot.id or snapshot.name. */
    while (strncmp (bad, "snapshot.id=", 12) == 0
           || strncmp (bad, "snapshot.name=", 14) == 0) {
      bad = strchr (bad, ',');
      while (bad && bad[1] == ',')
        bad = strchr (bad + 2, ',');
      bad = bad ? bad + 1 : "";
    }
    qnbd_error ("Invalid parameter '%.*s'", (int) strcspn (bad, "=,"), bad);
    qnbd_error ("Failed in parsing snapshot param `%s'", arg);
    exit (EXIT_FAILURE);
  }
  c->load_snapshot = true;
  if (c->sn.snapshot)
    c->sn_id_or_name = arg;
}

/* How the image is opened and accessed. */
static bool
image_option (int ch, struct cmdline *c)
{
  unsigned long long v;

  switch (ch) {
  case 's':
    c->img.overlay = true;
    return true;
  case 'n':
    optarg = (char *) "none";
    /* fallthrough */
  case OPT_CACHE:
    if (c->seen_cache) {
      qnbd_error ("-n and --cache can only be specified once");
      exit (EXIT_FAILURE);
    }
    c->seen_cache = true;
    if (parse_cache (optarg, &c->img) == -1) {
      qnbd_error ("Invalid cache mode `%s'", optarg);
      exit (EXIT_FAILURE);
    }
    return true;
  case OPT_AIO:
    take_aio (c, optarg);
    return true;
  case OPT_DISCARD:
    take_discard (c, optarg);
    return true;
  case OPT_DETECT_ZEROES:
    take_detect_zeroes (c, optarg);
    return true;
  case 'o':
    if (parse_num (optarg, 0, &v, true) == -1) {
      qnbd_error ("Invalid offset '%s'", optarg);
      exit (EXIT_FAILURE);
    }
    c->dev_offset = v;
    return true;
  case 'f':
    c->img.format = optarg;
    return true;
  case OPT_IMAGE_OPTS:
    c->img.image_opts = true;
    return true;
  case 'l':
    take_snapshot (c, optarg);
    /* fallthrough */
  case 'r':
    c->img.read_only = true;
    return true;
  default:
    return false;
  }
}

/* What the export shows its clients. */
static bool
export_option (int ch, struct cmdline *c)
{
  switch (ch) {
  case 'A':
    c->alloc_depth = true;
    return true;
  case 'B':
    if (c->nr_bitmaps == MAX_EXPORT_BITMAPS) {
      qnbd_error ("at most %d --bitmap options", MAX_EXPORT_BITMAPS);
      exit (EXIT_FAILURE);
    }
    c->bitmaps[c->nr_bitmaps++] = optarg;
    return true;
  case 'x':
    c->export_name = optarg;
    if (strlen (optarg) > NBD_MAX_STRING) {
      qnbd_error ("export name '%s' too long", optarg);
      exit (EXIT_FAILURE);
    }
    return true;
  case 'D':
    c->description = optarg;
    if (strlen (optarg) > NBD_MAX_STRING) {
      qnbd_error ("export description '%s' too long", optarg);
      exit (EXIT_FAILURE);
    }
    return true;
  default:
    return false;
  }
}

/* Where and how it is served: a socket, or a kernel device (-c, -d), or
 * a listing (-L); and the process around it. */
static bool
serving_option (int ch, struct cmdline *c)
{
  unsigned long long v;

  switch (ch) {
  case 'b':
    c->bindto = optarg;
    return true;
  case 'p':
    c->port = optarg;
    return true;
  case 'k':
    c->sockpath = optarg;
    if (optarg[0] != '/') {
      qnbd_error ("socket path must be absolute");
      exit (EXIT_FAILURE);
    }
    return true;
  case 'e':
    if (parse_num (optarg, 0, &v, false) == -1 || v > INT_MAX) {
      qnbd_error ("Invalid shared device number '%s'", optarg);
      exit (EXIT_FAILURE);
    }
    c->shared = (int) v;
    return true;
  case 't':
    c->persistent = true;
    return true;
  case 'd':
    c->disconnect = true;
    return true;
  case 'c':
    c->device = optarg;
    return true;
  case 'L':
    c->list = true;
    return true;
  case OPT_FORK:
    c->fork_process = true;
    return true;
  case OPT_PID_FILE:
    c->pid_file = optarg;
    return true;
  case OPT_SELINUX_LABEL:
    c->selinux_label = optarg;
    return true;
  default:
    return false;
  }
}

/* TLS and the objects (credentials, authorization) it names. */
static bool
tls_option (int ch, struct cmdline *c)
{
  switch (ch) {
  case OPT_OBJECT:
    if (qnbd_object_add (optarg) == -1)
      exit (EXIT_FAILURE);
    return true;
  case OPT_TLSCREDS:
    c->tlscredsid = optarg;
    return true;
  case OPT_TLSHOSTNAME:
    c->tlshostname = optarg;
    return true;
  case OPT_TLSAUTHZ:
    c->tlsauthz = optarg;
    return true;
  default:
    return false;
  }
}

static void
parse (int argc, char **argv, struct cmdline *c)
{
  int ch;

  c->shared = 1;
  while ((ch = getopt_long (argc, argv, sopt, lopt, NULL)) != -1) {
    if (image_option (ch, c) || export_option (ch, c)
        || serving_option (ch, c) || tls_option (ch, c))
      continue;
    switch (ch) {
    case 'v':
      c->verbose++;
      break;
    case 'V':
      version (argv[0]);
      exit (EXIT_SUCCESS);
    case 'h':
      usage (argv[0]);
      exit (EXIT_SUCCESS);
    case '?':
      qnbd_error ("Try `%s --help' for more information.", argv[0]);
      exit (EXIT_FAILURE);
    case 'T':
      /* Accepted: there are no trace events to enable here. */
      break;
    }
  }
}

/* The positional arguments, and what list mode (-L) refuses. */
static void
check_args (int argc, char **argv, struct cmdline *c)
{
  if (c->list) {
    if (argc != optind) {
      qnbd_error ("List mode is incompatible with a file name");
      exit (EXIT_FAILURE);
    }
    if (c->export_name || c->description || c->dev_offset || c->device
        || c->disconnect || c->img.format || c->sn_id_or_name || c->nr_bitmaps
        || c->alloc_depth || c->seen_aio || c->seen_discard
        || c->seen_cache) {
      qnbd_error ("List mode is incompatible with per-device settings");
      exit (EXIT_FAILURE);
    }
    if (c->fork_process) {
      qnbd_error ("List mode is incompatible with forking");
      exit (EXIT_FAILURE);
    }
  }
  else if (argc - optind != 1) {
    qnbd_error ("Invalid number of arguments");
    fprintf (stderr, "Try `%s --help' for more information.\n", argv[0]);
    exit (EXIT_FAILURE);
  }
  else if (!c->export_name)
    c->export_name = "";
}

/* Where to listen: the defaults, or with socket activation (ACTIVATION
 * sockets handed over) no address of our own. */
static void
check_activation (struct cmdline *c, unsigned activation)
{
  const char *msg = NULL;

  if (activation == 0) {
    if (!c->sockpath) {
      if (!c->bindto)
        c->bindto = "0.0.0.0";
      if (!c->port)
        c->port = NBD_DEFAULT_PORT;
    }
    return;
  }
  if (c->device)
    msg = "NBD device can't be set when using socket activation";
  else if (c->sockpath)
    msg = "Unix socket can't be set when using socket activation";
  else if (c->bindto)
    msg = "The interface can't be set when using socket activation";
  else if (c->port)
    msg = "TCP port number can't be set when using socket activation";
  else if (c->selinux_label)
    msg = "SELinux label can't be set when using socket activation";
  else if (c->list)
    msg = "List mode is incompatible with socket activation";
  if (msg) {
    qnbd_error ("%s", msg);
    exit (EXIT_FAILURE);
  }
  if (activation > 1) {
    qnbd_error ("qemu-nbd does not support socket activation with %s > 1",
                "LISTEN_FDS");
    exit (EXIT_FAILURE);
  }
}

/* The TLS options together. */
static void
check_tls (const struct cmdline *c)
{
  if (c->tlscredsid) {
    if (c->device) {
      qnbd_error ("TLS is not supported with a host device");
      exit (EXIT_FAILURE);
    }
    if (c->tlsauthz && c->list) {
      qnbd_error ("TLS authorization is incompatible with export list");
      exit (EXIT_FAILURE);
    }
    if (c->tlshostname && !c->list) {
      qnbd_error ("TLS hostname is only supported with export list");
      exit (EXIT_FAILURE);
    }
  }
  else {
    if (c->tlsauthz) {
      qnbd_error ("--tls-authz is not permitted without --tls-creds");
      exit (EXIT_FAILURE);
    }
    if (c->tlshostname) {
      qnbd_error ("--tls-hostname is not permitted without --tls-creds");
      exit (EXIT_FAILURE);
    }
  }
}

/* What qemu-nbd checks after the options, in its order, up to the
 * point where it would start serving. */
static void
check (int argc, char **argv, struct cmdline *c, unsigned activation)
{
  check_args (argc, argv, c);
  check_activation (c, activation);
  check_tls (c);
}

/* The serving configuration qemu-nbd's command line C asks for, into
 * CFG; TLS: the credentials it names, or NULL.  Exits (logged) if the
 * image options are refused. */
static void
make_config (struct cmdline *c, const struct tls_config *tls,
             struct server_config *cfg)
{
  serve_config_init (cfg);
  c->img.offset = c->dev_offset;
  if (qnbd_image_config (&c->img, cfg) == -1)
    exit (EXIT_FAILURE);

  memcpy (cfg->bitmaps, c->bitmaps, sizeof cfg->bitmaps);
  cfg->nr_bitmaps = c->nr_bitmaps;
  if (c->load_snapshot) {
    cfg->snapshot = c->sn.snapshot;
    cfg->snapshot_id = c->sn.snapshot_id;
    cfg->snapshot_name = c->sn.snapshot_name;
  }
  cfg->export_name = c->export_name;
  cfg->description = c->description;
  cfg->alloc_depth = c->alloc_depth;
  cfg->qemu_export = true;
  cfg->qemu_compat = true;
  cfg->socket_path = c->sockpath;
  cfg->bind_addr = c->sockpath ? NULL : c->bindto;
  cfg->port = c->sockpath ? NULL : c->port;
  cfg->max_connections = c->shared;
  /* qemu-nbd's listen backlog: the clients it will serve at once. */
  cfg->backlog = c->persistent || c->shared == 0 ? SOMAXCONN
    : c->shared < SOMAXCONN ? c->shared : SOMAXCONN;
  cfg->persistent = c->persistent;
  cfg->sighup_stops = true;
  cfg->handshake_timeout = 10;   /* NBD_DEFAULT_HANDSHAKE_MAX_SECS */
  cfg->pid_file = c->pid_file;
  cfg->keep_pid_file = true;
  /* -v means little to qemu-nbd's server; our own messages come from
   * the second -v on. */
  cfg->verbose = c->verbose > 0 ? c->verbose - 1 : 0;
  if (tls)
    cfg->tls = *tls;
  cfg->ready = ready;
  cfg->open_failed = qnbd_open_failed;
  cfg->bitmap_failed = qnbd_bitmap_failed;
}

int
qemu_nbd_main (int argc, char **argv)
{
  struct cmdline c = { 0 };
  struct server_config cfg;
  struct tls_config tls = { 0 };
  const char *slash = strrchr (argv[0], '/');
  unsigned activation;
  char err[512];

  qnbd_progname = slash ? slash + 1 : argv[0];
  log_program = qnbd_progname;
  negotiate_qemu_words = true;
  parse (argc, argv, &c);
  activation = socket_activation ();
  check (argc, argv, &c, activation);

  if (c.tlscredsid
      && qnbd_tls_config (c.tlscredsid, c.tlsauthz, c.list, &tls, err,
                          sizeof err) == -1) {
    qnbd_error ("Failed to get TLS creds: %s", err);
    exit (EXIT_FAILURE);
  }
  if (c.selinux_label) {
    if (c.sockpath == NULL && c.device == NULL)
      qnbd_error ("--selinux-label is not permitted without --socket");
    else
      qnbd_error ("SELinux support not enabled in this binary");
    exit (EXIT_FAILURE);
  }
  if (c.list)
    return qnbd_list (c.sockpath, c.bindto, c.port,
                      c.tlscredsid ? &tls : NULL,
                      c.tlshostname ? c.tlshostname : c.bindto,
                      c.tlscredsid ? qnbd_tls_username (c.tlscredsid) : NULL);

  /* -d DEV (FILE is the device), before anything else starts. */
  if (c.disconnect)
    return attach_qemu_disconnect (argv[optind]);
  if (c.img.image_opts && c.img.format) {
    qnbd_error ("--image-opts and -f are mutually exclusive");
    exit (EXIT_FAILURE);
  }
  /* QEMU puts --offset into a raw node as a signed 64-bit number. */
  if (c.dev_offset > INT64_MAX) {
    qnbd_error ("Parameter 'offset' expects a non-negative number below "
                "2^64\nOptional suffix k, M, G, T, P or E means kilo-, "
                "mega-, giga-, tera-, peta-\nand exabytes, respectively.");
    exit (EXIT_FAILURE);
  }

  qnbd_image_arg = c.img.file = argv[optind];
  make_config (&c, c.tlscredsid ? &tls : NULL, &cfg);

  if (c.device) {
    /* qemu-nbd -c daemonises unless -v, and with --fork; either way the
     * parent returns once the device is up (with --fork qemu-nbd's may
     * return before), or with the daemon's messages and status 1. */
    struct attach_opts ao = {
      .device = c.device,
      .connections = 1,
      .qemu_compat = true,
    };

    connect_device = c.device;
    connect_verbose = c.verbose;
    cfg.ready = device_ready;
    if (!c.verbose || c.fork_process)
      do_fork (cfg.probed_raw && !cfg.read_only && !cfg.overlay);
    return attach_serve (&cfg, &ao);
  }
  if (c.fork_process)
    do_fork (cfg.probed_raw && !cfg.read_only && !cfg.overlay);
  return serve_run (&cfg);
}
