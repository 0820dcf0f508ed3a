/* SPDX-License-Identifier: MIT */
/* "qcow2-nbd attach IMAGE /dev/nbdN" and "qcow2-nbd detach /dev/nbdN":
 * the image served to the local kernel's NBD device, as qemu-nbd -c and
 * -d do.  The kernel is just another client in the transmission phase:
 * each of its connections is one end of a socketpair handed to the
 * workers like an accepted connection after its handshake (no structured
 * replies: the kernel wants simple ones); the other end goes to the
 * kernel (kdev.c), which is told the size and flags directly.
 *
 * Lifetime: the device stays up until it is detached - by
 * "qcow2-nbd detach", nbd-client -d, qemu-nbd -d, or by SIGINT/SIGTERM
 * to this process, which flushes the device and disconnects it itself.
 * Either way the kernel sends NBD_CMD_DISC and shuts its sockets, our
 * connections end, and once the last has the workers stop and the image
 * is closed clean.  The main thread waits for signals (a signalfd: they
 * are blocked in every thread) and for the closed connections (an
 * eventfd the closed hook kicks).
 *
 * --fork forks before any thread exists: the child does everything and
 * tells the parent over a pipe once the device is up, so a script can
 * use the device as soon as "attach --fork" returns. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qcow2/qcow2.h"
#include "server/server.h"

#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif

#define MAX_CONNECTIONS 64
/* How long detach waits for the server to close its image. */
#define DETACH_WAIT_MS (120 * 1000)

/* Connections not yet closed, and the eventfd that says one closed or
 * the ioctl device went down. */
static atomic_uint live_conns;
static int wake_fd = -1;

static void
kick (void)
{
  uint64_t one = 1;

  if (write (wake_fd, &one, sizeof one) != sizeof one && errno != EAGAIN)
    log_error ("attach: eventfd write: %m");
}

static void
conn_closed (void)
{
  atomic_fetch_sub (&live_conns, 1);
  kick ();
}

/* ---- --fork ----------------------------------------------------------- */

/* Fork: the parent waits for the child's word that the device is up and
 * exits 0, or with the child's status when it fails first.  Returns (in
 * the child) the pipe to write that word to, or -1 on error. */
static int
fork_and_wait (void)
{
  int p[2];
  pid_t pid;
  char c;
  ssize_t n;

  if (pipe2 (p, O_CLOEXEC) == -1) {
    log_error ("pipe2: %m");
    return -1;
  }
  pid = fork ();
  if (pid == -1) {
    log_error ("fork: %m");
    return -1;
  }
  if (pid == 0) {
    close (p[0]);
    /* Out of the terminal's process group: a ^C meant for the shell
     * must not stop the device's server. */
    setsid ();
    return p[1];
  }

  close (p[1]);
  do
    n = read (p[0], &c, 1);
  while (n == -1 && errno == EINTR);
  if (n == 1)
    _exit (EXIT_SUCCESS);
  /* The child gave up: its messages said why; pass on its status. */
  {
    int status;

    if (waitpid (pid, &status, 0) == pid && WIFEXITED (status)
        && WEXITSTATUS (status) != 0)
      _exit (WEXITSTATUS (status));
    _exit (EXIT_FAILURE);
  }
}

static void
daemon_ready (int ready_fd)
{
  int null;

  if (ready_fd < 0)
    return;
  /* Messages still go to stderr, which the caller may redirect. */
  null = open ("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    dup2 (null, STDIN_FILENO);
    dup2 (null, STDOUT_FILENO);
    close (null);
  }
  if (write (ready_fd, "", 1) != 1)
    log_error ("telling the parent: %m");
  close (ready_fd);
}

/* ---- attach ----------------------------------------------------------- */

/* Make the connections: our ends to the workers, the kernel's in KFDS.
 * Returns how many were made. */
static unsigned
make_conns (const struct export *exp, const struct kdev *dev, unsigned n,
            int *kfds)
{
  unsigned i;

  for (i = 0; i < n; i++) {
    char peer[32], msg[256];
    struct conn *conn;
    int sv[2];

    if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
      log_error ("socketpair: %m");
      break;
    }
    snprintf (peer, sizeof peer, "nbd%u.%u", dev->index, i);
    conn = conn_new (sv[0], peer);
    if (conn == NULL) {
      log_error ("%s: out of memory", peer);
      close (sv[0]);
      close (sv[1]);
      break;
    }
    /* What the handshake would have set: the kernel negotiates no
     * option, so simple replies and no meta context; and the reference
     * to the export a GO takes, which conn_free drops. */
    if (exports_source.get (exp->name, strlen (exp->name), &conn->exp,
                            msg, sizeof msg) != 0) {
      log_error ("%s: %s", peer, msg);
      conn_free (conn);
      close (sv[1]);
      break;
    }
    kfds[i] = sv[1];
    atomic_fetch_add (&live_conns, 1);
    workers_add_conn (conn);
  }
  return i;
}

