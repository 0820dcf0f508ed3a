/* SPDX-License-Identifier: MIT */
/* The listener: one thread with one epoll set that accepts connections
 * on every listening socket, negotiates with each client (negotiate.c)
 * until it reaches the transmission phase, and hands it to the workers.
 * A client in the handshake costs its socket and a few hundred bytes, no
 * thread, so a flood of clients that connect and say nothing, or stop
 * half-way through the handshake or the TLS handshake, cannot lock the
 * others out.
 *
 * Accepting never stops (but for a moment when the process is out of
 * file descriptors with nothing to evict).  The limits are on what the
 * clients can hold instead:
 * - --max-handshakes connections negotiating (or held, below) at once,
 *   and --max-handshakes-per-source from one source (an IPv4 address, an
 *   IPv6 /64, a Unix socket user).  A new connection that finds its limit
 *   reached takes the place of the one that has been idle longest (no
 *   byte moved: stalled, or waiting), in its source or in all; so an
 *   attacker can only push out its own or other idle connections, and a
 *   client that is negotiating is the last to go.
 * - --handshake-timeout from the greeting to the transmission phase.
 * - --max-connections counts connections from the greeting to their
 *   close, in the handshake and in the workers.  At the limit a new client
 *   is held without a greeting, which it cannot tell from waiting in the
 *   kernel backlog (qemu-nbd -e stops accepting), and is greeted when a
 *   connection ends (listener_conn_closed, from the workers), oldest
 *   first.  A held client that hangs up is closed.
 *
 * Without persistent (qemu-nbd without -t), the server stops once a
 * client that completed its handshake closes and no other connection is
 * left, as qemu-nbd does: clients that only listed the exports, or
 * failed, do not count, and held clients are closed.
 *
 * Stopping: server_stop() (from the signal thread) sets a flag and writes
 * to a self-pipe.  The listener then closes the listening sockets and
 * every connection it still holds, and returns; main() then shuts the
 * workers down. */

#include <config.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "common/list.h"
#include "common/rounding.h"
#include "server/server.h"

/* Connections accepted per listening socket and round: others' events
 * are served in between. */
#define ACCEPT_BATCH 64
/* Out of file descriptors with nothing to evict: stop accepting this
 * long (the listening socket would stay readable and spin the loop). */
#define ACCEPT_PAUSE_NS (100 * UINT64_C (1000000))
/* Events taken per epoll_wait. */
#define MAX_EVENTS 256
/* At most one summary of evictions per this long in the log. */
#define EVICT_REPORT_NS (10 * UINT64_C (1000000000))

/* ---- state -------------------------------------------------------------- */

/* What an epoll event's data.ptr points at: each of these structs
 * starts with its kind. */
enum tag {
  TAG_WAKE,                     /* the self-pipe */
  TAG_LISTEN,                   /* a listening socket */
  TAG_CONN,                     /* a struct pending */
};

struct listen_sock {
  enum tag tag;
  int fd;
};

/* A connection the listener holds: negotiating, or held at
 * --max-connections without a greeting. */
struct pending {
  enum tag tag;
  struct conn *conn;
  struct negotiation *neg;      /* NULL while held */
  struct source *src;
  uint64_t deadline;            /* of the handshake; 0: none */
  uint32_t events;              /* registered with epoll */
  bool ready;                   /* in 'ready' */
  bool dead;                    /* closed or handed over: in 'graveyard' */
  struct link lru;              /* 'lru', least recently active first */
  struct link src_lru;          /* src->lru */
  struct link timer;            /* 'timers', by deadline */
  struct link queue;            /* 'held', 'ready' or 'graveyard' */
};

static atomic_bool stopping;
static atomic_int wake_fd = -1;      /* write end of the self-pipe */

/* Connections from the greeting to their close, here and in the
 * workers: the ones --max-connections counts. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned nr_conns;            /* lock */

/* Set before serving starts (listener_set_closed_hook). */
static void (*closed_hook) (void);

/* The rest belongs to the listener thread. */
static const struct server_config *config;
static int epfd = -1;
static unsigned nr_pending;          /* negotiating or held */
static struct link lru;              /* every pending, by last activity */
static struct link timers;           /* negotiating ones with a deadline */
static struct link held;             /* waiting for a slot, oldest first */
static struct link ready;            /* to run again without an event */
static struct link graveyard;        /* to free after this round */
static struct listen_sock *listen_socks;
static int nr_listen;
static uint64_t accept_paused_until; /* now_ns(); 0: accepting */
static unsigned evicted;             /* since the last report */
static uint64_t evict_reported;      /* now_ns() of the last report */

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

