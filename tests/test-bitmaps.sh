#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Persistent dirty bitmaps against qemu-nbd 7.2, on copies of one image
# with bitmaps of several granularities (enabled, disabled, already
# dirty): the meta context answers (LIST and SET, qemu:dirty-bitmap:
# queries), then the same random writes, zeroes and trims through both
# servers with the dirty maps compared as they go (bitmap-diff.py); then,
# both servers stopped, qemu-img check, qemu-img info's bitmaps and
# qemu-img compare must agree, and the bitmaps as stored on disk must read
# the same through qemu-nbd and through us.  Also: the options are
# documented; a bitmap that is missing or inconsistent is a start-up
# error naming it; a backing file's bitmap is found through its overlay;
# the dirty-image repair of lazy_refcounts images counts bitmap clusters.
# BITMAP_SEED=N replays the random requests.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/bitmap-functions.sh"

requires qemu-img qemu-io qemu-nbd nbdinfo
requires_python_nbd
requires_server

seed=${BITMAP_SEED:-$RANDOM$RANDOM}
echo "seed $seed (BITMAP_SEED=$seed replays)"
MiB=$(( 1024 * 1024 ))
diff_py="$abs_top_srcdir/tests/bitmap-diff.py"
meta_py="$abs_top_srcdir/tests/bitmap-meta.py"

# make_bitmap_image IMG CLUSTER: data of every kind, four enabled bitmaps
# of different granularities, one disabled, and writes after they were
# made, so some bitmaps start dirty.
make_bitmap_image ()
{
  local img=$1 cs=$2
  make_image "$img" $(( 48 * MiB )) -o cluster_size="$cs"
  image_io "$img" 'write -P 0x11 0 8M' 'write -c -P 0x22 16M 2M' \
    'write -z 20M 1M'
  qemu-img bitmap --add -g 512 "$img" b512
  qemu-img bitmap --add -g 4096 "$img" b4k
  qemu-img bitmap --add -g 65536 "$img" b64k
  qemu-img bitmap --add -g 1M "$img" b1m
  qemu-img bitmap --add --disable -g 65536 "$img" off
  image_io "$img" 'write -P 0x33 1M 300k' 'write -P 0x44 30M 5k'
  qemu-img bitmap --disable "$img" b1m
  image_io "$img" 'write -P 0x55 40M 64k'
  qemu-img bitmap --enable "$img" b1m
}
bitmaps=(b512 b4k b64k b1m off)
ours_args=() qemu_args=()
for b in "${bitmaps[@]}"; do
  ours_args+=(--bitmap "$b")
  qemu_args+=(-B "$b")
done

