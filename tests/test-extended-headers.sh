#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Extended headers (NBD_OPT_EXTENDED_HEADERS) on raw sockets
# (tests/exthdr.py): the option's ordering rules, every request and
# reply form byte for byte, NBD_CMD_FLAG_PAYLOAD_LEN, the payload form
# of BLOCK_STATUS and effect lengths over 4 GiB, over TCP, a Unix socket
# and TLS (required, and reset by STARTTLS), with plain and structured
# clients checked beside.  The image is checked with qemu-img afterwards.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img qemu-io openssl cmp
requires_server
[ -x "$PYTHON" ] || skip "$PYTHON not found"

exthdr="$abs_top_srcdir/tests/exthdr.py"
mib=$(( 1024 * 1024 ))
gib=$(( 1024 * mib ))

size=$(( 8 * gib ))
img="$tmpdir/img.qcow2"
make_image "$img" "$size" -o cluster_size=64k
image_io "$img" \
  "write -P 0x5a 0 1M" \
  "write -z 2M 1M" \
  "write -P 0x11 12345 99999" \
  "write -P 0x33 $(( 4 * gib + 3 * mib )) 64k" \
  "write -P 0x77 $(( size - 3 * mib )) 1M"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

cases="negotiate read write effect block-status compact pipeline"

# run_cases ARGS... -- CASES: the client against the last started server.
run_cases ()
{
  local args=() c
  while [ "$1" != -- ]; do args+=("$1"); shift; done
  shift
  for c in "$@"; do
    run_timeout 600 "$PYTHON" "$exthdr" "${args[@]}" disk "$ref" "$c" ||
      fail "exthdr case $c (${args[*]})"
  done
}

# ---- TCP ---------------------------------------------------------------

start_server "$img" --export-name disk --discard=unmap -v
# shellcheck disable=SC2086
run_cases --port "$port" -- $cases
grep -q 'extended headers' "$server_log" ||
  fail "the log does not say which connections use extended headers"
stop_server
check_clean "$img" "after the extended header cases"
ok "extended headers over TCP"

# ---- a dirty bitmap ----------------------------------------------------

bimg="$tmpdir/bitmap.qcow2"
make_image "$bimg" "$size" -o cluster_size=64k
qemu-img bitmap --add -g 64k "$bimg" b0 || fail "qemu-img bitmap --add"
image_io "$bimg" \
  "write -P 0x01 1M 64k" \
  "write -P 0x02 100M 1M" \
  "write -P 0x03 5G 64k"
start_server "$bimg" --export-name disk --read-only --bitmap b0
run_cases --port "$port" -- bitmap
stop_server
ok "qemu:dirty-bitmap under extended headers"

# ---- Unix socket -------------------------------------------------------

start_server "$img" --export-name disk --socket "$tmpdir/sock"
run_cases --unix "$tmpdir/sock" -- negotiate read block-status compact pipeline
stop_server
ok "extended headers over a Unix socket"

# ---- qemu-nbd mode -----------------------------------------------------

# Offered there too (qemu-nbd 7.2 answers ERR_UNSUP; clients that do not
# ask see no difference, which the qemu-nbd tests check).
source "$abs_top_srcdir/tests/qemu-nbd-functions.sh"
mkdir -p "$tmpdir/path-ours"
ln -sf "$QEMU_NBD_OURS" "$tmpdir/path-ours/qemu-nbd"
qnbd_start ours "$tmpdir/qsock" -f qcow2 -x disk -t -A -e 4 "$img"
run_cases --unix "$tmpdir/qsock" -- negotiate read write block-status compact
kill "$qnbd_pid"
qnbd_wait_exit "$qnbd_pid" "qemu-nbd mode"
[ "$qnbd_rc" -eq 0 ] || fail "qemu-nbd mode exited with status $qnbd_rc"
ok "extended headers in qemu-nbd mode"

# ---- TLS ---------------------------------------------------------------

certs="$tmpdir/certs"
mkdir -p "$certs"
make_ca "$certs/ca" "Test CA"
sign "$certs/ca" server "/C=GB/O=Example/CN=localhost" v3_server
sign "$certs/ca" client "/C=GB/O=Example/CN=client" v3_client
server_dir "$tmpdir/srv" "$certs/ca"
client_dir "$tmpdir/cli" client "$certs/ca"

start_server "$img" --export-name disk --tls=require \
  --tls-certs "$tmpdir/srv"
run_cases --port "$port" --tls "$tmpdir/cli" -- tls-required
run_cases --port "$port" --tls "$tmpdir/cli" --starttls -- \
  negotiate read write block-status compact pipeline
stop_server
ok "extended headers over TLS (required)"

start_server "$img" --export-name disk --tls=on --tls-certs "$tmpdir/srv"
run_cases --port "$port" --tls "$tmpdir/cli" -- tls-reset
stop_server
ok "STARTTLS resets extended headers"

check_clean "$img" "after the extended header cases"
# The image still holds what it held (the cases restore what they write,
# and zero only the range they wrote first).
image_to_raw "$img" "$tmpdir/after.raw"
cmp <(head -c $(( 64 * mib )) "$ref") <(head -c $(( 64 * mib )) "$tmpdir/after.raw") ||
  fail "the image's first 64 MiB changed"
ok "image consistent after the extended header cases"