/* A connection counted in nr_conns ended; NEGOTIATED: it had reached
 * the transmission phase.  Returns true if a held client can be greeted
 * in its place. */
static bool
conn_ended (bool negotiated)
{
  LOCK_FOR_SCOPE (&lock);
  if (nr_conns > 0)
    nr_conns--;
  if (negotiated && nr_conns == 0 && config && !config->persistent) {
    /* Held clients are not greeted: they are closed, as qemu-nbd's
     * would find it gone from the backlog. */
    log_info ("the last client left: exiting");
    server_stop ();
    return false;
  }
  return config && config->max_connections
    && nr_conns + 1 == config->max_connections;
}

void
listener_conn_closed (bool negotiated)
{
  /* Only held clients need the listener woken. */
  if (conn_ended (negotiated))
    wake ();
  if (closed_hook)
    closed_hook ();
}

void
listener_set_closed_hook (void (*fn) (void))
{
  closed_hook = fn;
}

/* Count a connection that is about to be greeted, unless at the limit. */
static bool
conn_begin (void)
{
  LOCK_FOR_SCOPE (&lock);
  if (atomic_load (&stopping))
    return false;               /* the last client left (not persistent) */
  if (config->max_connections && nr_conns >= config->max_connections)
    return false;
  nr_conns++;
  return true;
}

/* ---- pending connections ------------------------------------------------ */

static void
set_events (struct pending *p, uint32_t events)
{
  struct epoll_event ev = { .events = events, .data.ptr = p };

  if (p->events == events)
    return;
  if (epoll_ctl (epfd, EPOLL_CTL_MOD, p->conn->fd, &ev) == -1)
    log_error ("%s: epoll_ctl: %m", p->conn->peer);
  p->events = events;
}

/* A byte moved: P is the most recently active of all. */
static void
touch (struct pending *p)
{
  link_remove (&p->lru);
  list_append (&lru, &p->lru);
  link_remove (&p->src_lru);
  list_append (&p->src->lru, &p->src_lru);
}

/* Take P out of every list and the epoll set; it is freed after this
 * round (an event for it may still be in this round's array). */
static void
unlink_pending (struct pending *p)
{
  epoll_ctl (epfd, EPOLL_CTL_DEL, p->conn->fd, NULL);
  link_remove (&p->lru);
  link_remove (&p->src_lru);
  link_remove (&p->timer);
  link_remove (&p->queue);
  source_put (p->src);
  p->src = NULL;
  nr_pending--;
  p->dead = true;
  p->ready = false;
  list_append (&graveyard, &p->queue);
}

/* Close P.  WHY ends the "connection closed" line ("" when the client
 * ended the session itself). */
static void
close_pending (struct pending *p, const char *why)
{
  unlink_pending (p);
  log_info ("%s: connection closed%s", p->conn->peer, why);
  conn_free (p->conn);
  p->conn = NULL;
  if (p->neg) {
    negotiate_free (p->neg);
    p->neg = NULL;
    conn_ended (false);
  }
}

/* Make room for a new connection by closing OLD, the one idle longest
 * (of a source or of all). */
static void
evict (struct pending *old, const char *limit)
{
  uint64_t now = now_ns ();
  char why[128];

  snprintf (why, sizeof why, " (idle longest when %s was reached)", limit);
  close_pending (old, why);
  evicted++;
  if (now - evict_reported >= EVICT_REPORT_NS) {
    log_error ("handshake limits: %u idle connection%s dropped to make room "
               "for new ones (--max-handshakes=%u, "
               "--max-handshakes-per-source=%u)", evicted,
               evicted == 1 ? "" : "s", config->max_handshakes,
               config->max_handshakes_per_source);
    evicted = 0;
    evict_reported = now;
  }
}

static void
evict_oldest (const char *limit)
{
  evict (list_entry (lru.next, struct pending, lru), limit);
}

