# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers sourced by every shell test: skipping when a tool is missing,
# cleanup at exit (LIFO, also on failure), a private temp dir, free ports,
# starting and stopping the real qcow2-nbd server, building test images
# with qemu-img/qemu-io, and uniform "ok:"/"FAIL:" messages.  Everything
# here must work under `set -euo pipefail` and with several tests running
# at once (make -j check), so ports and paths are never shared.

set -euo pipefail

# Defaults when a test is run by hand instead of through make check.
: "${abs_top_srcdir:=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${abs_top_builddir:=$abs_top_srcdir}"
: "${PYTHON:=/usr/bin/python3}"
export abs_top_srcdir abs_top_builddir PYTHON

# The server under test.  QCOW2_NBD lets a developer point a scratch run
# at another build; it is never set by make check.
: "${QCOW2_NBD:=$abs_top_builddir/server/qcow2-nbd}"

test_name="$(basename "$0" .sh)"

# ---- messages ----------------------------------------------------------

ok ()
{
  echo "ok: $*"
}

fail ()
{
  echo "FAIL: $test_name: $*" >&2
  exit 1
}

skip ()
{
  echo "SKIP: $test_name: $*"
  exit 77
}

# make distcheck runs the suite again in a build made from the tarball;
# CI sets QCOW2_NBD_SMOKE_ONLY=1 there, after the whole suite has run in
# the source tree, so only the tests that set SMOKE_TEST=1 before
# sourcing this file run twice: enough to prove the tarball complete.
if [ -n "${QCOW2_NBD_SMOKE_ONLY:-}" ] && [ "${SMOKE_TEST:-0}" != 1 ]; then
  skip "only the smoke tests run under make distcheck (QCOW2_NBD_SMOKE_ONLY)"
fi

# ---- cleanup -----------------------------------------------------------

# Commands to run at exit, stored already quoted so arguments survive.
_cleanup_cmds=()

# cleanup_fn CMD [ARGS...]: run CMD at exit, most recently registered first.
cleanup_fn ()
{
  local q
  q="$(printf '%q ' "$@")"
  _cleanup_cmds+=("$q")
}

