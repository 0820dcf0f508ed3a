/* SPDX-License-Identifier: MIT */
/* The NBD front end: its configuration, exports, connections and workers,
 * and the table of contents of server/, one group per source file.
 *
 * Flow: the listener (listener.c) accepts a socket, checks the connection
 * limit and runs the option haggling (handshake.c) in a short-lived
 * thread under the handshake timeout, with the socket blocking.  A
 * connection that reaches the transmission phase is handed to a worker
 * (worker.c), switched to non-blocking, and served from the worker's
 * io_uring loop (request.c) until it ends.
 *
 * Socket I/O goes through the connection's transport ops, so TLS (tls/)
 * can replace them without the protocol code knowing.  The one exception
 * is input on a plain connection in the transmission phase, which the
 * worker's ring receives (request.c). */
#ifndef SERVER_SERVER_H
#define SERVER_SERVER_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "server/nbd-protocol.h"
#include "tls/tls.h"

struct qcow2_image;
struct worker;
struct conn;

/* ---- main.c: configuration -------------------------------------------- */

struct server_config {
  const char *image;            /* path of the qcow2 image */
  const char *export_name;      /* default "" */
  const char *description;      /* NULL: none */
  bool read_only;
  bool discard_unmap;           /* --discard=unmap (default ignore) */
  const char *bind_addr;        /* NULL: all addresses, dual stack */
  const char *port;             /* default "10809" */
  const char *socket_path;      /* Unix socket instead of TCP */
  unsigned threads;             /* worker threads; default: CPU count */
  unsigned max_connections;     /* 0: unlimited */
  unsigned handshake_timeout;   /* seconds; 0: none */
  uint64_t l2_cache_size;       /* bytes; 0: library default */
  const char *pid_file;
  int verbose;                  /* -v count */
  struct tls_config tls;        /* --tls and its credentials */
};

/* TLS for the handshake, set by main before the listener starts and
 * constant afterwards: the mode, and the context (NULL when off). */
extern enum tls_mode server_tls_mode;
extern struct tls_ctx *server_tls_ctx;

/* The one export.  Constant once serving starts. */
struct export {
  const char *name;
  const char *description;
  struct qcow2_image *img;
  uint64_t size;
  bool read_only;
  bool discard_unmap;           /* TRIM deallocates; else it is ignored */
  uint16_t eflags;              /* NBD_FLAG_* transmission flags */
  uint32_t min_block, pref_block, max_block;
};

/* ---- log.c: messages to stderr ---------------------------------------- */

