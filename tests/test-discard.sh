#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Space given back and nothing leaked: with --discard=unmap, clusters a
# guest frees by TRIM or by WRITE_ZEROES without NO_HOLE are punched out
# of the image file, so its allocated size follows the guest as with
# qemu-nbd (run side by side here on the same guest actions, which must
# also leave the same clusters allocated, zero or gone); and every
# clean close writes out the refcount decrements it committed, so
# `qemu-img check` finds no leak (exit 0) after TRIM, WRITE_ZEROES with
# and without NO_HOLE, overwrites of compressed clusters and of clusters
# an internal snapshot shares, whether the client disconnected cleanly,
# vanished or never sent a FLUSH (the kernel sends none after
# blkdiscard).
source "$(dirname "$0")/functions.sh"

requires qemu-img qemu-io qemu-nbd stat
requires_python_nbd
requires_server

ops="$PYTHON $abs_top_srcdir/tests/nbd-ops.py"

# Allocated size of a file in KiB.
alloc_kib ()
{
  echo $(( $(stat -c '%b * %B' "$1") / 1024 ))
}

# qemu-img map without host offsets: what is data, zero or absent.
map_of ()
{
  qemu-img map --output=json "$1" |
    "$PYTHON" -c 'import json, sys
for e in json.load(sys.stdin):
    print(e["start"], e["length"], e["depth"], e["zero"], e["data"],
          "offset" in e)'
}

# Does the file system under $tmpdir punch holes at all?
probe="$tmpdir/probe"
head -c 1M /dev/zero | tr '\0' 'x' >"$probe"
fallocate -p -o 0 -l 1M "$probe" 2>/dev/null && can_punch=1 || can_punch=0
[ "$(alloc_kib "$probe")" -lt 512 ] || can_punch=0
rm -f "$probe"

# serve_ops IMAGE 'SERVE OPTIONS' OP...: serve IMAGE with qcow2-nbd, run
# the ops, stop with SIGTERM (a clean close).
serve_ops ()
{
  local img=$1 opts=$2; shift 2
  # shellcheck disable=SC2086
  start_server "$img" $opts
  $ops "$uri" "$@" || fail "nbd-ops on qcow2-nbd: $*"
  stop_server TERM
}

# oracle_ops IMAGE 'QEMU-NBD OPTIONS' OP...: the same through qemu-nbd.
oracle_ops ()
{
  local img=$1 opts=$2 sock="$tmpdir/qemu-nbd.sock" pid i; shift 2
  rm -f "$sock"
  # shellcheck disable=SC2086
  qemu-nbd -t -f qcow2 $opts -k "$sock" "$img" 2>"$tmpdir/qemu-nbd.log" &
  pid=$!
  for (( i = 0; i < 300; i++ )); do
    unix_listening "$sock" && break
    sleep 0.1
  done
  unix_listening "$sock" || fail "qemu-nbd did not start: $(cat "$tmpdir/qemu-nbd.log")"
  $ops "nbd+unix:///?socket=$sock" "$@" || fail "nbd-ops on qemu-nbd: $*"
  kill -TERM "$pid"
  wait "$pid" || :
}

# same_as_qemu WHAT CREATE-ARGS PREFILL 'OPTS' OP...: run OPs on two
# copies of one image (made with qemu-img create CREATE-ARGS, then the
# qemu-io command PREFILL), through qcow2-nbd and through qemu-nbd; both
# images must check clean, read the same, and (where holes can be
# punched) take the same allocated size give or take 1 MiB of metadata.
same_as_qemu ()
{
  local what=$1 create=$2 prefill=$3 opts=$4 ours theirs a b; shift 4
  ours="$tmpdir/ours.qcow2" theirs="$tmpdir/theirs.qcow2"
  rm -f "$ours" "$theirs"
  # shellcheck disable=SC2086
  make_image "$ours" 256M $create
  [ -z "$prefill" ] || qemu-io -f qcow2 -c "$prefill" "$ours" >/dev/null
  cp --sparse=always "$ours" "$theirs"
  serve_ops "$ours" "$opts" "$@"
  oracle_ops "$theirs" "$opts" "$@"
  check_clean "$ours" "$what"
  qemu-img compare -q "$ours" "$theirs" ||
    fail "$what: contents differ from qemu-nbd's"
  # Which clusters are allocated, zero or gone must match too (host
  # offsets may differ).
  map_of "$ours" >"$tmpdir/ours.map"
  map_of "$theirs" >"$tmpdir/theirs.map"
  diff -u "$tmpdir/theirs.map" "$tmpdir/ours.map" >&2 ||
    fail "$what: allocation differs from qemu-nbd's"
  a=$(alloc_kib "$ours") b=$(alloc_kib "$theirs")
  echo "$what: allocated $a KiB (qemu-nbd: $b KiB)"
  if [ "$can_punch" = 1 ] && (( a > b + 1024 || b > a + 1024 )); then
    fail "$what: allocated $a KiB, qemu-nbd $b KiB"
  fi
  ok "$what"
}

