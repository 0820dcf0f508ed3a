/* SPDX-License-Identifier: MIT */
/* Where connections come from, for the listener's per-source limit on
 * handshakes: a table of the sources that have connections in the
 * handshake, each with its count and its list of them.  A source is an
 * IPv4 address, an IPv6 /64 (one site usually has a /64, and choosing
 * addresses in it is free) or the user of a Unix socket client.  The
 * table belongs to the listener thread. */

#include <config.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/server.h"

static struct source **sources;      /* hash table */
static size_t nr_buckets;            /* a power of two */
static uint64_t hash_seed;

int
sources_init (unsigned expected)
{
  size_t want;

  for (want = 64; want < expected && want < (1u << 20); )
    want *= 2;
  nr_buckets = want;
  sources = calloc (nr_buckets, sizeof *sources);
  if (sources == NULL) {
    log_error ("calloc: %m");
    return -1;
  }
  if (getrandom (&hash_seed, sizeof hash_seed, GRND_NONBLOCK) == -1)
    hash_seed = now_ns () ^ (uint64_t) getpid ();
  return 0;
}

void
sources_free (void)
{
  size_t b;

  for (b = 0; sources && b < nr_buckets; b++)
    while (sources[b]) {
      struct source *src = sources[b];

      sources[b] = src->next;
      free (src);
    }
  free (sources);
  sources = NULL;
}

void
source_key (int fd, const struct sockaddr_storage *ss, uint8_t *key)
{
  memset (key, 0, SOURCE_KEY_SIZE);
  key[0] = ss->ss_family;
  switch (ss->ss_family) {
  case AF_INET:
    memcpy (key + 1, &((const struct sockaddr_in *) ss)->sin_addr, 4);
    break;
  case AF_INET6: {
    const struct in6_addr *a = &((const struct sockaddr_in6 *) ss)->sin6_addr;

    if (IN6_IS_ADDR_V4MAPPED (a)) {
      /* A dual-stack socket (socket activation): the IPv4 address. */
      key[0] = AF_INET;
      memcpy (key + 1, a->s6_addr + 12, 4);
    }
    else
      memcpy (key + 1, a->s6_addr, 8);      /* one site: its /64 */
    break;
  }
  case AF_UNIX: {
    struct ucred cred;
    socklen_t len = sizeof cred;

    if (getsockopt (fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0)
      memcpy (key + 1, &cred.uid, sizeof cred.uid);
    break;
  }
  }
}

/* The source as a log shows it. */
void
source_name (const struct source *src, char *buf, size_t len)
{
  char addr[INET6_ADDRSTRLEN];
  uint8_t a6[16] = { 0 };
  uid_t uid;

  switch (src->key[0]) {
  case AF_INET:
    inet_ntop (AF_INET, src->key + 1, addr, sizeof addr);
    snprintf (buf, len, "%s", addr);
    break;
  case AF_INET6:
    memcpy (a6, src->key + 1, 8);
    inet_ntop (AF_INET6, a6, addr, sizeof addr);
    snprintf (buf, len, "%s/64", addr);
    break;
  case AF_UNIX:
    memcpy (&uid, src->key + 1, sizeof uid);
    snprintf (buf, len, "unix:uid=%lu", (unsigned long) uid);
    break;
  default:
    snprintf (buf, len, "?");
    break;
  }
}

/* FNV-1a with a random seed, so that clients cannot choose addresses
 * that all fall in one chain. */
static size_t
source_hash (const uint8_t *key)
{
  uint64_t h = UINT64_C (14695981039346656037) ^ hash_seed;
  int i;

  for (i = 0; i < SOURCE_KEY_SIZE; i++) {
    h ^= key[i];
    h *= UINT64_C (1099511628211);
  }
  h ^= h >> 29;
  return h & (nr_buckets - 1);
}

/* The source with KEY, or NULL. */
struct source *
source_find (const uint8_t *key)
{
  struct source *src;

  for (src = sources[source_hash (key)]; src; src = src->next)
    if (memcmp (src->key, key, SOURCE_KEY_SIZE) == 0)
      return src;
  return NULL;
}

/* The source with KEY, made if new.  NULL when out of memory. */
struct source *
source_get (const uint8_t *key)
{
  struct source *src = source_find (key);
  size_t b;

  if (src)
    return src;
  src = calloc (1, sizeof *src);
  if (src == NULL)
    return NULL;
  memcpy (src->key, key, SOURCE_KEY_SIZE);
  link_init (&src->lru);
  b = source_hash (key);
  src->next = sources[b];
  sources[b] = src;
  return src;
}

void
source_put (struct source *src)
{
  struct source **pp;

  if (--src->count > 0)
    return;
  for (pp = &sources[source_hash (src->key)]; *pp != src; pp = &(*pp)->next)
    ;
  *pp = src->next;
  free (src);
}
