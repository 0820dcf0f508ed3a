/* SPDX-License-Identifier: MIT */
/* The kernel's NBD driver (nbd.ko) as attach and detach use it: naming a
 * device /dev/nbdN, handing it the sockets of an export that is already
 * in the transmission phase, and disconnecting it.
 *
 * Two interfaces, as nbd-client has them.  Generic netlink (family
 * "nbd", Linux 4.12 and later) configures the device in one message,
 * NBD_CMD_CONNECT, and the kernel keeps the sockets itself; nothing of
 * ours waits in the kernel.  The older ioctls (NBD_SET_SOCK per socket,
 * then NBD_DO_IT) need a thread that sits in NBD_DO_IT for as long as
 * the device is up; its return is how we learn the device went down.
 * Either way the kernel skips the handshake: it is told the size, the
 * transmission flags and the block size here, and sends requests at
 * once.
 *
 * The netlink messages are built by hand (a header, a generic netlink
 * header, attributes) rather than with libnl: two requests and their
 * acknowledgements do not justify a dependency. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>

#include "server/server.h"

/* include/uapi/linux/major.h.  linux/nbd.h, which holds the ioctls,
 * also defines the protocol's NBD_CMD_* and NBD_FLAG_* that
 * nbd-protocol.h has already, hence the copies below. */
#define NBD_MAJOR 43

/* The ioctls, include/uapi/linux/nbd.h. */
#define NBD_SET_SOCK            _IO (0xab, 0)
#define NBD_SET_BLKSIZE         _IO (0xab, 1)
#define NBD_DO_IT               _IO (0xab, 3)
#define NBD_CLEAR_SOCK          _IO (0xab, 4)
#define NBD_SET_SIZE_BLOCKS     _IO (0xab, 7)
#define NBD_DISCONNECT          _IO (0xab, 8)
#define NBD_SET_TIMEOUT         _IO (0xab, 9)
#define NBD_SET_FLAGS           _IO (0xab, 10)

/* The logical block size we give the kernel: 512, as qemu-nbd and
 * nbd-client do, so the device takes requests of any sector. */
#define KDEV_BLOCK_SIZE 512

/* The request timeout, in seconds, of a device with several
 * connections.  With one, no timeout is set, and the kernel only logs a
 * slow request.  With several, the kernel takes a request that times
 * out (30 s when none is set) for a dead connection: it shuts that
 * socket down for good and resends the request on another, which, with
 * a local server that never went away, only loses a connection for each
 * slow moment (a loaded machine, writeback to a slow disk) until none is
 * left.  A day is as good as never. */
#define MULTI_CONN_TIMEOUT 86400

/* How long attach waits for a device started through the ioctls to show
 * up in sysfs, where there is no completion to wait on instead. */
#define IOCTL_START_TIMEOUT_NS (30 * UINT64_C (1000000000))

/* ---- naming a device -------------------------------------------------- */

int
kdev_read_line (const char *path, char *buf, size_t size)
{
  ssize_t n;
  int fd;

  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  n = read (fd, buf, size - 1);
  close (fd);
  if (n < 0)
    return -1;
  buf[n] = '\0';
  buf[strcspn (buf, "\n")] = '\0';
  return 0;
}

static bool
module_loaded (void)
{
  struct stat st;

  return stat ("/sys/module/nbd", &st) == 0;
}