extern int log_verbose;          /* set from -v */
void log_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_info (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* ---- conn.c: connections and their transport seam --------------------- */

/* How bytes move on a connection's socket.  Both behave like recv(2) and
 * sendmsg(2) on the socket's current blocking mode: they return the byte
 * count, 0 for EOF (recv), or -1 with errno set (EAGAIN when a
 * non-blocking socket is not ready). */
struct conn_transport {
  ssize_t (*recv) (struct conn *conn, void *buf, size_t len);
  ssize_t (*send) (struct conn *conn, const struct iovec *iov, int iovcnt,
                   bool more);
  /* Send up to LEN bytes straight from the pipe PIPE_FD (splice(2)), or
   * NULL where bytes must pass through the transport (TLS). */
  ssize_t (*splice) (struct conn *conn, int pipe_fd, size_t len, bool more);
  /* Release transport state (TLS session); the fd is closed by conn. */
  void (*shutdown) (struct conn *conn);
};

/* Meta contexts a client may select (bit numbers of conn->meta). */
enum meta_context {
  META_BASE_ALLOCATION = 0,     /* "base:allocation" */
  META_ALLOCATION_DEPTH = 1,    /* "qemu:allocation-depth" */
  META_NR
};
/* The context ID sent in NBD_REP_META_CONTEXT and BLOCK_STATUS chunks. */
#define META_CONTEXT_ID(m) ((uint32_t) (m) + 1)

struct conn {
  int fd;
  char peer[80];                /* printable peer address, for logs */
  const struct conn_transport *transport;
  void *transport_data;         /* TLS session */
  bool paced;                   /* TCP_NOTSENT_LOWAT set (plain_splice) */

  /* Negotiated in the handshake, constant afterwards. */
  const struct export *exp;
  bool no_zeroes;
  bool structured_replies;
  uint32_t meta;                /* bitmask of enum meta_context */

  /* Worker-owned state (request.c). */
  struct worker *worker;
  struct conn_state *state;
};

/* Plain-socket transport (recv/sendmsg with MSG_NOSIGNAL).  Workers
 * recognise it and receive requests through their ring instead. */
extern const struct conn_transport conn_plain_transport;

struct conn *conn_new (int fd, const char *peer);
/* Close the transport and the socket and free the connection. */
void conn_free (struct conn *conn);

/* Blocking helpers for the handshake: read or write all bytes before the
 * deadline (CLOCK_MONOTONIC nanoseconds; 0 = none).  Return 0, or -1 with
 * errno set (ETIMEDOUT, ECONNRESET for EOF, ...). */
int conn_read_full (struct conn *conn, void *buf, size_t len,
                    uint64_t deadline);
int conn_write_full (struct conn *conn, const void *buf, size_t len,
                     uint64_t deadline);
/* Read and throw away LEN bytes. */
int conn_discard (struct conn *conn, uint64_t len, uint64_t deadline);

uint64_t now_ns (void);

/* ---- handshake.c: fixed newstyle negotiation -------------------------- */

/* Run the handshake on a blocking connection.  Returns 1 when the client
 * entered the transmission phase (conn->exp and the negotiated flags
 * set), 0 when it ended the session cleanly (ABORT, LIST then hang up),
 * -1 on error or timeout (already logged). */
int handshake_run (struct conn *conn, const struct export *exp,
                   uint64_t deadline);

/* ---- sockets.c: listening sockets ------------------------------------- */

/* Open the listening sockets the configuration asks for: inherited ones
 * (LISTEN_FDS/LISTEN_PID), a Unix socket, or TCP on every address of
 * bind_addr (dual stack).  Returns the count or -1 (logged). */
int sockets_listen (const struct server_config *cfg, int **fds);

/* ---- listener.c: accepting connections -------------------------------- */

/* Accept on FDS until server_stop() is called, running each handshake in
 * its own thread and handing finished ones to the workers. */
void listener_run (const struct server_config *cfg, const struct export *exp,
                   const int *fds, int nfds);
/* Async-signal-safe: ask the listener to stop accepting. */
void server_stop (void);
/* Called by a worker when a connection it served has been freed. */
void listener_conn_closed (void);
/* Also call FN (from a worker thread) whenever a connection is freed:
 * how attach.c, which has no listener, learns its last one is gone. */
void listener_set_closed_hook (void (*fn) (void));

/* ---- worker.c: worker threads, each with an io_uring ring ------------- */

/* Start N workers serving EXP; each dups every image file.  Returns 0 or
 * -1 (logged). */
int workers_start (const struct export *exp, unsigned n);
/* Hand a connection in the transmission phase to the least busy worker. */
void workers_add_conn (struct conn *conn);
/* Stop reading new requests on every connection, answer what is in
 * flight, close every connection and join the threads. */
void workers_shutdown (void);
/* The qcow2_open_opts.wakeup callback: an in-flight allocation ended, so
 * every worker retries the requests it parked on QCOW2_BLOCKED.  Safe
 * from any thread, before workers_start and after workers_shutdown. */
void workers_wakeup (void *opaque);

/* ---- reply.c: replies in the transmission phase ----------------------- */

/* Map an errno to the NBD error sent on the wire (the only such place). */
uint32_t nbd_errno (int err);

/* ---- options.c: command line values shared by subcommands ------------- */

/* Parse a decimal size with an optional binary suffix K, M, G or T
 * (either case) into *SIZE.  Returns 0, or -1 when S is not such a size
 * or does not fit in 64 bits. */
int options_parse_size (const char *s, uint64_t *size);

/* Report a command line error and exit with status 1: "qcow2-nbd:
 * PREFIXMSG 'ARG'" (the quoted ARG only when given, the whole line only
 * when MSG is), then a pointer to "qcow2-nbd SUBCMD --help". */
void options_usage_error (const char *prefix, const char *subcmd,
                          const char *msg, const char *arg)
  __attribute__ ((noreturn));

/* A subcommand's own usage error report (a wrapper of
 * options_usage_error). */
typedef void (*options_bad_usage_fn) (const char *msg, const char *arg)
  __attribute__ ((noreturn));

/* The value of option OPT, S: a decimal number in [MIN, MAX], or
 * BAD_USAGE is called (it does not return). */
unsigned options_unsigned (options_bad_usage_fn bad_usage, const char *opt,
                           const char *s, unsigned min, unsigned max);
/* --l2-cache-size S: a size (0, or at least QCOW2_MIN_L2_CACHE_SIZE). */
uint64_t options_l2_cache_size (options_bad_usage_fn bad_usage,
                                const char *s);
/* --discard S, with qemu-nbd's names: true for unmap (or on), false for
 * ignore (or off). */
bool options_discard (options_bad_usage_fn bad_usage, const char *s);

/* The default of --threads: the CPUs this process may run on. */
unsigned options_cpu_count (void);
#define OPTIONS_MAX_THREADS 1024

/* getopt_long returned C, ':' (missing argument) or '?' (unknown
 * option; the option string must start with ':'): report it with
 * BAD_USAGE, which does not return. */
void options_getopt_error (options_bad_usage_fn bad_usage, int c,
                           char **argv)
  __attribute__ ((noreturn));

/* ---- startup.c: start-up steps every way of serving shares ---------- */

/* Open CFG's image and fill in EXP from CFG: the one export, its flags
 * and block sizes.  Returns 0, or -1 (logged, saying why). */
int export_open (const struct server_config *cfg, struct export *exp);
/* Close the image (flushing it: clean, when every write has ended). */
void export_close (struct export *exp);
/* Write our pid to PATH.  Returns 0 or -1 (logged). */
int pid_file_write (const char *path);

/* ---- kdev.c: the kernel's NBD driver (nbd.ko) ------------------------- */

/* A kernel NBD device, /dev/nbdN. */
struct kdev {
  const char *path;
  unsigned index;               /* N */
  bool netlink;                 /* connected through generic netlink */
  /* The ioctl interface: the open device and the thread in NBD_DO_IT,
   * which sets ENDED and calls ON_END when the device goes down. */
  int fd;
  pthread_t thread;
  bool has_thread;
  atomic_bool ended;
  void (*on_end) (void);
};

/* Check that PATH is a whole NBD device and find its index.  Returns 0,
 * or -1 (logged: no such device, and whether nbd.ko is loaded; not an
 * NBD device; a partition). */
int kdev_lookup (const char *path, struct kdev *dev);
/* The process that has the device attached, or 0 when it is not. */
pid_t kdev_owner (const struct kdev *dev);
/* Hand the device the N sockets FDS of EXP, already in the transmission
 * phase: by generic netlink where the kernel offers it and USE_NETLINK,
 * by the ioctls otherwise (ON_END is then called, from another thread,
 * once the device is down).  Returns 0 once the device is up, or -1
 * (logged; a busy device says so). */
int kdev_connect (struct kdev *dev, const struct export *exp, const int *fds,
                  unsigned n, bool use_netlink, void (*on_end) (void));
/* Flush the device, then tell the kernel to disconnect it (it sends
 * NBD_CMD_DISC and shuts its sockets down).  Returns 0 or -1 (logged). */
int kdev_disconnect (struct kdev *dev);
/* After the device went down: the ioctl thread joined, the sockets
 * cleared. */
void kdev_release (struct kdev *dev);

/* ---- attach.c: the attach and detach subcommands ---------------------- */

struct attach_opts {
  const char *device;           /* /dev/nbdN */
  unsigned connections;         /* sockets to the device; default 1 */
  bool fork;                    /* background once the device is up */
  bool use_ioctl;               /* never netlink */
};

/* Serve CFG's image (image, read_only, discard_unmap, threads,
 * l2_cache_size, pid_file, verbose) to the kernel device OPTS->device
 * until it is detached or a SIGINT/SIGTERM comes (then: flush, detach,
 * close the image clean).  Returns the exit status. */
int attach_serve (const struct server_config *cfg,
                  const struct attach_opts *opts);
/* Flush and disconnect DEVICE, and wait for a qcow2-nbd serving it to
 * close its image.  Returns the exit status. */
int attach_detach (const char *device);
/* Run "qcow2-nbd attach ..." and "qcow2-nbd detach ..." (ARGV[0] is the
 * subcommand); return the exit status. */
int attach_main (int argc, char **argv);
int detach_main (int argc, char **argv);

/* ---- create.c: the create subcommand ---------------------------------- */

/* Run "qcow2-nbd create ..." (ARGV[0] is "create"); returns the exit
 * status. */
int create_main (int argc, char **argv);

#endif /* SERVER_SERVER_H */
