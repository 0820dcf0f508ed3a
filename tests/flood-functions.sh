# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers for the flood, memory and storm tests, sourced after
# functions.sh: a process's descriptor, thread and memory figures from
# /proc, and a flood of connections (tests/flood.py hold) started in the
# background and stopped with its report.

flood_py="$abs_top_srcdir/tests/flood.py"

# proc_fds PID, proc_threads PID, proc_rss PID, proc_hwm PID (KiB)
proc_fds ()
{
  ls "/proc/$1/fd" 2>/dev/null | wc -l
}

proc_threads ()
{
  awk '/^Threads:/ { print $2 }' "/proc/$1/status"
}

# proc_io_workers PID: how many of its threads are io_uring's kernel
# workers (iou-wrk-*), which the kernel starts for blocking I/O and keeps
# one of per ring when idle.
proc_io_workers ()
{
  cat /proc/"$1"/task/*/comm 2>/dev/null | grep -c '^iou-wrk' || :
}

# proc_own_threads PID: its threads but io_uring's workers.
proc_own_threads ()
{
  echo $(( $(proc_threads "$1") - $(proc_io_workers "$1") ))
}

proc_rss ()
{
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

proc_hwm ()
{
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}

# proc_figures PID: one line of the figures the tests print.
proc_figures ()
{
  echo "fds $(proc_fds "$1") threads $(proc_threads "$1")" \
       "(io_uring workers $(proc_io_workers "$1"))" \
       "rss $(proc_rss "$1") KiB peak $(proc_hwm "$1") KiB"
}

# server_sanitized: the server under test is an ASan or TSan build, whose
# RSS (shadow memory, the quarantine of freed blocks) says nothing of
# ours.  (No grep -q on ldd's pipe: under pipefail its SIGPIPE fails it.)
server_sanitized ()
{
  case "$(ldd "$QCOW2_NBD" 2>/dev/null)" in
    *libasan*|*libtsan*) return 0 ;;
    *) return 1 ;;
  esac
}

# wait_fds PID N: wait (30 s at most) until PID has at most N fds open.
wait_fds ()
{
  local i
  for (( i = 0; i < 300; i++ )); do
    [ "$(proc_fds "$1")" -le "$2" ] && return 0
    sleep 0.1
  done
  fail "process $1 still has $(proc_fds "$1") fds open, expected <= $2"
}

# flood_start NAME PORT ARGS...: hold a flood (flood.py hold ARGS) of
# connections to 127.0.0.1:PORT in the background and wait (90 s at
# most) until every connection has stalled.  Its files are in
# $tmpdir/flood-NAME.
flood_start ()
{
  local name=$1 p=$2 d="$tmpdir/flood-$1"
  shift 2
  rm -rf "$d"
  mkdir -p "$d"
  "$PYTHON" "$flood_py" hold 127.0.0.1 "$p" --ready "$d/ready" \
    --stop "$d/stop" --report "$d/report" "$@" >"$d/out" 2>&1 &
  echo $! > "$d/pid"
  cleanup_fn touch "$d/stop"
  local i
  for (( i = 0; i < 900; i++ )); do
    [ -e "$d/ready" ] && return 0
    kill -0 "$(cat "$d/pid")" 2>/dev/null ||
      fail "flood $name died: $(cat "$d/out")"
    sleep 0.1
  done
  fail "flood $name not ready after 90 s"
}

# flood_stop NAME: stop the flood and wait for its report.
flood_stop ()
{
  local d="$tmpdir/flood-$1"
  touch "$d/stop"
  wait "$(cat "$d/pid")" || fail "flood $1 failed: $(cat "$d/out")"
  [ -s "$d/report" ] || fail "flood $1 wrote no report"
}

# flood_field NAME FIELD: a field of the flood's report.
flood_field ()
{
  "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
    "$tmpdir/flood-$1/report" "$2"
}

# ---- TLS ---------------------------------------------------------------

# flood_tls_creds: X.509 credentials (tls-functions.sh must be sourced):
# $tmpdir/server-creds for the servers (--tls-certs, qemu's dir=), and
# $tmpdir/client-creds with the CA for libnbd (tls-certificates=).
flood_tls_creds ()
{
  certs="$tmpdir/certs"
  mkdir -p "$certs" "$tmpdir/client-creds"
  make_ca "$tmpdir/ca" "Flood CA"
  sign "$tmpdir/ca" server "/CN=localhost" v3_server
  server_dir "$tmpdir/server-creds" "$tmpdir/ca"
  cp "$tmpdir/ca/ca-cert.pem" "$tmpdir/client-creds/"
}

# ---- qemu-nbd, for the figures side by side ----------------------------

# start_qemu_nbd IMAGE ARGS...: qemu-nbd -t (persistent) on a fresh
# 127.0.0.1 port with ARGS (e.g. -e 0, --object ... --tls-creds), waiting
# (30 s at most) until it accepts.  Sets qemu_pid and qemu_port; killed
# at exit.
start_qemu_nbd ()
{
  local image=$1 i
  shift
  qemu_port=$(pick_unused_port)
  qemu-nbd -t -f qcow2 -b 127.0.0.1 -p "$qemu_port" "$@" "$image" \
    >"$tmpdir/qemu-nbd-$qemu_port.log" 2>&1 &
  qemu_pid=$!
  cleanup_fn _kill_server "$qemu_pid"
  for (( i = 0; i < 300; i++ )); do
    port_accepts "$qemu_port" && return 0
    _alive "$qemu_pid" || fail "qemu-nbd exited: $(cat "$tmpdir/qemu-nbd-$qemu_port.log")"
    sleep 0.1
  done
  fail "qemu-nbd not accepting after 30 s"
}

# stop_qemu_nbd: SIGTERM and wait (qemu-nbd exits with 143 then).
stop_qemu_nbd ()
{
  _kill_server "$qemu_pid" || :
}