int
kdev_lookup (const char *path, struct kdev *dev, bool quiet)
{
  char link[PATH_MAX], target[PATH_MAX], *name, *end;
  struct stat st;
  ssize_t n;
  unsigned long idx;

  memset (dev, 0, sizeof *dev);
  dev->path = path;
  dev->fd = -1;

  if (stat (path, &st) == -1) {
    if (quiet)
      ;
    else if (errno == ENOENT && !module_loaded ())
      log_error ("%s: no such device: the nbd kernel module is not "
                 "loaded; load it with 'modprobe nbd' (as root)", path);
    else if (errno == ENOENT)
      log_error ("%s: no such device (nbd.ko makes /dev/nbd0 to "
                 "/dev/nbd<nbds_max - 1>; 'modprobe nbd nbds_max=N' "
                 "for more)", path);
    else
      log_error ("%s: %m", path);
    return -1;
  }
  if (!S_ISBLK (st.st_mode) || major (st.st_rdev) != NBD_MAJOR) {
    if (!quiet)
      log_error ("%s is not an NBD device (block major %d)", path,
                 NBD_MAJOR);
    return -1;
  }

  /* The minor is the index times 2^part_shift, which depends on the
   * module's max_part: ask sysfs for the device's name instead. */
  snprintf (link, sizeof link, "/sys/dev/block/%u:%u",
            major (st.st_rdev), minor (st.st_rdev));
  n = readlink (link, target, sizeof target - 1);
  if (n <= 0) {
    if (!quiet)
      log_error ("%s: cannot find it in sysfs (%s): %m", path, link);
    return -1;
  }
  target[n] = '\0';
  name = strrchr (target, '/');
  name = name ? name + 1 : target;
  errno = 0;
  if (strncmp (name, "nbd", 3) != 0 || name[3] < '0' || name[3] > '9'
      || (idx = strtoul (name + 3, &end, 10), *end != '\0' || errno)
      || idx > INT_MAX) {
    /* nbd0p1 and the like. */
    if (!quiet)
      log_error ("%s is a partition (%s), not a whole NBD device", path,
                 name);
    return -1;
  }
  dev->index = idx;
  return 0;
}

pid_t
kdev_owner (const struct kdev *dev)
{
  char path[64], buf[64], line[256];
  long pid;
  FILE *fp;

  /* /sys/block/nbdN/pid exists while the device is up and names the
   * task that started it: our main thread for netlink, the thread in
   * NBD_DO_IT for the ioctls, which may be any thread of a process. */
  snprintf (path, sizeof path, "/sys/block/nbd%u/pid", dev->index);
  if (kdev_read_line (path, buf, sizeof buf) == -1)
    return 0;
  pid = strtol (buf, NULL, 10);
  if (pid <= 0)
    return 0;

  snprintf (path, sizeof path, "/proc/%ld/status", pid);
  fp = fopen (path, "re");
  if (fp == NULL)
    return (pid_t) pid;
  while (fgets (line, sizeof line, fp))
    if (strncmp (line, "Tgid:", 5) == 0) {
      pid = strtol (line + 5, NULL, 10);
      break;
    }
  fclose (fp);
  return (pid_t) pid;
}

/* ---- generic netlink -------------------------------------------------- */

struct nl_msg {
  union {
    struct nlmsghdr hdr;
    char buf[4096];
  } u;
};

/* Append attribute TYPE with LEN bytes of DATA; returns it (for nests),
 * or NULL when the message is full. */
static struct nlattr *
nl_put (struct nl_msg *m, uint16_t type, const void *data, size_t len)
{
  size_t off = NLMSG_ALIGN (m->u.hdr.nlmsg_len);
  struct nlattr *a = (struct nlattr *) (m->u.buf + off);

  if (off + NLA_HDRLEN + NLA_ALIGN (len) > sizeof m->u.buf)
    return NULL;
  a->nla_type = type;
  a->nla_len = NLA_HDRLEN + len;
  if (len)
    memcpy ((char *) a + NLA_HDRLEN, data, len);
  m->u.hdr.nlmsg_len = off + NLA_ALIGN (a->nla_len);
  return a;
}

static void
nl_nest_end (struct nl_msg *m, struct nlattr *nest)
{
  nest->nla_len = m->u.buf + m->u.hdr.nlmsg_len - (char *) nest;
}

static void
nl_start (struct nl_msg *m, uint16_t family, uint8_t cmd)
{
  struct genlmsghdr *g;

  memset (m, 0, sizeof *m);
  m->u.hdr.nlmsg_len = NLMSG_LENGTH (GENL_HDRLEN);
  m->u.hdr.nlmsg_type = family;
  m->u.hdr.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
  g = NLMSG_DATA (&m->u.hdr);
  g->cmd = cmd;
  g->version = family == GENL_ID_CTRL ? 1 : NBD_GENL_VERSION;
}

