/* SPDX-License-Identifier: MIT */
/* Scope cleanup: free, close or unlock when a variable leaves scope, so
 * error paths need no goto chains.  Hand ownership on by setting the
 * variable to NULL (or -1 for fds) before returning it.
 *
 * The lock helpers assert that every lock and unlock call succeeded, as
 * nbdkit's ACQUIRE_LOCK_FOR_CURRENT_SCOPE does: a failure there (EDEADLK,
 * EPERM, EINVAL) is a bug in our locking, never something a caller can
 * handle, and going on without the lock would corrupt what it guards. */
#ifndef COMMON_CLEANUP_H
#define COMMON_CLEANUP_H

#include <assert.h>
#include <stdlib.h>
#include <unistd.h>
#include <pthread.h>

static inline void
cleanup_free (void *ptr)
{
  free (*(void **) ptr);
}
#define CLEANUP_FREE __attribute__ ((cleanup (cleanup_free)))

static inline void
cleanup_close (int *fd)
{
  if (*fd >= 0)
    close (*fd);
}
#define CLEANUP_CLOSE __attribute__ ((cleanup (cleanup_close)))

/* Lock calls that must succeed.  The (void) keeps the result used when
 * NDEBUG compiles the assert away. */
static inline pthread_mutex_t *
mutex_lock_checked (pthread_mutex_t *m)
{
  int r = pthread_mutex_lock (m);

  assert (r == 0);
  (void) r;
  return m;
}

static inline void
mutex_unlock_checked (pthread_mutex_t *m)
{
  int r = pthread_mutex_unlock (m);

  assert (r == 0);
  (void) r;
}

static inline pthread_rwlock_t *
rwlock_rdlock_checked (pthread_rwlock_t *l)
{
  int r = pthread_rwlock_rdlock (l);

  assert (r == 0);
  (void) r;
  return l;
}

static inline pthread_rwlock_t *
rwlock_wrlock_checked (pthread_rwlock_t *l)
{
  int r = pthread_rwlock_wrlock (l);

  assert (r == 0);
  (void) r;
  return l;
}

static inline void
rwlock_unlock_checked (pthread_rwlock_t *l)
{
  int r = pthread_rwlock_unlock (l);

  assert (r == 0);
  (void) r;
}

static inline void
cleanup_mutex_unlock (pthread_mutex_t **m)
{
  if (*m)
    mutex_unlock_checked (*m);
}

/* Unlocks whichever mode is held, so a scope that upgrades a shared
 * lock to exclusive (unlock, then wrlock the same lock) still ends
 * unlocked. */
static inline void
cleanup_rwlock_unlock (pthread_rwlock_t **l)
{
  if (*l)
    rwlock_unlock_checked (*l);
}

#define CLEANUP_CONCAT_(a, b) a##b
#define CLEANUP_CONCAT(a, b) CLEANUP_CONCAT_ (a, b)
#define CLEANUP_UNIQUE(base) CLEANUP_CONCAT (base, __COUNTER__)

/* Hold a mutex until the end of the enclosing scope.  A declaration:
 * the lock is taken where it stands, released on every way out. */
#define LOCK_FOR_SCOPE(mutex)                                           \
  LOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_lock_), (mutex))
#define LOCK_FOR_SCOPE_(name, mutex)                                    \
  __attribute__ ((cleanup (cleanup_mutex_unlock)))                      \
  pthread_mutex_t *name = mutex_lock_checked (mutex)

/* Hold a reader-writer lock, shared or exclusive, until the end of the
 * enclosing scope. */
#define RDLOCK_FOR_SCOPE(rwlock)                                        \
  RDLOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_rdlock_), (rwlock))
#define RDLOCK_FOR_SCOPE_(name, rwlock)                                 \
  __attribute__ ((cleanup (cleanup_rwlock_unlock)))                     \
  pthread_rwlock_t *name = rwlock_rdlock_checked (rwlock)
#define WRLOCK_FOR_SCOPE(rwlock)                                        \
  WRLOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_wrlock_), (rwlock))
#define WRLOCK_FOR_SCOPE_(name, rwlock)                                 \
  __attribute__ ((cleanup (cleanup_rwlock_unlock)))                     \
  pthread_rwlock_t *name = rwlock_wrlock_checked (rwlock)

#endif /* COMMON_CLEANUP_H */
