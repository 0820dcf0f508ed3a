/* SPDX-License-Identifier: MIT */
/* The handshake's insides, shared by its two files: handshake.c, the
 * state machine that reads client flags and options and moves bytes,
 * at the top; handshake-opts.c, the options' handlers and the replies
 * they queue, below it.  The machine calls the handlers; the handlers
 * never call back into the machine.  Nothing outside these two files
 * includes this. */

#ifndef QCOW2_NBD_SERVER_HANDSHAKE_INT_H
#define QCOW2_NBD_SERVER_HANDSHAKE_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/server.h"
#include "tls/tls.h"

/* Where the negotiation is. */
enum stage {
  ST_FLAGS,                     /* reading the client flags */
  ST_OPTION,                    /* reading an option header */
  ST_PAYLOAD,                   /* reading the payload of an option */
  ST_DISCARD,                   /* dropping the payload of an option */
  ST_STARTTLS,                  /* ACK queued: the caller runs TLS */
  ST_DONE,                      /* transmission phase */
  ST_END,                       /* the client ended the session */
  ST_FAIL,                      /* drop the connection */
};

/* What answers an option once its payload is in (or dropped). */
enum action {
  ACT_OPTION,                   /* the option's own handler */
  ACT_TLS_REQD,                 /* NBD_REP_ERR_TLS_REQD */
  ACT_TOO_BIG,                  /* NBD_REP_ERR_TOO_BIG */
};

/* NBDMAGIC, IHAVEOPT, handshake flags. */
#define GREETING_SIZE (8 + 8 + 2)

/* Longest reply output of one option (an export with a 4096-byte name
 * and description is the longest we make).  LIST answers in batches of
 * LIST_BATCH bytes at most, the next made once the last is sent, so a
 * long list costs no more memory than a short one. */
#define OUTPUT_MAX (32 * 1024)
#define LIST_BATCH (16 * 1024)

/* Negotiation state of one connection. */
struct handshake {
  struct conn *conn;
  const struct export_source *src;      /* where exports are looked up */
  /* The export of the last NBD_OPT_SET_META_CONTEXT (a reference): its
   * contexts hold for a GO of that export only. */
  const struct export *meta_exp;
  /* NBD_OPT_LIST in progress: the name of the last export sent (its
   * next batch starts after it). */
  char *list_after;
  bool listing;                 /* more batches to come */
  enum tls_mode tls_mode;       /* TLS_OFF when the server has no context */
  enum stage stage;
  bool fixed;                   /* client sent NBD_FLAG_C_FIXED_NEWSTYLE */
  bool tls;                     /* STARTTLS succeeded */
  uint32_t opt;                 /* option being answered */
  uint32_t len;                 /* ... and its payload length */
  enum action action;

  /* Input: the unit being read.  Client flags and option headers go to
   * hdr, a payload to payload (LEN bytes, allocated once LEN has been
   * checked), a dropped payload nowhere. */
  uint8_t hdr[NBD_OPTION_HEADER_SIZE];
  uint32_t got;                 /* bytes of the unit so far */
  char *payload;
  uint32_t discard_left;

  /* Output: replies not yet sent, out[out_off .. out_len). */
  char *out;
  size_t out_len, out_off;
};

/* The handlers below return one of these (or -1: drop). */
enum {
  OPT_NEXT = 0,                 /* go on negotiating */
  OPT_TRANSMISSION = 1,         /* EXPORT_NAME or GO succeeded */
  OPT_END = 2,                  /* the client ended the session cleanly */
  OPT_STARTTLS = 3,             /* ACK queued: run the TLS handshake */
};

/* ---- handshake-opts.c: replies --------------------------------------- */

/* The option's name, for messages. */
const char *hsopt_name (uint32_t opt);
/* Append LEN bytes to the output.  Returns 0 or -1 (logged). */
int hsopt_output (struct handshake *hs, const void *buf, size_t len);
/* Queue one option reply of TYPE with PAYLOAD.  0 or -1 (logged). */
int hsopt_reply (struct handshake *hs, uint32_t type, const void *payload,
                 size_t len);
/* Queue an error reply of TYPE whose payload is the message. */
int hsopt_error (struct handshake *hs, uint32_t type, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* ---- handshake-opts.c: the options ----------------------------------- */

/* Each answers the current option (hs->opt, its payload P of LEN bytes
 * where it parses one) and returns an OPT_* value or -1 (drop). */
int hsopt_export_name (struct handshake *hs, const char *p, uint32_t len);
int hsopt_list (struct handshake *hs, uint32_t len);
int hsopt_info_go (struct handshake *hs, const char *p, uint32_t len);
int hsopt_structured_reply (struct handshake *hs, uint32_t len);
int hsopt_extended_headers (struct handshake *hs, uint32_t len);
int hsopt_meta_context (struct handshake *hs, const char *p, uint32_t len);
int hsopt_starttls (struct handshake *hs, uint32_t len);
/* The next batch of an NBD_OPT_LIST in progress (hs->listing), and the
 * ACK after the last.  0 or -1 (drop). */
int hsopt_list_batch (struct handshake *hs);

#endif /* QCOW2_NBD_SERVER_HANDSHAKE_INT_H */
