/* SPDX-License-Identifier: MIT */
/* The meta contexts an export offers: base:allocation and
 * qemu:allocation-depth always, then qemu:dirty-bitmap:NAME for each
 * --bitmap, whose bitmap is looked up (and its bits loaded) here, before
 * serving starts, so a missing or inconsistent bitmap is a start-up
 * error naming it.  The handshake answers LIST and SET from this table
 * and BLOCK_STATUS reads the bitmaps it holds. */

#include <config.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"
#include "server/server.h"

#define BITMAP_CONTEXT "qemu:dirty-bitmap:"

int
contexts_setup (struct export *exp, const struct server_config *cfg)
{
  exp->meta_names[META_BASE_ALLOCATION] = "base:allocation";
  exp->meta_names[META_ALLOCATION_DEPTH] = "qemu:allocation-depth";
  exp->nr_meta = META_DIRTY_BITMAP;

  /* qemu-nbd offers its -B bitmaps last given first: so do we, so that
   * LIST answers alike. */
  for (unsigned i = cfg->nr_bitmaps; i-- > 0;) {
    const char *name = cfg->bitmaps[i];
    struct qcow2_bitmap *bm;
    char *ctx;
    bool dup = false;
    int r;

    for (unsigned j = META_DIRTY_BITMAP; j < exp->nr_meta; j++)
      dup |= strcmp (exp->meta_names[j] + strlen (BITMAP_CONTEXT),
                     name) == 0;
    if (dup)
      continue;
    r = qcow2_bitmap_get (exp->img, name, &bm);
    if (r < 0) {
      exp->failed_bitmap = name;
      return -1;                /* the library said why */
    }
    ctx = malloc (strlen (BITMAP_CONTEXT) + strlen (name) + 1);
    if (ctx == NULL) {
      log_error ("out of memory");
      return -1;
    }
    strcpy (ctx, BITMAP_CONTEXT);
    strcat (ctx, name);
    exp->bitmaps[exp->nr_meta - META_DIRTY_BITMAP] = bm;
    exp->meta_names[exp->nr_meta++] = ctx;
    log_debug ("offering %s", ctx);
  }
  return 0;
}

void
contexts_free (struct export *exp)
{
  for (unsigned m = META_DIRTY_BITMAP; m < exp->nr_meta; m++)
    free ((char *) exp->meta_names[m]);
  exp->nr_meta = 0;
}