# round NAME CLUSTER OPS: the whole comparison on one kind of image.
round ()
{
  local name=$1 cs=$2 ops=$3
  local base="$tmpdir/$name.qcow2" r="$tmpdir/$name.ours.qcow2"
  local q="$tmpdir/$name.qemu.qcow2" b
  make_bitmap_image "$base" "$cs"
  cp "$base" "$r"
  cp "$base" "$q"

  start_server "$r" --socket "$tmpdir/ours.sock" --discard=unmap \
    "${ours_args[@]}"
  start_qemu_nbd "$q" "$tmpdir/qemu.sock" -A --discard=unmap \
    "${qemu_args[@]}"
  # In use on disk while served, as QEMU marks them.
  [ "$(bitmaps_of "$r")" = "$(bitmaps_of "$q")" ] || {
    bitmaps_of "$r" >&2; bitmaps_of "$q" >&2
    fail "$name: bitmap flags while served differ from qemu-nbd's"
  }
  bitmaps_have "$r" 'b512 512 in-use auto' ||
    fail "$name: b512 not in use while served"

  "$PYTHON" "$meta_py" "$tmpdir/ours.sock" "$tmpdir/qemu.sock" \
    "${bitmaps[@]}" || fail "$name: meta context answers differ"
  "$PYTHON" "$diff_py" "$uri" "$qemu_uri" "${bitmaps[@]}" --seed "$seed" \
    --ops "$ops" --cluster "$cs" || fail "$name: dirty maps differ"
  stop_server
  stop_qemu_nbd
  ok "$name: $ops requests, dirty maps identical to qemu-nbd's throughout"

  # What each server left on disk.
  check_clean "$r" "$name, ours after the run"
  check_clean "$q" "$name, qemu-nbd's after the run"
  [ "$(bitmaps_of "$r")" = "$(bitmaps_of "$q")" ] || {
    bitmaps_of "$r" >&2; bitmaps_of "$q" >&2
    fail "$name: qemu-img info's bitmaps differ"
  }
  ! bitmaps_have "$r" in-use ||
    fail "$name: a bitmap is still in use after a clean stop"
  qemu-img compare -q "$r" "$q" || fail "$name: guest data differs"

  # The bitmaps as stored: read by qemu-nbd from both images, and by us.
  start_qemu_nbd "$q" "$tmpdir/qemu.sock" -r "${qemu_args[@]}"
  local qu=$qemu_uri qpid=$qemu_pid
  start_qemu_nbd "$r" "$tmpdir/qemu2.sock" -r "${qemu_args[@]}"
  local qr=$qemu_uri
  start_server "$r" --socket "$tmpdir/ours.sock" -r "${ours_args[@]}"
  for b in "${bitmaps[@]}"; do
    local mq mr mo
    mq=$(dirty_map "$qu" "$b")
    mr=$(dirty_map "$qr" "$b")
    mo=$(dirty_map "$uri" "$b")
    [ "$mq" = "$mr" ] || fail "$name: bitmap $b as we stored it differs"
    [ "$mq" = "$mo" ] || fail "$name: bitmap $b as we read it differs"
    [ "$(qemu_dirty_map "$tmpdir/qemu.sock" "$b")" = \
      "$(qemu_dirty_map "$tmpdir/ours.sock" "$b")" ] ||
      fail "$name: bitmap $b differs through qemu-img map x-dirty-bitmap"
  done
  stop_server
  stop_qemu_nbd "$qpid"
  stop_qemu_nbd
  ok "$name: stored bitmaps identical to qemu-nbd's, read by both" \
     "(nbdinfo and qemu-img map)"
}

# The options are documented, and checked.
out="$("$QCOW2_NBD" serve --help)" || fail "serve --help"
for o in bitmap load-snapshot; do
  grep -q -- "--$o=" <<< "$out" || fail "serve --help does not mention --$o"
  grep -qF -- "\\-\\-${o//-/\\-}=" "$abs_top_srcdir/man/qcow2-nbd.8" ||
    fail "the man page does not describe --$o"
done
many=()
for i in $(seq 63); do many+=(--bitmap "b$i"); done
serve_refused "--bitmap=" "invalid bitmap name" x.qcow2 --bitmap=
serve_refused "63 bitmaps" "too many --bitmap" x.qcow2 "${many[@]}"
ok "--bitmap and --load-snapshot documented; bad --bitmap use refused"

round 64k-clusters 65536 300
round 4k-clusters 4096 200

# Start-up errors, named as qemu-nbd names them.
img="$tmpdir/64k-clusters.ours.qcow2"
serve_refused "a missing bitmap" "bitmap 'nope' is not found" "$img" \
  --bitmap nope
# An inconsistent bitmap: one a qemu-nbd killed with -9 left in use.
start_qemu_nbd "$img" "$tmpdir/qemu.sock"
kill -KILL "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
bitmaps_have "$img" 'b4k 4096 in-use auto' ||
  fail "qemu-nbd killed with -9 did not leave b4k in use"
serve_refused "an inconsistent bitmap" "bitmap 'b4k' is inconsistent" \
  "$img" --bitmap b4k
