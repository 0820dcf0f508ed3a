#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The transmission phase of server/ is layered (docs/architecture.md,
# server/transmission.h): the worker's loop at the top, the services at
# the bottom, and every file calls only files below it, so there is no
# circle and a service never calls back up into the code that drives it.
# This reads who calls whom from the built objects (nm: the global
# symbols each object uses and defines, calls and shared variables
# alike) and fails on a call that runs up or sideways, naming it.  A
# server/ file outside the list may be called from it only if it calls
# nothing in the list (it stands beside the stack, like conn.c).
source "$(dirname "$0")/functions.sh"

requires nm

# Top to bottom: a file may use only the files after it.
layers="
worker
request
block-status
read
writes
decompress
coalesce
jobs
reply
session
zerocopy
wakeup
ring
bufpool
"

objdir="$abs_top_builddir/server"
rank=0
declare -A rank_of
for f in $layers; do
  [ -f "$objdir/qcow2_nbd-$f.o" ] || fail "server/$f.c is not built"
  rank_of[$f]=$rank
  rank=$((rank + 1))
done

# Every global symbol defined by a server object: symbol -> file.
declare -A def
for o in "$objdir"/qcow2_nbd-*.o; do
  f=${o##*/qcow2_nbd-}; f=${f%.o}
  while read -r _ type sym; do
    case $type in [TDBRC]) def[$sym]=$f ;; esac
  done < <(nm -g --defined-only "$o")
done

# FILE's uses of other server objects, as "symbol file" lines.
uses ()
{
  nm -u "$objdir/qcow2_nbd-$1.o" | while read -r _ sym; do
    to=${def[$sym]:-}
    [ -n "$to" ] && [ "$to" != "$1" ] && echo "$sym $to"
  done
}

# Does FILE use any file of the stack?
uses_stack ()
{
  local sym to
  while read -r sym to; do
    [ -z "${rank_of[$to]:-}" ] || return 0
  done < <(uses "$1")
  return 1
}

bad=0
for f in $layers; do
  while read -r sym to; do
    if [ -n "${rank_of[$to]:-}" ]; then
      if [ "${rank_of[$to]}" -le "${rank_of[$f]}" ]; then
        echo "server/$f.c uses $sym of server/$to.c, which is not below it" >&2
        bad=1
      fi
    elif uses_stack "$to"; then
      echo "server/$f.c uses $sym of server/$to.c, which calls back into the stack" >&2
      bad=1
    fi
  done < <(uses "$f")
done
[ "$bad" -eq 0 ] || fail "calls run up the transmission layers"
ok "the transmission layers of server/ call only down"
