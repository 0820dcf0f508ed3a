/* SPDX-License-Identifier: MIT */
/* Shared by the NBD fuzz targets: a connection and export made from a
 * configuration byte, and the transmission phase driven over memory
 * with the contract of the request parser checked (nbd-fuzz.c). */
#ifndef FUZZING_NBD_FUZZ_H
#define FUZZING_NBD_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "server/server.h"

/* An export whose size, flags and name bits of CFG choose:
 *   bits 0-1  size: 1 MiB, 0, 2^63 - 512, 32 MiB + 1
 *   bit 2     read-only
 *   bit 3     name "fuzz" and a description (else "" and none) */
void fuzz_export (struct export *exp, uint8_t cfg);

/* The handshake's exports: EXP alone, found by its exact name, its
 * references counted (a release of one not taken aborts). */
extern const struct export_source fuzz_source;
void fuzz_source_set (const struct export *exp);
/* References taken and not released. */
unsigned fuzz_source_refs (void);

/* Feed DATA to the transmission phase's parser as a client of CONN would
 * send it: request headers, payloads skipped, until DISC, a bad magic,
 * an oversized payload or the end.  Every request the parser accepts is
 * checked against what the command handlers rely on; every refusal has
 * an errno the protocol allows and a message.  Aborts on a breach. */
void fuzz_transmission (const struct conn *conn, const uint8_t *data,
                        size_t size);

#endif /* FUZZING_NBD_FUZZ_H */
