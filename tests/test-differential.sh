#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Differential write test (issue 3): for each kind of image qemu-img can
# make (v2 and v3, 512 B and 2 MiB clusters, refcount_bits 1 and 64,
# extended L2 over a backing file, zlib and zstd compressed, a three-level
# backing chain, internal snapshots), serve it read-write and let
# differential.py hammer it from four connections with random writes,
# zeroes and trims mirrored into a shadow raw file.  Then the server must
# stop cleanly, `qemu-img compare` must call shadow and image identical,
# `qemu-img check` must exit 0, backing files must be untouched, and an
# internal snapshot must still restore exactly the data it was taken of.
# DIFF_SEED=N replays a run; DIFF_OPS=N changes the load; DIFF_ARGS adds
# differential.py options (--lax-fast-zero to try the test on qemu-nbd).

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io cmp md5sum
requires_python_nbd
requires_server

ops=${DIFF_OPS:-150}
seed=${DIFF_SEED:-$RANDOM$RANDOM}
echo "seed $seed (DIFF_SEED=$seed replays)"
run=0

# differential NAME IMG [SERVER-ARGS...] [-- DIFFERENTIAL-ARGS...]:
# serve IMG, run the random load, stop, compare with the shadow, check.
differential ()
{
  local name=$1 img=$2; shift 2
  local sargs=() dargs=() in_d=0 a rc
  for a in "$@"; do
    if [ "$a" = -- ]; then in_d=1; continue; fi
    if [ "$in_d" = 1 ]; then dargs+=("$a"); else sargs+=("$a"); fi
  done
  run=$(( run + 1 ))
  local before="$tmpdir/$name.before.raw" shadow="$tmpdir/$name.shadow.raw"
  image_to_raw "$img" "$before"
  start_server "$img" ${sargs[@]+"${sargs[@]}"}
  rc=0
  run_timeout 300 "$PYTHON" "$abs_top_srcdir/tests/differential.py" \
    "$uri" "$before" "$shadow" --seed "$(( seed + run ))" --ops "$ops" \
    ${dargs[@]+"${dargs[@]}"} ${DIFF_ARGS:-} >"$tmpdir/diff.out" 2>&1 || rc=$?
  cat "$tmpdir/diff.out"
  [ "$rc" -eq 0 ] || fail "$name: differential.py exited $rc"
  stop_server
  rm -f "$before"
  local out
  if ! out="$(qemu-img compare -f raw "$shadow" -F qcow2 "$img" 2>&1)"; then
    fail "$name: image and shadow differ after a clean stop: $out"
  fi
  check_clean "$img" "$name"
  rm -f "$shadow"
  ok "$name: shadow identical, check clean"
}

MiB=$(( 1024 * 1024 ))
# Virtual sizes that are not a multiple of the cluster size, so the last
# cluster is partial.
size_a=$(( 24 * MiB + 3 * 512 ))

# A raw file of recognisable, incompressible-enough data for backing files
# and compressed images (with holes and zero runs).
make_pattern ()
{
  local file=$1 size=$2
  "$PYTHON" - "$file" "$size" <<'EOF'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(size)
with open(path, "wb") as f:
    off = 0
    while off < size:
        n = min(rng.randint(1, 300000), size - off)
        kind = rng.random()
        if kind < 0.2:
            f.write(bytes(n))
        elif kind < 0.6:
            f.write(bytes([rng.randrange(1, 256)]) * n)
        else:
            f.write(rng.randbytes(n))
        off += n
EOF
}

# ---- v3 and v2, default clusters -----------------------------------------

img="$tmpdir/v3.qcow2"
make_image "$img" "$size_a"
image_io "$img" "write -P 0x11 0 3M" "write -z 5M 1M" \
  "write -P 0x22 $(( size_a - 70000 )) 70000"
differential v3 "$img" --discard=unmap
# The same image again, now full of allocated clusters to overwrite in
# place and to free.
differential v3-again "$img" --discard=unmap --threads 1

img="$tmpdir/v2.qcow2"
make_image "$img" "$size_a" -o compat=0.10
image_io "$img" "write -P 0x11 64k 3M"
differential v2 "$img" --discard=unmap

# TRIM is a no-op without --discard=unmap, as in qemu-nbd.
img="$tmpdir/ignore.qcow2"
make_image "$img" "$size_a"
image_io "$img" "write -P 0x33 0 8M"
differential discard-ignore "$img" -- --trim-noop

# ---- cluster sizes and refcount widths -------------------------------------

img="$tmpdir/c512.qcow2"
make_image "$img" $(( 6 * MiB + 512 )) -o cluster_size=512,refcount_bits=1
image_io "$img" "write -P 0x44 1000 100k"
differential "512B-clusters-refcount1" "$img" --discard=unmap -- \
  --cluster 512 --max-len $(( 300 * 1024 ))

img="$tmpdir/c2m.qcow2"
make_image "$img" $(( 40 * MiB + 4096 )) -o cluster_size=2M,refcount_bits=64
image_io "$img" "write -P 0x55 1M 3M"
differential "2M-clusters-refcount64" "$img" --discard=unmap -- \
  --cluster $(( 2 * MiB )) --max-len $(( 5 * MiB ))

img="$tmpdir/v2-512-r64.qcow2"
make_image "$img" $(( 4 * MiB + 1024 )) \
  -o compat=0.10,cluster_size=512,refcount_bits=16
