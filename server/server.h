/* SPDX-License-Identifier: MIT */
/* The NBD front end: its configuration, exports, connections and workers,
 * and the table of contents of server/, one group per source file.
 *
 * Flow: the listener (listener.c) accepts a socket, applies the limits
 * on connections and handshakes, and runs the option haggling
 * (handshake.c, a state machine whose bytes negotiate.c moves) from its
 * one event loop under the handshake timeout; no socket ever blocks.  A
 * connection that reaches the transmission phase is handed to a worker
 * (worker.c) and served from the worker's io_uring loop (request.c)
 * until it ends.
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
#include <signal.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <sys/uio.h>

#include "common/list.h"
#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "tls/tls.h"

struct qcow2_image;
struct qcow2_bitmap;
struct worker;
struct conn;
struct tls_session;
struct sockaddr_storage;

/* Meta contexts a client may select (bit numbers of conn->meta): two
 * fixed ones, then one per exported bitmap. */
enum meta_context {
  META_BASE_ALLOCATION = 0,     /* "base:allocation" */
  META_ALLOCATION_DEPTH = 1,    /* "qemu:allocation-depth" */
  META_DIRTY_BITMAP = 2,        /* "qemu:dirty-bitmap:NAME", + index */
  META_MAX = 64                 /* bits of conn->meta */
};
#define MAX_EXPORT_BITMAPS (META_MAX - META_DIRTY_BITMAP)
/* The context ID sent in NBD_REP_META_CONTEXT and BLOCK_STATUS chunks. */
#define META_CONTEXT_ID(m) ((uint32_t) (m) + 1)

/* ---- the clock -------------------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds.  Inline, so that every file may use it
 * without depending on another. */
static inline uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000 + (uint64_t) ts.tv_nsec;
}

/* ---- serve.c: the server's configuration and life ------------------- */

/* QEMU's detect-zeroes: writes of zeros become zeroings. */
enum detect_zeroes {
  DETECT_ZEROES_OFF,
  DETECT_ZEROES_ON,             /* zeroed, the allocation kept */
  DETECT_ZEROES_UNMAP,          /* zeroed, deallocated (--discard=unmap) */
};

/* One --export NAME=PATH[,OPTIONS] (main.c): an export of its own,
 * opened at startup, with its own options over the global ones. */
struct export_spec {
  const char *name;
  const char *path;
  const char *description;      /* NULL: none */
  int read_only;                /* -1: the global --read-only */
  int discard_unmap;            /* -1: the global --discard */
  const char *bitmaps[MAX_EXPORT_BITMAPS];
  unsigned nr_bitmaps;
};

/* Exports a server keeps open at once by default (--max-open-exports),
 * and how long one no connection uses stays open (--idle-timeout). */
#define DEFAULT_MAX_OPEN_EXPORTS 64
#define DEFAULT_EXPORT_IDLE_TIMEOUT 60

/* Everything both command lines (main.c's serve, qemu-nbd.c) can ask
 * for; serve_run() turns it into the exports and runs the server. */
struct server_config {
  /* The image: the export named export_name.  NULL when the exports
   * are only --export and --export-dir ones. */
  const char *image;            /* path of the image */
  enum qcow2_format format;
  bool probed_raw;              /* raw by probing: guard sector 0 as QEMU */
  bool no_backing;              /* QEMU's backing=null */
  bool no_locks;                /* QEMU's file.locking=off */
  uint64_t offset, size;        /* window of the disk (qcow2_open_opts) */
  bool has_size;
  bool overlay;                 /* -s: writes go to a temporary overlay */
  bool direct_io;               /* data I/O with O_DIRECT where aligned */
  bool writethrough;            /* every write durable before its reply */
  bool no_flush;                /* FLUSH and FUA skip the sync (unsafe) */
  enum detect_zeroes detect_zeroes;
  /* QEMU's compress filter over the (qcow2) image, qemu-nbd --image-opts
   * driver=compress: writes store whole clusters compressed, the
   * cluster is the minimum block size, and a writable image must be a
   * whole number of clusters.  Ignored with an overlay. */
  bool compress;

