/* SPDX-License-Identifier: MIT */
/* Private interface of the transmission phase, in layers: each file
 * calls only the files below it (docs/architecture.md draws them).
 *
 *   worker.c        the threads and their event loop (top)
 *   request.c       reading and dispatching requests, connection life
 *   read.c, block-status.c, writes.c       the commands
 *   decompress.c, jobs.c, coalesce.c       their helpers
 *   reply.c         reply building, the send queue
 *   session.c       request structs, connection bookkeeping
 *   zerocopy.c      zero-copy pipes and splices
 *   ring.c, bufpool.c, wakeup.c            a worker's services (bottom)
 *
 * It holds the worker struct, the tags that every io_uring user_data
 * points at so one completion loop can dispatch them, and the request
 * and connection state those files share.
 *
 * Everything here belongs to one worker thread, except the fields marked
 * "lock" (the hand-over queue, filled by the listener) and the atomics. */
#ifndef SERVER_TRANSMISSION_H
#define SERVER_TRANSMISSION_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <liburing.h>

#include "qcow2/qcow2.h"
#include "server/nbd-protocol.h"
#include "server/server.h"

/* What a completion is for.  Each SQE's user_data points at a struct
 * uring_op embedded in the object that owns the operation; user_data 0
 * marks fire-and-forget SQEs (cancellations, CACHE readahead) whose
 * completions are ignored. */
enum uring_op_kind {
  OP_WAKE,          /* read on the worker's eventfd */
  OP_POLL_IN,       /* a connection's socket became readable */
  OP_POLL_OUT,      /* ... or writable */
  OP_RECV,          /* input arrived on a plain connection's socket */
  OP_RECV_2,        /* ... through its second recv op (coalesce.c) */
  OP_SEND,          /* a plain connection's replies went out */
  OP_RECV_TIMEOUT,  /* the time limit linked to a coalesced recv */
  OP_PIECE,         /* one data read (or splice) of a READ request */
  OP_WRITE,         /* one host write or zeroing of a WRITE request */
};

struct uring_op {
  enum uring_op_kind kind;
};

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof (type, member)))

/* Buffer pool size classes: 4 KiB << 0 .. 4 KiB << 13 = 32 MiB, enough for
 * the largest request (NBD_MAX_PAYLOAD). */
#define BUFPOOL_MIN_SHIFT 12
#define BUFPOOL_CLASSES 14

/* A worker's free buffers by class (owned by bufpool.c). */
struct bufpool {
  void **free[BUFPOOL_CLASSES];
  unsigned nfree[BUFPOOL_CLASSES];
  size_t bytes;                 /* in the free lists */
};

struct request;
struct conn_state;
struct djob;

/* A decompressed cluster in a worker's cache (decompress.c); without a
 * buffer, only the memory that the cluster was asked for. */
struct dcache_entry {
  const struct qcow2_layer *layer;
  uint64_t host_offset;         /* of the compressed stream */
  uint64_t stream_gen;          /* qcow2_extent.stream_gen */
  uint64_t stamp;               /* last use, for LRU */
  void *buf;                    /* the whole cluster, or NULL */
  unsigned cls;                 /* buf's pool class */
  uint32_t size;
};

/* Clusters a worker's cache remembers at most. */
#define DCACHE_SLOTS 32

struct dcache {
  struct dcache_entry e[DCACHE_SLOTS];
  unsigned n;
  uint64_t clock;
  size_t bytes;                 /* in buffers */
};

/* A worker.  Each group of fields has one owner file, named beside it:
 * only that file changes them (others may read what its comment says).
 * Everything belongs to the worker's own thread except the fields marked
 * "lock" (the hand-over queue, filled by the listener) and the atomics. */
