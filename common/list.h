/* SPDX-License-Identifier: MIT */
/* Intrusive doubly linked lists: a struct link in each entry, a circular
 * list with a head that belongs to no entry, O(1) append and removal
 * from anywhere (an entry may sit in several lists through several
 * links). */
#ifndef COMMON_LIST_H
#define COMMON_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct link {
  struct link *prev, *next;
};

/* An empty list head, or a link in no list. */
static inline void
link_init (struct link *l)
{
  l->prev = l->next = l;
}

static inline bool
list_empty (const struct link *head)
{
  return head->next == head;
}

static inline void
list_append (struct link *head, struct link *l)
{
  l->prev = head->prev;
  l->next = head;
  head->prev->next = l;
  head->prev = l;
}

/* Take L out of its list (harmless if it is in none). */
static inline void
link_remove (struct link *l)
{
  l->prev->next = l->next;
  l->next->prev = l->prev;
  link_init (l);
}

/* Move every entry of FROM to the end of TO. */
static inline void
list_splice (struct link *to, struct link *from)
{
  if (list_empty (from))
    return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  link_init (from);
}

/* The entry of TYPE whose MEMBER is the link L. */
#define list_entry(l, type, member) \
  ((type *) ((char *) (l) - offsetof (type, member)))

#endif /* COMMON_LIST_H */