  /* The export. */
  const char *export_name;      /* default "" */
  const char *description;      /* NULL: none */
  bool read_only;
  bool discard_unmap;           /* --discard=unmap (default ignore) */
  bool alloc_depth;             /* offer qemu:allocation-depth */
  /* qemu-nbd's export: FUA advertised read-only too, CAN_MULTI_CONN
   * only when max_connections != 1, the size rounded down to 512, the
   * minimum block size 1 unless the client asks for block sizes. */
  bool qemu_export;

  /* More exports (main.c's serve only; exports.c).  An --export is
   * opened at startup and stays open; an image of export_dir is opened
   * at its first INFO or GO and closed once no connection has used it
   * for idle_timeout seconds, or sooner when max_open exports are open
   * and another is wanted.  default_export: the name "" stands for. */
  struct export_spec *exports;
  unsigned nr_exports;
  const char *export_dir;
  unsigned max_open_exports;
  unsigned idle_timeout;
  const char *default_export;

  /* Listening and lifetime. */
  /* qemu-nbd's listening rules and messages (sockets.c): one socket on
   * the first address that binds (default 0.0.0.0). */
  bool qemu_compat;
  const char *bind_addr;        /* NULL: all addresses, dual stack */
  const char *port;             /* default "10809" */
  const char *socket_path;      /* Unix socket instead of TCP */
  int backlog;                  /* listen(2) backlog; 0: SOMAXCONN */
  unsigned threads;             /* worker threads; default: CPU count */
  unsigned max_connections;     /* 0: unlimited */
  unsigned handshake_timeout;   /* seconds; 0: none */
  unsigned max_handshakes;      /* negotiating or held, in all */
  unsigned max_handshakes_per_source; /* ... from one address */
  bool persistent;              /* false: exit after the last client */
  bool sighup_stops;            /* SIGHUP stops like SIGTERM (else ignored) */
  uint64_t l2_cache_size;       /* bytes; 0: library default */
  uint64_t max_inflight_bytes;  /* request data a connection may hold */
  const char *pid_file;
  bool keep_pid_file;           /* leave it at exit, as qemu-nbd does */
  int verbose;                  /* -v count */
  struct tls_config tls;        /* --tls and its credentials */
  /* --bitmap (qemu-nbd -B), in command line order: each exported as
   * qemu:dirty-bitmap:NAME. */
  const char *bitmaps[MAX_EXPORT_BITMAPS];
  unsigned nr_bitmaps;
  /* --load-snapshot=ID_OR_NAME (qemu-nbd -l NAME|ID), or the ID and/or
   * name that must both match (qemu-nbd -l snapshot.id=,snapshot.name=):
   * serve that internal snapshot; it implies read_only. */
  const char *snapshot;
  const char *snapshot_id;
  const char *snapshot_name;

  /* Called once a connect would be served (sockets listening, pid file
   * written), in the main thread; NULL: nothing to do. */
  void (*ready) (const struct server_config *cfg);
  /* Called instead of the default message when the image cannot be
   * opened: R is the -errno, E what the library says failed and MSG its
   * first error message (may be ""). */
  void (*open_failed) (const struct server_config *cfg, int r,
                       const struct qcow2_open_error *e, const char *msg);
  /* Likewise for a --bitmap that cannot be exported: NAME, and the
   * library's message MSG. */
  void (*bitmap_failed) (const struct server_config *cfg, const char *name,
                         const char *msg);
};

/* Handshake time limit of serve (seconds). */
#define DEFAULT_HANDSHAKE_TIMEOUT 30
/* Connections negotiating (or held at --max-connections) at once, in all
 * and from one source: a client needs milliseconds to negotiate, so
 * these are reached only by clients that connect and stall. */
#define DEFAULT_MAX_HANDSHAKES 1024
#define DEFAULT_MAX_HANDSHAKES_PER_SOURCE 128

/* Open the images, build the exports, listen, serve until stopped (a
 * signal, or the last client without persistent), then close everything
 * cleanly.  Returns the exit status.  Call before any thread exists. */
int serve_run (const struct server_config *cfg);

/* The server's default configuration (serve's defaults). */
void serve_config_init (struct server_config *cfg);
void serve_stop_signals (sigset_t *set);
/* Write our pid to PATH as QEMU does (locked; kept open until exit).
 * Returns 0 or -1 (logged).  attach.c writes its own with it. */
int pid_file_write (const char *path);