struct worker {
  /* worker.c: the thread, its loop, the hand-over queue, shutdown. */
  unsigned idx;
  pthread_t thread;
  pthread_mutex_t lock;
  struct conn **handoff;        /* lock: connections not yet picked up */
  size_t nr_handoff, cap_handoff; /* lock */
  atomic_uint nr_conns;         /* handed over and not yet freed */
  atomic_bool stop;             /* workers_shutdown() was called */
  bool stopping;                /* saw 'stop' and told the connections */
  uint64_t stop_time;           /* now_ns() when 'stopping' was set */
  bool killed;                  /* grace period over: connections dropped */
  /* workers_start's hook, called (request.c) when a connection of
   * ours has been freed; constant. */
  void (*conn_closed) (void);

  /* ring.c: the io_uring ring (worker.c's loop reaps its completions). */
  struct {
    struct io_uring uring;
    bool disabled;              /* created R_DISABLED: enable in the thread */
  } ring;

  /* wakeup.c: the eventfd other threads wake this worker through. */
  struct {
    int efd;
    uint64_t val;               /* what the armed read reads */
    struct uring_op op;
  } wake;

  /* Data I/O goes through the worker's own fds of each export's files:
   * exp->wfds[idx] (struct export_fds, set up by exports.c when the
   * export opens, closed when it closes). */

  /* request.c: live connections (worker.c reads it to know when a
   * stopping worker may leave). */
  struct conn_state *conns;

  /* session.c: connections with deferred work, recycled requests. */
  struct {
    struct conn_state *dirty;
    struct request *free_reqs;
    unsigned nr_free_reqs;
  } session;

  /* bufpool.c */
  struct bufpool pool;

  /* writes.c */
  struct {
    /* Requests the library answered with QCOW2_BLOCKED, in arrival
     * order, retried after every wake-up (writes_retry_parked). */
    struct request *parked_head, *parked_tail;
    uint64_t inline_after;      /* now_ns() before which writes go
                                 * through io_uring */
  } writes;

  /* decompress.c: decompressed clusters. */
  struct dcache dcache;

  /* zerocopy.c */
  struct {
    struct zpipe *pipes;        /* idle pipes for zero-copy reads */
    unsigned nr_pipes;
    unsigned held;              /* pipes held by requests */
    uint64_t paused_until;      /* now_ns() before which reads are copied
                                 * (pipes could not be had) */
  } zc;

  /* jobs.c */
  struct {
    /* Our jobs done by other workers: a lock-free stack they push on,
     * which we take whole. */
    struct djob *_Atomic done;
    bool queued;                /* queued jobs this iteration */
    /* Our deferred jobs still in the queue: the loop's wait is then
     * bounded, so that we take them ourselves if nobody else does. */
    atomic_uint deferred;
  } jobs;
};


/* ---- per-request and per-connection state ----------------------------- */

/* Extents asked of qcow2_map per call. */
#define MAP_BATCH 256
/* Extents and data reads a request holds without allocating. */
#define SMALL_EXT 4
#define SMALL_PIECES 2

/* A pipe a zero-copy READ splices its data into (zerocopy.c). */
struct zpipe {
  int rfd, wfd;                 /* capacity: ZC_PIPE_SIZE */
};

/* CPU-heavy work of a request that any worker may do (jobs.c):
 * decompressing (part of) one cluster, or compressing a WRITE. */
struct djob {
  struct djob *next;            /* shared queue, owner's done list */
  struct worker *owner;         /* whose request it is */
  void (*run) (struct djob *j);     /* on any worker */
  void (*finish) (struct djob *j);  /* then on the owner */
  /* A long job (milliseconds): its owner leaves it to the others for
   * JOB_DEFER_NS after queueing it (jobs.c). */
  bool defer;
  uint64_t queued_at;           /* now_ns() at jobs_submit */
  /* Decompression: */
  const struct qcow2_layer *layer;
  const void *in;
  size_t in_len;
  void *out;                    /* the piece's bytes, or a pool buffer */
  unsigned out_cls;
  uint32_t out_len;             /* decode this much of the cluster */
  int result;                   /* of the library call run() made */
};

/* One data read of a READ request: a DATA extent read into place, or a
 * COMPRESSED extent's stream read into scratch and decompressed. */