/* Send M on FD and read the answers until the acknowledgement.  For a
 * CTRL_CMD_GETFAMILY request, *FAMILY gets the family id found.
 * Returns 0 or the kernel's -errno. */
static int
nl_talk (int fd, struct nl_msg *m, uint16_t *family)
{
  static uint32_t seq;
  char buf[8192] __attribute__ ((aligned (NLMSG_ALIGNTO)));

  m->u.hdr.nlmsg_seq = ++seq;
  if (send (fd, m->u.buf, m->u.hdr.nlmsg_len, 0) == -1)
    return -errno;
  for (;;) {
    ssize_t n = recv (fd, buf, sizeof buf, 0);
    struct nlmsghdr *h;

    if (n == -1) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    for (h = (struct nlmsghdr *) buf; NLMSG_OK (h, (size_t) n);
         h = NLMSG_NEXT (h, n)) {
      if (h->nlmsg_seq != seq)
        continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA (h);

        if (h->nlmsg_len < NLMSG_LENGTH (sizeof *e))
          return -EPROTO;
        return e->error;        /* 0: the acknowledgement */
      }
      if (family && h->nlmsg_type == GENL_ID_CTRL) {
        struct nlattr *a = (struct nlattr *)
          ((char *) NLMSG_DATA (h) + GENL_HDRLEN);
        int left = h->nlmsg_len - NLMSG_LENGTH (GENL_HDRLEN);

        while (left >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN
               && a->nla_len <= left) {
          if ((a->nla_type & NLA_TYPE_MASK) == CTRL_ATTR_FAMILY_ID
              && a->nla_len >= NLA_HDRLEN + sizeof (uint16_t))
            memcpy (family, (char *) a + NLA_HDRLEN, sizeof *family);
          left -= NLA_ALIGN (a->nla_len);
          a = (struct nlattr *) ((char *) a + NLA_ALIGN (a->nla_len));
        }
      }
    }
  }
}

/* Open a generic netlink socket and find the "nbd" family.  Returns the
 * socket, or -1 (errno set: ENOENT when the kernel has no such family). */
