/* SPDX-License-Identifier: MIT */
/* Listening sockets: inherited from systemd socket activation
 * (LISTEN_PID/LISTEN_FDS, fds from 3), a Unix socket (-k), or TCP on
 * every address getaddrinfo gives for -b/-p (by default the wildcard
 * addresses of both families).  When v4 and v6 are both bound, the v6
 * sockets get IPV6_V6ONLY so the two do not fight over the port; in
 * qemu-nbd's mode, one socket on the first address that binds, as QEMU
 * does, with QEMU's messages.  Every listening socket is non-blocking: the listener accepts after poll(2)
 * says it is readable, and a connection reset in between must not block
 * it. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "server/server.h"

/* systemd's first passed fd (sd_listen_fds(3)). */
#define FIRST_SOCKET_ACTIVATION_FD 3

static int
set_flags (int fd)
{
  int fl = fcntl (fd, F_GETFL);

  if (fl == -1 || fcntl (fd, F_SETFL, fl | O_NONBLOCK) == -1)
    return -1;
  fl = fcntl (fd, F_GETFD);
  if (fl == -1 || fcntl (fd, F_SETFD, fl | FD_CLOEXEC) == -1)
    return -1;
  return 0;
}

/* Parse a decimal environment value; -1 if absent or malformed. */
static long
env_number (const char *name)
{
  const char *s = getenv (name);
  char *end;
  long v;

  if (s == NULL || *s < '0' || *s > '9')
    return -1;
  errno = 0;
  v = strtol (s, &end, 10);
  if (errno != 0 || *end != '\0')
    return -1;
  return v;
}

/* Returns the number of inherited fds (0 when not socket-activated), or
 * -1.  The variables are removed so children (none today) don't see
 * them, as sd_listen_fds(unset=1) does. */
static int
activation_fds (const struct server_config *cfg, int **fds)
{
  long pid = env_number ("LISTEN_PID");
  long n = env_number ("LISTEN_FDS");
  int i;

  if (pid == -1 || pid != (long) getpid ())
    return 0;
  unsetenv ("LISTEN_PID");
  unsetenv ("LISTEN_FDS");
  unsetenv ("LISTEN_FDNAMES");
  if (n <= 0 || n > 1024) {
    log_error ("socket activation: bad LISTEN_FDS");
    return -1;
  }
  if (cfg->socket_path || cfg->bind_addr) {
    log_error ("socket activation cannot be combined with --socket or "
               "--bind");
    return -1;
  }
  *fds = calloc (n, sizeof **fds);
  if (*fds == NULL) {
    log_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < n; i++) {
    int fd = FIRST_SOCKET_ACTIVATION_FD + i;
    int type;
    socklen_t tlen = sizeof type;

    if (getsockopt (fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == -1
        || type != SOCK_STREAM) {
      log_error ("socket activation: fd %d is not a stream socket", fd);
      free (*fds);
      *fds = NULL;
      return -1;
    }
    if (set_flags (fd) == -1) {
      log_error ("socket activation: fd %d: %m", fd);
      free (*fds);
      *fds = NULL;
      return -1;
    }
    (*fds)[i] = fd;
  }
  log_info ("using %ld socket-activated listener%s", n, n == 1 ? "" : "s");
  return n;
}

static int
unix_socket (const struct server_config *cfg, int **fds)
{
  const char *path = cfg->socket_path;
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  struct sockaddr_un tmp = { .sun_family = AF_UNIX };
  struct stat st;
  CLEANUP_CLOSE int fd = -1;
  bool tmp_ok;

  if (strlen (path) >= sizeof addr.sun_path) {
    if (cfg->qemu_compat)
      log_error ("UNIX socket path '%s' is too long", path);
    else
      log_error ("%s: socket path too long", path);
    return -1;
  }
  strcpy (addr.sun_path, path);

  /* Remove a stale socket left by a server that died, but never a
   * regular file given by mistake, nor the socket of a live server. */
  if (lstat (path, &st) == 0) {
    int probe;

    if (!S_ISSOCK (st.st_mode)) {
      log_error ("%s: exists and is not a socket", path);
      return -1;
    }
    probe = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0
        && connect (probe, (struct sockaddr *) &addr, sizeof addr) == 0) {
      close (probe);
      log_error ("%s: another server is listening on this socket", path);
      return -1;
    }
    if (probe >= 0)
      close (probe);
    if (unlink (path) == -1) {
      log_error ("%s: removing stale socket: %m", path);
      return -1;
    }
  }

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd == -1) {
    log_error ("socket: %m");
    return -1;
  }
  /* The file appears at bind(2), before listen(2): a client that sees
   * it in between is refused (scripts take the file for readiness).  So
   * bind a temporary name beside it, listen, and rename it into place,
   * which makes it appear listening.  Without room for the temporary
   * name in sun_path, bind the name itself. */
  tmp_ok = snprintf (tmp.sun_path, sizeof tmp.sun_path, "%s.%ld~", path,
                     (long) getpid ()) < (int) sizeof tmp.sun_path;
  if (tmp_ok)
    unlink (tmp.sun_path);
  if (bind (fd, (struct sockaddr *) (tmp_ok ? &tmp : &addr),
            sizeof addr) == -1) {
    if (cfg->qemu_compat)
      log_error ("Failed to bind socket to %s: %m", path);
    else
      log_error ("%s: bind: %m", path);
    return -1;
  }
  if (listen (fd, cfg->backlog > 0 ? cfg->backlog : SOMAXCONN) == -1) {
    log_error ("%s: listen: %m", path);
    unlink (tmp_ok ? tmp.sun_path : path);
    return -1;
  }
  if (tmp_ok && rename (tmp.sun_path, path) == -1) {
    log_error ("%s: %m", path);
    unlink (tmp.sun_path);
    return -1;
  }
  *fds = malloc (sizeof **fds);
  if (*fds == NULL) {
    log_error ("malloc: %m");
    unlink (path);
    return -1;
  }
  (*fds)[0] = fd;
  fd = -1;
  log_info ("listening on unix:%s", path);
  return 1;
}

