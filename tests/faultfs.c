/* SPDX-License-Identifier: MIT */
/* faultfs: a FUSE pass-through file system for the failing-storage and
 * power-cut tests.  It serves the files of a backing directory and, on
 * command, makes chosen reads, writes and fsyncs fail (EIO, ENOSPC) or
 * come back short; it can also record every change made to the files, in
 * the order it happened, so a test can rebuild the states a power cut
 * could leave behind.
 *
 *   faultfs -o backing=DIR[,log=FILE] MOUNTPOINT
 *
 * It always runs in the foreground and single-threaded, with the page
 * cache off (direct_io): every read(2), write(2) and fsync(2) of a
 * client, io_uring ones included, reaches this process as one request
 * (the kernel splits writes above its max_write), one at a time.  So the
 * order of the log is the order in which requests completed, and an
 * fsync covers exactly the writes logged before it.  The backing files
 * are never really synced: durability is what the log says.
 *
 * Commands, one a line, written to the file ".faultfs" at the root of
 * the mount (reading it gives counters and the active rules):
 *
 *   fail OP ERR [path=/NAME] [off=N] [len=N] [after=N] [count=N]
 *       OP: read, write, fsync (fsync and fdatasync) or any;
 *       ERR: eio, enospc, or short (read or write half of the bytes);
 *       path: only that file; off/len: only requests overlapping the
 *       byte range; after: let the first N matching requests through;
 *       count: fail N requests, then the rule is spent (default: all).
 *   clear            remove every rule
 *   mark TEXT        add a mark with TEXT to the log, in sequence with
 *                    the requests (a test marks what it has seen
 *                    acknowledged)
 *
 * The log: the 8 bytes "FAULTFS1", then records of a 32-byte header
 * (u32 type, u32 name length, u64 offset, u64 length, u64 sequence
 * number, little-endian), the name (a file path, or a mark's text), and
 * for LOG_WRITE the bytes written.  Only requests that succeeded (for a
 * short write, the part written) are logged. */

#define FUSE_USE_VERSION 35

#include <config.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <unistd.h>

#include <linux/falloc.h>

#define CONTROL_NAME "/.faultfs"
#define CONTROL_FH UINT64_MAX
#define MAX_RULES 64
#define MAX_CMD 4096

enum log_type {
  LOG_WRITE = 1,      /* bytes written at offset */
  LOG_FSYNC = 2,      /* fsync (length 0) or fdatasync (length 1) */
  LOG_PUNCH = 3,      /* fallocate PUNCH_HOLE: [offset, +length) reads 0 */
  LOG_ZERO = 4,       /* fallocate ZERO_RANGE; without KEEP_SIZE the
                       * file grows to offset+length (flag in bit 31 of
                       * the type word: KEEP_SIZE) */
  LOG_ALLOCATE = 5,   /* fallocate mode 0: the file grows to offset +
                       * length (KEEP_SIZE: nothing changes) */
  LOG_TRUNCATE = 6,   /* the file's size becomes length */
  LOG_MARK = 7,       /* a test's mark; the name is its text */
  LOG_CREATE = 8,     /* the file was created empty (or truncated) */
};
#define LOG_KEEP_SIZE 0x80000000u

enum rule_op { OP_READ, OP_WRITE, OP_FSYNC, OP_ANY };
enum rule_err { ERR_EIO, ERR_ENOSPC, ERR_SHORT };

struct rule {
  enum rule_op op;
  enum rule_err err;
  char path[256];             /* "" = any file */
  uint64_t off, len;          /* len 0: any offset */
  uint64_t after;             /* matching requests still let through */
  uint64_t count;             /* failures left; UINT64_MAX: unlimited */
  uint64_t hits;
};

/* All of it is touched by the one FUSE thread only. */
static struct {
  char *backing;
  char *log_path;
  int dirfd;
  FILE *log;
  uint64_t seq;
  struct rule rules[MAX_RULES];
  unsigned nr_rules;
  uint64_t injected, reads, writes, fsyncs;
  char cmd[MAX_CMD];          /* a partial command line */
  size_t cmd_len;
} fs;

static const char *
rel (const char *path)
{
  while (*path == '/')
    path++;
  return *path ? path : ".";
}

static bool
is_control (const char *path)
{
  return path && strcmp (path, CONTROL_NAME) == 0;
}