# The issue's report: 128 MiB written and flushed, all of it trimmed,
# disconnect without FLUSH, SIGTERM.  Before the fix: 2048 leaked
# clusters and the file at its full size.
same_as_qemu "TRIM, no FLUSH, clean disconnect" "" "" --discard=unmap \
  write:0:128M:5a flush trim:0:128M
same_as_qemu "TRIM of half a prefilled disk, client vanishes" "" \
  'write -P 0x11 0 256M' --discard=unmap \
  trim:128M:128M vanish
same_as_qemu "WRITE_ZEROES without NO_HOLE frees" "" \
  'write -P 0x22 0 64M' --discard=unmap \
  zero:0:64M read:0:64M:00
same_as_qemu "WRITE_ZEROES with NO_HOLE keeps the allocation" "" \
  'write -P 0x33 0 64M' --discard=unmap \
  zero-nohole:0:64M read:0:64M:00
same_as_qemu "TRIM and zeroing ignored with --discard=ignore" "" \
  'write -P 0x44 0 64M' --discard=ignore \
  trim:0:32M zero:32M:32M
same_as_qemu "fragmented TRIM of 512-byte clusters" "-o cluster_size=512" \
  'write -P 0x55 0 32M' --discard=unmap \
  trim-every:0:32M:512:1024
# With a backing file a trimmed cluster becomes a zero cluster (the
# backing data must not show through) and its host cluster still goes.
make_image "$tmpdir/base.qcow2" 256M
qemu-io -f qcow2 -c 'write -P 0x65 0 256M' "$tmpdir/base.qcow2" >/dev/null
same_as_qemu "TRIM on an image with a backing file" \
  "-b $tmpdir/base.qcow2 -F qcow2" 'write -P 0x66 0 64M' \
  --discard=unmap trim:0:32M read:0:32M:00 read:32M:32M:66 \
  read:64M:1M:65

# Overwrites of compressed clusters free whole compressed streams, some
# of them sharing host clusters: nothing may leak, and contents must be
# what a plain raw copy gets from the same writes.
img="$tmpdir/comp.qcow2" raw="$tmpdir/comp.raw"
qemu-img create -q -f raw "$raw" 64M
qemu-io -f raw -c 'write -P 0x77 0 64M' "$raw" >/dev/null
qemu-img convert -q -c -f raw -O qcow2 "$raw" "$img"
qemu-io -f raw -c 'write -P 0x78 1M 8M' -c 'write -P 0x79 20000 70000' \
  -c 'write -z 32M 16M' "$raw" >/dev/null
serve_ops "$img" --discard=unmap write:1M:8M:78 write:20000:70000:79 \
  zero:32M:16M
check_clean "$img" "compressed overwrites"
qemu-img compare -q -f qcow2 -F raw "$img" "$raw" ||
  fail "compressed overwrites: contents differ"
ok "overwrites and zeroing of compressed clusters: no leak"

# Clusters shared with an internal snapshot: copy-on-write on overwrite,
# a decrement (never a punch) on TRIM; the snapshot keeps every byte.
img="$tmpdir/snap.qcow2"
make_image "$img" 64M
qemu-io -f qcow2 -c 'write -P 0x81 0 64M' "$img" >/dev/null
qemu-img snapshot -c s1 "$img"
qemu-img convert -q -O raw -l s1 "$img" "$tmpdir/s1-before.raw"
serve_ops "$img" --discard=unmap write:0:16M:82 trim:16M:16M \
  zero:32M:16M zero-nohole:48M:8M
check_clean "$img" "snapshot-shared clusters"
qemu-img convert -q -O raw -l s1 "$img" "$tmpdir/s1-after.raw"
cmp -s "$tmpdir/s1-before.raw" "$tmpdir/s1-after.raw" ||
  fail "snapshot s1 changed"
ok "overwrites, TRIM and zeroing of snapshot-shared clusters: no leak"

# A client that trims every other 512-byte cluster of 64 MiB and never
# flushes leaves 65536 separate freed ranges waiting: the server commits
# them with a flush of its own rather than let the list grow without
# bound, and still leaks nothing.
img="$tmpdir/frag.qcow2"
make_image "$img" 64M -o cluster_size=512
qemu-io -f qcow2 -c 'write -P 0x91 0 64M' "$img" >/dev/null
start_server "$img" --discard=unmap -vv
$ops "$uri" trim-every:0:64M:512:1024 read:0:512:00 read:512:512:91 \
  read:67108352:512:91 ||
  fail "fragmented TRIM"
grep -q 'many freed clusters wait for a flush' "$server_log" ||
  fail "the backlog of freed clusters was never committed"
stop_server TERM
check_clean "$img" "65536 freed ranges without a FLUSH"
ok "65536 freed ranges without a FLUSH: committed early, no leak"
