/* SPDX-License-Identifier: MIT */
/* The files of --export-dir as exports.c sees them: which names can be
 * exports (one path component, no hidden file, UTF-8 as NBD names must
 * be), the regular files among them (no symbolic link is ever
 * followed), the whole directory read as a sorted list of names, and an
 * image's format probed as QEMU would.  Everything a client names goes
 * through export_dir_name_ok before it is joined to the directory, so
 * no name reaches a file outside it.  No state: exports.c keeps the
 * table. */

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cleanup.h"
#include "server/server.h"

/* Is S (LEN bytes) well-formed UTF-8, as NBD names must be (proto.md,
 * "Export names")?  Shortest forms only, no surrogates. */
static bool
utf8_ok (const unsigned char *s, size_t len)
{
  for (size_t i = 0; i < len;) {
    unsigned c = s[i], n;
    uint32_t cp;

    if (c < 0x80) {
      i++;
      continue;
    }
    if (c >= 0xc2 && c <= 0xdf)
      n = 1, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
      n = 2, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
      n = 3, cp = c & 0x07;
    else
      return false;
    if (n > len - i - 1)
      return false;
    for (unsigned k = 1; k <= n; k++) {
      if ((s[i + k] & 0xc0) != 0x80)
        return false;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
        || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += n + 1;
  }
  return true;
}

bool
export_dir_name_ok (const char *name)
{
  size_t len = strlen (name);

  if (len == 0 || len > NAME_MAX || name[0] == '.')
    return false;
  for (size_t i = 0; i < len; i++)
    if (name[i] == '/' || (unsigned char) name[i] < 0x20 || name[i] == 0x7f)
      return false;
  return utf8_ok ((const unsigned char *) name, len);
}

char *
export_dir_path (const char *dir, const char *name)
{
  char *p;

  if (asprintf (&p, "%s/%s", dir, name) == -1)
    return NULL;
  return p;
}

bool
export_dir_file_ok (const char *path)
{
  struct stat st;

  return lstat (path, &st) == 0 && S_ISREG (st.st_mode);
}

static int
name_cmp (const void *a, const void *b)
{
  return strcmp (*(char *const *) a, *(char *const *) b);
}

char **
export_dir_read (const char *dir, size_t *nrp)
{
  char **names = NULL;
  size_t nr = 0, cap = 0;
  DIR *d = opendir (dir);
  struct dirent *de;

  *nrp = 0;
  if (d == NULL) {
    log_error ("--export-dir %s: %m", dir);
    return NULL;
  }
  while ((de = readdir (d)) != NULL) {
    CLEANUP_FREE char *path = NULL;

    if (!export_dir_name_ok (de->d_name))
      continue;
    if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN)
      continue;
    path = export_dir_path (dir, de->d_name);
    if (path == NULL || !export_dir_file_ok (path))
      continue;
    if (nr == cap) {
      size_t c = cap ? 2 * cap : 64;
      char **p = realloc (names, c * sizeof *p);

      if (p == NULL)
        break;
      names = p;
      cap = c;
    }
    if ((names[nr] = strdup (de->d_name)) == NULL)
      break;
    nr++;
  }
  closedir (d);
  if (nr)
    qsort (names, nr, sizeof *names, name_cmp);
  *nrp = nr;
  return names ? names : calloc (1, sizeof *names);
}

int
export_dir_probe (const char *path, struct server_config *cfg, char *why,
                  size_t whylen)
{
  uint8_t buf[4096] = { 0 };
  const char *fmt;
  ssize_t n;
  int fd;

  /* O_NOFOLLOW: a link put there since it was listed is not followed
   * either. */
  fd = open (path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd == -1) {
    snprintf (why, whylen, "%s: %s", path, strerror (errno));
    return -1;
  }
  n = pread (fd, buf, sizeof buf, 0);
  close (fd);
  if (n < 0) {
    snprintf (why, whylen, "%s: %s", path, strerror (errno));
    return -1;
  }
  fmt = n == 0 ? "raw" : probe_format (buf, sizeof buf, path);
  if (strcmp (fmt, "qcow2") == 0)
    cfg->format = QCOW2_FORMAT_QCOW2;
  else if (strcmp (fmt, "raw") == 0) {
    cfg->format = QCOW2_FORMAT_RAW;
    cfg->probed_raw = true;
  }
  else {
    snprintf (why, whylen, "%s is a %s image; only qcow2 and raw images "
              "are served", path, fmt);
    return -1;
  }
  return 0;
}