/* ---- The log ----------------------------------------------------------- */

static void
put_le32 (unsigned char *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = v >> (8 * i);
}

static void
put_le64 (unsigned char *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = v >> (8 * i);
}

/* A log that cannot be written makes the whole run worthless: stop. */
static void
log_record (uint32_t type, const char *name, uint64_t off, uint64_t len,
            const void *data, size_t data_len)
{
  unsigned char h[32];
  size_t nlen = strlen (name);

  if (fs.log == NULL)
    return;
  put_le32 (h, type);
  put_le32 (h + 4, nlen);
  put_le64 (h + 8, off);
  put_le64 (h + 16, len);
  put_le64 (h + 24, fs.seq++);
  if (fwrite (h, sizeof h, 1, fs.log) != 1
      || fwrite (name, 1, nlen, fs.log) != nlen
      || (data_len && fwrite (data, 1, data_len, fs.log) != data_len)) {
    fprintf (stderr, "faultfs: writing the log %s: %m\n", fs.log_path);
    abort ();
  }
}

/* ---- Fault rules ------------------------------------------------------- */

static const char *op_names[] = { "read", "write", "fsync", "any" };
static const char *err_names[] = { "eio", "enospc", "short" };

/* Should this request fail?  Returns 0 (no), -EIO/-ENOSPC, or 1 (make it
 * short; only when CAN_SHORT: a read or write of 2 bytes or more). */
static int
check_rules (enum rule_op op, const char *path, uint64_t off, uint64_t len,
             bool can_short)
{
  for (unsigned i = 0; i < fs.nr_rules; i++) {
    struct rule *r = &fs.rules[i];

    if (r->count == 0)
      continue;
    if (r->op != OP_ANY && r->op != op)
      continue;
    if (r->path[0] && strcmp (r->path, path) != 0)
      continue;
    if (r->len && op != OP_FSYNC
        && (off >= r->off + r->len || off + len <= r->off))
      continue;
    if (r->err == ERR_SHORT && (!can_short || len < 2))
      continue;
    if (r->after > 0) {
      r->after--;
      continue;
    }
    if (r->count != UINT64_MAX)
      r->count--;
    r->hits++;
    fs.injected++;
    switch (r->err) {
    case ERR_EIO: return -EIO;
    case ERR_ENOSPC: return -ENOSPC;
    case ERR_SHORT: return 1;
    }
  }
  return 0;
}

static int
parse_u64 (const char *s, uint64_t *v)
{
  char *end;

  errno = 0;
  *v = strtoull (s, &end, 0);
  return errno || end == s || *end ? -EINVAL : 0;
}

static int
add_rule (char *args)
{
  struct rule r = { .count = UINT64_MAX };
  char *save = NULL, *w;
  unsigned i;

  if (fs.nr_rules == MAX_RULES)
    return -ENOSPC;
  w = strtok_r (args, " \t", &save);
  for (i = 0; i < 4 && (!w || strcmp (w, op_names[i])); i++)
    ;
  if (i == 4)
    return -EINVAL;
  r.op = i;
  w = strtok_r (NULL, " \t", &save);
  for (i = 0; i < 3 && (!w || strcmp (w, err_names[i])); i++)
    ;
  if (i == 3)
    return -EINVAL;
  r.err = i;
  while ((w = strtok_r (NULL, " \t", &save)) != NULL) {
    char *eq = strchr (w, '=');
    int e = 0;

    if (eq == NULL)
      return -EINVAL;
    *eq++ = '\0';
    if (strcmp (w, "path") == 0) {
      if (snprintf (r.path, sizeof r.path, "%s%s", *eq == '/' ? "" : "/",
                    eq) >= (int) sizeof r.path)
        return -ENAMETOOLONG;
    }
    else if (strcmp (w, "off") == 0)
      e = parse_u64 (eq, &r.off);
    else if (strcmp (w, "len") == 0)
      e = parse_u64 (eq, &r.len);
    else if (strcmp (w, "after") == 0)
      e = parse_u64 (eq, &r.after);
    else if (strcmp (w, "count") == 0)
      e = parse_u64 (eq, &r.count);
    else
      e = -EINVAL;
    if (e)
      return e;
  }
  fs.rules[fs.nr_rules++] = r;
  return 0;
}