static void
handoff (struct pending *p)
{
  struct conn *conn = p->conn;

  unlink_pending (p);
  negotiate_free (p->neg);
  p->neg = NULL;
  p->conn = NULL;
  workers_add_conn (conn);
}

/* Negotiate with P as far as its socket allows. */
static void
run (struct pending *p)
{
  bool active = false;
  enum negotiate_next next = negotiate_run (p->neg, &active);

  if (active)
    touch (p);
  switch (next) {
  case NEGOTIATE_WAIT_READ:
    set_events (p, EPOLLIN);
    break;
  case NEGOTIATE_WAIT_WRITE:
    set_events (p, EPOLLOUT);
    break;
  case NEGOTIATE_AGAIN:
    if (!p->ready) {
      p->ready = true;
      list_append (&ready, &p->queue);
    }
    break;
  case NEGOTIATE_TRANSMISSION:
    handoff (p);
    break;
  case NEGOTIATE_CLOSE:
    close_pending (p, negotiate_ended_cleanly (p->neg) ? "" : " (error)");
    break;
  }
}

/* Greet P (counted in nr_conns already) and start negotiating. */
static void
greet (struct pending *p)
{
  p->neg = negotiate_new (p->conn);
  if (p->neg == NULL) {
    log_error ("%s: out of memory", p->conn->peer);
    conn_ended (false);
    close_pending (p, " (error)");
    return;
  }
  if (config->handshake_timeout) {
    /* Every deadline is now + the same timeout: appending keeps the
     * list in deadline order. */
    p->deadline = now_ns ()
      + (uint64_t) config->handshake_timeout * UINT64_C (1000000000);
    list_append (&timers, &p->timer);
  }
  run (p);
}

