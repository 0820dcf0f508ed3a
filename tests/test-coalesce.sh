#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Receive coalescing (server/coalesce.c): clients that keep many
# requests in flight are read in batches.  tests/coalesce.py drives a
# raw client in waves of 32 READs and libnbd at depth 32 (reads, then
# writes, then reads of both), and then changes pace: a header in
# pieces, lone requests.  Every answer is checked, every request must be
# answered, the server log must show that batching started and that it
# noticed the client going down to one request in flight, and the image
# must be clean afterwards.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io
requires_python_nbd
requires_server

coalesce="$abs_top_srcdir/tests/coalesce.py"
mib=$(( 1024 * 1024 ))

img="$tmpdir/img.qcow2"
make_image "$img" $(( 64 * mib ))
image_io "$img" "write -P 0x5a 0 20M" "write -P 0x11 123456 7777777" \
  "write -P 0xc3 40M 24M"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

# -vvv: the batching decisions are debug messages.
start_server "$img" --export-name deep -vvv

run_case ()
{
  run_client_case "$coalesce" deep "$ref" "$1"
}

# batching_seen: the log says a client was served in batches of 2 or more.
batching_seen ()
{
  grep -E 'receiving up to ([2-9]|[1-9][0-9]+) per wake-up' "$server_log"
}

run_case waves_then_split_header
batching_seen > /dev/null ||
  fail "waves of 32 READs were never received in batches"
grep -q 'client keeps 1 request in flight: receiving up to 1 per wake-up' \
  "$server_log" ||
  fail "the server never noticed the client down to one READ in flight"
ok "waves of READs batched; split headers and lone READs still answered"

lines=$(batching_seen | wc -l)
run_case libnbd_deep
[ "$(batching_seen | wc -l)" -gt "$lines" ] ||
  fail "libnbd at depth 32 was never received in batches"
grep -q 'large requests: receiving one request per wake-up' "$server_log" ||
  fail "128 KiB writes did not stop the batching"
ok "libnbd at depth 32: small and large reads and writes, all correct"

nodisc='connection closed: client hung up without NBD_CMD_DISC'
before=$(grep -c -- "$nodisc" "$server_log" || true)
run_case hangup_mid_batch
wait_log $(( before + 1 )) "$nodisc"
ok "a client gone during a batch wait is noticed"

# Stop the server while it waits for a batch: the wait (a recv and its
# linked time limit) must be taken back and the server exit 0.
stop_server_while "its waves done" \
  client_case "$coalesce" deep "$ref" held_mid_batch
ok "server stopped cleanly during a batch wait"

check_clean "$img" "after the batched writes"
ok "image clean after the batched writes"