differential "v2-512B-clusters" "$img" --discard=unmap -- \
  --cluster 512 --max-len $(( 200 * 1024 ))

img="$tmpdir/r64.qcow2"
make_image "$img" "$size_a" -o cluster_size=4k,refcount_bits=64
differential "4k-clusters-refcount64" "$img" --discard=unmap -- --cluster 4096

# ---- backing files: extended L2, v2 -----------------------------------------

back="$tmpdir/back.raw"
make_pattern "$back" "$size_a"
back_sum=$(md5sum < "$back")

requires_qcow2_feature extended_l2=on
img="$tmpdir/xl2.qcow2"
make_image "$img" "$size_a" -o extended_l2=on -b "$back" -F raw
image_io "$img" "write -P 0x66 100k 10k" "write -z 1M 64k"
differential "extended-L2-over-backing" "$img" --discard=unmap -- \
  --cluster 2048

img="$tmpdir/xl2-nob.qcow2"
make_image "$img" "$size_a" -o extended_l2=on,cluster_size=128k
differential "extended-L2-128k" "$img" --discard=unmap -- --cluster 4096

img="$tmpdir/v2-back.qcow2"
make_image "$img" "$size_a" -o compat=0.10 -b "$back" -F raw
differential "v2-over-backing" "$img" --discard=unmap

img="$tmpdir/v3-back.qcow2"
make_image "$img" "$size_a" -o cluster_size=16k -b "$back" -F raw
differential "v3-over-backing" "$img" --discard=unmap -- --cluster 16384

[ "$(md5sum < "$back")" = "$back_sum" ] || fail "the backing file was written"
ok "backing file untouched"

# ---- compressed images -----------------------------------------------------

src="$tmpdir/compress-src.raw"
make_pattern "$src" $(( 20 * MiB + 1536 ))
for ct in zlib zstd; do
  if ! qemu-img create -q -f qcow2 -o compression_type=$ct \
       "$tmpdir/probe.qcow2" 1M >/dev/null 2>&1; then
    echo "qemu-img cannot make $ct images: not tested"
    continue
  fi
  img="$tmpdir/$ct.qcow2"
  qemu-img convert -c -f raw -O qcow2 -o compression_type=$ct \
    "$src" "$img" || fail "qemu-img convert -c $ct"
  differential "compressed-$ct" "$img" --discard=unmap
done

# ---- a three-level backing chain: raw <- qcow2 <- qcow2 --------------------

base="$tmpdir/chain-base.raw"
mid="$tmpdir/chain-mid.qcow2"
top="$tmpdir/chain-top.qcow2"
make_pattern "$base" "$size_a"
make_image "$mid" "$size_a" -o cluster_size=4k -b "$base" -F raw
image_io "$mid" "write -P 0x77 200k 1M" "write -z 4M 200k" \
  "write -P 0x78 $(( size_a - 5000 )) 5000"
make_image "$top" "$size_a" -o cluster_size=64k -b "$mid" -F qcow2
image_io "$top" "write -P 0x79 150k 300k" "write -z 8M 64k"
sums="$(md5sum "$base" "$mid")"
differential "three-level-chain" "$top" --discard=unmap
[ "$(md5sum "$base" "$mid")" = "$sums" ] ||
  fail "a backing file of the chain was written"
check_clean "$mid" "chain middle"
ok "three-level chain: backing files untouched"

# ---- internal snapshots ------------------------------------------------------

img="$tmpdir/snap.qcow2"
make_image "$img" "$size_a"
image_io "$img" "write -P 0x81 0 4M" "write -P 0x82 6M 2M" \
  "write -z 9M 1M" "write -P 0x83 $(( size_a - 65536 )) 65536"
qemu-img snapshot -c s1 "$img" || fail "qemu-img snapshot -c s1"
snap_raw="$tmpdir/snap-s1.raw"
image_to_raw "$img" "$snap_raw"
# Some clusters rewritten after the snapshot (refcount 1 again, COPIED),
# most still shared with it.
image_io "$img" "write -P 0x84 1M 128k" "write -P 0x85 12M 1M"
differential "internal-snapshot" "$img" --discard=unmap
qemu-img snapshot -a s1 "$img" || fail "qemu-img snapshot -a s1"
image_to_raw "$img" "$tmpdir/snap-after.raw"
cmp "$snap_raw" "$tmpdir/snap-after.raw" ||
  fail "snapshot s1 does not restore the data it was taken of"
check_clean "$img" "after snapshot -a"
ok "internal snapshot restores exactly"

# A second snapshot taken between two serving rounds, deleted afterwards.
qemu-img snapshot -c s2 "$img" || fail "qemu-img snapshot -c s2"
image_to_raw "$img" "$tmpdir/snap-s2.raw"
differential "two-snapshots" "$img" --discard=unmap
qemu-img snapshot -d s1 "$img" || fail "qemu-img snapshot -d s1"
check_clean "$img" "after snapshot -d s1"
qemu-img snapshot -a s2 "$img" || fail "qemu-img snapshot -a s2"
image_to_raw "$img" "$tmpdir/snap-after2.raw"
cmp "$tmpdir/snap-s2.raw" "$tmpdir/snap-after2.raw" ||
  fail "snapshot s2 does not restore the data it was taken of"
check_clean "$img" "after snapshot -a s2"
ok "second snapshot restores exactly"
