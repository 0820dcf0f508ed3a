/* SPDX-License-Identifier: MIT */
/* The qemu-nbd front end: the program run as "qemu-nbd" takes qemu-nbd
 * 7.2's command line and behaves as it does (options, messages, exit
 * statuses, lifecycle), then serves through the same serve_run() as
 * "qcow2-nbd serve".  This header is the table of contents of the
 * front end, one group per source file.
 *
 * Messages: errors print as QEMU's error_report() prints them, "NAME: "
 * (the base name of argv[0]) then the text, worded as qemu-nbd words
 * them; qnbd_error() does that. */
#ifndef SERVER_QEMU_NBD_H
#define SERVER_QEMU_NBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server/server.h"

/* The qemu-nbd release whose behaviour this front end matches. */
#define QEMU_NBD_VERSION "7.2.22"

/* ---- qemu-nbd.c: the command line and the run ------------------------- */

/* Run as qemu-nbd; returns the exit status (or exits). */
int qemu_nbd_main (int argc, char **argv);

/* ---- qemu-error.c: error_report() ------------------------------------ */

/* The FILE argument as given, for messages ("Failed to blk_new_open"). */
extern const char *qnbd_image_arg;
/* The NAME of messages: the base name of argv[0] (qemu_nbd_main). */
extern const char *qnbd_progname;

/* error_report(): "NAME: MESSAGE\n" on stderr. */
void qnbd_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

/* ---- qemu-opts.c: QEMU's option strings and JSON ---------------------- *
 *
 * Options of images (--image-opts, json: file names) and of objects
 * (--object) are key/value dictionaries, written as "k=v,k2=v2" (",,"
 * is a comma) or as JSON.  Either way they end up flat: nested JSON
 * objects give dotted keys ("file.filename"), arrays numbered ones
 * ("rules.0.match").  Values are strings; JSON null is a NULL value,
 * JSON booleans are "on" and "off", numbers their text. */

struct qdict_entry {
  char *key;
  char *value;                  /* NULL: JSON null */
  bool used;                    /* taken by qdict_take */
};

struct qdict {
  struct qdict_entry *e;
  size_t n;
};

/* Parse "k=v,..." into D.  The first element may lack "=": it is then
 * IMPLIED=element when IMPLIED is not NULL.  Returns 0, or -1 with a
 * QEMU-worded message in ERR. */
int qdict_parse_opts (struct qdict *d, const char *s, const char *implied,
                      char *err, size_t errlen);
/* Parse a JSON object into D.  Returns 0, or -1 with QEMU's message in
 * ERR (-2: valid JSON, but not an object). */
int qdict_parse_json (struct qdict *d, const char *s,
                      char *err, size_t errlen);
/* The value of KEY (marking it used), or NULL when absent; *FOUND says
 * whether it was there (a JSON null is there with a NULL value). */
const char *qdict_take (struct qdict *d, const char *key, bool *found);
/* Is any key starting with PREFIX (e.g. "file.") there? */
bool qdict_has_prefix (const struct qdict *d, const char *prefix);
/* The first key not taken, or NULL. */
const char *qdict_unused (const struct qdict *d);
void qdict_free (struct qdict *d);

/* QEMU's boolean spellings (on/off, yes/no, true/false); -1 if none. */
int qopt_bool (const char *s);

/* ---- qemu-image.c: the image from FILE, -f and the block options ------ */

/* What the command line said about the image (before probing). */
struct qnbd_image_args {
  const char *file;             /* the FILE argument */
  const char *format;           /* -f, or NULL */
  bool image_opts;              /* --image-opts */
  bool read_only;               /* -r, -l */
  bool overlay;                 /* -s */
  bool direct;                  /* --cache: cache.direct */
  bool writethrough;            /* --cache */
  bool no_flush;                /* --cache=unsafe */
  bool aio_native;              /* --aio=native */
  bool discard_unmap;           /* --discard=unmap */
  enum detect_zeroes detect_zeroes;
  uint64_t offset;              /* -o */
};

/* Fill CFG's image fields from ARGS: parse json: names and --image-opts,
 * probe the format when none is given, apply -o.  On failure print
 * qemu-nbd's message ("Failed to blk_new_open ...") and return -1. */
int qnbd_image_config (const struct qnbd_image_args *args,
                       struct server_config *cfg);

/* Word a failed qcow2_open as qemu-nbd would (server_config.open_failed),
 * and a --bitmap that cannot be exported (server_config.bitmap_failed). */
void qnbd_open_failed (const struct server_config *cfg, int r,
                       const struct qcow2_open_error *e, const char *msg);
void qnbd_bitmap_failed (const struct server_config *cfg, const char *name,
                         const char *msg);

/* ---- qemu-objects.c: --object ----------------------------------------- */

/* Create the object an --object argument describes (secret,
 * tls-creds-x509, tls-creds-psk, authz-simple, authz-list-file), with
 * QEMU's checks and messages.  Returns 0, or -1 after printing why. */
int qnbd_object_add (const char *arg);

/* Fill TLS from the credentials object ID (and the authorization object
 * AUTHZ_ID, or NULL) for a server (LIST false) or for --list.  Returns
 * 0, or -1 with QEMU's message in ERR. */
int qnbd_tls_config (const char *id, const char *authz_id, bool list,
                     struct tls_config *tls, char *err, size_t errlen);

/* The PSK user name of credentials ID (client side), or NULL. */
const char *qnbd_tls_username (const char *id);

/* ---- qemu-list.c: -L, the exports of another server ------------------- */

/* Connect to the server at SOCKET_PATH or BIND:PORT, list its exports
 * in qemu-nbd's format on stdout; TLS (client credentials) when TLS is
 * not NULL.  Returns the exit status. */
int qnbd_list (const char *socket_path, const char *bind, const char *port,
               const struct tls_config *tls, const char *tls_hostname,
               const char *tls_username);

#endif /* SERVER_QEMU_NBD_H */
