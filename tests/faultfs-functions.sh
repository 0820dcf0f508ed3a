# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers for the tests that put the image on faultfs (tests/faultfs.c):
# skipping with the reason when FUSE cannot be used here, mounting a
# backing directory (unmounted at exit), sending commands, reading the
# counters.  Source after functions.sh.

FAULTFS="$abs_top_builddir/tests/faultfs"

# requires_faultfs: faultfs built, /dev/fuse usable, fusermount3 there,
# and a trial mount works (containers often lack one of these).
requires_faultfs ()
{
  [ -x "$FAULTFS" ] ||
    skip "faultfs not built (configure found no libfuse3:" \
         "apt-get install libfuse3-dev)"
  [ -c /dev/fuse ] || skip "/dev/fuse is absent"
  [ -r /dev/fuse ] && [ -w /dev/fuse ] ||
    skip "/dev/fuse is not usable by $(id -un)"
  requires fusermount3 mountpoint
  local b="$tmpdir/.fuse-probe-b" m="$tmpdir/.fuse-probe-m"
  mkdir -p "$b" "$m"
  if ! faultfs_mount "$b" "$m" "" 2>"$tmpdir/.fuse-probe.err"; then
    skip "cannot mount a FUSE file system here:" \
         "$(tail -n1 "$tmpdir/.fuse-probe.err")"
  fi
  faultfs_umount "$m"
}

# faultfs_mount BACKING MOUNTPOINT [LOG]: serve BACKING at MOUNTPOINT
# (recording every change to LOG when given); waits until mounted and
# registers the unmount.  Sets faultfs_pid.  Returns 1 (with the
# reason on stderr) when the mount does not come up.
faultfs_mount ()
{
  local b=$1 m=$2 log=${3:-} o i
  o="backing=$b"
  [ -z "$log" ] || o="$o,log=$log"
  "$FAULTFS" -o "$o" "$m" >"$tmpdir/faultfs-$$.out" 2>&1 </dev/null &
  faultfs_pid=$!
  cleanup_fn _faultfs_stop "$m" "$faultfs_pid"
  for (( i = 0; i < 300; i++ )); do
    if [ -e "$m/.faultfs" ] && mountpoint -q "$m"; then
      return 0
    fi
    if ! kill -0 "$faultfs_pid" 2>/dev/null; then
      cat "$tmpdir/faultfs-$$.out" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "faultfs did not mount $m within 30 s" >&2
  return 1
}

# At exit: a lazy unmount (faultfs then exits by itself), then the
# server helper's TERM, wait, KILL.
_faultfs_stop ()
{
  mountpoint -q "$1" 2>/dev/null && fusermount3 -u -z "$1" 2>/dev/null
  _kill_server "$2"
}

# faultfs_umount MOUNTPOINT: unmount and wait until faultfs has exited
# (its log is complete then).
faultfs_umount ()
{
  local i
  fusermount3 -u "$1" || fail "fusermount3 -u $1"
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$faultfs_pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$faultfs_pid" 2>/dev/null &&
    fail "faultfs still running 30 s after unmounting $1"
  wait "$faultfs_pid" || fail "faultfs exited with an error"
}

# faultfs_ctl MOUNTPOINT COMMAND...: one command line to faultfs.
faultfs_ctl ()
{
  local m=$1; shift
  echo "$*" >"$m/.faultfs" || fail "faultfs command '$*' refused"
}

# faultfs_injected MOUNTPOINT: how many faults were injected so far.
faultfs_injected ()
{
  sed -n 's/^injected //p' "$1/.faultfs"
}
