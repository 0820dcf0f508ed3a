#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Handshake floods (loopback, small): clients that connect and say
# nothing, stop half-way through the handshake or the TLS handshake, or
# come too many from one address.  What the server guarantees, checked
# without timing anything: a real client is served while the flood is
# held; the flood costs no thread; the limits keep the idlest
# connections out, oldest first, and never one that is negotiating;
# held clients (--max-connections) that hang up free their place;
# RLIMIT_NOFILE is raised; out of descriptors, accepting goes on.
# The figures (probe latency, fds, threads, RSS) are printed.
# tests/stress-flood.sh is the big one, side by side with qemu-nbd.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/flood-functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img openssl prlimit
requires_python_nbd
requires_server

img="$tmpdir/img.qcow2"
make_image "$img" 64M
image_io "$img" "write -P 0x5a 0 1M"

probe ()
{
  local out
  out="$(run_timeout 120 "$PYTHON" "$flood_py" probe "$@")" ||
    fail "probe $* failed: $out"
  echo "$out"
}

# ---- a flood below the limits: everything held, no thread spent -------

start_server "$img" --read-only
threads0=$(proc_threads "$server_pid")
fds0=$(proc_fds "$server_pid")
echo "before the flood: $(proc_figures "$server_pid")"
flood_start plain "$port" --idle 300 --handshake 100 --wait-greeting \
  --sources 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
echo "flood of 300 idle and 100 stalled in the handshake:" \
     "$(proc_figures "$server_pid")"
[ "$(proc_threads "$server_pid")" -eq "$threads0" ] ||
  fail "the flood cost threads: $threads0 before, $(proc_threads "$server_pid") during"
[ "$(proc_fds "$server_pid")" -ge $(( fds0 + 400 )) ] ||
  fail "the server does not hold the flood's 400 connections"
probe "$uri" --count 5
[ "$(proc_threads "$server_pid")" -eq "$threads0" ] ||
  fail "the probes during the flood cost threads"
flood_stop plain
[ "$(flood_field plain closed_by_server)" -eq 0 ] ||
  fail "the server dropped flood connections below its limits"
ok "5 probes served while 400 connections were held, no thread spent"
wait_fds "$server_pid" "$fds0"
echo "after the flood: $(proc_figures "$server_pid")"
stop_server

# ---- TLS: stalled after the ClientHello --------------------------------

flood_tls_creds
start_server "$img" --read-only --tls-certs "$tmpdir/server-creds"
threads0=$(proc_threads "$server_pid")
flood_start tls "$port" --tls 50 --idle 20 --handshake 20
echo "flood of 50 stalled in the TLS handshake, 40 plain:" \
     "$(proc_figures "$server_pid")"
[ "$(proc_threads "$server_pid")" -eq "$threads0" ] ||
  fail "the TLS flood cost threads"
probe "nbds://127.0.0.1:$port" --tls-certs "$tmpdir/client-creds" --count 3
flood_stop tls
[ "$(flood_field tls closed_by_server)" -eq 0 ] ||
  fail "the server dropped TLS flood connections below its limits"
[ "$(flood_field tls stalled)" -eq 90 ] ||
  fail "not every TLS flood connection got as far as it wanted"
ok "TLS probes served while 50 connections stalled mid-TLS-handshake"
stop_server

# ---- the limits: idlest out first, per source and in all --------------

start_server "$img" --read-only --max-handshakes 40 \
  --max-handshakes-per-source 15 -v
fds0=$(proc_fds "$server_pid")
# 30 from one address: its 15 oldest make room for its 15 newest.
flood_start a "$port" --idle 30 --sources 127.0.0.2 --wait-greeting
wait_fds "$server_pid" $(( fds0 + 15 ))
# 30 more from two other addresses: 45 > 40, so the 5 idlest of all go,
# the oldest of the first flood; and one more for the probe.
flood_start b "$port" --idle 30 --sources 127.0.0.3,127.0.0.4 \
  --wait-greeting
wait_fds "$server_pid" $(( fds0 + 40 ))
echo "floods of 2 x 30 against limits of 40 and 15 per source:" \
     "$(proc_figures "$server_pid")"
