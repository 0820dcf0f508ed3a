#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd -L: our listing client prints what Debian's qemu-nbd 7.2
# prints, against qemu-nbd's server and against ours (which must then
# also look the same to qemu-nbd's client), for exports with and without
# a description, read-only and not, with allocation depth, and for
# servers that are not there.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img
requires_qemu_nbd_oracle

img="$tmpdir/img.qcow2"
make_image "$img" 4M

n=0
for args in "-f qcow2" "-x disk1 -D described -f qcow2" "-r -A -e 3 -f qcow2" \
            "-x raw -f raw"; do
  n=$((n + 1))
  for server in oracle ours; do
    # shellcheck disable=SC2086
    qnbd_start "$server" "$tmpdir/l$n-$server.sock" -t $args "$img"
    spid=$qnbd_pid
    for client in oracle ours; do
      qnbd "$client" -L -k "$tmpdir/l$n-$server.sock" \
        > "$tmpdir/l$n.$server.$client" 2>&1 ||
        fail "-L ($client) against $server ($args) failed"
    done
    cmp "$tmpdir/l$n.$server.oracle" "$tmpdir/l$n.$server.ours" ||
      { diff -u "$tmpdir/l$n.$server.oracle" "$tmpdir/l$n.$server.ours" >&2;
        fail "-L output differs from qemu-nbd's, server $server ($args)"; }
    kill -TERM "$spid"
    qnbd_wait_exit "$spid" "$server ($args)"
  done
  cmp "$tmpdir/l$n.oracle.oracle" "$tmpdir/l$n.ours.oracle" ||
    { diff -u "$tmpdir/l$n.oracle.oracle" "$tmpdir/l$n.ours.oracle" >&2;
      fail "our server lists differently from qemu-nbd's ($args)"; }
done
grep -q "description: described" "$tmpdir/l2.ours.ours" ||
  fail "-L did not print the description"
ok "-L prints qemu-nbd's listing, against qemu-nbd and against ours"

run_both nosock -L -k "$tmpdir/nobody.sock"
same_output nosock "-L, no server on the socket"
port=$(pick_unused_port)
run_both noport -L -b 127.0.0.1 -p "$port"
same_output noport "-L, no server on the port"
ok "-L without a server: qemu-nbd's message and status"