/* Addresses to listen on, of both families.  No AI_ADDRCONFIG: on a
 * host with only loopback configured it would hide ::, and clients of
 * ::1 could not connect. */
static const struct addrinfo listen_hints = {
  .ai_flags = AI_PASSIVE,
  .ai_family = AF_UNSPEC,
  .ai_socktype = SOCK_STREAM,
};

/* Is AI's address earlier in RES too (some resolvers list one twice)? */
static bool
listed_before (const struct addrinfo *res, const struct addrinfo *ai)
{
  for (const struct addrinfo *prev = res; prev != ai; prev = prev->ai_next)
    if (prev->ai_addrlen == ai->ai_addrlen
        && memcmp (prev->ai_addr, ai->ai_addr, ai->ai_addrlen) == 0)
      return true;
  return false;
}

/* What listen_on returns for an address that can be done without. */
#define SKIP_ADDRESS (-2)

/* A socket listening on address AI of the list RES (HAVE_V4: the list
 * has an IPv4 address; N: sockets open so far).  Returns it,
 * SKIP_ADDRESS, or -1 (logged). */
static int
listen_on (const struct server_config *cfg, const struct addrinfo *res,
           const struct addrinfo *ai, bool have_v4, int n)
{
  char host[NI_MAXHOST], serv[NI_MAXSERV];
  int fd, one = 1;

  if (getnameinfo (ai->ai_addr, ai->ai_addrlen, host, sizeof host,
                   serv, sizeof serv, NI_NUMERICHOST | NI_NUMERICSERV))
    strcpy (host, "?"), strcpy (serv, "?");
  fd = socket (ai->ai_family,
               ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
               ai->ai_protocol);
  if (fd == -1) {
    /* A kernel without IPv6 still serves IPv4. */
    if (errno == EAFNOSUPPORT)
      return SKIP_ADDRESS;
    log_error ("socket: %m");
    return -1;
  }
  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (ai->ai_family == AF_INET6 && have_v4
      && setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &one,
                     sizeof one) == -1) {
    log_error ("setsockopt IPV6_V6ONLY: %m");
    close (fd);
    return -1;
  }
  if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1) {
    /* The same address twice in the list, or IPv6 disabled by sysctl
     * (the wildcard v4 socket still serves). */
    if ((errno == EADDRINUSE && n > 0 && listed_before (res, ai))
        || (errno == EADDRNOTAVAIL && cfg->bind_addr == NULL
            && ai->ai_family == AF_INET6)) {
      close (fd);
      return SKIP_ADDRESS;
    }
    log_error ("bind %s port %s: %m", host, serv);
    close (fd);
    return -1;
  }
  if (listen (fd, cfg->backlog > 0 ? cfg->backlog : SOMAXCONN) == -1) {
    log_error ("listen %s port %s: %m", host, serv);
    close (fd);
    return -1;
  }
  log_info ("listening on %s%s%s port %s",
            ai->ai_family == AF_INET6 ? "[" : "", host,
            ai->ai_family == AF_INET6 ? "]" : "", serv);
  return fd;
}