static int
run_command (char *line)
{
  if (strncmp (line, "fail ", 5) == 0)
    return add_rule (line + 5);
  if (strcmp (line, "clear") == 0) {
    fs.nr_rules = 0;
    return 0;
  }
  if (strncmp (line, "mark ", 5) == 0) {
    log_record (LOG_MARK, line + 5, 0, 0, NULL, 0);
    if (fs.log)
      fflush (fs.log);
    return 0;
  }
  if (line[0] == '\0')
    return 0;
  return -EINVAL;
}

static int
control_write (const char *buf, size_t size)
{
  int err = 0;

  for (size_t i = 0; i < size; i++) {
    if (buf[i] != '\n') {
      if (fs.cmd_len == MAX_CMD - 1)
        return -E2BIG;
      fs.cmd[fs.cmd_len++] = buf[i];
      continue;
    }
    fs.cmd[fs.cmd_len] = '\0';
    fs.cmd_len = 0;
    if (err == 0)
      err = run_command (fs.cmd);
  }
  if (err)
    fprintf (stderr, "faultfs: bad command (%s)\n", strerror (-err));
  return err ? err : (int) size;
}

static int
control_read (char *buf, size_t size, off_t off)
{
  char text[8192];
  int n;

  n = snprintf (text, sizeof text,
                "injected %" PRIu64 "\nreads %" PRIu64 "\nwrites %" PRIu64
                "\nfsyncs %" PRIu64 "\n", fs.injected, fs.reads,
                fs.writes, fs.fsyncs);
  for (unsigned i = 0; i < fs.nr_rules && n < (int) sizeof text; i++) {
    const struct rule *r = &fs.rules[i];

    n += snprintf (text + n, sizeof text - n,
                   "rule %s %s path=%s off=%" PRIu64 " len=%" PRIu64
                   " hits=%" PRIu64 " left=%s\n", op_names[r->op],
                   err_names[r->err], r->path[0] ? r->path : "*", r->off,
                   r->len, r->hits,
                   r->count == UINT64_MAX ? "all" : r->count ? "some"
                   : "spent");
  }
  if (n > (int) sizeof text)
    n = sizeof text;
  if (off >= n)
    return 0;
  if (size > (size_t) (n - off))
    size = n - off;
  memcpy (buf, text + off, size);
  return size;
}

/* ---- File operations --------------------------------------------------- */

static void *
ffs_init (struct fuse_conn_info *conn, struct fuse_config *cfg)
{
  /* No page cache: every client request comes here, short reads and
   * writes reach the client as such, and nothing is cached that a
   * fault would have to invalidate. */
  cfg->direct_io = 1;
  cfg->kernel_cache = 0;
  cfg->attr_timeout = 0;
  cfg->entry_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->use_ino = 1;
  /* Fewer, larger requests; the kernel caps it at what it supports. */
  conn->max_write = 1 << 20;
  return NULL;
}

static void
ffs_destroy (void *data)
{
  if (fs.log) {
    if (fclose (fs.log) != 0)
      fprintf (stderr, "faultfs: closing the log %s: %m\n", fs.log_path);
    fs.log = NULL;
  }
}

static int
ffs_getattr (const char *path, struct stat *st, struct fuse_file_info *fi)
{
  if (is_control (path)) {
    memset (st, 0, sizeof *st);
    st->st_mode = S_IFREG | 0666;
    st->st_nlink = 1;
    st->st_ino = 1;
    return 0;
  }
  if (fi && fi->fh != CONTROL_FH) {
    if (fstat (fi->fh, st) == -1)
      return -errno;
  }
  else if (fstatat (fs.dirfd, rel (path), st, AT_SYMLINK_NOFOLLOW) == -1)
    return -errno;
  return 0;
}

static int
ffs_readdir (const char *path, void *buf, fuse_fill_dir_t filler,
             off_t off, struct fuse_file_info *fi,
             enum fuse_readdir_flags flags)
{
  int fd = openat (fs.dirfd, rel (path), O_RDONLY | O_DIRECTORY);
  DIR *d;
  struct dirent *e;

  if (fd == -1)
    return -errno;
  d = fdopendir (fd);
  if (d == NULL) {
    close (fd);
    return -errno;
  }
  while ((e = readdir (d)) != NULL)
    filler (buf, e->d_name, NULL, 0, 0);
  closedir (d);
  return 0;
}

