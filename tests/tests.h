/* SPDX-License-Identifier: MIT */
/* What every C test shares: how it skips (automake's exit status 77,
 * with the reason on stdout, so the summary says why), how it reports a
 * failure and counts it (from any thread), the exit status that
 * follows, and the libqcow2 log callback the tests give qcow2_open.
 * Header only: each test is one program. */
#ifndef TESTS_TESTS_H
#define TESTS_TESTS_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qcow2/qcow2.h"

/* automake's "this test was skipped". */
#define TEST_SKIP_STATUS 77

static atomic_int test_failures;

/* Skip the whole test: print why and exit 77. */
static inline void __attribute__ ((noreturn, format (printf, 1, 2)))
test_skip (const char *fmt, ...)
{
  va_list ap;

  printf ("SKIP: ");
  va_start (ap, fmt);
  vprintf (fmt, ap);
  va_end (ap);
  printf ("\n");
  fflush (stdout);
  exit (TEST_SKIP_STATUS);
}

/* Skip unless every program named (a NULL-terminated list) runs with
 * --version. */
static inline void __attribute__ ((sentinel))
test_require (const char *prog, ...)
{
  va_list ap;
  char cmd[256];

  va_start (ap, prog);
  for (; prog; prog = va_arg (ap, const char *)) {
    snprintf (cmd, sizeof cmd, "%s --version >/dev/null 2>&1", prog);
    if (system (cmd) != 0)
      test_skip ("%s not installed", prog);
  }
  va_end (ap);
}

/* Report one failure (counted, thread safe) and go on. */
static inline void __attribute__ ((format (printf, 1, 2)))
test_fail (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "FAIL: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  atomic_fetch_add (&test_failures, 1);
}

static inline bool
test_failed (void)
{
  return atomic_load (&test_failures) != 0;
}

/* main's return value: 1 after any failure, else 0. */
static inline int
test_status (void)
{
  int n = atomic_load (&test_failures);

  if (n)
    fprintf (stderr, "%d failure%s\n", n, n == 1 ? "" : "s");
  return n ? 1 : 0;
}

/* In a function returning int: report a failure with where it is, and
 * return -1 when COND is false. */
#define CHECK(cond, ...) do {                                         \
    if (!(cond)) {                                                    \
      fprintf (stderr, "%s:%d: ", __FILE__, __LINE__);                \
      test_fail (__VA_ARGS__);                                        \
      return -1;                                                      \
    }                                                                 \
  } while (0)

/* libqcow2's messages on stderr; debug ones only with QCOW2_DEBUG set. */
static inline void
test_log_cb (void *opaque, enum qcow2_log_level level, const char *msg)
{
  (void) opaque;
  if (level != QCOW2_LOG_DEBUG || getenv ("QCOW2_DEBUG"))
    fprintf (stderr, "libqcow2: %s\n", msg);
}

#endif /* TESTS_TESTS_H */