/* A connection the workers served is gone: as serve does, tell the
 * listener's count, which calls conn_closed (its closed hook). */
static void
listener_closed (void)
{
  listener_conn_closed (true);
}

/* qemu-nbd -c's view of DEVICE, with its messages: one it cannot open,
 * then one the kernel refuses the socket for (no NBD device, or a busy
 * one).  Returns 0 (DEV found), or -1 (logged). */
static int
qemu_device_check (const char *device, struct kdev *dev)
{
  int fd = open (device, O_RDWR | O_CLOEXEC);

  if (fd == -1) {
    log_error ("Failed to open %s: %m", device);
    return -1;
  }
  close (fd);
  if (kdev_lookup (device, dev, true) == -1 || kdev_owner (dev) > 0) {
    log_error ("Failed to set NBD socket");
    return -1;
  }
  return 0;
}

/* The device OPTS names, found and not attached already.  0 (DEV set),
 * or -1 (logged). */
static int
device_free (const struct attach_opts *opts, struct kdev *dev)
{
  pid_t owner;

  if (kdev_lookup (opts->device, dev, false) == -1)
    return -1;
  /* The kernel has the last word (connecting a busy device fails), but
   * saying so before the image is opened costs nothing. */
  owner = kdev_owner (dev);
  if (owner > 0) {
    log_error ("%s is busy: already attached (by process %ld); detach "
               "it first or pick another device", dev->path, (long) owner);
    return -1;
  }
  return 0;
}

/* Take SIGINT, SIGTERM and SIGHUP through a signalfd (blocked before
 * any thread exists, so every thread inherits the mask), and make the
 * eventfd the workers kick (wake_fd).  Returns the signalfd; either may
 * be -1 (errno set). */
static int
take_signals (void)
{
  sigset_t set;
  int sfd;

  serve_stop_signals (&set);
  pthread_sigmask (SIG_BLOCK, &set, NULL);
  sfd = signalfd (-1, &set, SFD_CLOEXEC);
  wake_fd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  return sfd;
}

/* Hand NCONNS connections to EXP to the workers, and their other ends
 * to the kernel as DEV's sockets.  Returns how many, or -1 (DEV
 * released; our ends see the kernel's close and end by themselves). */
static int
connect_device (struct kdev *dev, const struct export *exp, unsigned nconns,
                bool netlink)
{
  int kfds[MAX_CONNECTIONS];
  unsigned made = make_conns (exp, dev, nconns, kfds);
  int r = 0;

  if (made < nconns
      || kdev_connect (dev, exp, kfds, made, netlink, kick) == -1)
    r = -1;
  /* The kernel holds its own references to its ends. */
  for (unsigned i = 0; i < made; i++)
    close (kfds[i]);
  if (r == -1) {
    kdev_release (dev);
    return -1;
  }
  return made;
}

/* Serve until every connection has ended, detaching DEV at the first
 * signal (SIGHUP only with sighup_stops), exiting at once at a second.
 * DETACHING: a detach is under way already.  Returns STATUS, or
 * EXIT_FAILURE if the detach failed. */
static int
serve_until_detached (const struct server_config *cfg, struct kdev *dev,
                      int sfd, bool detaching, int status)
{
  while (atomic_load (&live_conns) > 0) {
    struct pollfd pfd[2] = {
      { .fd = sfd, .events = POLLIN },
      { .fd = wake_fd, .events = POLLIN },
    };

    if (poll (pfd, 2, -1) == -1) {
      if (errno != EINTR)
        log_error ("poll: %m");
      continue;
    }
    if (pfd[1].revents) {
      uint64_t v;

      if (read (wake_fd, &v, sizeof v) == -1 && errno != EAGAIN)
        log_error ("eventfd read: %m");
    }
    if (pfd[0].revents) {
      struct signalfd_siginfo si;

      if (read (sfd, &si, sizeof si) != sizeof si)
        continue;
      if (si.ssi_signo == SIGHUP && !cfg->sighup_stops) {
        log_info ("SIGHUP ignored");
        continue;
      }
      if (detaching) {
        log_error ("second signal %u: exiting now", si.ssi_signo);
        _exit (EXIT_FAILURE);
      }
      log_info ("signal %u: detaching %s", si.ssi_signo, dev->path);
      detaching = true;
      if (kdev_disconnect (dev) == -1)
        status = EXIT_FAILURE;
    }
  }
  return status;
}

