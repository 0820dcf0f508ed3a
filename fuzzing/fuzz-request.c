/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the transmission phase's request parser over bytes a
 * client sends, on a connection whose negotiated state the first byte
 * chooses:
 *   bit 0     structured replies
 *   bits 1-2  meta contexts selected (base:allocation, allocation-depth)
 *   bit 3     extended headers (which imply structured replies)
 *   bits 4-7  the export: fuzz_export's configuration bits 0-3
 * Build with clang -fsanitize=fuzzer (fuzzing/Makefile.am), or link
 * driver.c to replay files. */
#include <config.h>

#include <stdint.h>
#include <string.h>

#include "fuzzing/nbd-fuzz.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct export exp;
  struct conn conn;

  if (size < 1)
    return 0;
  fuzz_export (&exp, data[0] >> 4);
  memset (&conn, 0, sizeof conn);
  conn.fd = -1;
  strcpy (conn.peer, "fuzz");
  conn.exp = &exp;
  conn.extended_headers = data[0] & 8;
  conn.structured_replies = (data[0] & 1) || conn.extended_headers;
  conn.meta = data[0] >> 1 & 3;
  if (!conn.structured_replies)
    conn.meta = 0;              /* the handshake never selects any */
  fuzz_transmission (&conn, data + 1, size - 1);
  return 0;
}
