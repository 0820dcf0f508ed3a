#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Hostile clients on raw sockets (tests/abuse.py): garbage greetings,
# unknown flags and options, oversized strings and lengths, bad magic,
# out-of-range and oversized requests, clients that vanish mid-reply,
# bursts of connections.  After every case the server must still be
# running and serve correct data to a fresh client, and a well-behaved
# client copying the export in a loop the whole time must never fail.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io nbdinfo nbdcopy cmp
requires_python_nbd
requires_server

abuse="$abs_top_srcdir/tests/abuse.py"
mib=$(( 1024 * 1024 ))

size=$(( 48 * mib + 512 ))
img="$tmpdir/img.qcow2"
make_image "$img" "$size" -o cluster_size=64k
image_io "$img" \
  "write -P 0x5a 0 8M" \
  "write -P 0x11 12345 99999" \
  "write -z 1M 128k" \
  "write -P 0x77 33M 4M" \
  "write -P 0xe1 $(( size - 4096 )) 4096"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

start_server "$img" --read-only --export-name abuse --handshake-timeout 10
export_uri="$uri/abuse"

# A good client running during all the abuse.
good_dir="$tmpdir/good"
mkdir -p "$good_dir"
touch "$good_dir/run"
(
  set +e
  n=0
  while [ -e "$good_dir/run" ]; do
    if timeout 120 nbdcopy --connections=2 "$export_uri" - |
         cmp -s - "$ref"; then
      n=$(( n + 1 )); echo "$n" > "$good_dir/count"
    else
      echo "copy $n failed" >> "$good_dir/failed"
    fi
  done
) &
good_pid=$!
cleanup_fn _kill_server "$good_pid"
cleanup_fn rm -f "$good_dir/run"

# check_server CASE: the server survived and a fresh client reads the
# right bytes.
check_server ()
{
  server_alive "after abuse case $1"
  out="$(run_timeout 60 qemu-io -f raw -r \
           -c "read -P 0x11 12345 99999" \
           -c "read -P 0xe1 $(( size - 4096 )) 4096" \
           "$export_uri" 2>&1)" ||
    fail "qemu-io after abuse case $1: $out"
  grep -qiE 'fail|error' <<< "$out" &&
    fail "qemu-io after abuse case $1: $out"
  run_timeout 60 nbdinfo "$export_uri" >/dev/null ||
    fail "nbdinfo after abuse case $1"
}

cases="$("$PYTHON" "$abuse" --list)"
failures=()
for c in $cases; do
  if ! run_timeout 120 "$PYTHON" "$abuse" 127.0.0.1 "$port" abuse \
       "$ref" "$c"; then
    failures+=("$c")
    echo "FAIL (continuing): abuse case $c" >&2
  fi
  check_server "$c"
done
ok "server alive and serving after every abuse case"

# Several rude clients at once.
pids=()
for c in vanish_mid_reply many_connections pipeline garbage_greeting \
         huge_option_then_hangup vanish_after_some_reply; do
  run_timeout 180 "$PYTHON" "$abuse" 127.0.0.1 "$port" abuse "$ref" "$c" \
    >"$tmpdir/par-$c.out" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || failures+=("parallel case (pid $p)")
done
check_server "parallel"
ok "server survived rude clients in parallel"

# Let the good client finish at least one more copy, then stop it.
count_before=$(cat "$good_dir/count" 2>/dev/null || echo 0)
for (( i = 0; i < 600; i++ )); do
  [ "$(cat "$good_dir/count" 2>/dev/null || echo 0)" -gt "$count_before" ] &&
    break
  [ -e "$good_dir/failed" ] && break
  sleep 0.1
done
rm -f "$good_dir/run"
wait "$good_pid" || true
if [ -e "$good_dir/failed" ]; then
  fail "the well-behaved client failed during the abuse: $(cat "$good_dir/failed")"
fi
count=$(cat "$good_dir/count" 2>/dev/null || echo 0)
[ "$count" -gt 0 ] || fail "the well-behaved client never completed a copy"
ok "a well-behaved client completed $count copies during the abuse"

if [ "${#failures[@]}" -gt 0 ]; then
  fail "abuse cases failed: ${failures[*]}"
fi

stop_server
ok "server stopped cleanly after the abuse"