struct piece {
  struct uring_op op;
  struct request *req;
  const struct qcow2_extent *ext;
  char *dst;            /* where the guest bytes go */
  size_t len;           /* bytes to read (compressed: stream length) */
  size_t done;          /* bytes read so far (short reads resubmit) */
  int fd;
  uint64_t host_off;
  char *scratch;        /* compressed stream */
  unsigned scratch_cls;
  struct djob job;
};

/* One host write of a WRITE request: a host-contiguous run of segments
 * from qcow2_write_begin as one (vectored) write, or one ZERO segment as
 * an FALLOC_FL_ZERO_RANGE fallocate (or written zeros where the file
 * system refuses it). */
struct wop {
  struct uring_op op;
  struct request *req;
  unsigned file;
  int fd;
  struct iovec *iov;    /* what is left to write (advanced in place) */
  int iovcnt;
  uint64_t off;         /* host offset of the next byte */
  uint64_t left;        /* bytes still to write or zero */
  bool zero;            /* a ZERO segment */
  bool write_zeros;     /* ... written from zero_buf, not fallocated */
};

struct request {
  struct conn_state *cs;
  struct request *next;         /* send queue, free list, parked list */
  uint16_t flags, type;
  uint64_t cookie, offset;
  /* The effect length (the payload's length while it comes in: a
   * BLOCK_STATUS payload gives the effect length, see dispatch). */
  uint64_t length;
  uint64_t meta;                /* BLOCK_STATUS: the contexts to answer */
  uint64_t done;                /* WRITE_ZEROES, TRIM: bytes of the
                                 * slices done (writes.c) */
  uint64_t bytes;               /* counted against server_max_inflight */
  bool queued;                  /* its reply is in the send queue */

  int err;                      /* errno to report, 0 = success */
  char msg[96];                 /* structured error message */

  /* READ */
  struct qcow2_extent *ext;
  size_t nr_ext, cap_ext;
  struct piece *pieces;
  size_t nr_pieces;
  unsigned pending;             /* pieces still in the kernel */
  char *buf;                    /* READ data, WRITE payload */
  unsigned buf_cls;
  /* A zero-copy READ: the data extents are spliced, one piece after the
   * other, into the pipe, and from there to the socket; the reply's
   * iovecs with a NULL base stand for bytes from the pipe. */
  bool zc;
  struct zpipe zp;
  size_t zc_next;               /* next piece to splice in */
  size_t zc_held;               /* bytes in the pipe */

  /* WRITE, between qcow2_write_begin and qcow2_write_end; 'pending'
   * counts the wops in the kernel. */
  struct qcow2_write *qw;
  struct wop *wops;
  struct iovec *wiov;
  /* A WRITE through the compress filter: its begin, a job (writes.c),
   * and what the job got back. */
  struct djob wjob;
  const struct qcow2_seg *wsegs;
  size_t nwsegs;
  unsigned wseq;                /* wakeup_seq before the call */

  /* Inline room for the extents and pieces of a small READ. */
  struct qcow2_extent small_ext[SMALL_EXT];
  struct piece small_pieces[SMALL_PIECES];

  /* Reply: iov[iov_idx] + iov_off is the next byte to send. */
  struct iovec *iov;
  int iovcnt, iov_idx;
  size_t iov_off;
  uint8_t *hdrs;                /* chunk headers and small payloads */
  struct iovec small_iov[3];
  uint8_t small_hdrs[64];
};

