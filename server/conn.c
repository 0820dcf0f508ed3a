/* SPDX-License-Identifier: MIT */
/* Connections: their lifetime, the plain-socket transport, and the
 * blocking read/write helpers the handshake uses under a deadline.
 *
 * Deadlines are enforced with SO_RCVTIMEO/SO_SNDTIMEO, set to the time
 * remaining before each transport call, rather than with poll(2) on the
 * fd.  The reason is TLS: after STARTTLS the transport's recv goes
 * through an SSL session that may already hold decrypted bytes while the
 * socket itself has nothing to read, so "poll says readable" is the
 * wrong question.  A socket timeout bounds every blocking recv/send the
 * transport (plain or TLS) makes underneath, and the loop here turns the
 * resulting EAGAIN into ETIMEDOUT once the deadline has passed.  The
 * listener clears both timeouts before a connection goes to a worker. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/rounding.h"
#include "server/server.h"

/* Unsent bytes a connection that splices keeps in its socket at most. */
#define SPLICE_NOTSENT_LOWAT (16 * 1024)

uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

static ssize_t
plain_recv (struct conn *conn, void *buf, size_t len)
{
  ssize_t r;

  do
    r = recv (conn->fd, buf, len, 0);
  while (r == -1 && errno == EINTR);
  return r;
}

static ssize_t
plain_send (struct conn *conn, const struct iovec *iov, int iovcnt,
            bool more)
{
  struct msghdr msg = {
    .msg_iov = (struct iovec *) iov,
    .msg_iovlen = iovcnt,
  };
  ssize_t r;

  do
    r = sendmsg (conn->fd, &msg, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
  while (r == -1 && errno == EINTR);
  return r;
}

/* Move LEN bytes from the pipe PIPE_FD to the socket: the pages go by
 * reference, never copied (SIGPIPE is ignored process-wide, so a gone
 * peer is EPIPE here as with MSG_NOSIGNAL). */
static ssize_t
plain_splice (struct conn *conn, int pipe_fd, size_t len, bool more)
{
  ssize_t r;

  if (!conn->paced) {
    /* Splicing outruns any client: without a limit most of the data
     * waits unsent in the socket, and the kernel sends it as the
     * client's window opens, in the client's context, on the client's
     * CPU (10% of fio's time reading 1 MiB blocks).  With little unsent
     * the socket is writable only when there is room on the wire, and
     * this worker sends.  (Not an error on a Unix socket: ignored.) */
    int lowat = SPLICE_NOTSENT_LOWAT;
    setsockopt (conn->fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat,
                sizeof lowat);
    conn->paced = true;
  }

  do
    r = splice (pipe_fd, NULL, conn->fd, NULL, len,
                SPLICE_F_NONBLOCK | (more ? SPLICE_F_MORE : 0));
  while (r == -1 && errno == EINTR);
  return r;
}

static void
plain_shutdown (struct conn *conn)
{
  /* Nothing to release: the socket is closed by conn_free. */
}

const struct conn_transport conn_plain_transport = {
  .recv = plain_recv,
  .send = plain_send,
  .splice = plain_splice,
  .shutdown = plain_shutdown,
};

struct conn *
conn_new (int fd, const char *peer)
{
  struct conn *conn = calloc (1, sizeof *conn);

  if (conn == NULL)
    return NULL;
  conn->fd = fd;
  snprintf (conn->peer, sizeof conn->peer, "%s", peer ? peer : "?");
  conn->transport = &conn_plain_transport;
  return conn;
}

void
conn_free (struct conn *conn)
{
  if (conn == NULL)
    return;
  if (conn->transport && conn->transport->shutdown)
    conn->transport->shutdown (conn);
  if (conn->fd >= 0)
    close (conn->fd);
  free (conn);
}

/* Arm the socket timeout OPT (SO_RCVTIMEO or SO_SNDTIMEO) with the time
 * left before DEADLINE.  Returns -1 with ETIMEDOUT once it has passed. */
static int
arm_timeout (struct conn *conn, int opt, uint64_t deadline)
{
  struct timeval tv = { 0, 0 };

  if (deadline != 0) {
    uint64_t now = now_ns ();
    uint64_t left;

    if (now >= deadline) {
      errno = ETIMEDOUT;
      return -1;
    }
    /* Round up to a whole microsecond: a zero timeval means "forever". */
    left = DIV_ROUND_UP (deadline - now, 1000);
    tv.tv_sec = left / 1000000;
    tv.tv_usec = left % 1000000;
  }
  if (setsockopt (conn->fd, SOL_SOCKET, opt, &tv, sizeof tv) == -1)
    return -1;
  return 0;
}

int
conn_read_full (struct conn *conn, void *buf, size_t len, uint64_t deadline)
{
  char *p = buf;

  while (len > 0) {
    ssize_t r;

    if (arm_timeout (conn, SO_RCVTIMEO, deadline) == -1)
      return -1;
    r = conn->transport->recv (conn, p, len);
    if (r == 0) {
      errno = ECONNRESET;
      return -1;
    }
    if (r < 0) {
      /* The socket timeout fired (or a spurious wakeup): the next
       * arm_timeout decides whether the deadline has passed. */
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
        continue;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
conn_write_full (struct conn *conn, const void *buf, size_t len,
                 uint64_t deadline)
{
  const char *p = buf;

  while (len > 0) {
    struct iovec iov = { .iov_base = (void *) p, .iov_len = len };
    ssize_t r;

    if (arm_timeout (conn, SO_SNDTIMEO, deadline) == -1)
      return -1;
    r = conn->transport->send (conn, &iov, 1, false);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
        continue;
      return -1;
    }
    if (r == 0) {
      errno = EPIPE;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
conn_discard (struct conn *conn, uint64_t len, uint64_t deadline)
{
  char buf[16384];

  while (len > 0) {
    size_t n = MIN (len, (uint64_t) sizeof buf);

    if (conn_read_full (conn, buf, n, deadline) == -1)
      return -1;
    len -= n;
  }
  return 0;
}