/* A worker's own fds of an export's files (dup()s of the image's),
 * indexed like qcow2_file_fd(): data I/O goes through them.  With
 * export->direct_io, dfds holds a second, O_DIRECT, open file
 * description of each (worker_data_fd).  Set up when the export opens
 * (exports.c), closed when it closes; only worker IDX touches
 * no_zero_range. */
struct export_fds {
  int *fds;
  int *dfds;                    /* NULL unless direct_io */
  /* Per file: FALLOC_FL_ZERO_RANGE was refused, so zero segments are
   * written as zeros straight away. */
  bool *no_zero_range;
  size_t nr;
};

/* An open export.  Constant while it is open; a connection that
 * selected it holds a reference (exports.c) until it is freed. */
struct export {
  const char *name;
  const char *description;
  struct qcow2_image *img;
  uint64_t size;
  bool read_only;
  bool discard_unmap;           /* TRIM deallocates; else it is ignored */
  bool probed_raw;              /* writes to sector 0 are checked */
  bool writethrough;            /* every write is made durable (FUA) */
  bool no_flush;                /* FLUSH and FUA do not sync */
  bool direct_io;               /* workers open O_DIRECT fds too */
  enum detect_zeroes detect_zeroes;
  bool compress;                /* writes through QEMU's compress filter */
  uint64_t metas;               /* bitmask of enum meta_context offered */
  uint16_t eflags;              /* NBD_FLAG_* transmission flags */
  uint32_t min_block, pref_block, max_block;
  /* The minimum block size told to a client that did not ask for block
   * sizes with NBD_OPT_GO (min_block to those that did, and for INFO). */
  uint32_t min_block_unasked;
  /* Meta contexts offered: names by enum meta_context, NR_META of them;
   * the bitmap of context META_DIRTY_BITMAP + i is bitmaps[i]. */
  const char *meta_names[META_MAX];
  unsigned nr_meta;
  struct qcow2_bitmap *bitmaps[MAX_EXPORT_BITMAPS];
  const char *failed_bitmap;    /* set up only: the --bitmap refused */
  /* The workers' fds of the image files, one set per worker. */
  struct export_fds *wfds;
  unsigned nr_wfds;
};

/* ---- export-open.c: opening an export's image ------------------------ */

struct export;
/* Open the image of CFG (cfg->image: one export's configuration) and
 * build EXP from it.  Returns 0, or -errno after reporting why (the
 * hooks of CFG, or the log). */
int export_open (const struct server_config *cfg, struct export *exp);
/* Flush and close what export_open opened.  Returns 0, or the
 * -errno of the final flush (logged: unflushed writes may be lost). */
int export_close (struct export *exp);

/* ---- exports.c: the exports by name, opened and closed on demand ------ */

/* Build the exports of CFG: the positional image, each --export (both
 * opened now: a failure is a startup error) and --export-dir (opened on
 * demand).  NR_WORKERS: how many sets of fds each export gets.  Returns
 * 0 or -1 (logged). */
int exports_init (const struct server_config *cfg, unsigned nr_workers);
/* Start closing idle exports (a thread).  Returns 0 or -1 (logged). */
int exports_start (void);
/* Stop that, flush and close every export.  Returns 0, or -1 when a
 * final flush failed (logged). */
int exports_shutdown (void);
/* How many exports the command line named, and the one of them when
 * there is exactly one and no directory (else NULL): for the startup
 * message. */
const struct export *exports_single (void);

/* The exports as the handshake sees them (struct export_source): get
 * opens an image of the directory if need be, refusing with
 * NBD_REP_ERR_UNKNOWN a name that is not an export or an image that
 * cannot be opened (logged), with NBD_REP_ERR_POLICY when too many
 * exports are open and in use; list reads the directory afresh when
 * AFTER is NULL. */
extern const struct export_source exports_source;
/* Drop a connection's reference (NULL: nothing). */
void exports_put (const struct export *exp);

/* ---- export-dir.c: the files of --export-dir ------------------------ */

/* Can NAME be an image of the directory?  One path component, not
 * starting with '.', UTF-8 without control characters, at most
 * NAME_MAX bytes.  A client's name passes this before it is joined to
 * the directory. */
bool export_dir_name_ok (const char *name);
/* DIR/NAME (NULL when out of memory). */
char *export_dir_path (const char *dir, const char *name);
/* Is PATH a regular file (lstat: a symbolic link is not)? */
bool export_dir_file_ok (const char *path);
/* The names of DIR that are exports, sorted (strcmp), *NR of them; each
 * and the array are the caller's to free.  NULL when DIR cannot be read
 * (logged). */