static int
tcp_sockets (const struct server_config *cfg, int **fds)
{
  struct addrinfo *res, *ai;
  const char *port = cfg->port ? cfg->port : NBD_DEFAULT_PORT;
  bool have_v4 = false;
  int n = 0, max = 0, r;

  r = getaddrinfo (cfg->bind_addr, port, &listen_hints, &res);
  if (r != 0) {
    log_error ("%s:%s: %s", cfg->bind_addr ? cfg->bind_addr : "*", port,
               r == EAI_SYSTEM ? strerror (errno) : gai_strerror (r));
    return -1;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    max++;
    if (ai->ai_family == AF_INET)
      have_v4 = true;
  }
  *fds = calloc (max, sizeof **fds);
  if (*fds == NULL) {
    log_error ("calloc: %m");
    freeaddrinfo (res);
    return -1;
  }

  for (ai = res; ai; ai = ai->ai_next) {
    int fd = listen_on (cfg, res, ai, have_v4, n);

    if (fd == SKIP_ADDRESS)
      continue;
    if (fd == -1)
      goto fail;
    (*fds)[n++] = fd;
  }
  freeaddrinfo (res);
  if (n == 0) {
    log_error ("no address to listen on");
    free (*fds);
    *fds = NULL;
    return -1;
  }
  return n;

 fail:
  freeaddrinfo (res);
  while (n > 0)
    close ((*fds)[--n]);
  free (*fds);
  *fds = NULL;
  return -1;
}

/* qemu-nbd's way (QEMU's inet_listen_saddr): one socket, on the first
 * address of the list that can be bound, dual stack for IPv6, and
 * QEMU's messages. */
static int
tcp_first_socket (const struct server_config *cfg, int **fds)
{
  struct addrinfo *res, *ai;
  const char *port = cfg->port ? cfg->port : NBD_DEFAULT_PORT;
  const char *host = cfg->bind_addr ? cfg->bind_addr : "0.0.0.0";
  bool created = false;
  int r, err = 0;

  r = getaddrinfo (host, port, &listen_hints, &res);
  if (r != 0) {
    log_error ("address resolution failed for %s:%s: %s", host, port,
               r == EAI_SYSTEM ? strerror (errno) : gai_strerror (r));
    return -1;
  }
  for (ai = res; ai; ai = ai->ai_next) {
    int fd, one = 1, zero = 0;

    fd = socket (ai->ai_family,
                 ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                 ai->ai_protocol);
    if (fd == -1) {
      err = errno;
      continue;
    }
    created = true;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6)
      setsockopt (fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    if (bind (fd, ai->ai_addr, ai->ai_addrlen) == -1) {
      err = errno;
      close (fd);
      if (err == EADDRINUSE)
        continue;
      freeaddrinfo (res);
      log_error ("Failed to bind socket: %s", strerror (err));
      return -1;
    }
    if (listen (fd, cfg->backlog > 0 ? cfg->backlog : SOMAXCONN) == -1) {
      err = errno;
      close (fd);
      if (err == EADDRINUSE)
        continue;
      freeaddrinfo (res);
      log_error ("Failed to listen on socket: %s", strerror (err));
      return -1;
    }
    freeaddrinfo (res);
    *fds = malloc (sizeof **fds);
    if (*fds == NULL) {
      close (fd);
      log_error ("malloc: %m");
      return -1;
    }
    (*fds)[0] = fd;
    log_info ("listening on %s port %s", host, port);
    return 1;
  }
  freeaddrinfo (res);
  log_error ("%s: %s", created ? "Failed to find an available port"
             : "Failed to create a socket", strerror (err));
  return -1;
}

int
sockets_listen (const struct server_config *cfg, int **fds)
{
  int n;

  *fds = NULL;
  n = activation_fds (cfg, fds);
  if (n != 0)
    return n;
  if (cfg->socket_path)
    return unix_socket (cfg, fds);
  if (cfg->qemu_compat)
    return tcp_first_socket (cfg, fds);
  return tcp_sockets (cfg, fds);
}