/* Receive coalescing of a plain connection (coalesce.c). */
struct rx_coalesce {
  unsigned target;              /* requests per wake-up; 1: every one */
  unsigned want;                /* ... that the armed recv waits for */
  unsigned depth;               /* requests the client keeps in flight */
  unsigned lowat;               /* SO_RCVLOWAT in force, in bytes */
  unsigned parsed;              /* headers parsed since the last recv */
  unsigned misses;              /* batch waits in a row that ran out */
  unsigned rounds, last_probe;  /* recvs armed */
  bool probing;                 /* want is a probe above target */
  bool measure;                 /* the armed recv takes all in flight */
  bool timed;                   /* the armed recv has a time limit */
  bool timed_out;               /* ... and it ran out */
  bool busy;                    /* requests were in progress when it came */
  bool large;                   /* a request of the round was large */
  bool able;                    /* TCP: the kernel honours SO_RCVLOWAT */
  unsigned calm;                /* rounds before batching may resume */
  uint64_t armed_at;            /* now_ns() when the recv was armed */
  uint64_t gap_ns;              /* average time between requests */
  struct __kernel_timespec limit;
  struct uring_op timeout_op;
};

struct conn_state {
  struct conn *conn;
  struct worker *w;
  struct conn_state *next, *prev;       /* worker's connection list */
  struct conn_state *dirty_next;
  bool in_dirty;

  /* Input */
  uint8_t *in_buf;
  size_t in_pos, in_len;
  uint64_t discard_left;        /* payload bytes still to throw away */
  struct request *discard_req;  /* answered once the payload is gone */
  struct request *payload_req;  /* WRITE whose payload is coming in */
  uint32_t payload_got;         /* bytes of it in req->buf so far */
  bool paused;                  /* over the in-flight bounds */
  uint64_t paused_cost;         /* ... by the next request, which holds */
  bool stop_read;               /* DISC, EOF, shutdown: read no more */
  bool dead;                    /* socket unusable: drop replies */
  const char *close_reason;
  /* A plain socket receives through the ring: one recv at a time, into
   * in_buf + in_len or (recv_direct) into payload_req->buf +
   * payload_got, counted in 'ops'.  While it is armed neither buffer may
   * be moved, reused or freed: a payload buffer whose request is dropped
   * meanwhile waits in recv_orphan for the completion. */
  bool ring_recv;               /* plain transport (TLS polls and recvs) */
  bool recv_armed, recv_direct;
  /* Two ops used in turn, so that no recv has the user_data of the one
   * before: a linked timeout that fires as its recv completes cancels by
   * user_data (coalesce.c). */
  struct uring_op recv_op[2];
  unsigned recv_slot;           /* which one is (or was last) armed */
  void *recv_orphan;
  unsigned recv_orphan_cls;

  struct rx_coalesce rxc;

  /* In flight */
  unsigned nr_reqs;             /* parsed and not yet sent or dropped */
  uint64_t nr_total;            /* every request parsed, for the log */
  unsigned nr_queued;           /* ... of which answered, in the send queue */
  uint64_t bytes;
  unsigned ops;                 /* polls, reads and writes in the kernel */
  struct uring_op poll_in, poll_out;
  bool poll_in_armed, poll_out_armed, cancelled;

  unsigned zc_pipes;            /* pipes held by its zero-copy READs */

  /* Send queue */
  struct request *sq_head, *sq_tail;
  /* Plain connections send through the ring: one sendmsg at a time,
   * whose iovecs point into the replies at the head of the queue, so
   * those stay queued (and alive) until it completes. */
  bool ring_send;
  bool send_armed;
  bool send_cancelled;
  struct uring_op send_op;
  struct msghdr send_msg;
  struct iovec send_iov[64];
};

/* ---- ring.c: the worker's io_uring ring -------------------------------- */

/* Set up W's ring (created disabled where the kernel can, see
 * ring_enable).  0 or -errno. */
int ring_init (struct worker *w);
/* Tear W's ring down (its thread joined, or never started). */
void ring_exit (struct worker *w);
/* In W's own thread, before its first submission: enable the ring,
 * making this thread its only submitter. */
void ring_enable (struct worker *w);
/* Submit what W's loop queued and wait for at least one completion, at
 * most TS (NULL: no limit). */
void ring_wait (struct worker *w, struct __kernel_timespec *ts);
/* An SQE from W's ring, submitting queued ones first if the ring is full.
 * Never NULL; its user_data is 0 (a completion nobody looks at). */