/* Greet held clients while there is room, oldest first. */
static void
greet_held (void)
{
  while (!list_empty (&held) && conn_begin ()) {
    struct pending *p = list_entry (held.next, struct pending, queue);

    link_remove (&p->queue);
    log_info ("%s: a connection ended: greeting it", p->conn->peer);
    greet (p);
  }
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

/* A new connection FD: make room for it within the limits, then greet
 * it, or hold it at --max-connections. */
static void
admit (int fd, const struct sockaddr_storage *ss, socklen_t len)
{
  char peer[sizeof ((struct conn *) 0)->peer];
  uint8_t key[SOURCE_KEY_SIZE];
  struct source *src;
  struct pending *p;
  struct conn *conn;
  struct epoll_event ev;

  if (ss->ss_family == AF_INET || ss->ss_family == AF_INET6) {
    int one = 1;

    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  format_peer (fd, ss, len, peer, sizeof peer);
  source_key (fd, ss, key);

  /* Room first: evicting may free the source itself. */
  src = source_find (key);
  if (src && src->count >= config->max_handshakes_per_source) {
    char name[SOURCE_NAME_MAX], limit[128];

    source_name (src, name, sizeof name);
    snprintf (limit, sizeof limit, "the limit for %s", name);
    evict (list_entry (src->lru.next, struct pending, src_lru), limit);
  }
  if (nr_pending >= config->max_handshakes)
    evict_oldest ("the limit for all sources");

  src = source_get (key);
  conn = conn_new (fd, peer);
  p = calloc (1, sizeof *p);
  if (src == NULL || conn == NULL || p == NULL) {
    log_error ("%s: out of memory", peer);
    free (p);
    if (conn)
      conn_free (conn);
    else
      close (fd);
    if (src && src->count == 0) {
      src->count = 1;
      source_put (src);
    }
    return;
  }
  p->tag = TAG_CONN;
  p->conn = conn;
  p->src = src;
  link_init (&p->timer);
  link_init (&p->queue);
  list_append (&lru, &p->lru);
  list_append (&src->lru, &p->src_lru);
  src->count++;
  nr_pending++;
  log_info ("%s: new connection", peer);

  /* Held: only a hang-up matters (edge-triggered, so bytes it sends
   * early do not spin the loop). */
  p->events = EPOLLRDHUP | EPOLLET;
  ev.events = p->events;
  ev.data.ptr = p;
  if (epoll_ctl (epfd, EPOLL_CTL_ADD, fd, &ev) == -1) {
    log_error ("%s: epoll_ctl: %m", peer);
    close_pending (p, " (error)");
    return;
  }
  if (!conn_begin ()) {
    log_info ("%s: --max-connections reached: held until a connection "
              "ends", peer);
    list_append (&held, &p->queue);
    return;
  }
  greet (p);
}

/* Register (EVENTS = EPOLLIN) or unregister (0) the listening sockets. */
static void
listen_events (uint32_t events)
{
  int i;

  for (i = 0; i < nr_listen; i++) {
    struct epoll_event ev = { .events = events, .data.ptr = &listen_socks[i] };

    epoll_ctl (epfd, EPOLL_CTL_MOD, listen_socks[i].fd, &ev);
  }
}

/* Accept what LS has, a batch at most. */
static void
accept_some (struct listen_sock *ls)
{
  int i;

  for (i = 0; i < ACCEPT_BATCH && !atomic_load (&stopping); i++) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd = accept4 (ls->fd, (struct sockaddr *) &ss, &len,
                      SOCK_CLOEXEC | SOCK_NONBLOCK);

    if (fd >= 0) {
      admit (fd, &ss, len);
      continue;
    }
    switch (errno) {
    case EAGAIN:
      return;
    case EINTR: case ECONNABORTED: case EPROTO:
      continue;
    case EMFILE: case ENFILE: case ENOBUFS: case ENOMEM:
      /* Out of descriptors or memory: the idlest handshake makes room.
       * With none left, back off rather than spin on a listening socket
       * that stays readable. */
      if (nr_pending > 0) {
        evict_oldest (errno == EMFILE || errno == ENFILE
                      ? "the file descriptor limit" : "the memory limit");
        continue;
      }
      log_error ("accept: %m: not accepting for %u ms",
                 (unsigned) (ACCEPT_PAUSE_NS / 1000000));
      accept_paused_until = now_ns () + ACCEPT_PAUSE_NS;
      listen_events (0);
      return;
    default:
      log_error ("accept: %m");
      return;
    }
  }
}

/* Close the negotiations whose time ran out. */
static void
expire (uint64_t now)
{
  while (!list_empty (&timers)) {
    struct pending *p = list_entry (timers.next, struct pending, timer);

    if (p->deadline > now)
      break;
    negotiate_timed_out (p->neg);
    close_pending (p, " (error)");
  }
}

/* How long epoll_wait may sleep, in ms (-1: until an event). */
static int
wait_ms (uint64_t now)
{
  uint64_t until = 0;

  if (!list_empty (&ready))
    return 0;
  if (!list_empty (&timers))
    until = list_entry (timers.next, struct pending, timer)->deadline;
  if (accept_paused_until && (until == 0 || accept_paused_until < until))
    until = accept_paused_until;
  if (until == 0)
    return -1;
  if (until <= now)
    return 0;
  return MIN (DIV_ROUND_UP (until - now, 1000000), (uint64_t) INT_MAX);
}

static void
bury_dead (void)
{
  while (!list_empty (&graveyard)) {
    struct pending *p = list_entry (graveyard.next, struct pending, queue);

    link_remove (&p->queue);
    free (p);
  }
}

/* Run the connections that yielded last round. */
static void
run_ready (void)
{
  struct link batch;

  /* Those that yield again wait for the next round. */
  link_init (&batch);
  list_splice (&batch, &ready);
  while (!list_empty (&batch)) {
    struct pending *p = list_entry (batch.next, struct pending, queue);

    link_remove (&p->queue);
    p->ready = false;
    run (p);
  }
}

/* Give this process as many file descriptors as it may have: every
 * connection holds one (and a worker's zero-copy reads a few more). */
static void
raise_fd_limit (void)
{
  struct rlimit rl;

  if (getrlimit (RLIMIT_NOFILE, &rl) == -1 || rl.rlim_cur == rl.rlim_max)
    return;
  rl.rlim_cur = rl.rlim_max;
  if (setrlimit (RLIMIT_NOFILE, &rl) == -1)
    log_error ("setrlimit RLIMIT_NOFILE: %m");
  else
    log_debug ("file descriptor limit raised to %llu",
               (unsigned long long) rl.rlim_max);
}

static int
setup (const int *fds, int nfds, struct listen_sock *ls, int pipe_rd)
{
  static enum tag wake_tag = TAG_WAKE;
  struct epoll_event ev;
  int i;

  link_init (&lru);
  link_init (&timers);
  link_init (&held);
  link_init (&ready);
  link_init (&graveyard);
  if (sources_init (config->max_handshakes) == -1)
    return -1;

  epfd = epoll_create1 (EPOLL_CLOEXEC);
  if (epfd == -1) {
    log_error ("epoll_create1: %m");
    return -1;
  }
  ev.events = EPOLLIN;
  ev.data.ptr = &wake_tag;
  if (epoll_ctl (epfd, EPOLL_CTL_ADD, pipe_rd, &ev) == -1) {
    log_error ("epoll_ctl: %m");
    return -1;
  }
  for (i = 0; i < nfds; i++) {
    int fl = fcntl (fds[i], F_GETFL);

    /* Accepting must never block the loop (a client that hangs up
     * before accept4 would leave it waiting). */
    if (fl == -1 || fcntl (fds[i], F_SETFL, fl | O_NONBLOCK) == -1) {
      log_error ("fcntl: %m");
      return -1;
    }
    ls[i].tag = TAG_LISTEN;
    ls[i].fd = fds[i];
    ev.events = EPOLLIN;
    ev.data.ptr = &ls[i];
    if (epoll_ctl (epfd, EPOLL_CTL_ADD, fds[i], &ev) == -1) {
      log_error ("epoll_ctl: %m");
      return -1;
    }
  }
  return 0;
}

static void
handle_event (struct epoll_event *ev, int pipe_rd)
{
  enum tag *tag = ev->data.ptr;
  struct pending *p;

  switch (*tag) {
  case TAG_WAKE: {
    char buf[64];

    while (read (pipe_rd, buf, sizeof buf) > 0)
      ;
    break;
  }
  case TAG_LISTEN:
    if (accept_paused_until == 0)
      accept_some ((struct listen_sock *) tag);
    break;
  case TAG_CONN:
    p = (struct pending *) tag;
    if (p->dead)
      break;                    /* closed earlier this round */
    if (p->neg == NULL) {
      if (ev->events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        close_pending (p, ": the client gave up waiting for a slot");
      break;
    }
    run (p);
    break;
  }
}

void
listener_run (const struct server_config *cfg, const int *fds, int nfds)
{
  int pipefd[2] = { -1, -1 };
  CLEANUP_FREE struct listen_sock *ls = NULL;
  struct epoll_event events[MAX_EVENTS];
  int i;

  config = cfg;
  raise_fd_limit ();

  ls = calloc (nfds ? nfds : 1, sizeof *ls);
  listen_socks = ls;
  nr_listen = nfds;
  if (ls == NULL
      || pipe2 (pipefd, O_CLOEXEC | O_NONBLOCK) == -1
      || setup (fds, nfds, ls, pipefd[0]) == -1) {
    log_error ("cannot start the listener: %m");
    /* Nothing can stop us cleanly without the pipe: give up now. */
    atomic_store (&stopping, true);
  }
  /* Publish the pipe before testing the flag: a server_stop() racing
   * with us either sees the pipe or has set the flag we test next. */
  atomic_store (&wake_fd, pipefd[1]);

  while (!atomic_load (&stopping)) {
    uint64_t now = now_ns ();
    int n;

    if (accept_paused_until && now >= accept_paused_until) {
      accept_paused_until = 0;
      listen_events (EPOLLIN);
    }

    n = epoll_wait (epfd, events, MAX_EVENTS, wait_ms (now));
    if (n == -1 && errno != EINTR) {
      log_error ("epoll_wait: %m");
      break;
    }
    for (i = 0; i < n && !atomic_load (&stopping); i++)
      handle_event (&events[i], pipefd[0]);
    if (atomic_load (&stopping))
      break;
    run_ready ();
    expire (now_ns ());
    greet_held ();
    bury_dead ();
  }

  log_info ("stopping: no longer accepting connections");
  for (i = 0; i < nfds; i++)
    close (fds[i]);
  while (!list_empty (&lru))
    close_pending (list_entry (lru.next, struct pending, lru),
                   " (server stopping)");
  bury_dead ();
  if (epfd >= 0)
    close (epfd);
  sources_free ();
  listen_socks = NULL;
  nr_listen = 0;

  /* The self-pipe stays open until exit: workers still call
   * listener_conn_closed() while they shut down, and closing it here
   * would race with them writing to it (or to a reused fd). */
}
