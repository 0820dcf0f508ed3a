# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers for the qemu-nbd mode tests, sourced after functions.sh.  Debian's
# /usr/bin/qemu-nbd (7.2) is the reference: each test runs the same command
# line against it and against ours and compares what a script would see.
# Both are run as plain "qemu-nbd" through a directory of their own put
# first in PATH, so that messages quoting argv[0] compare equal; this is
# also how users are told to install ours (README).

: "${QEMU_NBD_ORACLE:=/usr/bin/qemu-nbd}"
QEMU_NBD_OURS="$abs_top_builddir/server/qemu-nbd"

# requires_qemu_nbd_oracle: skip unless the reference is qemu-nbd 7.2.
requires_qemu_nbd_oracle ()
{
  [ -x "$QEMU_NBD_OURS" ] || skip "$QEMU_NBD_OURS not built"
  [ -x "$QEMU_NBD_ORACLE" ] || skip "$QEMU_NBD_ORACLE (the reference) missing"
  "$QEMU_NBD_ORACLE" --version 2>/dev/null | head -1 |
    grep -q '^[^ ]* 7\.2\.' || skip "$QEMU_NBD_ORACLE is not qemu-nbd 7.2"
  mkdir -p "$tmpdir/path-oracle" "$tmpdir/path-ours"
  ln -sf "$QEMU_NBD_ORACLE" "$tmpdir/path-oracle/qemu-nbd"
  ln -sf "$QEMU_NBD_OURS" "$tmpdir/path-ours/qemu-nbd"
}

# qnbd WHO ARGS...: run qemu-nbd (WHO is oracle or ours) as "qemu-nbd".
qnbd ()
{
  local who=$1; shift
  PATH="$tmpdir/path-$who:$PATH" qemu-nbd "$@"
}

# run_both NAME ARGS...: run both synchronously (60 s at most each, in
# $tmpdir/run-WHO as working directory, stdin closed) and leave stdout,
# stderr and the exit status in $tmpdir/NAME.WHO.{out,err,rc}.
run_both ()
{
  local name=$1 who rc; shift
  for who in oracle ours; do
    mkdir -p "$tmpdir/run-$who"
    rc=0
    (cd "$tmpdir/run-$who" && run_timeout 60 env PATH="$tmpdir/path-$who:$PATH" \
       qemu-nbd "$@") >"$tmpdir/$name.$who.out" 2>"$tmpdir/$name.$who.err" \
       </dev/null || rc=$?
    echo "$rc" > "$tmpdir/$name.$who.rc"
  done
}

# same_output NAME WHAT: the two runs of NAME printed the same and exited
# alike; fail showing the difference otherwise.
same_output ()
{
  local name=$1 what=$2 f
  for f in rc err out; do
    if ! diff -u "$tmpdir/$name.oracle.$f" "$tmpdir/$name.ours.$f" >&2; then
      fail "$what: $f differs from qemu-nbd's (oracle first)"
    fi
  done
}

# qnbd_start WHO SOCK ARGS...: start qemu-nbd in the background serving
# on the Unix socket SOCK (-k SOCK is added), in the directory $qnbd_cwd
# if set, wait (30 s at most) for the socket, and set qnbd_pid and
# qnbd_log.  Killed at exit.  A probing
# connection would count as the client a server without -t waits for, so
# readiness is the socket file: qemu-nbd makes it before opening the
# image, and clients that connect early wait in the backlog; ours makes
# it only once the image is open.
qnbd_start ()
{
  local who=$1 sock=$2 i; shift 2
  qnbd_log="$tmpdir/qnbd-$who-$RANDOM.log"
  _server_logs+=("$qnbd_log")
  (cd "${qnbd_cwd:-.}" &&
     PATH="$tmpdir/path-$who:$PATH" exec qemu-nbd -k "$sock" "$@") \
    >"$qnbd_log" 2>&1 </dev/null &
  qnbd_pid=$!
  cleanup_fn _kill_server "$qnbd_pid"
  for (( i = 0; i < 300; i++ )); do
    _alive "$qnbd_pid" || fail "qemu-nbd ($who $*) exited before serving"
    unix_listening "$sock" && return 0
    sleep 0.1
  done
  fail "qemu-nbd ($who $*) not serving after 30 s"
}

# qnbd_wait_exit PID WHAT: wait (30 s at most) for PID to exit; sets
# qnbd_rc to its status.
qnbd_wait_exit ()
{
  local pid=$1 i
  for (( i = 0; i < 300; i++ )); do
    _alive "$pid" || break
    sleep 0.1
  done
  _alive "$pid" && fail "$2: still running after 30 s"
  qnbd_rc=0
  wait "$pid" || qnbd_rc=$?
}

# info_json SOCK [EXPORT]: nbdinfo --json of the export, without the
# parts that name the socket.
info_json ()
{
  nbdinfo --json "nbd+unix:///${2:-}?socket=$1" | grep -v '"uri"'
}