int
attach_serve (const struct server_config *cfg, const struct attach_opts *opts)
{
  struct kdev dev;
  const struct export *exp;
  unsigned nconns = opts->connections ? opts->connections : 1;
  int made, ready_fd = -1, sfd = -1, status = EXIT_FAILURE;
  unsigned threads = cfg->threads ? cfg->threads : 1;
  bool detaching = false, pid_written = false;

  log_verbose = cfg->verbose;
  if (nconns > MAX_CONNECTIONS)
    nconns = MAX_CONNECTIONS;

  /* qemu-nbd looks at the device once the image is open. */
  if (!opts->qemu_compat && device_free (opts, &dev) == -1)
    return EXIT_FAILURE;

  if (opts->fork && (ready_fd = fork_and_wait ()) == -1)
    return EXIT_FAILURE;

  sfd = take_signals ();
  if (sfd == -1 || wake_fd == -1) {
    log_error ("signalfd/eventfd: %m");
    goto out_fds;
  }

  /* We serve a device that the kernel may be writing back to under
   * memory pressure: allocations of ours must not wait for that same
   * writeback (PR_SET_IO_FLUSHER, meant for userspace block drivers;
   * threads created from now on inherit it). */
  if (prctl (PR_SET_IO_FLUSHER, 1, 0, 0, 0) == -1)
    log_debug ("PR_SET_IO_FLUSHER: %m");

  /* The image, as serve's one export (exports.c): the connections take
   * references to it as a GO would. */
  if (exports_init (cfg, threads) == -1)
    goto out_image;
  exp = exports_single ();
  if (opts->qemu_compat && qemu_device_check (opts->device, &dev) == -1)
    goto out_image;
  listener_set_closed_hook (conn_closed);
  if (workers_start (threads, listener_closed) == -1)
    goto out_image;

  made = connect_device (&dev, exp, nconns, !opts->use_ioctl);
  if (made == -1)
    goto out_workers;

  if (cfg->pid_file && pid_file_write (cfg->pid_file) == -1) {
    kdev_disconnect (&dev);
    detaching = true;
  }
  else {
    pid_written = cfg->pid_file != NULL;
    log_info ("attached %s (%" PRIu64 " bytes) to %s through %s with %d "
              "connection%s", cfg->image, exp->size, dev.path,
              dev.netlink ? "netlink" : "ioctls", made,
              made == 1 ? "" : "s");
    daemon_ready (ready_fd);
    ready_fd = -1;
    if (cfg->ready)
      cfg->ready (cfg);
    status = EXIT_SUCCESS;
  }

  status = serve_until_detached (cfg, &dev, sfd, detaching, status);

  /* Without a detach of ours, the connections end when the kernel
   * disconnects the device (detach, nbd-client -d, qemu-nbd -d from
   * another process): it sends NBD_CMD_DISC on each, then shuts them
   * down.  Otherwise the kernel drops a connection only when a request
   * on it outlives the timeout, which is never with one connection and
   * a day with several (kdev.c); the others go on serving. */
  kdev_release (&dev);
  log_info ("%s detached", dev.path);

 out_workers:
  workers_shutdown ();
 out_image:
  /* Flushed and closed; a failed final flush (logged) is status 1, as
   * for serve. */
  if (exports_shutdown () == -1 && status == EXIT_SUCCESS) {
    log_error ("a final flush failed; exiting with status 1");
    status = EXIT_FAILURE;
  }
  if (pid_written && !cfg->keep_pid_file)
    unlink (cfg->pid_file);
 out_fds:
  if (sfd >= 0)
    close (sfd);
  /* Every thread that kicks it (workers, the ioctl thread) is joined. */
  if (wake_fd >= 0)
    close (wake_fd);
  wake_fd = -1;
  if (ready_fd >= 0)
    close (ready_fd);
  return status;
}

/* ---- detach ----------------------------------------------------------- */

/* Is PID a qcow2-nbd or qemu-nbd (that will close an image after the
 * detach)? */
static bool
is_qcow2_nbd (pid_t pid)
{
  char path[64], comm[32];

  snprintf (path, sizeof path, "/proc/%ld/comm", (long) pid);
  if (kdev_read_line (path, comm, sizeof comm) == -1)
    return false;
  /* Run as qemu-nbd -c, the name is qemu-nbd's (QEMU's own qemu-nbd
   * also exits once its device is disconnected). */
  return strcmp (comm, "qcow2-nbd") == 0 || strcmp (comm, "qemu-nbd") == 0;
}

