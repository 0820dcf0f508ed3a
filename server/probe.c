/* SPDX-License-Identifier: MIT */
/* Image format probing as QEMU 7.2 does it (block.c: bdrv_probe_all and
 * each driver's probe function), for qemu-nbd without -f: every format
 * QEMU knows scores the first bytes of the image (and its name), the
 * highest score wins, and raw scores the least, so it is what is left
 * when nothing else matches.  We only serve qcow2 and raw, but naming
 * the other formats lets us refuse them by name instead of serving a
 * VMDK file as a raw disk.
 *
 * QEMU also probes what a guest writes into the first sector of a raw
 * image whose format was probed: a write that would make it probe as
 * something else is refused (writes.c), so a guest cannot turn its disk
 * into, say, a qcow2 image naming a host file as backing file. */

#include <config.h>

#include <stdint.h>
#include <string.h>

#include "common/byteorder.h"
#include "common/rounding.h"
#include "server/server.h"

/* Magic numbers and layouts from each format's specification (and
 * QEMU's block/ drivers). */
#define QCOW_MAGIC 0x514649fbu          /* "QFI\xfb", big-endian */
#define QED_MAGIC 0x00444551u           /* "QED\0", little-endian */
#define VDI_SIGNATURE 0xbeda107fu       /* little-endian, at 64 */
#define VMDK3_MAGIC 0x434f5744u         /* "COWD" */
#define VMDK4_MAGIC 0x4b444d56u         /* "KDMV" */

static int
score_qcow (const uint8_t *b, size_t len, uint32_t want_v2)
{
  uint32_t v;

  if (len < 8 || load_be32 (b) != QCOW_MAGIC)
    return 0;
  v = load_be32 (b + 4);
  return (want_v2 ? v >= 2 : v == 1) ? 100 : 0;
}

/* A VMDK descriptor: comment and blank lines, then "version=1|2|3". */
static int
score_vmdk_text (const uint8_t *b, size_t len)
{
  const char *p = (const char *) b, *end = p + len;

  while (p < end) {
    if (*p == '#') {
      while (p < end && *p != '\n')
        p++;
      p++;
      continue;
    }
    if (*p == ' ') {
      while (p < end && *p == ' ')
        p++;
      if (p < end && *p == '\r')
        p++;
      if (p == end || *p != '\n')
        return 0;
      p++;
      continue;
    }
    for (int v = '1'; v <= '3'; v++) {
      char lf[] = { 'v','e','r','s','i','o','n','=', (char) v, '\n' };
      char crlf[] = { 'v','e','r','s','i','o','n','=', (char) v, '\r','\n' };

      if ((size_t) (end - p) >= sizeof lf && memcmp (p, lf, sizeof lf) == 0)
        return 100;
      if ((size_t) (end - p) >= sizeof crlf
          && memcmp (p, crlf, sizeof crlf) == 0)
        return 100;
    }
    return 0;
  }
  return 0;
}

/* A NUL-terminated string filling part of a fixed field. */
static bool
field_is (const uint8_t *f, size_t size, const char *s)
{
  size_t n = strlen (s);

  return n < size && memcmp (f, s, n + 1) == 0;
}

const char *
probe_format (const uint8_t *b, size_t len, const char *filename)
{
  static const char cloop[] = "#!/bin/sh\n#V2.0 Format\n"
    "modprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n";
  struct { const char *name; int score; } s[] = {
    { "qcow2", score_qcow (b, len, 1) },
    { "qcow", score_qcow (b, len, 0) },
    { "qed", len >= 64 && load_le32 (b) == QED_MAGIC ? 100 : 0 },
    { "vdi", len >= 512 && load_le32 (b + 64) == VDI_SIGNATURE ? 100 : 0 },
    { "vmdk", len >= 4 && (load_be32 (b) == VMDK3_MAGIC
                           || load_be32 (b) == VMDK4_MAGIC)
      ? 100 : len >= 4 ? score_vmdk_text (b, len) : 0 },
    { "vpc", len >= 8 && memcmp (b, "conectix", 8) == 0 ? 100 : 0 },
    { "vhdx", len >= 8 && memcmp (b, "vhdxfile", 8) == 0 ? 100 : 0 },
    { "luks", len >= 8 && memcmp (b, "LUKS\xba\xbe", 6) == 0
      && load_be16 (b + 6) == 1 ? 100 : 0 },
    { "bochs", len >= 512 && field_is (b, 32, "Bochs Virtual HD Image")
      && field_is (b + 32, 16, "Redolog") && field_is (b + 48, 16, "Growing")
      && (load_le32 (b + 64) == 0x00020000 || load_le32 (b + 64) == 0x00010000)
      ? 100 : 0 },
    { "parallels", len >= 64 && (memcmp (b, "WithoutFreeSpace", 16) == 0
                                 || memcmp (b, "WithouFreSpacExt", 16) == 0)
      && load_le32 (b + 16) == 2 ? 100 : 0 },
    { "cloop", len > 0 && memcmp (b, cloop, MIN (len, sizeof cloop - 1)) == 0
      ? 2 : 0 },
    { "dmg", 0 },
    { "raw", 1 },
  };
  const char *best = "raw";
  int max = 0;

  if (filename) {
    size_t n = strlen (filename);

    if (n > 4 && strcmp (filename + n - 4, ".dmg") == 0)
      s[11].score = 2;
  }
  for (size_t i = 0; i < sizeof s / sizeof s[0]; i++)
    if (s[i].score > max) {
      max = s[i].score;
      best = s[i].name;
    }
  return best;
}
