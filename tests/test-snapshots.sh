#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Internal snapshots served read-only with --load-snapshot: on images with
# several snapshots and compressed clusters (zlib with 64 KiB clusters
# over a backing file; zstd with 16 KiB clusters and extended L2), every
# snapshot, selected by ID, by name and by snapshot.id=/snapshot.name=,
# must read byte for byte what qemu-img convert -l gives, and its block
# status must be what qemu-nbd -l reports.  An ID-or-name is an ID first
# (a snapshot named "1" is not ID 1), as qemu-nbd -l does; a missing
# snapshot is a start-up error; the export is read-only.  Then random
# writes, zeroes and trims to the active layer (differential.py) must
# leave every snapshot exactly as it was and the image clean: clusters
# shared with a snapshot are copied on write.  SNAP_SEED=N replays.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/bitmap-functions.sh"

requires qemu-img qemu-io qemu-nbd nbdinfo nbdcopy cmp
requires_python_nbd
requires_server

seed=${SNAP_SEED:-$RANDOM$RANDOM}
echo "seed $seed (SNAP_SEED=$seed replays)"
MiB=$(( 1024 * 1024 ))

# snapshot_image IMG: four snapshots (IDs 1-4: first, second, 1, last)
# between writes of every kind, compressed clusters in most of them.
snapshot_image ()
{
  local img=$1
  image_io "$img" 'write -c -P 0x01 0 1M' 'write -P 0x02 2M 256k' \
    'write -P 0x03 3000 1000'
  qemu-img snapshot -c first "$img"
  image_io "$img" 'write -P 0x04 512k 1M' 'write -z 3M 64k' \
    'write -c -P 0x05 5M 512k' 'discard 2M 128k'
  qemu-img snapshot -c second "$img"
  image_io "$img" 'write -P 0x06 100k 8k' 'write -c -P 0x07 6M 256k'
  qemu-img snapshot -c 1 "$img"
  image_io "$img" 'write -z 0 64k' 'write -P 0x08 7M 1M'
  qemu-img snapshot -c last "$img"
  image_io "$img" 'write -P 0x09 1M 2M'
}

# served_equals WHAT WANT.raw SERVER-ARGS...: serve with ARGS, read it
# all, compare.  Leaves the server running.
served_equals ()
{
  local what=$1 want=$2; shift 2
  start_server "$img" --socket "$tmpdir/ours.sock" "$@"
  rm -f "$tmpdir/got.raw"
  nbdcopy "$uri" "$tmpdir/got.raw" || fail "$what: nbdcopy"
  cmp "$want" "$tmpdir/got.raw" ||
    fail "$what: differs from qemu-img convert -l"
}