struct io_uring_sqe *ring_get_sqe (struct worker *w);
/* Make room for N SQEs that must be submitted together (a linked
 * pair): submits queued ones if fewer are free. */
void ring_reserve_sqes (struct worker *w, unsigned n);

/* ---- bufpool.c: the worker's buffer pool ------------------------------ */

/* Buffers of at least SIZE bytes (SIZE <= 32 MiB), page aligned.  *CLS
 * receives the class to give back to bufpool_put. */
void *bufpool_get (struct worker *w, size_t size, unsigned *cls);
void bufpool_put (struct worker *w, void *buf, unsigned cls);
/* W's last connection has closed: give back cached memory (the pool's,
 * and what malloc keeps). */
void bufpool_shrink (struct worker *w);
/* Free the whole pool at thread exit. */
void bufpool_destroy (struct worker *w);

/* ---- wakeup.c: waking a worker through its eventfd ------------------- */

/* Bumped by wakeup_all() before it kicks the workers.  A request that
 * gets QCOW2_BLOCKED compares it with the value read before the call:
 * if it moved, the wake-up may have been consumed before the request was
 * parked, so the worker kicks itself. */
extern atomic_uint wakeup_seq;

/* Create W's eventfd.  0, or -1 (logged). */
int wakeup_init (struct worker *w);
/* Arm the read on W's eventfd in its ring (its completion is OP_WAKE). */
void wakeup_arm (struct worker *w);
/* Close W's eventfd (its thread joined). */
void wakeup_fini (struct worker *w);
/* The N workers at WS all run: wakeup_kick_other and wakeup_all may
 * reach them from now on ... */
void wakeup_enable (struct worker *ws, unsigned n);
/* ... until this, once every worker thread has been joined. */
void wakeup_disable (void);
/* Make W's loop run a wake-up (and so retry its parked requests). */
void wakeup_kick (struct worker *w);
/* Kick one worker other than W (round robin), if there is one. */
void wakeup_kick_other (struct worker *w);
/* Are there workers to share jobs with (more than one running)? */
bool wakeup_has_peers (void);

/* ---- a worker's data fds (inline: struct export_fds, exports.c) ------ */

/* O_DIRECT needs the file offset, the length and the memory aligned:
 * 4096 is enough on every Linux file system and block device. */
#define DIRECT_ALIGN 4096

/* The worker's own fds of the files of the export CS is connected to. */
static inline struct export_fds *
conn_fds (const struct conn_state *cs)
{
  return &cs->conn->exp->wfds[cs->w->idx];
}

/* The fd a data read or write of LEN bytes at host offset OFF of FILE,
 * to or from BUF, goes through: the O_DIRECT one when the export wants
 * O_DIRECT (cache=none, directsync) and everything is aligned, else the
 * buffered one.  Both reach the same file; the kernel keeps the page
 * cache coherent with direct I/O (writing back and invalidating the
 * range), so mixing them is safe for requests NBD does not order. */
static inline int
worker_data_fd (const struct export_fds *xf, unsigned file, uint64_t off,
                uint64_t len, const void *buf)
{
  if (xf->dfds != NULL && xf->dfds[file] >= 0
      && ((off | len | (uintptr_t) buf) & (DIRECT_ALIGN - 1)) == 0)
    return xf->dfds[file];
  return xf->fds[file];
}

/* ---- session.c: request structs and connection bookkeeping ----------- */

/* Record the request's error (errno ERR and a message) unless it has one
 * already: the first error is the one reported. */