_run_cleanups ()
{
  local rc=$? i
  set +e
  # On failure show what every server said: that is usually the reason.
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; then
    _dump_server_logs
  fi
  for (( i = ${#_cleanup_cmds[@]} - 1; i >= 0; i-- )); do
    eval "${_cleanup_cmds[$i]}"
  done
  exit "$rc"
}
trap _run_cleanups EXIT
# Turn signals into a normal exit so the EXIT trap runs the cleanups.
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- temp dir ----------------------------------------------------------

tmpdir="$(mktemp -d "${TMPDIR:-/tmp}/qcow2-nbd-$test_name.XXXXXX")"
cleanup_fn rm -rf "$tmpdir"

# The command the C test programs are run under: nothing, or valgrind
# under 'make check-valgrind' (tests/run sets it).  Unquoted on purpose:
# $UNIT "$prog" ARGS...
UNIT=${QCOW2_NBD_UNIT_WRAPPER:-}

# ---- requirements ------------------------------------------------------

# requires CMD...: skip the test unless every command is on PATH (or is
# an executable path).
requires ()
{
  local c
  for c in "$@"; do
    if ! command -v "$c" >/dev/null 2>&1; then
      skip "'$c' is not installed"
    fi
  done
}

# requires_python_nbd: the libnbd Python bindings under $PYTHON.
requires_python_nbd ()
{
  [ -x "$PYTHON" ] || skip "$PYTHON not found"
  "$PYTHON" -c 'import nbd' 2>/dev/null ||
    skip "$PYTHON lacks the libnbd bindings (import nbd)"
}

# requires_server: the built server binary.
requires_server ()
{
  [ -x "$QCOW2_NBD" ] || skip "server binary $QCOW2_NBD not built"
}

# requires_qcow2_feature OPTION: skip if qemu-img cannot create an image
# with that -o option (e.g. compression_type=zstd on a build without zstd).
requires_qcow2_feature ()
{
  qemu-img create -q -f qcow2 -o "$1" "$tmpdir/.feature-probe" 1M \
           >/dev/null 2>&1 || skip "qemu-img cannot create -o $1"
  rm -f "$tmpdir/.feature-probe"
}

# ---- ports -------------------------------------------------------------

# pick_unused_port: print a TCP port on 127.0.0.1 that nobody listens on
# right now.  Another process may take it before we bind, so start_server
# retries with a fresh port when the bind fails.
pick_unused_port ()
{
  "$PYTHON" - <<'EOF'
import random, socket
for _ in range(200):
    p = random.randint(20000, 60000)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port found")
EOF
}

# port_accepts PORT [HOST]: true if something accepts TCP connections
# there (HOST defaults to 127.0.0.1).
port_accepts ()
{
  (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null
}

# ---- the server --------------------------------------------------------

_server_logs=()
_server_count=0

# _alive PID: running (not gone, not a zombie waiting to be reaped).
_alive ()
{
  local st
  kill -0 "$1" 2>/dev/null || return 1
  st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [ -n "$st" ] && [ "${st:0:1}" != Z ]
}

_dump_server_logs ()
{
  # Only the last few servers: a matrix test may have started dozens.
  local f n=${#_server_logs[@]} i
  for (( i = n > 3 ? n - 3 : 0; i < n; i++ )); do
    f=${_server_logs[$i]}
    if [ -s "$f" ]; then
      echo "---- $f ----" >&2
      tail -n 100 "$f" >&2
      echo "---- end of $(basename "$f") ----" >&2
    fi
  done
}

# Kill a server at exit if the test did not stop it itself.
_kill_server ()
{
  local pid=$1
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    local i
    for (( i = 0; i < 50; i++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

# start_server IMAGE [ARGS...]
#
# Start "qcow2-nbd serve IMAGE ARGS... --pid-file F" in the background and
# wait (30 s at most) until it has written its pid file and accepts
# connections.  Unless ARGS contain --socket, --port, or
# START_SERVER_NO_PORT=1 is set (socket activation), it listens on a fresh
# 127.0.0.1 port (or on --bind ADDR if ARGS give one: use a loopback
# address).  START_SERVER_SOCKET=PATH waits on a Unix socket the
# server did not get through --socket (socket activation).  Sets:
#   server_pid   pid of the server (a child of this shell)
#   port         TCP port (empty for a Unix socket)
#   sock         Unix socket path (empty for TCP)
#   uri          nbd://127.0.0.1:PORT or nbd+unix:///?socket=PATH
#   server_log   its stderr/stdout
#   pid_file     its --pid-file
# Killing it at exit is registered with cleanup_fn.  SERVER_WRAPPER, if
# set, is a command prefix in which @PORT@ stands for the chosen port
# (e.g. the socket activation launcher, with START_SERVER_NO_PORT=1).
start_server ()
{
  local image=$1; shift
  local a want_socket="" explicit_port="" bind=""
  local prev=""
  for a in "$@"; do
    case "$prev" in
      --socket) want_socket=$a ;;
      --port) explicit_port=$a ;;
      --bind) bind=$a ;;
    esac
    case "$a" in
      --socket=*) want_socket=${a#--socket=} ;;
      --port=*) explicit_port=${a#--port=} ;;
      --bind=*) bind=${a#--bind=} ;;
    esac
    prev=$a
  done
  # The address clients use: the --bind address if given (IPv6 in
  # brackets in URIs), else 127.0.0.1.
  local host=${bind:-127.0.0.1} uri_host
  case "$host" in
    *:*) uri_host="[$host]" ;;
    *) uri_host=$host ;;
  esac

  local attempt
  for (( attempt = 0; attempt < 5; attempt++ )); do
    _server_count=$(( _server_count + 1 ))
    server_log="$tmpdir/server-$_server_count.log"
    pid_file="$tmpdir/server-$_server_count.pid"
    _server_logs+=("$server_log")
    rm -f "$pid_file"

    local extra=()
    port="" sock=""
    if [ -n "$want_socket" ] || [ -n "${START_SERVER_SOCKET:-}" ]; then
      sock=${want_socket:-$START_SERVER_SOCKET}
      uri="nbd+unix:///?socket=$sock"
    elif [ -n "$explicit_port" ]; then
      port=$explicit_port
      uri="nbd://$uri_host:$port"
    else
      port="$(pick_unused_port)"
      uri="nbd://$uri_host:$port"
      if [ "${START_SERVER_NO_PORT:-0}" != 1 ]; then
        extra=(--port "$port")
        [ -n "$bind" ] || extra+=(--bind 127.0.0.1)
      fi
    fi

    # The wrapper may name the port as @PORT@ (socket activation).
    local wrapper=${SERVER_WRAPPER:-}
    wrapper=${wrapper//@PORT@/$port}
    # shellcheck disable=SC2086
    $wrapper "$QCOW2_NBD" serve "$image" \
      ${extra[@]+"${extra[@]}"} --pid-file "$pid_file" "$@" \
      >"$server_log" 2>&1 </dev/null &
    server_pid=$!
    cleanup_fn _kill_server "$server_pid"

    local i ready=0
    for (( i = 0; i < 300; i++ )); do
      if ! _alive "$server_pid"; then
        break
      fi
      if [ -s "$pid_file" ]; then
        if [ -n "$sock" ]; then
          [ -S "$sock" ] && { ready=1; break; }
        elif port_accepts "$port" "$host"; then
          ready=1; break
        fi
      fi
      sleep 0.1
    done
    if [ "$ready" = 1 ]; then
      return 0
    fi
    if ! _alive "$server_pid"; then
      # A port stolen between pick_unused_port and bind: try another.
      if [ -z "$sock" ] && [ -z "$explicit_port" ] &&
         grep -qi 'address already in use' "$server_log"; then
        wait "$server_pid" 2>/dev/null || true
        continue
      fi
      local rc=0
      wait "$server_pid" || rc=$?
      fail "server exited with status $rc before it was ready" \
           "(qcow2-nbd serve $image $*)"
    fi
    fail "server not ready after 30 s (qcow2-nbd serve $image $*)"
  done
  fail "could not find a free port for the server after 5 tries"
}

# stop_server [SIGNAL]: send SIGTERM (or SIGNAL) to the last started
# server, wait for it, and fail unless it exits with status 0 within 30 s
# and its log holds no sanitizer report.
stop_server ()
{
  local sig=${1:-TERM} pid=$server_pid rc=0 i
  kill -"$sig" "$pid" || fail "server $pid already gone before SIG$sig"
  for (( i = 0; i < 300; i++ )); do
    _alive "$pid" || break
    sleep 0.1
  done
  _alive "$pid" && fail "server $pid still running 30 s after SIG$sig"
  wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || fail "server exited with status $rc after SIG$sig"
  # UBSan keeps running after a report, so look for one in the log.
  if grep -qE 'AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:' \
       "$server_log"; then
    fail "sanitizer report in $server_log"
  fi
}

# server_alive: fail unless the last started server is still running.
server_alive ()
{
  _alive "$server_pid" || fail "server $server_pid died ($*)"
}

# ---- images ------------------------------------------------------------

# make_image FILE SIZE [QEMU-IMG-CREATE-ARGS...]: a qcow2 image.
#   make_image "$tmpdir/a.qcow2" 4M -o cluster_size=4k,compat=0.10
make_image ()
{
  local file=$1 size=$2; shift 2
  qemu-img create -q -f qcow2 "$@" "$file" "$size" ||
    fail "qemu-img create -f qcow2 $* $file $size"
}

# make_raw FILE SIZE: a sparse raw file.
make_raw ()
{
  rm -f "$1"
  truncate -s "$2" "$1" || fail "truncate -s $2 $1"
}

# image_io FILE [-f FMT] CMD...: run qemu-io commands (one -c each) on an
# image, qcow2 by default.
#   image_io "$img" 'write -P 0x11 0 64k' 'write -z 1M 64k'
image_io ()
{
  local file=$1 fmt=qcow2; shift
  if [ "${1:-}" = -f ]; then fmt=$2; shift 2; fi
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f "$fmt" "${args[@]}" "$file" >"$tmpdir/qemu-io.out" 2>&1 || {
    cat "$tmpdir/qemu-io.out" >&2
    fail "qemu-io -f $fmt $* $file"
  }
  if grep -qiE 'error|failed|mismatch' "$tmpdir/qemu-io.out"; then
    cat "$tmpdir/qemu-io.out" >&2
    fail "qemu-io reported an error on $file"
  fi
}

# image_to_raw FILE OUT: qemu-img's own view of the guest content.
image_to_raw ()
{
  qemu-img convert -O raw "$1" "$2" || fail "qemu-img convert $1 -> raw"
}

# check_clean IMAGE WHAT: `qemu-img check` must exit 0, exactly (no
# corruption, no leaks); WHAT names the moment in the failure message.
check_clean ()
{
  local rc=0
  qemu-img check "$1" >"$tmpdir/check.out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ]; then
    cat "$tmpdir/check.out" >&2
    fail "$2: qemu-img check $1 exited $rc"
  fi
}

# compare_with_uri IMAGE [URI]: the export must read exactly like IMAGE.
compare_with_uri ()
{
  local img=$1 u=${2:-$uri} out
  if ! out="$(qemu-img compare -f qcow2 "$img" -F raw "$u" 2>&1)"; then
    echo "$out" >&2
    fail "qemu-img compare $img $u: $out"
  fi
}

# file_size FILE
file_size ()
{
  stat -c %s "$1"
}

# unix_listening PATH: the socket at PATH is listening.  A server that
# binds PATH itself creates the file at bind(2), before listen(2), so
# the file alone proves nothing; connecting to find out would be a
# client, and a qemu-nbd without -t exits after its first.  Not ready
# while /proc/net/unix shows a socket bound at PATH, unconnected (state
# 01) and without __SO_ACCEPTCON (00010000); qcow2-nbd binds a temporary name and
# renames it into place once listening, so its PATH is not listed.
unix_listening ()
{
  [ -S "$1" ] &&
    awk -v p="$1" '$NF == p && $6 == "01" && $4 != "00010000" { bound = 1 }
                   END { exit bound }' /proc/net/unix
}

# wait_for_file FILE WHAT: wait (30 s at most) until a background client
# creates FILE to say it is ready; fail with WHAT otherwise.
wait_for_file ()
{
  local i
  for (( i = 0; i < 300; i++ )); do
    [ -e "$1" ] && return 0
    sleep 0.1
  done
  fail "$2"
}

# wait_log COUNT PATTERN [SECONDS]: wait (SECONDS, default 10, at most)
# until the server log has COUNT lines matching PATTERN (grep -c, so a
# count at least COUNT).
wait_log ()
{
  local i
  for (( i = 0; i < ${3:-10} * 10; i++ )); do
    [ "$(grep -c -- "$2" "$server_log")" -ge "$1" ] && return 0
    sleep 0.1
  done
  fail "expected $1 log lines matching '$2', got" \
       "$(grep -c -- "$2" "$server_log")"
}

# client_case SCRIPT EXPORT REF CASE [ARGS...]: run one case of a raw
# client (a case runner built on tests/abuse.py: HOST PORT EXPORT REF CASE
# [ARGS...]) against the server; 120 s at most.
# wait_all_closed: every connection the server logged as new has been
# logged as closed, whatever the reason (a client that hangs up with
# replies in flight may end in a send error or a receive of EOF,
# whichever the kernel reports first).
wait_all_closed ()
{
  local i opened closed
  for (( i = 0; i < 300; i++ )); do
    opened=$(grep -c -- ': new connection' "$server_log" || true)
    closed=$(grep -c -- ': connection closed' "$server_log" || true)
    [ "$closed" -ge "$opened" ] && return 0
    sleep 0.1
  done
  fail "$opened connections opened, only $closed closed after 30 s"
}

client_case ()
{
  run_timeout 120 "$PYTHON" "$1" 127.0.0.1 "$port" "${@:2}"
}

# run_client_case SCRIPT EXPORT REF CASE: client_case, which must pass,
# and the server must still be up after it.
run_client_case ()
{
  local what
  what="$(basename "$1" .py) case $4"
  client_case "$@" || fail "$what"
  server_alive "after $what"
}

# stop_server_while WHAT CMD...: run CMD... READY-FILE in the background
# (a client that holds its connection in some state, WHAT, creates
# READY-FILE once it does, and waits for the server to close), stop the
# server, and check that the client saw a clean close and that the log
# says why.
stop_server_while ()
{
  local what=$1 ready="$tmpdir/ready-$RANDOM" pid
  shift
  "$@" "$ready" &
  pid=$!
  cleanup_fn _kill_server "$pid"
  wait_for_file "$ready" "the client never got $what"
  stop_server
  wait "$pid" || fail "the client with $what saw no clean close"
  grep -q 'connection closed: server shutting down' "$server_log" ||
    fail "the connection with $what was not closed for the shutdown"
}

# run_timeout SECONDS CMD...: run a client that must not hang forever.
run_timeout ()
{
  local secs=$1; shift
  timeout -k 5 "$secs" "$@"
}
