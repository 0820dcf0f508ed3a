#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Disconnect storms (loopback): clients that connect, get some way and
# go away with a FIN or a reset, at every stage (tests/storm.py: before
# and during the handshake, in the TLS handshake, in the payload of a
# 32 MiB WRITE, with 32 MiB READs unanswered), two storms at once.
# Afterwards the server must be back where it started: the same file
# descriptors, the same threads of its own (io_uring's kernel workers
# stay at most two per ring when idle), the RSS of a fresh server plus
# its image caches (the idle workers give their buffers back); it still serves, and the image passes qemu-img
# check.  STORM_CYCLES sets the cycles per storm (make check: 200);
# STORM_QEMU_NBD=1 runs the same storms against qemu-nbd 7.2 (-t -e 16;
# its TLS stages against a second qemu-nbd, since it cannot offer TLS
# and plain at once) and prints both sets of figures
# (tests/stress-storm.sh: 5000 x 2).
# --max-connections 16 keeps what the storm can pile up while the
# workers catch up under the bound MEMORY documents.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/flood-functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img openssl
requires_python_nbd
requires_server

cycles=${STORM_CYCLES:-200}
storm="$abs_top_srcdir/tests/storm.py"
threads=2

flood_tls_creds

img="$tmpdir/img.qcow2"
make_image "$img" 1G
start_server "$img" --threads "$threads" --tls=on \
  --tls-certs "$tmpdir/server-creds" --max-connections 16
fds0=$(proc_fds "$server_pid")
own0=$(proc_own_threads "$server_pid")
rss0=$(proc_rss "$server_pid")
echo "start: $(proc_figures "$server_pid")"

# storms PORT KINDS TLS-FLAG: two storms at once; fails if one does.
storms ()
{
  local p=$1 kinds=$2 pids=() seed pid
  shift 2
  for seed in 1 2; do
    run_timeout 3600 "$PYTHON" "$storm" 127.0.0.1 "$p" "$@" \
      --kinds "$kinds" --cycles "$cycles" --seed "$seed" \
      >"$tmpdir/storm-$seed.out" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || fail "a storm failed: $(cat "$tmpdir"/storm-*.out)"
  done
  cat "$tmpdir"/storm-*.out
}

storms "$port" handshake,write,replies,tls --tls
# The server finishes what the storm left it on its own time.
wait_fds "$server_pid" "$fds0"
for (( i = 0; i < 600; i++ )); do
  [ "$(proc_own_threads "$server_pid")" -eq "$own0" ] &&
    [ "$(proc_io_workers "$server_pid")" -le $(( 2 * threads )) ] && break
  sleep 0.1
done
echo "settled: $(proc_figures "$server_pid")"
[ "$(proc_own_threads "$server_pid")" -eq "$own0" ] ||
  fail "threads of its own: $own0 at the start, $(proc_own_threads "$server_pid") after"
[ "$(proc_io_workers "$server_pid")" -le $(( 2 * threads )) ] ||
  fail "$(proc_io_workers "$server_pid") io_uring workers still running"
# A fresh server plus what its caches came to hold: for this 1 GiB image
# two L2 tables and a few refcount blocks, under 1 MiB; 2 MiB with
# malloc's bookkeeping.  A leak of a few KiB per cycle shows.
rss=$(proc_rss "$server_pid")
if server_sanitized; then
  echo "RSS not checked: a sanitizer build (LeakSanitizer checks at exit)"
else
  [ "$rss" -le $(( rss0 + 2 * 1024 )) ] ||
    fail "RSS $rss KiB after the storms, $rss0 KiB at the start"
fi
peak=$(proc_hwm "$server_pid")
ours="fds $fds0 -> $(proc_fds "$server_pid"), own threads $own0 ->"
ours+=" $(proc_own_threads "$server_pid"), RSS $rss0 -> $rss KiB,"
ours+=" peak $peak KiB"
ok "after $(( 2 * cycles )) cycles: $ours"

run_timeout 120 "$PYTHON" "$flood_py" probe "$uri" >/dev/null ||
  fail "the server does not serve after the storms"
stop_server
check_clean "$img" "after the storms"
ok "the server serves after the storms and the image is clean"

if [ "${STORM_QEMU_NBD:-0}" = 1 ]; then
  requires qemu-nbd
  # qemu_settle PID: wait (60 s at most) for qemu-nbd to close what the
  # storm left, and print where it is.
  qemu_settle ()
  {
    local i
    for (( i = 0; i < 600; i++ )); do
      [ "$(proc_fds "$1")" -le "$2" ] && break
      sleep 0.1
    done
  }
  rm -f "$img"
  make_image "$img" 1G
  start_qemu_nbd "$img" -e 16
  q0="fds $(proc_fds "$qemu_pid"), threads $(proc_threads "$qemu_pid"),"
  q0+=" RSS $(proc_rss "$qemu_pid") KiB"
  qfds0=$(proc_fds "$qemu_pid")
  storms "$qemu_port" handshake,write,replies
  qemu_settle "$qemu_pid" "$qfds0"
  q1="fds $(proc_fds "$qemu_pid"), threads $(proc_threads "$qemu_pid"),"
  q1+=" RSS $(proc_rss "$qemu_pid") KiB, peak $(proc_hwm "$qemu_pid") KiB"
  stop_qemu_nbd
  start_qemu_nbd "$img" -e 16 \
    --object "tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=$tmpdir/server-creds" \
    --tls-creds tls0
  t0="fds $(proc_fds "$qemu_pid"), threads $(proc_threads "$qemu_pid"),"
  t0+=" RSS $(proc_rss "$qemu_pid") KiB"
  qfds0=$(proc_fds "$qemu_pid")
  storms "$qemu_port" tls --tls
  qemu_settle "$qemu_pid" "$qfds0"
  t1="fds $(proc_fds "$qemu_pid"), threads $(proc_threads "$qemu_pid"),"
  t1+=" RSS $(proc_rss "$qemu_pid") KiB, peak $(proc_hwm "$qemu_pid") KiB"
  stop_qemu_nbd
  check_clean "$img" "after the storms on qemu-nbd"
  echo
  echo "==== disconnect storms, 2 x $cycles cycles, side by side ===="
  echo "qcow2-nbd (all stages):             $ours"
  echo "qemu-nbd (plain stages): start $q0; after $q1"
  echo "qemu-nbd (TLS stages):   start $t0; after $t1"
fi