/* Has PID exited (a zombie counts: its image is closed)?  One read of
 * /proc/PID/stat answers both "exists" and "zombie". */
static bool
process_gone (pid_t pid)
{
  char path[64], buf[512];
  const char *st;

  snprintf (path, sizeof path, "/proc/%ld/stat", (long) pid);
  if (kdev_read_line (path, buf, sizeof buf) == -1 || buf[0] == '\0')
    return true;
  /* The state follows the command name's closing parenthesis. */
  st = strrchr (buf, ')');
  return st && st[1] == ' ' && (st[2] == 'Z' || st[2] == 'X');
}

/* Wait up to DETACH_WAIT_MS for process OWNER (PIDFD, or -1 where the
 * kernel has no pidfd_open) to exit.  Returns 0, or -1 (logged). */
static int
wait_for_exit (const struct kdev *dev, pid_t owner, int pidfd)
{
  int r;

  if (pidfd >= 0) {
    struct pollfd pfd = { .fd = pidfd, .events = POLLIN };

    do
      r = poll (&pfd, 1, DETACH_WAIT_MS);
    while (r == -1 && errno == EINTR);
    if (r == -1) {
      log_error ("%s is disconnected, but waiting for its server "
                 "(process %ld) failed: %m", dev->path, (long) owner);
      return -1;
    }
  }
  else {
    /* Before Linux 5.3: look every 10 ms. */
    for (r = 0; r < DETACH_WAIT_MS / 10 && !process_gone (owner); r++) {
      struct timespec ts = { 0, 10 * 1000 * 1000 };

      nanosleep (&ts, NULL);
    }
    r = process_gone (owner);
  }
  if (r == 0) {
    log_error ("%s is disconnected, but its server (process %ld) is "
               "still running after %d s", dev->path, (long) owner,
               DETACH_WAIT_MS / 1000);
    return -1;
  }
  return 0;
}

/* Flush and disconnect DEV (attached), and wait for a qcow2-nbd serving
 * it to close its image.  Returns the exit status. */
