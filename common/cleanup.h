/* SPDX-License-Identifier: MIT */
/* Scope cleanup: free, close or unlock when a variable leaves scope, so
 * error paths need no goto chains.  Hand ownership on by setting the
 * variable to NULL (or -1 for fds) before returning it. */
#ifndef COMMON_CLEANUP_H
#define COMMON_CLEANUP_H

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

static inline void
cleanup_mutex_unlock (pthread_mutex_t **m)
{
  if (*m)
    pthread_mutex_unlock (*m);
}

static inline void
cleanup_rwlock_unlock (pthread_rwlock_t **l)
{
  if (*l)
    pthread_rwlock_unlock (*l);
}

#define CLEANUP_CONCAT_(a, b) a##b
#define CLEANUP_CONCAT(a, b) CLEANUP_CONCAT_ (a, b)
#define CLEANUP_UNIQUE(base) CLEANUP_CONCAT (base, __COUNTER__)

/* Hold a mutex until the end of the enclosing scope. */
#define LOCK_FOR_SCOPE(mutex)                                           \
  LOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_lock_), (mutex))
#define LOCK_FOR_SCOPE_(name, mutex)                                    \
  __attribute__ ((cleanup (cleanup_mutex_unlock)))                      \
  pthread_mutex_t *name = (mutex);                                      \
  pthread_mutex_lock (name)

/* Hold a reader-writer lock, shared or exclusive, until the end of the
 * enclosing scope. */
#define RDLOCK_FOR_SCOPE(rwlock)                                        \
  RDLOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_rdlock_), (rwlock))
#define RDLOCK_FOR_SCOPE_(name, rwlock)                                 \
  __attribute__ ((cleanup (cleanup_rwlock_unlock)))                     \
  pthread_rwlock_t *name = (rwlock);                                    \
  pthread_rwlock_rdlock (name)
#define WRLOCK_FOR_SCOPE(rwlock)                                        \
  WRLOCK_FOR_SCOPE_ (CLEANUP_UNIQUE (scope_wrlock_), (rwlock))
#define WRLOCK_FOR_SCOPE_(name, rwlock)                                 \
  __attribute__ ((cleanup (cleanup_rwlock_unlock)))                     \
  pthread_rwlock_t *name = (rwlock);                                    \
  pthread_rwlock_wrlock (name)

#endif /* COMMON_CLEANUP_H */
