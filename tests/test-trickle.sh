#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Slow clients (tests/trickle.py): request headers and write payloads
# arriving in small pieces with pauses, refused payloads trickling in,
# and hanging up before, inside and between requests.  Every case must
# be answered correctly and each hang-up must be logged for what it was.
# Last, the server is stopped while a client is half-way through a big
# payload: it must close that connection and exit cleanly.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io
requires_python_nbd
requires_server

trickle="$abs_top_srcdir/tests/trickle.py"
mib=$(( 1024 * 1024 ))

size=$(( 24 * mib ))
img="$tmpdir/img.qcow2"
make_image "$img" "$size" -o cluster_size=64k
image_io "$img" "write -P 0x5a 0 8M" "write -P 0x11 12345 99999" \
  "write -P 0x77 10M 4M"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

start_server "$img" --export-name trickle -v

run_case ()
{
  run_client_case "$trickle" trickle "$ref" "$1"
}

mid='connection closed: client hung up in the middle of a request'
nodisc='connection closed: client hung up without NBD_CMD_DISC'
disc='connection closed: client sent NBD_CMD_DISC'

for c in header_pieces small_write_pieces big_write_slow \
         refused_write_slow; do
  run_case "$c"
done
wait_log 4 "$nodisc"
ok "requests and payloads received in pieces are answered correctly"

run_case disc_pieces
wait_log 1 "$disc"
run_case hangup_mid_header
wait_log 1 "$mid"
run_case hangup_mid_payload
wait_log 2 "$mid"
run_case hangup_between_requests
wait_log 5 "$nodisc"
ok "each hang-up is logged for what it was"

# Stop the server while a client is half-way through a big payload: the
# recv waiting for the rest must be taken back and the server exit 0.
stop_server_while "half its payload in" \
  client_case "$trickle" trickle "$ref" held_mid_payload
ok "server stopped cleanly with a payload half received"

check_clean "$img" "after the slow writes"
ok "image clean after the slow writes"
