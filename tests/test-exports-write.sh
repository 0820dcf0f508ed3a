#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Writing to several exports of one server at once.
# 1. The positional image (export "") with two --export images, one of
#    them ro: nbdcopy writes 8 MiB of random data to each writable one
#    at the same time (4 connections each, 2 worker threads), qemu-io
#    writes patterns to both meanwhile; after the server stops both pass
#    qemu-img check and hold exactly what was written.  The ro export
#    refuses writes; "" is the positional image.
# 2. --export-dir with --idle-timeout=0: two images written at once,
#    each closed (so flushed) as soon as its last client leaves, then
#    checked by qemu-img while the server goes on running;
#    --default-export names what "" means.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io nbdcopy nbdinfo
requires_server

head -c 8M /dev/urandom >"$tmpdir/data1"
head -c 8M /dev/urandom >"$tmpdir/data2"
make_image "$tmpdir/main.qcow2" 4M
make_image "$tmpdir/one.qcow2" 16M
make_image "$tmpdir/two.qcow2" 16M -o cluster_size=4k
make_image "$tmpdir/ro.qcow2" 2M
image_io "$tmpdir/ro.qcow2" 'write -P 0x5e 0 64k'

start_server "$tmpdir/main.qcow2" --threads 2 \
  --export="one=$tmpdir/one.qcow2,description=first" \
  --export="two=$tmpdir/two.qcow2,discard=unmap" \
  --export="ro=$tmpdir/ro.qcow2,ro" -v
base="nbd://127.0.0.1:$port"

nbdcopy --connections=4 "$tmpdir/data1" "$base/one" &
c1=$!
nbdcopy --connections=4 "$tmpdir/data2" "$base/two" &
c2=$!
qemu-io -f raw -c 'write -P 0x61 12M 1M' -c 'write -z 13M 512k' \
  "$base/one" >"$tmpdir/w1.out" 2>&1 &
q1=$!
qemu-io -f raw -c 'write -P 0x62 12M 1M' -c 'discard 8M 1M' \
  "$base/two" >"$tmpdir/w2.out" 2>&1 &
q2=$!
wait $c1 || fail "nbdcopy to one"
wait $c2 || fail "nbdcopy to two"
wait $q1 || fail "qemu-io on one: $(cat "$tmpdir/w1.out")"
wait $q2 || fail "qemu-io on two: $(cat "$tmpdir/w2.out")"
grep -qiE 'error|fail' "$tmpdir/w1.out" "$tmpdir/w2.out" &&
  fail "qemu-io reported an error"

# The read-only export refuses writes; "" is the positional image.
qemu-io -f raw -c 'write -P 1 0 4k' "$base/ro" >"$tmpdir/ro.out" 2>&1 &&
  ! grep -qiE 'error|fail|denied|read-only' "$tmpdir/ro.out" &&
  fail "a write to the ro export succeeded"
qemu-io -r -f raw -c 'read -P 0x5e 0 64k' "$base/ro" >"$tmpdir/ro.out" 2>&1
grep -qiE 'error|fail|mismatch' "$tmpdir/ro.out" && fail "ro export misread"
size=$(nbdinfo --size "$base") || fail "nbdinfo on the default export"
[ "$size" -eq $(( 4 << 20 )) ] || fail "\"\" is $size bytes, not main's 4M"
ok "writes to two exports at once; ro refused; \"\" is the positional image"

stop_server
check_clean "$tmpdir/one.qcow2" "one after writing"
check_clean "$tmpdir/two.qcow2" "two after writing"
check_clean "$tmpdir/main.qcow2" "main (untouched)"

# Expected contents: data, then the qemu-io writes.
for x in one:data1:0x61 two:data2:0x62; do
  IFS=: read -r name data p <<<"$x"
  make_raw "$tmpdir/want-$name" 16M
  dd if="$tmpdir/$data" of="$tmpdir/want-$name" conv=notrunc status=none
  qemu-io -f raw -c "write -P $p 12M 1M" "$tmpdir/want-$name" >/dev/null
done
qemu-io -f raw -c 'write -z 13M 512k' "$tmpdir/want-one" >/dev/null
qemu-io -f raw -c 'write -z 8M 1M' "$tmpdir/want-two" >/dev/null
for name in one two; do
  qemu-img compare -f raw "$tmpdir/want-$name" -F qcow2 \
    "$tmpdir/$name.qcow2" >"$tmpdir/cmp.out" 2>&1 ||
    fail "$name holds the wrong bytes: $(cat "$tmpdir/cmp.out")"
done
ok "both images pass qemu-img check and hold what was written"

# ---- 2: a directory, each image flushed and closed when left --------------

dir="$tmpdir/dir"
mkdir -p "$dir"
make_image "$dir/x.qcow2" 8M
make_image "$dir/y.qcow2" 8M
start_server --export-dir="$dir" --idle-timeout=0 --default-export=y.qcow2 \
  --threads 2 -v
base="nbd://127.0.0.1:$port"
nbdcopy --connections=2 <(head -c 8M "$tmpdir/data1") "$base/x.qcow2" &
c1=$!
nbdcopy --connections=2 <(head -c 8M "$tmpdir/data2") "$base/y.qcow2" &
c2=$!
wait $c1 || fail "nbdcopy to x.qcow2"
wait $c2 || fail "nbdcopy to y.qcow2"
wait_log 1 "export 'x.qcow2': closed" 120
wait_log 1 "export 'y.qcow2': closed" 120
# Closed, so unlocked and clean: checked while the server runs.
check_clean "$dir/x.qcow2" "x.qcow2 after its export closed"
check_clean "$dir/y.qcow2" "y.qcow2 after its export closed"
qemu-img compare -f raw "$tmpdir/data1" -F qcow2 "$dir/x.qcow2" >/dev/null ||
  fail "x.qcow2 holds the wrong bytes"
qemu-img compare -f raw "$tmpdir/data2" -F qcow2 "$dir/y.qcow2" >/dev/null ||
  fail "y.qcow2 holds the wrong bytes"
# "" is --default-export's image, and it reads back what was written.
qemu-img compare -f raw "$tmpdir/data2" -F raw "$base" >/dev/null ||
  fail "\"\" is not y.qcow2"
server_alive "after the directory writes"
stop_server
ok "directory images flushed and closed when left; --default-export"
exit 0
