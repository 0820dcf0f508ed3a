/* SPDX-License-Identifier: MIT */
/* The listener: accepts connections on every listening socket, runs each
 * handshake in its own short-lived detached thread under the handshake
 * timeout, and hands connections that reach the transmission phase to
 * the workers.
 *
 * --max-connections counts connections from accept to close, in the
 * handshake and in the workers.  At the limit the listener stops
 * accepting (it stops polling the listening sockets), so further clients
 * wait in the kernel backlog, as with qemu-nbd -e, rather than being
 * accepted and closed; a worker calling listener_conn_closed() wakes the
 * listener up.
 *
 * Stopping: server_stop() (from the signal thread) sets a flag and writes
 * to a self-pipe.  The listener then closes the listening sockets, shuts
 * down the sockets of handshakes in progress so they end at once instead
 * of at their timeout, and waits for those threads before returning;
 * main() then shuts the workers down. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "server/server.h"

/* Enough for OpenSSL's handshake; handshake buffers are on the heap. */
#define HANDSHAKE_STACK_SIZE (512 * 1024)

/* Handshake threads alive at once, even without --max-connections: a
 * flood of clients that connect and say nothing then waits in the
 * backlog instead of costing a thread and a stack each. */
#define MAX_HANDSHAKES 1024

/* A connection in the handshake, listed so stopping can shut it down. */
struct pending {
  struct conn *conn;
  struct pending *next, *prev;
};

static atomic_bool stopping;
static atomic_int wake_fd = -1;      /* write end of the self-pipe */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t handshakes_done = PTHREAD_COND_INITIALIZER;
static unsigned nr_conns;            /* lock: accepted, not yet closed */
static unsigned nr_handshakes;       /* lock: handshake threads alive */
static struct pending *pending_list; /* lock */

/* Set before serving starts (listener_set_closed_hook). */
static void (*closed_hook) (void);

/* Set once by listener_run, read by the handshake threads. */
static const struct server_config *config;
static const struct export *export;

/* Async-signal-safe, and callable with the lock held. */
static void
wake (void)
{
  int fd = atomic_load (&wake_fd);
  char c = 0;

  /* The pipe is non-blocking: a full pipe already means "wake up". */
  if (fd >= 0)
    while (write (fd, &c, 1) == -1 && errno == EINTR)
      ;
}

void
server_stop (void)
{
  atomic_store (&stopping, true);
  wake ();
}

void
listener_conn_closed (void)
{
  {
    LOCK_FOR_SCOPE (&lock);
    if (nr_conns > 0)
      nr_conns--;
    /* Only a listener paused at the limit needs waking. */
    if (config && config->max_connections
        && nr_conns + 1 == config->max_connections)
      wake ();
  }
  if (closed_hook)
    closed_hook ();
}

void
listener_set_closed_hook (void (*fn) (void))
{
  closed_hook = fn;
}

static void
format_peer (int fd, const struct sockaddr_storage *ss, socklen_t len,
             char *buf, size_t size)
{
  /* Numeric only: an IPv6 address with a scope id fits in 64. */
  char host[64], serv[8];

  if (ss->ss_family == AF_UNIX) {
    struct ucred cred;
    socklen_t clen = sizeof cred;

    if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
      snprintf (buf, size, "unix:pid=%ld", (long) cred.pid);
    else
      snprintf (buf, size, "unix");
    return;
  }
  if (getnameinfo ((const struct sockaddr *) ss, len, host, sizeof host,
                   serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV)) {
    snprintf (buf, size, "?");
    return;
  }
  if (ss->ss_family == AF_INET6)
    snprintf (buf, size, "[%s]:%s", host, serv);
  else
    snprintf (buf, size, "%s:%s", host, serv);
}

/* Take P off pending_list (its handshake is over or never started). */
static void
pending_unlink_locked (struct pending *p)
{
  if (p->prev)
    p->prev->next = p->next;
  else
    pending_list = p->next;
  if (p->next)
    p->next->prev = p->prev;
}