probe "$uri"
flood_stop a
flood_stop b
order="$(flood_field a closed_order)"
[ "$order" = "$(seq -s ', ' 0 20 | sed 's/^/[/; s/$/]/')" ] ||
  fail "per-source and total limits closed $order, not the 21 oldest"
[ "$(flood_field b closed_by_server)" -eq 0 ] ||
  fail "the second flood lost connections while older idle ones were held"
grep -q 'handshake limits: .* dropped' "$server_log" ||
  fail "no summary of dropped connections in the log"
ok "the limits close the idlest connections first, per source and in all"

# A client that is negotiating is not the idlest, even if it came first.
wait_fds "$server_pid" "$fds0"
mkdir -p "$tmpdir/active"
run_timeout 120 "$PYTHON" "$flood_py" active 127.0.0.1 "$port" \
  --source 127.0.0.6 --dir "$tmpdir/active" >"$tmpdir/active.out" 2>&1 &
active=$!
cleanup_fn _kill_server "$active"
wait_for_file "$tmpdir/active/1" "the slow client was not greeted"
flood_start c "$port" --idle 14 --sources 127.0.0.6 --wait-greeting
touch "$tmpdir/active/go1"
wait_for_file "$tmpdir/active/2" "the slow client got no LIST reply"
flood_start d "$port" --idle 1 --sources 127.0.0.6 --wait-greeting
touch "$tmpdir/active/go2"
wait "$active" || fail "the negotiating client was dropped: $(cat "$tmpdir/active.out")"
flood_stop c
flood_stop d
[ "$(flood_field c closed_order)" = "[0]" ] ||
  fail "a newcomer at the source's limit closed $(flood_field c closed_order), not the idlest"
ok "a client that is negotiating keeps its place; the idlest goes"
stop_server

# ---- held at --max-connections, and hanging up while held -------------

start_server "$img" --read-only --max-connections 1 -v
cat > "$tmpdir/hold.py" <<'EOF'
import os, sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
h.pread(512, 0)
h.shutdown()
EOF
"$PYTHON" "$tmpdir/hold.py" "$uri" "$tmpdir/held" "$tmpdir/release" &
holder=$!
cleanup_fn _kill_server "$holder"
cleanup_fn touch "$tmpdir/release"
wait_for_file "$tmpdir/held" "the first client was not served"
flood_start held "$port" --idle 3
wait_log 3 'held until a connection ends'
flood_stop held
[ "$(flood_field held never_greeted)" -eq 3 ] ||
  fail "clients beyond --max-connections were greeted"
wait_log 3 'the client gave up waiting for a slot'
touch "$tmpdir/release"
wait "$holder" || fail "the first client failed"
probe "$uri"
ok "held clients are not greeted, and their place is freed when they hang up"
stop_server

# ---- descriptors: the limit raised; out of them, accepting goes on ----

# A soft limit below the hard one is raised at start.
START_SERVER_WRAPPER_SAVED=${SERVER_WRAPPER:-}
SERVER_WRAPPER="prlimit --nofile=64:4096"
start_server "$img" --read-only
SERVER_WRAPPER=$START_SERVER_WRAPPER_SAVED
soft=$(awk '/^Max open files/ { print $4 }' "/proc/$server_pid/limits")
[ "$soft" = 4096 ] ||
  fail "RLIMIT_NOFILE soft limit is $soft, not raised to the hard 4096"
ok "RLIMIT_NOFILE raised to its hard limit"
stop_server

# A hard limit of 64: the flood of 100 runs out of descriptors before the
# handshake limits; the idlest make room, and a client is still served.
SERVER_WRAPPER="prlimit --nofile=64:64"
start_server "$img" --read-only -v
SERVER_WRAPPER=$START_SERVER_WRAPPER_SAVED
flood_start fds "$port" --idle 100 --sources 127.0.0.2,127.0.0.3 \
  --wait-greeting
echo "flood of 100 with 64 descriptors: $(proc_figures "$server_pid")"
probe "$uri" --count 3
flood_stop fds
[ "$(flood_field fds closed_by_server)" -gt 0 ] ||
  fail "no connection was closed with 64 descriptors for 100"
grep -q 'the file descriptor limit was reached' "$server_log" ||
  fail "the log does not say the descriptor limit made room"
ok "out of descriptors, the idlest connections make room"
stop_server