char **export_dir_read (const char *dir, size_t *nr);
/* Probe the image PATH as QEMU would and set cfg->format (and
 * probed_raw) for it.  Returns 0, or -1 with WHY (WHYLEN bytes) saying
 * why: it cannot be read, or its format is neither qcow2 nor raw. */
int export_dir_probe (const char *path, struct server_config *cfg,
                      char *why, size_t whylen);

/* ---- log.c: messages to stderr ---------------------------------------- */

extern int log_verbose;          /* set from -v */
extern const char *log_program;  /* the prefix: "qcow2-nbd" or "qemu-nbd" */
void log_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_info (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
void log_debug (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
/* log_error of one finished line: for the libraries' log callbacks
 * (tls_config.log). */
void log_error_line (const char *msg);

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

struct conn {
  int fd;
  char peer[80];                /* printable peer address, for logs */
  const struct conn_transport *transport;
  void *transport_data;         /* TLS session */
  bool paced;                   /* TCP_NOTSENT_LOWAT set (plain_splice) */

  /* Negotiated in the handshake, constant afterwards. */
  const struct export *exp;
  bool no_zeroes;
  /* Replies may be chunks: NBD_OPT_STRUCTURED_REPLY, or implied by
   * extended_headers. */
  bool structured_replies;
  /* NBD_OPT_EXTENDED_HEADERS: 32-byte requests and reply chunks, and
   * no simple replies. */
  bool extended_headers;
  uint64_t meta;                /* bitmask of enum meta_context */

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

/* Put the TLS session S (its handshake done) behind CONN's transport;
 * conn_free closes it. */
void conn_start_tls (struct conn *conn, struct tls_session *s);


/* ---- handshake.c: fixed newstyle negotiation, as a state machine ----- */

/* The negotiation of one connection.  It never touches the socket: the
 * caller moves its bytes (listener.c) and applies the time limit. */
struct handshake;

enum handshake_status {
  HANDSHAKE_INPUT,      /* send the output, then feed input */
  HANDSHAKE_STARTTLS,   /* send the output (the ACK), run the TLS
                         * handshake, then handshake_tls_done() */
  HANDSHAKE_DONE,       /* send the output, then the transmission phase
                         * (conn->exp and the negotiated flags set) */
  HANDSHAKE_END,        /* send the output if possible, then close: the
                         * client ended the session cleanly */
  HANDSHAKE_FAIL,       /* close now (already logged) */
};

/* The transmission flags of an export, read-only or not: what every
 * connection is told (the handshake drops DF without structured
 * replies). */
uint16_t handshake_eflags (bool read_only);

/* Where the handshake finds exports: exports.c's (exports_source), or a
 * fuzz target's.  get looks NAME (LEN bytes, "" the default export) up
 * and takes a reference, returning 0, or the NBD_REP_ERR_* to refuse it
 * with and (in MSG) why; put drops one (NULL: nothing); list calls FN
 * for the exports in name order, from the first whose name sorts after
 * AFTER (NULL: from the first), until FN returns nonzero, which it
 * returns (0: all seen). */
struct export_source {
  uint32_t (*get) (const char *name, size_t len, const struct export **expp,
                   char *msg, size_t msglen);
  void (*put) (const struct export *exp);
  int (*list) (const char *after,
               int (*fn) (void *opaque, const char *name,
                          const char *description),
               void *opaque);
};

/* Start negotiating on CONN, with the greeting queued as output, the
 * exports looked up in SRC.  TLS_MODE is TLS_OFF unless the server can
 * do TLS.  NULL when out of memory. */
struct handshake *handshake_new (struct conn *conn,
                                 const struct export_source *src,
                                 enum tls_mode tls_mode);
void handshake_free (struct handshake *hs);
enum handshake_status handshake_status (const struct handshake *hs);

/* Where the next input goes, and (*LEN) how many bytes at most: never
 * more than the unit being read needs, so the bytes after the
 * handshake stay in the socket.  *LEN is 0 while output is unsent or no
 * input is wanted. */
void *handshake_input_buf (struct handshake *hs, size_t *len);
/* N bytes (N > 0) were put in the buffer handshake_input_buf gave. */
void handshake_input (struct handshake *hs, size_t n);
/* Reading failed with ERR (an errno; 0: the client hung up, ETIMEDOUT:
 * the time ran out): logged as the stage calls for; the status becomes
 * END or FAIL. */
void handshake_input_error (struct handshake *hs, int err);

/* The bytes waiting to be sent (*LEN may be 0, and then NULL). */
const void *handshake_output (const struct handshake *hs, size_t *len);
/* N of them were sent. */
void handshake_output_sent (struct handshake *hs, size_t n);
/* Sending failed with ERR: logged; the status becomes FAIL (or stays
 * END). */
void handshake_output_error (struct handshake *hs, int err);

/* The TLS handshake after STARTTLS succeeded (conn_start_tls done):
 * everything negotiated in clear text is forgotten. */
void handshake_tls_done (struct handshake *hs);

/* ---- negotiate.c: one handshake's bytes, moved without blocking ------ */

/* TLS for the handshake, set by serve.c before the listener starts and
 * constant afterwards: the mode, and the context (NULL when off). */
extern enum tls_mode server_tls_mode;
extern struct tls_ctx *server_tls_ctx;
/* Failed negotiations logged in qemu-nbd's words (its mode). */
extern bool negotiate_qemu_words;

struct negotiation;

/* What a negotiation waits for after negotiate_run. */
enum negotiate_next {
  NEGOTIATE_WAIT_READ,          /* the socket to be readable */
  NEGOTIATE_WAIT_WRITE,         /* ... writable */
  NEGOTIATE_AGAIN,              /* nothing: it yielded, run it again soon */
  NEGOTIATE_TRANSMISSION,       /* hand the connection to a worker */
  NEGOTIATE_CLOSE,              /* close the connection (logged) */
};

/* Start negotiating on CONN (non-blocking socket): the greeting is
 * queued.  NULL when out of memory. */
struct negotiation *negotiate_new (struct conn *conn);
/* Free the negotiation, not the connection. */
void negotiate_free (struct negotiation *n);
/* Move bytes, and step the TLS handshake, until the socket would block.
 * *ACTIVE is set when any byte moved. */
enum negotiate_next negotiate_run (struct negotiation *n, bool *active);
/* After NEGOTIATE_CLOSE: did the client end the session itself (ABORT,
 * or hung up between options)? */
bool negotiate_ended_cleanly (const struct negotiation *n);
/* The time limit ran out: log what it ran out in. */
void negotiate_timed_out (struct negotiation *n);

/* ---- sources.c: where connections come from (listener thread only) --- */

/* A source's key: the address family, then the IPv4 address, the IPv6
 * /64 or the Unix peer's uid. */
#define SOURCE_KEY_SIZE 17
/* Longest source_name. */
#define SOURCE_NAME_MAX 64

struct source {
  struct source *next;          /* hash chain */
  uint8_t key[SOURCE_KEY_SIZE];
  unsigned count;               /* its connections, kept by the caller */
  struct link lru;              /* ... least recently active first */
};

/* A table sized for about EXPECTED sources.  Returns 0 or -1 (logged). */
int sources_init (unsigned expected);
void sources_free (void);
/* The key of the peer of socket FD, whose address is SS. */
void source_key (int fd, const struct sockaddr_storage *ss, uint8_t *key);
/* The source with KEY, or NULL. */
struct source *source_find (const uint8_t *key);
/* The source with KEY, made (count 0) if new; NULL when out of memory. */
struct source *source_get (const uint8_t *key);
/* Drop one from its count, and the source when none is left. */
void source_put (struct source *src);
/* The source as a log shows it ("192.0.2.1", "2001:db8::/64"). */
void source_name (const struct source *src, char *buf, size_t len);

/* ---- parse.c: transmission requests, parsed and checked -------------- */

/* A request header off the wire.  The length is 64 bits with extended
 * headers; compact headers fill 32 of them.  With
 * NBD_CMD_FLAG_PAYLOAD_LEN it is the payload's length until
 * parse_payload has read the payload (a BLOCK_STATUS's effect length
 * and context ids). */
struct nbd_request {
  uint16_t flags, type;
  uint64_t cookie, offset;
  uint64_t length;
  uint64_t meta;                /* BLOCK_STATUS: contexts to answer */
};

enum parse_result {
  PARSE_NEED_MORE,              /* less than a header */
  PARSE_BAD_MAGIC,              /* not a request: drop the connection */
  PARSE_OK,
};

/* Bytes of a request header on CONN. */
size_t parse_header_size (const struct conn *conn);
/* Parse the header at P (AVAIL bytes there) into *R. */
enum parse_result parse_request (const struct conn *conn, const uint8_t *p,
                                 size_t avail, struct nbd_request *r);
/* Bytes of payload that follow R's header on the wire. */
uint64_t parse_payload_len (const struct conn *conn,
                            const struct nbd_request *r);
/* May CONN send NBD_CMD_BLOCK_STATUS with a payload naming the context
 * ids to answer (NBD_FLAG_BLOCK_STAT_PAYLOAD): extended headers and at
 * least one context selected. */
bool parse_bs_payload_ok (const struct conn *conn);
/* R carries a payload (parse_payload_len > 0, at most NBD_MAX_PAYLOAD):
 * is it worth receiving?  0: receive it for parse_payload (a WRITE that
 * may run, a BLOCK_STATUS payload of a sane length); else the errno to
 * answer with (MSG says why) once the payload has been thrown away. */
int parse_check_payload (const struct conn *conn,
                         const struct nbd_request *r, char *msg,
                         size_t len);
/* R's payload (LEN bytes at P) is in: a BLOCK_STATUS takes its effect
 * length and context ids from it into R.  0, or the errno to answer
 * with (MSG says why: a bad length, unknown or repeated ids). */
int parse_payload (const struct conn *conn, struct nbd_request *r,
                   const uint8_t *p, uint64_t len, char *msg, size_t msglen);
/* Bytes of data R holds in the server while in flight (its READ data,
 * WRITE payload, BLOCK_STATUS extents): what backpressure counts. */
uint64_t parse_cost (const struct nbd_request *r);
/* May R run?  0, or the errno to answer it with and (in MSG, LEN bytes)
 * why: bad flags, out of range, too long, no context for BLOCK_STATUS,
 * a change to a read-only export, an unknown command.  A request that
 * passes is safe for its command handler. */
int parse_check (const struct conn *conn, const struct nbd_request *r,
                 char *msg, size_t len);
/* The command's name for messages ("WRITE_ZEROES"). */
const char *cmd_name (uint16_t type);

/* Bytes of request data one connection may hold (--max-inflight-bytes;
 * request.c).  Set before the workers start. */
#define SERVER_DEFAULT_MAX_INFLIGHT (32u * 1024 * 1024)
extern uint64_t server_max_inflight;

/* ---- sockets.c: listening sockets ------------------------------------- */

/* Open the listening sockets the configuration asks for: inherited ones
 * (LISTEN_FDS/LISTEN_PID), a Unix socket, or TCP on every address of
 * bind_addr (dual stack).  Returns the count or -1 (logged). */
int sockets_listen (const struct server_config *cfg, int **fds);

/* ---- listener.c: accepting connections -------------------------------- */

/* Accept on FDS until server_stop() is called, negotiating with every
 * client from one event loop (within the limits of CFG) and handing
 * those that reach the transmission phase to the workers. */
void listener_run (const struct server_config *cfg, const int *fds,
                   int nfds);
/* Async-signal-safe: ask the listener to stop accepting. */
void server_stop (void);
/* Called when a connection has been freed; NEGOTIATED: it had reached
 * the transmission phase (a worker served it). */
void listener_conn_closed (bool negotiated);
/* Also call FN (from a worker thread) whenever a connection is freed:
 * how attach.c, which has no listener, learns its last one is gone. */
void listener_set_closed_hook (void (*fn) (void));

/* ---- worker.c: worker threads, each with an io_uring ring ------------- */

/* Start N workers (their fds of each export's files are exports.c's).
 * CONN_CLOSED is called each time a connection handed over
 * (workers_add_conn) has been freed, from a worker or from the caller of
 * workers_add_conn: whoever hands connections over hears of their end
 * without the workers knowing who that is.  Returns 0 or -1 (logged). */
int workers_start (unsigned n, void (*conn_closed) (void));
/* Hand a connection in the transmission phase to the least busy worker. */
void workers_add_conn (struct conn *conn);
/* Stop reading new requests on every connection, answer what is in
 * flight, close every connection and join the threads. */
void workers_shutdown (void);

/* ---- wakeup.c: waking the workers ------------------------------------- */

/* The qcow2_open_opts.wakeup callback: an in-flight allocation ended, so
 * every worker retries the requests it parked on QCOW2_BLOCKED.  Safe
 * from any thread, before workers_start and after workers_shutdown. */
void wakeup_all (void *opaque);

/* ---- reply.c: replies in the transmission phase ----------------------- */

/* Map an errno to the NBD error sent on the wire (the only such place). */
uint32_t nbd_errno (int err);

/* ---- options.c: command line values shared by subcommands ------------- */

/* Parse a decimal size with an optional binary suffix K, M, G or T
 * (either case) into *SIZE.  Returns 0, or -1 when S is not such a size
 * or does not fit in 64 bits. */
int options_parse_size (const char *s, uint64_t *size);

/* Parse a snapshot selector as qemu-nbd -l takes it into CFG: an ID or
 * a name (cfg->snapshot), or "snapshot.id=ID,snapshot.name=NAME" (either
 * part may be left out; ",," is a comma).  Returns 0, or -1 for an
 * unknown key or an empty list. */
int options_parse_snapshot (const char *arg, struct server_config *cfg);

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
#define OPTIONS_MAX_THREADS 1024

/* getopt_long returned C, ':' (missing argument) or '?' (unknown
 * option; the option string must start with ':'): report it with
 * BAD_USAGE, which does not return. */
void options_getopt_error (options_bad_usage_fn bad_usage, int c,
                           char **argv)
  __attribute__ ((noreturn));

/* ---- contexts.c: the meta contexts of the export ---------------------- */

/* Fill EXP's meta context table: the fixed contexts, then one
 * qemu:dirty-bitmap:NAME per cfg->bitmaps entry (duplicates once), its
 * bitmap looked up in exp->img.  Returns 0, or -1 (logged: the bitmap is
 * missing, inconsistent or cannot be loaded; exp->failed_bitmap names
 * it). */
int contexts_setup (struct export *exp, const struct server_config *cfg);
void contexts_free (struct export *exp);

/* ---- probe.c: image formats as QEMU probes them ----------------------- */

/* The format QEMU 7.2 would guess for an image starting with B[0..LEN)
 * named FILENAME (may be NULL): "qcow2", "raw", or the name of a format
 * we do not serve ("vmdk", "vdi", "qcow", "luks", ...). */
const char *probe_format (const uint8_t *b, size_t len, const char *filename);

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
 * or -1 (logged unless QUIET: no such device, and whether nbd.ko is
 * loaded; not an NBD device; a partition). */
int kdev_lookup (const char *path, struct kdev *dev, bool quiet);
/* The process that has the device attached, or 0 when it is not. */
pid_t kdev_owner (const struct kdev *dev);
/* Read the first line of a small sysfs or /proc file into BUF (SIZE
 * bytes), without its newline.  Returns 0 or -1. */
int kdev_read_line (const char *path, char *buf, size_t size);
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
  /* qemu-nbd -c: the device looked at once the image is open, and
   * refused with qemu-nbd's messages. */
  bool qemu_compat;
};

/* Serve CFG's image (as export_open opens it; threads, pid_file,
 * keep_pid_file, verbose, sighup_stops, ready) to the kernel device
 * OPTS->device until it is detached or a SIGINT/SIGTERM comes (then:
 * flush, detach, close the image clean).  Returns the exit status. */
int attach_serve (const struct server_config *cfg,
                  const struct attach_opts *opts);
/* Flush and disconnect DEVICE, and wait for a qcow2-nbd serving it to
 * close its image.  Returns the exit status. */
int attach_detach (const char *device);
/* qemu-nbd -d DEVICE: the same where DEVICE is attached; "DEVICE
 * disconnected" and status 0 whenever it can be opened, as qemu-nbd. */
int attach_qemu_disconnect (const char *device);
/* Run "qcow2-nbd attach ..." and "qcow2-nbd detach ..." (ARGV[0] is the
 * subcommand); return the exit status. */
int attach_main (int argc, char **argv);
int detach_main (int argc, char **argv);

/* ---- create.c: the create subcommand ---------------------------------- */

/* Run "qcow2-nbd create ..." (ARGV[0] is "create"); returns the exit
 * status. */
int create_main (int argc, char **argv);

#endif /* SERVER_SERVER_H */