static int
ffs_open (const char *path, struct fuse_file_info *fi)
{
  int fd;

  if (is_control (path)) {
    fi->fh = CONTROL_FH;
    fi->direct_io = 1;
    fi->nonseekable = 1;
    return 0;
  }
  fd = openat (fs.dirfd, rel (path), fi->flags & ~O_NOFOLLOW);
  if (fd == -1)
    return -errno;
  fi->fh = fd;
  if (fi->flags & O_TRUNC)
    log_record (LOG_CREATE, path, 0, 0, NULL, 0);
  return 0;
}

static int
ffs_create (const char *path, mode_t mode, struct fuse_file_info *fi)
{
  int fd;

  if (is_control (path))
    return -EEXIST;
  fd = openat (fs.dirfd, rel (path), fi->flags | O_CREAT, mode);
  if (fd == -1)
    return -errno;
  fi->fh = fd;
  log_record (LOG_CREATE, path, 0, 0, NULL, 0);
  return 0;
}

static int
ffs_release (const char *path, struct fuse_file_info *fi)
{
  if (fi->fh != CONTROL_FH)
    close (fi->fh);
  return 0;
}

/* Count a read or write and apply the rules to it: 0 (go on, with
 * *SIZE halved when the rule says short) or the -errno to fail with. */
static int
fault_transfer (enum rule_op op, const char *path, off_t off, size_t *size)
{
  int f;

  if (op == OP_READ)
    fs.reads++;
  else
    fs.writes++;
  f = check_rules (op, path, off, *size, true);
  if (f == 1)
    *size /= 2;
  return f < 0 ? f : 0;
}

static int
ffs_read (const char *path, char *buf, size_t size, off_t off,
          struct fuse_file_info *fi)
{
  ssize_t n;
  int f;

  if (fi->fh == CONTROL_FH)
    return control_read (buf, size, off);
  f = fault_transfer (OP_READ, path, off, &size);
  if (f < 0)
    return f;
  n = pread (fi->fh, buf, size, off);
  return n == -1 ? -errno : (int) n;
}

static int
ffs_write (const char *path, const char *buf, size_t size, off_t off,
           struct fuse_file_info *fi)
{
  ssize_t n;
  int f;

  if (fi->fh == CONTROL_FH)
    return control_write (buf, size);
  f = fault_transfer (OP_WRITE, path, off, &size);
  if (f < 0)
    return f;
  n = pwrite (fi->fh, buf, size, off);
  if (n == -1)
    return -errno;
  log_record (LOG_WRITE, path, off, n, buf, n);
  return n;
}

static int
ffs_fsync (const char *path, int datasync, struct fuse_file_info *fi)
{
  int f;

  if (fi->fh == CONTROL_FH)
    return 0;
  fs.fsyncs++;
  f = check_rules (OP_FSYNC, path, 0, 0, false);
  if (f < 0)
    return f;
  log_record (LOG_FSYNC, path, 0, datasync != 0, NULL, 0);
  if (fs.log)
    fflush (fs.log);
  return 0;
}

static int
ffs_flush (const char *path, struct fuse_file_info *fi)
{
  return 0;
}

static int
ffs_fallocate (const char *path, int mode, off_t off, off_t len,
               struct fuse_file_info *fi)
{
  uint32_t keep = (mode & FALLOC_FL_KEEP_SIZE) ? LOG_KEEP_SIZE : 0;
  uint32_t type;
  int f;

  if (fi->fh == CONTROL_FH)
    return -EOPNOTSUPP;
  if (mode & FALLOC_FL_PUNCH_HOLE)
    type = LOG_PUNCH;
  else if (mode & FALLOC_FL_ZERO_RANGE)
    type = LOG_ZERO;
  else if ((mode & ~FALLOC_FL_KEEP_SIZE) == 0)
    type = LOG_ALLOCATE;
  else
    return -EOPNOTSUPP;
  /* Making zeros is writing, as far as faults go. */
  fs.writes++;
  f = check_rules (OP_WRITE, path, off, len, false);
  if (f < 0)
    return f;
  if (fallocate (fi->fh, mode, off, len) == -1)
    return -errno;
  log_record (type | keep, path, off, len, NULL, 0);
  return 0;
}