void session_set_error (struct request *req, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
/* A zeroed request of CS, counted in its requests; NULL when out of
 * memory. */
struct request *session_req_new (struct conn_state *cs);
/* The request holds BYTES more until it is freed (counted by
 * backpressure: memory it needed beyond its parse_cost). */
void session_req_hold (struct request *req, uint64_t bytes);
/* The request is finished: sent, or dropped with its connection. */
void session_req_free (struct request *req);
/* Free W's recycled request structs at thread exit. */
void session_worker_cleanup (struct worker *w);
/* Queue the connection for request_service. */
void session_mark_dirty (struct conn_state *cs);
/* The next connection marked dirty, taken off the list; NULL if none. */
struct conn_state *session_take_dirty (struct worker *w);
/* Take CS off the dirty list if it is on it (it is being freed). */
void session_unmark_dirty (struct conn_state *cs);
/* Poll the socket for input, or (OUT) for room to send. */
void session_arm_poll (struct conn_state *cs, bool out);
/* Ask the kernel to cancel CS's operation OP (its completion still
 * comes, with -ECANCELED or its result). */
void session_cancel_op (struct conn_state *cs, struct uring_op *op);

/* ---- request.c: parsing, dispatch, connection lifetime ---------------- */

/* Take over a connection in the transmission phase. */
void request_conn_start (struct worker *w, struct conn *conn);
/* A completion whose op belongs to the transmission phase. */
void request_complete (struct worker *w, struct uring_op *op, int res);
/* Run the deferred work of every connection marked dirty: send queued
 * replies, resume reading, close finished connections. */
void request_service (struct worker *w);
/* Shutdown: stop reading on every connection; they close once their
 * in-flight requests are answered. */
void request_stop_all (struct worker *w);
/* Shutdown grace period over: drop every connection, answered or not. */
void request_kill_all (struct worker *w);

/* ---- coalesce.c: receiving a deep client's requests in batches ------- */

/* Arm CS's recv into BUF (LEN bytes).  OWED is how many bytes the client
 * still owes for sure (the rest of a header or a payload), 0 between
 * requests, where a client that keeps many requests in flight is waited
 * for until a batch of them is queued (with a time limit). */
void rxc_arm_recv (struct conn_state *cs, void *buf, size_t len, size_t owed);
/* The armed recv completed with RES.  True if RES is a failure of the
 * batch wait (it ran out of time, or the kernel refused it): arm the
 * recv again, nothing is lost. */
bool rxc_recv_complete (struct conn_state *cs, int res);
/* The batch wait's time limit completed with RES. */
void rxc_timeout_complete (struct conn_state *cs, int res);
/* A request header of LENGTH was parsed from CS's input. */
void rxc_count (struct conn_state *cs, uint32_t length);

/* ---- reply.c: reply building and the per-connection send queue -------- */

/* Queue a built reply to be sent (or drop it if the socket is dead). */
void reply_enqueue (struct request *req);
/* Room for N iovecs and HDR_BYTES of headers in the request.  Returns 0
 * or -1 (out of memory; reply_release_iov undoes a part done). */
int reply_alloc (struct request *req, size_t n, size_t hdr_bytes);
/* Give back what reply_alloc took, so the request can still be answered
 * with reply_plain or reply_error. */
void reply_release_iov (struct request *req);
/* Append an iovec to the reply. */
void reply_put_iov (struct request *req, void *base, size_t len);
/* Bytes of a reply chunk header on REQ's connection: structured (20)
 * or extended (32). */
size_t reply_hdr_size (const struct request *req);
/* Write a chunk header at P, structured or extended as negotiated;
 * returns the byte after. */
uint8_t *reply_put_struct_hdr (uint8_t *p, struct request *req,
                               uint16_t flags, uint16_t type, uint32_t len);
/* Send a simple reply with no data, or (structured) an error chunk or a
 * bare DONE: req->err and req->msg say which. */
void reply_plain (struct request *req);
/* Set the error and send it with reply_plain. */
void reply_error (struct request *req, int err, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
/* Send queued replies until the queue is empty or the socket is full
 * (or, on a plain connection, queue a sendmsg of them in the ring).
 * Returns 0, or -1 when the socket failed (logged): the caller drops
 * the connection. */
int reply_send (struct conn_state *cs);
/* The ring's sendmsg completed with RES.  Returns as reply_send. */
int reply_send_complete (struct conn_state *cs, int res);
/* Drop every queued reply unsent. */
void reply_drop_queue (struct conn_state *cs);

/* ---- read.c: READ and CACHE ------------------------------------------- */

/* Zero and unallocated extents read as zeros: OFFSET_HOLE material. */
static inline bool
extent_is_hole (const struct qcow2_extent *e)
{
  return e->type == QCOW2_EXTENT_ZERO || e->type == QCOW2_EXTENT_UNALLOCATED;
}

/* Map [OFFSET, OFFSET+LENGTH) into req->ext, at most MAX_EXT extents in
 * all.  Returns 0 or -errno (the request's error set). */
int read_map_range (struct request *req, uint64_t offset, uint64_t length,
                    size_t max_ext);
void cmd_read (struct request *req);
void cmd_cache (struct request *req);
/* A data read of a READ completed with RES. */
void piece_complete (struct piece *pc, int res);
/* A piece is finished: read, and decompressed if compressed (its error,
 * if any, set). */
void piece_done (struct piece *pc);

/* ---- decompress.c: decompression over the workers, cluster cache ------ */

/* If the cluster of compressed extent E is cached, copy E's bytes to DST
 * and return true. */
bool decompress_cached (struct worker *w, const struct qcow2_extent *e,
                        char *dst);
/* The compressed stream of PC is in pc->scratch: decompress PC's bytes
 * into pc->dst.  Returns 0 when done on the spot, 1 when queued (FINISH
 * follows on this worker, with &pc->job, and calls decompress_finish),
 * -1 on error (the request's error set). */
int decompress_submit (struct piece *pc, void (*finish) (struct djob *j));
/* The owner's side of PC's finished job: copy its bytes out (or set
 * the request's error) and cache the cluster. */
void decompress_finish (struct piece *pc);
/* Free W's cache at thread exit. */
void decompress_cache_free (struct worker *w);

/* ---- jobs.c: CPU-heavy work over the workers -------------------------- */

/* How long the owner of a deferred job leaves it to other workers. */
#define JOB_DEFER_NS (200 * 1000)

/* Queue J (run, finish and defer set) for any worker; W is its owner.
 * The caller counts it in its connection's ops until finish(). */
void jobs_submit (struct worker *w, struct djob *j);
/* Finish the jobs others did for W, then do queued jobs, anyone's. */
void jobs_run (struct worker *w);

/* ---- zerocopy.c: READ data from the page cache to the socket ---------- */

/* May REQ, its extents mapped, send its data without copying?  If so,
 * take a pipe for it, set req->zc and return true. */
bool zc_start (struct request *req, bool zero_fill);
/* Splice the next piece of a zero-copy READ into its pipe. */
void zc_submit (struct piece *pc);
/* A splice into the pipe completed with RES: returns 0 when the piece
 * is done, 1 when it was resubmitted, -errno when it failed (-ENODATA:
 * the file ended before the extent). */
int zc_piece_complete (struct piece *pc, int res);
/* Give back (or close, if not empty) the request's pipe. */
void zc_release (struct request *req);
/* Close W's idle pipes at thread exit. */
void zc_worker_cleanup (struct worker *w);

/* ---- block-status.c: BLOCK_STATUS for every metadata context ---------- */

void cmd_block_status (struct request *req);

/* ---- writes.c: WRITE, WRITE_ZEROES, TRIM, FLUSH ----------------------- */

void cmd_write (struct request *req);
void cmd_write_zeroes (struct request *req);
void cmd_trim (struct request *req);
void cmd_flush (struct request *req);
/* A host write of a WRITE completed with RES. */
void wop_complete (struct wop *wo, int res);
/* After a wake-up: retry the parked requests, in arrival order. */
void writes_retry_parked (struct worker *w);
/* CS is being dropped: free its parked requests, which have not touched
 * the image yet. */
void writes_drop_parked (struct conn_state *cs);

#endif /* SERVER_TRANSMISSION_H */