# check_snapshots NAME: every snapshot against qemu-img convert -l and
# qemu-nbd -l; the snapshots' contents are left in $tmpdir/NAME.ID.raw.
check_snapshots ()
{
  local name=$1 id sname want list
  mapfile -t list < <(qemu-img snapshot -l "$img" |
                        awk 'NR > 2 { print $1, $2 }')
  for id in "${list[@]}"; do
    sname=${id#* } id=${id%% *}
    want="$tmpdir/$name.$id.raw"
    qemu-img convert -l "snapshot.id=$id" -O raw "$img" "$want" ||
      fail "qemu-img convert -l snapshot.id=$id"
    served_equals "$name snapshot ID $id" "$want" \
      --load-snapshot "snapshot.id=$id"
    stop_server
    served_equals "$name snapshot $sname by name" "$want" \
      --load-snapshot "snapshot.name=$sname"
    stop_server
    served_equals "$name snapshot $id/$sname" "$want" \
      --load-snapshot "snapshot.id=$id,snapshot.name=$sname"
    # Block status from the snapshot's L1, as qemu-nbd -l has it.
    start_qemu_nbd "$img" "$tmpdir/qemu.sock" -r -A -l "snapshot.id=$id"
    for ctx in base:allocation qemu:allocation-depth; do
      [ "$(nbdinfo --json --map="$ctx" "$uri")" = \
        "$(nbdinfo --json --map="$ctx" "$qemu_uri")" ] ||
        fail "$name snapshot $id: $ctx differs from qemu-nbd -l's"
    done
    stop_qemu_nbd
    stop_server
  done
}

back="$tmpdir/backing.raw"
qemu-img create -q -f raw "$back" 8M
image_io "$back" -f raw 'write -P 0xee 0 8M'
kinds=("zlib64k:cluster_size=64k -b $back -F raw"
       "zstd16k:cluster_size=16k,extended_l2=on,compression_type=zstd")
for kind in "${kinds[@]}"; do
  name=${kind%%:*}
  img="$tmpdir/$name.qcow2"
  # shellcheck disable=SC2086
  make_image "$img" $(( 8 * MiB )) -o ${kind#*:}
  snapshot_image "$img"
  [ "$(qemu-img snapshot -l "$img" | awk 'NR > 2 { print $1 $2 }' |
       tr '\n' ' ')" = "1first 2second 31 4last " ] ||
    fail "$name: unexpected snapshot table"
  check_snapshots "$name"
  ok "$name: 4 snapshots by ID, name and both read as qemu-img convert -l," \
     "block status as qemu-nbd -l"

  # An ID or a name: "1" is ID 1 ("first"), not the snapshot named "1".
  served_equals "$name -l 1" "$tmpdir/$name.1.raw" --load-snapshot 1
  stop_server
  served_equals "$name -l second" "$tmpdir/$name.2.raw" \
    --load-snapshot second
  [ "$(nbdinfo --json "$uri" | "$PYTHON" -c '
import json, sys; print(json.load(sys.stdin)["exports"][0]["is_read_only"])')" \
    = True ] || fail "$name: a snapshot export is not read-only"
  if "$PYTHON" -c '
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x", 0)
except nbd.Error as e:
    sys.exit(0 if e.errno == "EPERM" else 1)
sys.exit(1)' "$uri"; then :; else
    fail "$name: a write to a snapshot was not refused with EPERM"
  fi
  stop_server
  ok "$name: ID before name, read-only"

  # Writes to the active layer leave every snapshot as it was.
  image_to_raw "$img" "$tmpdir/active.raw"
  start_server "$img" --discard=unmap
  run_timeout 300 "$PYTHON" "$abs_top_srcdir/tests/differential.py" \
    "$uri" "$tmpdir/active.raw" "$tmpdir/shadow.raw" --seed "$seed" \
    --ops 100 --conns 2 --cluster 16384 >"$tmpdir/diff.out" 2>&1 ||
    { cat "$tmpdir/diff.out" >&2; fail "$name: writes to the active layer"; }
  stop_server
  qemu-img compare -q -f raw "$tmpdir/shadow.raw" -F qcow2 "$img" ||
    fail "$name: active layer differs from the shadow"
  check_clean "$img" "$name after writing to the active layer"
  for id in 1 2 3 4; do
    qemu-img convert -l "snapshot.id=$id" -O raw "$img" "$tmpdir/now.raw"
    cmp "$tmpdir/$name.$id.raw" "$tmpdir/now.raw" ||
      fail "$name: snapshot $id changed by writes to the active layer"
  done
  check_snapshots "$name"
  ok "$name: random writes to the active layer left every snapshot intact"
done

# A snapshot that does not exist; and a snapshot with a bitmap (qemu-nbd
# allows -l with -B: the bitmap is the active image's).
img="$tmpdir/zlib64k.qcow2"
serve_refused "a missing snapshot" "cannot find snapshot 'nope'" "$img" \
  --load-snapshot nope
serve_refused "snapshot.size=" "invalid --load-snapshot" "$img" \
  --load-snapshot snapshot.size=1
qemu-img bitmap --add "$img" bb
start_qemu_nbd "$img" "$tmpdir/qemu.sock" -r -l last -B bb
start_server "$img" --socket "$tmpdir/ours.sock" --load-snapshot last \
  --bitmap bb
[ "$(dirty_map "$uri" bb)" = "$(dirty_map "$qemu_uri" bb)" ] ||
  fail "a bitmap served with a snapshot differs from qemu-nbd's"
stop_server
stop_qemu_nbd
ok "missing snapshots refused by name; a snapshot with a bitmap"
