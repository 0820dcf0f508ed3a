/* SPDX-License-Identifier: MIT */
/* Private interface between the worker threads (worker.c) and the
 * transmission phase (request.c): the worker struct with its ring, its
 * dup()ed image fds and its buffer pool, and the tags that every io_uring
 * user_data points at so one completion loop can dispatch them.
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

#include <liburing.h>

#include "server/server.h"

/* What a completion is for.  Each SQE's user_data points at a struct
 * uring_op embedded in the object that owns the operation; user_data 0
 * marks fire-and-forget SQEs (cancellations, CACHE readahead) whose
 * completions are ignored. */
enum uring_op_kind {
  OP_WAKE,          /* read on the worker's eventfd */
  OP_POLL_IN,       /* a connection's socket became readable */
  OP_POLL_OUT,      /* ... or writable */
  OP_PIECE,         /* one data read of a READ request */
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

struct bufpool {
  void **free[BUFPOOL_CLASSES];
  unsigned nfree[BUFPOOL_CLASSES];
};

struct request;
struct conn_state;

struct worker {
  unsigned idx;
  pthread_t thread;
  const struct export *exp;
  struct io_uring ring;
  bool ring_disabled;           /* created R_DISABLED: enable in the thread */
  int efd;                      /* eventfd: hand-over and shutdown wake-up */
  uint64_t efd_val;
  struct uring_op wake_op;

  /* Data I/O goes through the worker's own fds (dup()s of the image's),
   * indexed like qcow2_file_fd(). */
  int *fds;
  size_t nr_fds;

  pthread_mutex_t lock;
  struct conn **handoff;        /* lock: connections not yet picked up */
  size_t nr_handoff, cap_handoff; /* lock */
  atomic_uint nr_conns;         /* handed over and not yet freed */
  atomic_bool stop;             /* workers_shutdown() was called */

  /* Worker thread only. */
  bool stopping;                /* saw 'stop' and told the connections */
  uint64_t stop_time;           /* now_ns() when 'stopping' was set */
  bool killed;                  /* grace period over: connections dropped */
  struct conn_state *conns;     /* live connections */
  struct conn_state *dirty;     /* connections needing conn_service */
  struct request *free_reqs;    /* recycled request structs */
  unsigned nr_free_reqs;
  struct bufpool pool;
  /* Requests the library answered with QCOW2_BLOCKED, in arrival order,
   * retried after every wake-up (request_retry_parked). */
  struct request *parked_head, *parked_tail;
  /* Per file (indexed like fds): FALLOC_FL_ZERO_RANGE was refused, so
   * zero segments are written as zeros straight away. */
  bool *no_zero_range;
};

/* Bumped by workers_wakeup() before it kicks the workers.  A request
 * that gets QCOW2_BLOCKED compares it with the value read before the
 * call: if it moved, the wake-up may have been consumed before the
 * request was parked, so the worker kicks itself. */
extern atomic_uint workers_wake_seq;

/* ---- worker.c --------------------------------------------------------- */

/* An SQE from W's ring, submitting queued ones first if the ring is full.
 * Never NULL. */
struct io_uring_sqe *worker_get_sqe (struct worker *w);

/* Buffers of at least SIZE bytes (SIZE <= 32 MiB), page aligned.  *CLS
 * receives the class to give back to bufpool_put. */
void *bufpool_get (struct worker *w, size_t size, unsigned *cls);
void bufpool_put (struct worker *w, void *buf, unsigned cls);

/* Make W's loop run a wake-up (and so retry its parked requests). */
void worker_kick (struct worker *w);

/* ---- request.c -------------------------------------------------------- */

/* Take over a connection in the transmission phase. */
void request_conn_start (struct worker *w, struct conn *conn);
/* A completion whose op belongs to request.c. */
void request_complete (struct worker *w, struct uring_op *op, int res);
/* Run the deferred work of every connection marked dirty: send queued
 * replies, resume reading, close finished connections. */
void request_service (struct worker *w);
/* Shutdown: stop reading on every connection; they close once their
 * in-flight requests are answered. */
void request_stop_all (struct worker *w);
/* Shutdown grace period over: drop every connection, answered or not. */
void request_kill_all (struct worker *w);
/* After a wake-up: retry the parked requests, in arrival order. */
void request_retry_parked (struct worker *w);
/* Free per-worker caches at thread exit. */
void request_worker_cleanup (struct worker *w);

#endif /* SERVER_TRANSMISSION_H */