# Served without it, the image is fine and the bitmap stays in use.
start_server "$img" --socket "$tmpdir/ours.sock"
image_io "$uri" -f raw 'write -P 0x66 0 64k'
stop_server
bitmaps_have "$img" 'b4k 4096 in-use auto' ||
  fail "an inconsistent bitmap was touched"
check_clean "$img" "after serving an image with inconsistent bitmaps"
ok "missing and inconsistent bitmaps refused by name; left alone otherwise"

# A bitmap of the backing file, found through the overlay as qemu-nbd -B
# finds it, on a disk larger than the backing file's.
back="$tmpdir/back.qcow2" over="$tmpdir/over.qcow2"
make_image "$back" $(( 4 * MiB ))
qemu-img bitmap --add -g 4k "$back" inback
image_io "$back" 'write -P 1 1M 10k' 'write -P 2 4090k 6k'
make_image "$over" $(( 8 * MiB )) -b "$back" -F qcow2
start_server "$over" --socket "$tmpdir/ours.sock" -r --bitmap inback
start_qemu_nbd "$over" "$tmpdir/qemu.sock" -r -B inback
[ "$(dirty_map "$uri" inback)" = "$(dirty_map "$qemu_uri" inback)" ] ||
  fail "a backing file's bitmap differs from qemu-nbd's"
stop_server
stop_qemu_nbd
ok "a backing file's bitmap, through a larger overlay, as qemu-nbd has it"

# The dirty-image repair counts bitmap clusters: a lazy_refcounts image
# QEMU left dirty, with a bitmap in use (qemu-io aborted), and one set
# dirty by hand with consistent bitmaps holding data, whose refcounts the
# repair must rebuild too.  Ours and qemu-nbd (which repairs on open as
# well) then get the same writes and must agree.
img="$tmpdir/lazy.qcow2"
make_image "$img" $(( 16 * MiB )) -o lazy_refcounts=on,cluster_size=4k
qemu-img bitmap --add -g 4k "$img" b0
qemu-io -c 'write -P 0x77 0 1M' -c abort "$img" >/dev/null 2>&1 || true
rc=0; qemu-img check "$img" >/dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "qemu-io abort did not leave a dirty image ($rc)"
start_server "$img" --socket "$tmpdir/ours.sock"
stop_server
check_clean "$img" "a dirty image with an in-use bitmap, repaired"
bitmaps_have "$img" "b0 4096 in-use auto" || fail "b0 not left in use"
ok "dirty image with a bitmap in use: repaired, check clean"

img="$tmpdir/lazy2.qcow2"
make_image "$img" $(( 16 * MiB )) -o lazy_refcounts=on,cluster_size=4k
image_io "$img" 'write -P 0x11 0 4M'
qemu-img bitmap --add -g 512 "$img" b512
qemu-img bitmap --add --disable "$img" off
image_io "$img" 'write -P 0x22 1M 100k' 'write -P 0x33 9M 5k'
"$PYTHON" - "$img" <<'PY'
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(72)
    v = struct.unpack('>Q', f.read(8))[0]
    f.seek(72)
    f.write(struct.pack('>Q', v | 1))
PY
cp "$img" "$tmpdir/lazy2.qemu.qcow2"
start_server "$img" --socket "$tmpdir/ours.sock" --bitmap b512 --bitmap off
start_qemu_nbd "$tmpdir/lazy2.qemu.qcow2" "$tmpdir/qemu.sock" -B b512 -B off
"$PYTHON" "$diff_py" "$uri" "$qemu_uri" b512 off --seed "$seed" --ops 40 \
  --cluster 4096 || fail "dirty maps differ after a repair"
stop_server
stop_qemu_nbd
check_clean "$img" "a dirty image with consistent bitmaps, repaired"
[ "$(bitmaps_of "$img")" = "$(bitmaps_of "$tmpdir/lazy2.qemu.qcow2")" ] ||
  fail "bitmaps after a repair differ from qemu-nbd's"
ok "dirty image with consistent bitmaps: repaired, check clean, as qemu-nbd"