static int
nl_open (uint16_t *family)
{
  struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
  struct nl_msg m;
  int fd, r;

  fd = socket (AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
  if (fd == -1)
    return -1;
  if (bind (fd, (struct sockaddr *) &sa, sizeof sa) == -1)
    goto fail;
  nl_start (&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
  nl_put (&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME,
          sizeof NBD_GENL_FAMILY_NAME);
  *family = 0;
  r = nl_talk (fd, &m, family);
  if (r == 0 && *family == 0)
    r = -ENOENT;
  if (r < 0) {
    errno = -r;
    goto fail;
  }
  return fd;

 fail:
  r = errno;
  close (fd);
  errno = r;
  return -1;
}

static void
log_busy (const struct kdev *dev)
{
  pid_t owner = kdev_owner (dev);

  if (owner > 0)
    log_error ("%s is busy: already attached (by process %ld); detach it "
               "first or pick another device", dev->path, (long) owner);
  else
    log_error ("%s is busy: in use or being set up by another process",
               dev->path);
}

static int
connect_netlink (struct kdev *dev, int nlfd, uint16_t family,
                 const struct export *exp, const int *fds, unsigned n)
{
  struct nl_msg m;
  struct nlattr *socks;
  uint32_t index = dev->index;
  uint64_t size = exp->size, bs = KDEV_BLOCK_SIZE, flags = exp->eflags;
  int r;

  nl_start (&m, family, NBD_CMD_CONNECT);
  nl_put (&m, NBD_ATTR_INDEX, &index, sizeof index);
  nl_put (&m, NBD_ATTR_SIZE_BYTES, &size, sizeof size);
  nl_put (&m, NBD_ATTR_BLOCK_SIZE_BYTES, &bs, sizeof bs);
  nl_put (&m, NBD_ATTR_SERVER_FLAGS, &flags, sizeof flags);
  if (n > 1) {
    uint64_t timeout = MULTI_CONN_TIMEOUT;

    nl_put (&m, NBD_ATTR_TIMEOUT, &timeout, sizeof timeout);
  }
  socks = nl_put (&m, NBD_ATTR_SOCKETS | NLA_F_NESTED, NULL, 0);
  for (unsigned i = 0; socks && i < n; i++) {
    struct nlattr *item = nl_put (&m, NBD_SOCK_ITEM | NLA_F_NESTED, NULL, 0);
    uint32_t fd = fds[i];

    if (item == NULL || nl_put (&m, NBD_SOCK_FD, &fd, sizeof fd) == NULL) {
      socks = NULL;
      break;
    }
    nl_nest_end (&m, item);
  }
  if (socks == NULL) {
    log_error ("%s: too many connections for one netlink message",
               dev->path);
    return -1;
  }
  nl_nest_end (&m, socks);

  r = nl_talk (nlfd, &m, NULL);
  if (r == -EBUSY) {
    log_busy (dev);
    return -1;
  }
  if (r == -EPERM) {
    log_error ("%s: connecting an NBD device needs root (CAP_SYS_ADMIN)",
               dev->path);
    return -1;
  }
  if (r < 0) {
    log_error ("%s: netlink NBD_CMD_CONNECT: %s", dev->path, strerror (-r));
    return -1;
  }
  dev->netlink = true;
  return 0;
}

/* ---- ioctls ----------------------------------------------------------- */

static void *
do_it_thread (void *arg)
{
  struct kdev *dev = arg;

  /* Returns once every socket is shut down: a disconnect, or the
   * server closing them. */
  if (ioctl (dev->fd, NBD_DO_IT) == -1 && errno != EPIPE && errno != EBUSY)
    log_debug ("%s: NBD_DO_IT: %m", dev->path);
  atomic_store (&dev->ended, true);
  if (dev->on_end)
    dev->on_end ();
  return NULL;
}

static int
connect_ioctl (struct kdev *dev, const struct export *exp,
               const int *fds, unsigned n)
{
  char path[64], buf[32];
  uint64_t deadline;
  int r;

  dev->fd = open (dev->path, O_RDWR | O_CLOEXEC);
  if (dev->fd == -1) {
    log_error ("%s: %m", dev->path);
    return -1;
  }
  if (ioctl (dev->fd, NBD_SET_BLKSIZE, (unsigned long) KDEV_BLOCK_SIZE) == -1
      || ioctl (dev->fd, NBD_SET_SIZE_BLOCKS,
                (unsigned long) (exp->size / KDEV_BLOCK_SIZE)) == -1) {
    if (errno == EBUSY)
      log_busy (dev);
    else
      log_error ("%s: setting the size: %m", dev->path);
    goto fail;
  }
  if (ioctl (dev->fd, NBD_SET_FLAGS, (unsigned long) exp->eflags) == -1) {
    log_error ("%s: NBD_SET_FLAGS: %m", dev->path);
    goto fail;
  }
  if (n > 1
      && ioctl (dev->fd, NBD_SET_TIMEOUT, (unsigned long) MULTI_CONN_TIMEOUT)
      == -1) {
    log_error ("%s: NBD_SET_TIMEOUT: %m", dev->path);
    goto fail;
  }
  for (unsigned i = 0; i < n; i++)
    if (ioctl (dev->fd, NBD_SET_SOCK, (unsigned long) fds[i]) == -1) {
      if (errno == EBUSY)
        log_busy (dev);
      else if (errno == EINVAL && i > 0)
        log_error ("%s: this kernel takes one connection per device "
                   "through the ioctls", dev->path);
      else
        log_error ("%s: NBD_SET_SOCK: %m", dev->path);
      ioctl (dev->fd, NBD_CLEAR_SOCK);
      goto fail;
    }

  r = pthread_create (&dev->thread, NULL, do_it_thread, dev);
  if (r != 0) {
    errno = r;
    log_error ("%s: creating the NBD_DO_IT thread: %m", dev->path);
    ioctl (dev->fd, NBD_CLEAR_SOCK);
    goto fail;
  }
  dev->has_thread = true;

  /* NBD_DO_IT blocks for the device's lifetime, so nothing says when it
   * has started; sysfs shows the pid attribute once it has. */
  snprintf (path, sizeof path, "/sys/block/nbd%u/pid", dev->index);
  deadline = now_ns () + IOCTL_START_TIMEOUT_NS;
  while (kdev_read_line (path, buf, sizeof buf) == -1) {
    struct timespec ts = { 0, 10 * 1000 * 1000 };

    if (atomic_load (&dev->ended)) {
      log_error ("%s: the kernel did not start the device", dev->path);
      return -1;
    }
    if (now_ns () > deadline) {
      log_error ("%s: the device did not start within %" PRIu64 " s",
                 dev->path, IOCTL_START_TIMEOUT_NS / 1000000000);
      return -1;
    }
    nanosleep (&ts, NULL);
  }
  return 0;

 fail:
  close (dev->fd);
  dev->fd = -1;
  return -1;
}

/* ---- public ----------------------------------------------------------- */

int
kdev_connect (struct kdev *dev, const struct export *exp, const int *fds,
              unsigned n, bool use_netlink, void (*on_end) (void))
{
  uint16_t family;
  int nlfd, r;

  if (exp->size % KDEV_BLOCK_SIZE)
    log_error ("warning: %s: the image size %" PRIu64 " is not a multiple "
               "of %d; the device ends at the last whole block",
               dev->path, exp->size, KDEV_BLOCK_SIZE);
  dev->on_end = on_end;

  if (use_netlink) {
    nlfd = nl_open (&family);
    if (nlfd >= 0) {
      r = connect_netlink (dev, nlfd, family, exp, fds, n);
      close (nlfd);
      return r;
    }
    log_debug ("%s: no netlink family \"nbd\" (%m): using the ioctls",
               dev->path);
  }
  return connect_ioctl (dev, exp, fds, n);
}

int
kdev_disconnect (struct kdev *dev)
{
  uint16_t family;
  int fd, nlfd, r = 0;

  /* Flush first: the kernel drops whatever is still queued when it
   * disconnects, so dirty pages of the device and the write cache
   * behind it must reach the server before. */
  fd = open (dev->path, O_RDWR | O_CLOEXEC);
  if (fd == -1)
    fd = open (dev->path, O_RDONLY | O_CLOEXEC);
  if (fd == -1) {
    log_error ("%s: %m", dev->path);
    return -1;
  }
  if (fsync (fd) == -1)
    log_error ("warning: %s: flushing before the disconnect: %m",
               dev->path);

  /* The interface the device was set up with where we know it (ours,
   * by the ioctls), else netlink if the kernel has it. */
  if (dev->fd < 0 && (nlfd = nl_open (&family)) >= 0) {
    struct nl_msg m;
    uint32_t index = dev->index;

    nl_start (&m, family, NBD_CMD_DISCONNECT);
    nl_put (&m, NBD_ATTR_INDEX, &index, sizeof index);
    r = nl_talk (nlfd, &m, NULL);
    close (nlfd);
    if (r < 0) {
      errno = -r;
      log_error ("%s: netlink NBD_CMD_DISCONNECT: %m", dev->path);
      r = -1;
    }
  }
  else if (ioctl (dev->fd >= 0 ? dev->fd : fd, NBD_DISCONNECT) == -1) {
    log_error ("%s: NBD_DISCONNECT: %m", dev->path);
    r = -1;
  }
  close (fd);
  return r;
}

void
kdev_release (struct kdev *dev)
{
  if (dev->has_thread) {
    pthread_join (dev->thread, NULL);
    dev->has_thread = false;
  }
  if (dev->fd >= 0) {
    /* The ioctl interface leaves the sockets attached until cleared. */
    ioctl (dev->fd, NBD_CLEAR_SOCK);
    close (dev->fd);
    dev->fd = -1;
  }
}
