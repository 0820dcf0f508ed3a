/* SPDX-License-Identifier: MIT */
/* Tests of the header-only helpers in common/. */
#include <config.h>

#include <assert.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/byteorder.h"
#include "common/checked-overflow.h"
#include "common/cleanup.h"
#include "common/iszero.h"
#include "common/list.h"
#include "common/rounding.h"

static int freed;

struct item {
  int v;
  struct link link;
};

static void
test_list (void)
{
  struct item it[3] = { { .v = 0 }, { .v = 1 }, { .v = 2 } };
  struct link a, b;
  int i;

  link_init (&a);
  link_init (&b);
  assert (list_empty (&a));
  for (i = 0; i < 3; i++)
    list_append (&a, &it[i].link);
  assert (list_entry (a.next, struct item, link)->v == 0);
  assert (list_entry (a.prev, struct item, link)->v == 2);
  link_remove (&it[1].link);
  link_remove (&it[1].link);    /* harmless twice */
  assert (a.next->next == &it[2].link);
  list_append (&b, &it[1].link);
  list_splice (&b, &a);
  assert (list_empty (&a));
  assert (list_entry (b.next, struct item, link)->v == 1);
  assert (list_entry (b.prev, struct item, link)->v == 2);
  list_splice (&b, &a);         /* an empty list moves nothing */
  assert (list_entry (b.prev, struct item, link)->v == 2);
}

static void
test_byteorder (void)
{
  unsigned char b[9] = { 0 };

  store_be64 (b + 1, 0x0102030405060708ULL);
  assert (b[1] == 1 && b[8] == 8);
  assert (load_be64 (b + 1) == 0x0102030405060708ULL);
  store_be32 (b, 0xdeadbeef);
  assert (b[0] == 0xde && load_be32 (b) == 0xdeadbeef);
  assert (load_le32 (b) == 0xefbeadde);
  store_be16 (b, 0xabcd);
  assert (b[0] == 0xab && load_be16 (b) == 0xabcd);
}

static void
test_rounding (void)
{
  assert (ROUND_DOWN (65537ULL, 65536) == 65536);
  assert (ROUND_UP (65537ULL, 65536) == 131072);
  assert (ROUND_UP (65536ULL, 65536) == 65536);
  assert (IS_ALIGNED (4096, 512) && !IS_ALIGNED (4097, 512));
  assert (DIV_ROUND_UP (10, 3) == 4);
  assert (is_power_of_2 (1) && is_power_of_2 (1ULL << 63));
  assert (!is_power_of_2 (0) && !is_power_of_2 (12));
  assert (MIN (3, 4) == 3 && MAX (3, 4) == 4);
}

static void
test_overflow (void)
{
  uint64_t r;

  assert (!ADD_OVERFLOW (UINT64_MAX - 1, (uint64_t) 1, &r) && r == UINT64_MAX);
  assert (ADD_OVERFLOW (UINT64_MAX, (uint64_t) 1, &r));
  assert (MUL_OVERFLOW ((uint64_t) 1 << 40, (uint64_t) 1 << 40, &r));
  assert (range_fits (0, 10, 10));
  assert (!range_fits (1, 10, 10));
  assert (!range_fits (UINT64_MAX, 2, UINT64_MAX));
  assert (!range_fits (11, 0, 10));
}

static void
count_free (void *p)
{
  freed++;
  free (*(void **) p);
}

static void
test_cleanup (void)
{
  static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
  static pthread_rwlock_t l = PTHREAD_RWLOCK_INITIALIZER;

  {
    __attribute__ ((cleanup (count_free))) char *p = malloc (10);
    CLEANUP_FREE char *q = malloc (10);
    (void) p;
    (void) q;
  }
  assert (freed == 1);
  {
    LOCK_FOR_SCOPE (&m);
    assert (pthread_mutex_trylock (&m) != 0);
  }
  assert (pthread_mutex_trylock (&m) == 0);
  pthread_mutex_unlock (&m);
  {
    WRLOCK_FOR_SCOPE (&l);
    assert (pthread_rwlock_tryrdlock (&l) != 0);
  }
  {
    RDLOCK_FOR_SCOPE (&l);
    assert (pthread_rwlock_trywrlock (&l) != 0);
  }
  assert (pthread_rwlock_trywrlock (&l) == 0);
  pthread_rwlock_unlock (&l);
}

static pthread_mutex_t errcheck;

static void
relock (void)
{
  LOCK_FOR_SCOPE (&errcheck);
  {
    LOCK_FOR_SCOPE (&errcheck);
    _exit (1);          /* the failed relock went unnoticed */
  }
}

static void
unlock_unowned (void)
{
  pthread_mutex_t *m = &errcheck;

  cleanup_mutex_unlock (&m);
  _exit (1);            /* the failed unlock went unnoticed */
}

/* Run FN in a child, which must abort. */
static void
expect_abort (void (*fn) (void))
{
  pid_t pid;
  int status;

  pid = fork ();
  assert (pid >= 0);
  if (pid == 0) {
    /* The expected abort leaves no core file and no message. */
    setrlimit (RLIMIT_CORE, &(struct rlimit) { 0, 0 });
    fclose (stderr);
    fn ();
    _exit (0);
  }
  assert (waitpid (pid, &status, 0) == pid);
  assert (WIFSIGNALED (status) && WTERMSIG (status) == SIGABRT);
}

/* The scope locks abort when a lock call fails (an error-checking mutex
 * says EDEADLK on a relock, EPERM on unlocking what it does not hold)
 * rather than carry on as if they held the lock. */
static void
test_lock_asserts (void)
{
  pthread_mutexattr_t a;

  pthread_mutexattr_init (&a);
  pthread_mutexattr_settype (&a, PTHREAD_MUTEX_ERRORCHECK);
  pthread_mutex_init (&errcheck, &a);
  pthread_mutexattr_destroy (&a);
  expect_abort (relock);
  expect_abort (unlock_unowned);
  pthread_mutex_destroy (&errcheck);
}

static void
test_iszero (void)
{
  unsigned char b[100] = { 0 };

  assert (is_zero (b, 0) && is_zero (b, 1) && is_zero (b, 16));
  assert (is_zero (b, sizeof b));
  for (size_t i = 0; i < sizeof b; i++) {
    b[i] = 1;
    assert (!is_zero (b, sizeof b));
    assert (is_zero (b, i));
    b[i] = 0;
  }
}

int
main (void)
{
  test_byteorder ();
  test_list ();
  test_rounding ();
  test_overflow ();
  test_cleanup ();
  test_lock_asserts ();
  test_iszero ();
  printf ("test-common: ok\n");
  return 0;
}
