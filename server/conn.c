/* SPDX-License-Identifier: MIT */
/* Connections: their lifetime and the transports behind their send/recv
 * seam, plain sockets and TLS sessions (tls/, adapted here so that tls/
 * knows nothing of connections).  Every socket is non-blocking from
 * accept to close: the handshake is driven by the listener's event loop
 * and the transmission phase by the workers' rings. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/rounding.h"
#include "server/server.h"

/* Unsent bytes a connection that splices keeps in its socket at most. */
#define SPLICE_NOTSENT_LOWAT (16 * 1024)

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
  exports_put (conn->exp);
  free (conn);
}

/* ---- TLS ---------------------------------------------------------------- */

static ssize_t
tls_recv (struct conn *conn, void *buf, size_t len)
{
  ssize_t r = tls_session_recv (conn->transport_data, buf, len);

  if (r == -1 && errno == EPROTO)
    log_error ("%s: TLS receive: %s", conn->peer,
               tls_session_reason (conn->transport_data));
  return r;
}

static ssize_t
tls_send (struct conn *conn, const struct iovec *iov, int iovcnt, bool more)
{
  ssize_t r = tls_session_send (conn->transport_data, iov, iovcnt, more);

  if (r == -1 && (errno == EPROTO || errno == EIO))
    log_error ("%s: TLS send: %s", conn->peer,
               tls_session_reason (conn->transport_data));
  return r;
}

static void
tls_shutdown (struct conn *conn)
{
  tls_session_close (conn->transport_data);
  conn->transport_data = NULL;
}

static const struct conn_transport tls_transport = {
  .recv = tls_recv,
  .send = tls_send,
  .shutdown = tls_shutdown,
};

void
conn_start_tls (struct conn *conn, struct tls_session *session)
{
  conn->transport = &tls_transport;
  conn->transport_data = session;
}
