#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Bounded memory (loopback, small): clients pipelining 32 MiB WRITEs and
# READs as fast as their sockets take them, and one that sends 32 MiB
# READs and does not read the replies, must leave the server's peak RSS
# under the bound the man page documents (MEMORY):
#   at rest + L2 and refcount caches + threads x 66 MiB
#   + connections x (max(--max-inflight-bytes, 32 MiB) + 1 MiB)
# because a connection is read no more while it holds its allowance.
# The deaf client gets every reply once it reads; the image is checked.
# MEMORY_CLIENTS, MEMORY_ROUNDS and MEMORY_DEAF_READS size the load
# (make check: 8, 2, 16); MEMORY_QEMU_NBD=1 runs the same load against
# qemu-nbd 7.2 (-t -e 0) and prints both peaks (tests/stress-memory.sh:
# 64 clients).

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/flood-functions.sh"

requires qemu-img qemu-io
requires_server

memload="$abs_top_srcdir/tests/memload.py"
clients=${MEMORY_CLIENTS:-8}
rounds=${MEMORY_ROUNDS:-2}
deaf_reads=${MEMORY_DEAF_READS:-16}
threads=2
mib=$(( 1024 * 1024 ))

# load PID PORT: the deaf client, then the pipelining clients, against
# the server PID listening on PORT; prints the figures as it goes.
load ()
{
  local pid=$1 p=$2 deaf
  rm -rf "$tmpdir/deaf"
  mkdir -p "$tmpdir/deaf"
  # The client that does not read: its first reply proves the server has
  # parsed what it was going to parse of its requests.
  run_timeout 1800 "$PYTHON" "$memload" deaf 127.0.0.1 "$p" \
    --reads "$deaf_reads" --dir "$tmpdir/deaf" >"$tmpdir/deaf.out" 2>&1 &
  deaf=$!
  cleanup_fn _kill_server "$deaf"
  cleanup_fn touch "$tmpdir/deaf/go"
  wait_for_file "$tmpdir/deaf/ready" "the deaf client got no first reply"
  echo "a client holding $deaf_reads x 32 MiB READs unread:" \
       "$(proc_figures "$pid")"
  run_timeout 1800 "$PYTHON" "$memload" load 127.0.0.1 "$p" \
    --clients "$clients" --rounds "$rounds" ||
    fail "the pipelining clients failed"
  echo "after $clients clients x $rounds rounds of 32 MiB WRITE + READ:" \
       "$(proc_figures "$pid")"
  touch "$tmpdir/deaf/go"
  wait "$deaf" || fail "the deaf client: $(cat "$tmpdir/deaf.out")"
  cat "$tmpdir/deaf.out"
}

img="$tmpdir/img.qcow2"
make_image "$img" $(( clients * 32 ))M
start_server "$img" --threads "$threads"
rest=$(proc_rss "$server_pid")
echo "qcow2-nbd at rest: $(proc_figures "$server_pid")"
load "$server_pid" "$port"
server_alive "after the memory load"

peak=$(proc_hwm "$server_pid")
conns=$(( clients + 1 ))
bound=$(( rest + (4 + 1) * 1024 + threads * 66 * 1024 + conns * 33 * 1024 ))
echo "qcow2-nbd: peak RSS $(( peak / 1024 )) MiB, bound $(( bound / 1024 )) MiB" \
     "($conns connections, $threads threads, $(( rest / 1024 )) MiB at rest)"
if server_sanitized; then
  echo "peak RSS not checked: a sanitizer build"
else
  [ "$peak" -le "$bound" ] ||
    fail "peak RSS $peak KiB is over the documented bound of $bound KiB"
  ok "peak RSS stays under the documented bound"
fi

stop_server
check_clean "$img" "after the memory load"
args=()
for (( c = 0; c < clients; c++ )); do
  args+=("read -P $(( c % 8 + 1 )) $(( c * 32 * mib )) $(( 32 * mib ))")
done
image_io "$img" "${args[@]}"
ok "every client's last write is in the image, which qemu-img check accepts"

if [ "${MEMORY_QEMU_NBD:-0}" = 1 ]; then
  requires qemu-nbd
  rm -f "$img"
  make_image "$img" $(( clients * 32 ))M
  start_qemu_nbd "$img" -e 0
  echo "qemu-nbd at rest: $(proc_figures "$qemu_pid")"
  load "$qemu_pid" "$qemu_port"
  qpeak=$(proc_hwm "$qemu_pid")
  stop_qemu_nbd
  check_clean "$img" "after the memory load on qemu-nbd"
  echo
  echo "==== $clients clients x $rounds rounds of 32 MiB WRITE + READ," \
       "and $deaf_reads x 32 MiB READs unread ===="
  echo "qcow2-nbd: peak RSS $(( peak / 1024 )) MiB (bound $(( bound / 1024 )) MiB)"
  echo "qemu-nbd:  peak RSS $(( qpeak / 1024 )) MiB"
fi