static int
ffs_truncate (const char *path, off_t size, struct fuse_file_info *fi)
{
  int r;

  if (is_control (path) || (fi && fi->fh == CONTROL_FH))
    return 0;                   /* "echo cmd > .faultfs" truncates */
  if (fi)
    r = ftruncate (fi->fh, size);
  else {
    int fd = openat (fs.dirfd, rel (path), O_WRONLY);

    if (fd == -1)
      return -errno;
    r = ftruncate (fd, size);
    if (r == -1) {
      int e = errno;
      close (fd);
      errno = e;
    }
    else
      close (fd);
  }
  if (r == -1)
    return -errno;
  log_record (LOG_TRUNCATE, path, 0, size, NULL, 0);
  return 0;
}

static off_t
ffs_lseek (const char *path, off_t off, int whence,
           struct fuse_file_info *fi)
{
  off_t r;

  if (fi->fh == CONTROL_FH)
    return -ESPIPE;
  r = lseek (fi->fh, off, whence);
  return r == -1 ? -errno : r;
}

static int
ffs_unlink (const char *path)
{
  return unlinkat (fs.dirfd, rel (path), 0) == -1 ? -errno : 0;
}

static int
ffs_rename (const char *from, const char *to, unsigned int flags)
{
  if (flags)
    return -EINVAL;
  return renameat (fs.dirfd, rel (from), fs.dirfd, rel (to)) == -1
    ? -errno : 0;
}

static int
ffs_chmod (const char *path, mode_t mode, struct fuse_file_info *fi)
{
  if (is_control (path))
    return 0;
  return fchmodat (fs.dirfd, rel (path), mode, 0) == -1 ? -errno : 0;
}

static int
ffs_utimens (const char *path, const struct timespec ts[2],
             struct fuse_file_info *fi)
{
  if (is_control (path))
    return 0;
  return utimensat (fs.dirfd, rel (path), ts, AT_SYMLINK_NOFOLLOW) == -1
    ? -errno : 0;
}

static int
ffs_statfs (const char *path, struct statvfs *st)
{
  return fstatvfs (fs.dirfd, st) == -1 ? -errno : 0;
}

static const struct fuse_operations ops = {
  .init = ffs_init,
  .destroy = ffs_destroy,
  .getattr = ffs_getattr,
  .readdir = ffs_readdir,
  .open = ffs_open,
  .create = ffs_create,
  .release = ffs_release,
  .read = ffs_read,
  .write = ffs_write,
  .fsync = ffs_fsync,
  .flush = ffs_flush,
  .fallocate = ffs_fallocate,
  .truncate = ffs_truncate,
  .lseek = ffs_lseek,
  .unlink = ffs_unlink,
  .rename = ffs_rename,
  .chmod = ffs_chmod,
  .utimens = ffs_utimens,
  .statfs = ffs_statfs,
};

static const struct fuse_opt opts[] = {
  { "backing=%s", offsetof (__typeof__ (fs), backing), 0 },
  { "log=%s", offsetof (__typeof__ (fs), log_path), 0 },
  FUSE_OPT_END
};

int
main (int argc, char **argv)
{
  struct fuse_args args = FUSE_ARGS_INIT (argc, argv);
  int r;

  if (fuse_opt_parse (&args, &fs, opts, NULL) == -1)
    return 1;
  if (fs.backing == NULL) {
    fprintf (stderr, "usage: faultfs -o backing=DIR[,log=FILE] "
             "MOUNTPOINT\n");
    return 1;
  }
  fs.dirfd = open (fs.backing, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fs.dirfd == -1) {
    fprintf (stderr, "faultfs: %s: %m\n", fs.backing);
    return 1;
  }
  if (fs.log_path) {
    fs.log = fopen (fs.log_path, "we");
    if (fs.log == NULL) {
      fprintf (stderr, "faultfs: %s: %m\n", fs.log_path);
      return 1;
    }
    setvbuf (fs.log, NULL, _IOFBF, 1 << 20);
    if (fwrite ("FAULTFS1", 8, 1, fs.log) != 1)
      return 1;
  }
  /* Foreground (the test owns the process), one thread (the order of
   * the log is the order of the requests). */
  fuse_opt_add_arg (&args, "-f");
  fuse_opt_add_arg (&args, "-s");
  r = fuse_main (args.argc, args.argv, &ops, NULL);
  fuse_opt_free_args (&args);
  return r;
}