/* The socket timeouts the handshake armed must not outlive it. */
static void
clear_timeouts (int fd)
{
  struct timeval tv = { 0, 0 };

  setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt (fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

static void *
handshake_thread (void *arg)
{
  struct pending *p = arg;
  struct conn *conn = p->conn;
  uint64_t deadline = 0;
  int r;

  if (config->handshake_timeout)
    deadline = now_ns ()
      + (uint64_t) config->handshake_timeout * UINT64_C (1000000000);
  r = handshake_run (conn, export, deadline);

  {
    LOCK_FOR_SCOPE (&lock);
    pending_unlink_locked (p);
  }
  free (p);

  if (r == 1 && !atomic_load (&stopping)) {
    clear_timeouts (conn->fd);
    workers_add_conn (conn);
  }
  else {
    log_info ("%s: connection closed%s", conn->peer,
              r == 1 ? " (server stopping)" : r == 0 ? "" : " (error)");
    conn_free (conn);
    listener_conn_closed ();
  }

  {
    LOCK_FOR_SCOPE (&lock);
    if (nr_handshakes-- == MAX_HANDSHAKES)
      wake ();
    if (nr_handshakes == 0)
      pthread_cond_broadcast (&handshakes_done);
  }
  return NULL;
}

/* Accept one connection from LFD, if any, and start its handshake. */
static void
accept_one (int lfd)
{
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char peer[sizeof ((struct conn *) 0)->peer];
  struct conn *conn;
  struct pending *p;
  pthread_attr_t attr;
  pthread_t thread;
  int fd, err;

  fd = accept4 (lfd, (struct sockaddr *) &ss, &len, SOCK_CLOEXEC);
  if (fd == -1) {
    switch (errno) {
    case EAGAIN: case EINTR: case ECONNABORTED: case EPROTO:
      return;
    case EMFILE: case ENFILE: case ENOBUFS: case ENOMEM: {
      /* Out of fds or memory: back off instead of spinning on a
       * listening socket that stays readable. */
      struct timespec ts = { 0, 100 * 1000 * 1000 };

      log_error ("accept: %m");
      nanosleep (&ts, NULL);
      return;
    }
    default:
      log_error ("accept: %m");
      return;
    }
  }

  if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
    int one = 1;

    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  format_peer (fd, &ss, len, peer, sizeof peer);

  conn = conn_new (fd, peer);
  p = calloc (1, sizeof *p);
  if (conn == NULL || p == NULL) {
    log_error ("%s: out of memory", peer);
    free (p);
    if (conn)
      conn_free (conn);
    else
      close (fd);
    return;
  }
  p->conn = conn;
  log_info ("%s: new connection", peer);

  {
    LOCK_FOR_SCOPE (&lock);
    nr_conns++;
    nr_handshakes++;
    p->next = pending_list;
    if (pending_list)
      pending_list->prev = p;
    pending_list = p;
  }

  pthread_attr_init (&attr);
  pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize (&attr, HANDSHAKE_STACK_SIZE);
  err = pthread_create (&thread, &attr, handshake_thread, p);
  pthread_attr_destroy (&attr);
  if (err != 0) {
    errno = err;
    log_error ("%s: creating handshake thread: %m", peer);
    {
      LOCK_FOR_SCOPE (&lock);
      pending_unlink_locked (p);
      nr_handshakes--;
    }
    free (p);
    conn_free (conn);
    listener_conn_closed ();
  }
}

static bool
at_limit (void)
{
  LOCK_FOR_SCOPE (&lock);
  return nr_handshakes >= MAX_HANDSHAKES
    || (config->max_connections && nr_conns >= config->max_connections);
}

void
listener_run (const struct server_config *cfg, const struct export *exp,
              const int *fds, int nfds)
{
  int pipefd[2];
  CLEANUP_FREE struct pollfd *pfd = NULL;
  int i;

  config = cfg;
  export = exp;

  if (pipe2 (pipefd, O_CLOEXEC | O_NONBLOCK) == -1) {
    log_error ("pipe2: %m");
    /* Nothing can stop us cleanly without the pipe: give up now. */
    atomic_store (&stopping, true);
    pipefd[0] = pipefd[1] = -1;
  }
  /* Publish the pipe before testing the flag: a server_stop() racing
   * with us either sees the pipe or has set the flag we test next. */
  atomic_store (&wake_fd, pipefd[1]);

  pfd = calloc (nfds + 1, sizeof *pfd);
  if (pfd == NULL) {
    log_error ("calloc: %m");
    atomic_store (&stopping, true);
  }

  while (!atomic_load (&stopping)) {
    int n = 1;

    pfd[0].fd = pipefd[0];
    pfd[0].events = POLLIN;
    if (!at_limit ())
      for (i = 0; i < nfds; i++) {
        pfd[n].fd = fds[i];
        pfd[n].events = POLLIN;
        n++;
      }
    if (poll (pfd, n, -1) == -1) {
      if (errno != EINTR)
        log_error ("poll: %m");
      continue;
    }
    if (pfd[0].revents) {
      char buf[64];

      while (read (pipefd[0], buf, sizeof buf) > 0)
        ;
    }
    for (i = 1; i < n && !atomic_load (&stopping); i++)
      if (pfd[i].revents & (POLLIN | POLLERR | POLLHUP))
        if (!at_limit ())
          accept_one (pfd[i].fd);
  }

  log_info ("stopping: no longer accepting connections");
  for (i = 0; i < nfds; i++)
    close (fds[i]);

  {
    struct pending *p;

    LOCK_FOR_SCOPE (&lock);
    for (p = pending_list; p; p = p->next)
      shutdown (p->conn->fd, SHUT_RDWR);
    while (nr_handshakes > 0)
      pthread_cond_wait (&handshakes_done, &lock);
  }

  /* The self-pipe stays open until exit: workers still call
   * listener_conn_closed() while they shut down, and closing it here
   * would race with them writing to it (or to a reused fd). */
}