static int
detach_device (struct kdev *dev)
{
  pid_t owner = kdev_owner (dev);
  bool ours;
  int pidfd = -1, r = 0;

  /* Only a server of ours is waited for: the pid of an nbd-client that
   * set the device up and left may belong to anybody by now.  The pidfd
   * is taken before the disconnect, so a pid reused after the server
   * exits cannot be mistaken for it. */
  ours = owner > 0 && owner != getpid () && is_qcow2_nbd (owner);
  if (ours)
    pidfd = syscall (SYS_pidfd_open, owner, 0);

  if (kdev_disconnect (dev) == -1)
    r = -1;
  else if (ours)
    r = wait_for_exit (dev, owner, pidfd);
  if (pidfd >= 0)
    close (pidfd);
  return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

int
attach_detach (const char *device)
{
  struct kdev dev;

  if (kdev_lookup (device, &dev, false) == -1)
    return EXIT_FAILURE;
  if (kdev_owner (&dev) == 0) {
    log_error ("%s is not attached", device);
    return EXIT_FAILURE;
  }
  if (detach_device (&dev) != EXIT_SUCCESS)
    return EXIT_FAILURE;
  printf ("%s detached\n", device);
  return EXIT_SUCCESS;
}

int
attach_qemu_disconnect (const char *device)
{
  struct kdev dev;
  int fd;

  /* qemu-nbd -d opens the device, issues its ioctls whatever they say,
   * and reports it disconnected: a free device (or no NBD device at
   * all) is no error, which cleanup scripts count on. */
  fd = open (device, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    log_error ("Cannot open %s: %m", device);
    return EXIT_FAILURE;
  }
  close (fd);
  if (kdev_lookup (device, &dev, true) == 0 && kdev_owner (&dev) > 0
      && detach_device (&dev) != EXIT_SUCCESS)
    return EXIT_FAILURE;
  printf ("%s disconnected\n", device);
  return EXIT_SUCCESS;
}

/* ---- command lines ---------------------------------------------------- */

static void
attach_usage (FILE *fp)
{
  fprintf (fp,
"Usage: qcow2-nbd attach IMAGE DEVICE [OPTIONS]\n"
"       qcow2-nbd detach DEVICE\n"
"\n"
"Serve the QCOW2 image IMAGE to the local kernel NBD device DEVICE\n"
"(/dev/nbdN; 'modprobe nbd' first) until it is detached, with\n"
"'qcow2-nbd detach DEVICE' (or nbd-client -d, qemu-nbd -d) or SIGTERM:\n"
"the device is flushed, disconnected, and the image closed clean.\n"
"\n"
"  -r, --read-only             attach read-only (default: read-write)\n"
"      --discard=ignore|unmap  TRIM: ignore it (default) or deallocate\n"
"  -C, --connections=N         sockets between the kernel and the server\n"
"                              (default 1, at most %d)\n"
"      --fork                  go to the background once DEVICE is ready\n"
"      --pid-file=PATH         write the pid to PATH once DEVICE is ready\n"
"      --no-netlink            use the NBD ioctls even where the kernel\n"
"                              offers generic netlink\n"
"      --threads=N             worker threads (default: CPU count)\n"
"      --l2-cache-size=SIZE    L2 cache per image layer, e.g. 16M\n"
"  -v, --verbose               more messages (repeat for debugging)\n"
"  -h, --help                  print this help\n",
           MAX_CONNECTIONS);
}

static void __attribute__ ((noreturn))
attach_bad_usage (const char *msg, const char *arg)
{
  options_usage_error ("attach: ", "attach", msg, arg);
}

static void __attribute__ ((noreturn))
detach_bad_usage (const char *msg, const char *arg)
{
  options_usage_error ("detach: ", "detach", msg, arg);
}

enum {
  OPT_DISCARD = 256,
  OPT_FORK,
  OPT_PID_FILE,
  OPT_NO_NETLINK,
  OPT_THREADS,
  OPT_L2_CACHE_SIZE,
};

int
attach_main (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "read-only", no_argument, NULL, 'r' },
    { "discard", required_argument, NULL, OPT_DISCARD },
    { "connections", required_argument, NULL, 'C' },
    { "fork", no_argument, NULL, OPT_FORK },
    { "pid-file", required_argument, NULL, OPT_PID_FILE },
    { "no-netlink", no_argument, NULL, OPT_NO_NETLINK },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "l2-cache-size", required_argument, NULL, OPT_L2_CACHE_SIZE },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  struct server_config cfg;
  struct attach_opts opts = { .connections = 1 };
  int c;

  serve_config_init (&cfg);
  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, ":rC:vh", long_opts, NULL)) != -1) {
    switch (c) {
    case 'r': cfg.read_only = true; break;
    case OPT_DISCARD:
      cfg.discard_unmap = options_discard (attach_bad_usage, optarg);
      break;
    case 'C':
      opts.connections = options_unsigned (attach_bad_usage, "--connections",
                                           optarg, 1, MAX_CONNECTIONS);
      break;
    case OPT_FORK: opts.fork = true; break;
    case OPT_PID_FILE: cfg.pid_file = optarg; break;
    case OPT_NO_NETLINK: opts.use_ioctl = true; break;
    case OPT_THREADS:
      cfg.threads = options_unsigned (attach_bad_usage, "--threads", optarg,
                                      1, OPTIONS_MAX_THREADS);
      break;
    case OPT_L2_CACHE_SIZE:
      cfg.l2_cache_size = options_l2_cache_size (attach_bad_usage, optarg);
      break;
    case 'v': cfg.verbose++; break;
    case 'h':
      attach_usage (stdout);
      exit (EXIT_SUCCESS);
    default:
      options_getopt_error (attach_bad_usage, c, argv);
    }
  }
  if (argc - optind < 2)
    attach_bad_usage (optind < argc ? "missing DEVICE" : "missing IMAGE",
                      NULL);
  if (argc - optind > 2)
    attach_bad_usage ("unexpected argument", argv[optind + 2]);
  cfg.image = argv[optind];
  opts.device = argv[optind + 1];
  return attach_serve (&cfg, &opts);
}

int
detach_main (int argc, char **argv)
{
  static const struct option long_opts[] = {
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  int c;

  opterr = 0;
  optind = 1;
  while ((c = getopt_long (argc, argv, ":vh", long_opts, NULL)) != -1) {
    switch (c) {
    case 'v': log_verbose++; break;
    case 'h':
      attach_usage (stdout);
      exit (EXIT_SUCCESS);
    default:
      options_getopt_error (detach_bad_usage, c, argv);
    }
  }
  if (optind >= argc)
    detach_bad_usage ("missing DEVICE", NULL);
  if (argc - optind > 1)
    detach_bad_usage ("unexpected argument", argv[optind + 1]);
  return attach_detach (argv[optind]);
}
