#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The libqcow2 write path against qemu-img, the oracle.  For each kind of
# image: random writes, zeroes and discards through the library
# (test-qcow2-write random), mirrored into a raw shadow; then qemu-img
# compare must call the two identical and qemu-img check must exit 0.
# Kinds: v3 and v2, 512 B and 2 MiB clusters, refcount_bits 1 and 64,
# extended L2, zlib and zstd compressed, a three-level backing chain, a
# v2 overlay, an image with an internal snapshot (which must still hold
# its data: qemu-img snapshot -a gives it back), several threads at once,
# a disk size that is not a multiple of the cluster size; writes that
# meet ENOSPC; the race test (overlapping writes and discards into one
# cluster); and writes through the nbdkit plugin.
#
# WRITE_OPS scales the number of operations (default 1000 per image);
# WRITE_SKIP, a regular expression, skips the random tests it matches.
source "$(dirname "$0")/functions.sh"

requires qemu-img
requires qemu-io

prog="$abs_top_builddir/tests/test-qcow2-write"
[ -x "$prog" ] || skip "$prog not built"
ops="${WRITE_OPS:-1000}"
seed="${WRITE_SEED:-$$}"
echo "seed $seed (WRITE_SEED=$seed to repeat)"

# Some data to write over: allocated, zero, compressed-free clusters.
prefill ()
{
  qemu-io -f qcow2 \
    -c 'write -P 0x11 0 3M' \
    -c 'write -P 0x22 5M 300k' \
    -c 'write -z 6M 1M' \
    -c 'write -P 0x33 9M 64k' \
    "$1" >/dev/null
}

# check_image IMG SHADOW WHAT
check_image ()
{
  local rc=0
  qemu-img compare -q -f qcow2 -F raw "$1" "$2" ||
    fail "$3: image and shadow differ"
  qemu-img check -q "$1" || rc=$?
  [ "$rc" -eq 0 ] || { qemu-img check "$1" >&2 || :; fail "$3: qemu-img check exit $rc"; }
  ok "$3"
}

# random_test WHAT IMG [THREADS]
random_test ()
{
  local what="$1" img="$2" threads="${3:-1}"
  local shadow="$tmpdir/shadow.raw"
  if [ -n "${WRITE_SKIP:-}" ] && [[ $what =~ $WRITE_SKIP ]]; then
    echo "skipped: $what"
    return 0
  fi
  rm -f "$shadow"
  qemu-img convert -O raw "$img" "$shadow"
  $UNIT "$prog" random "$img" "$shadow" "$seed" "$ops" "$threads" ||
    fail "$what: random operations failed"
  check_image "$img" "$shadow" "$what"
}

new ()   # new NAME SIZE OPTIONS...
{
  local f="$tmpdir/$1.qcow2" size="$2"
  shift 2
  qemu-img create -q -f qcow2 "$@" "$f" "$size"
  echo "$f"
}

# A raw base and a qcow2 over it, the lower layers of the overlays below.
base="$tmpdir/base.raw"
qemu-img create -q -f raw "$base" 48M
qemu-io -f raw -c 'write -P 0x44 0 20M' -c 'write -P 0x45 30M 5M' "$base" \
  >/dev/null
mid="$tmpdir/mid.qcow2"
qemu-img create -q -f qcow2 -b base.raw -F raw "$mid"
qemu-io -f qcow2 -c 'write -P 0x55 1M 2M' -c 'write -z 10M 1M' \
  -c 'write -P 0x56 16M 8M' "$mid" >/dev/null

img="$(new v3 64M)"; prefill "$img"
random_test "v3, 64k clusters" "$img"

img="$(new v2 64M -o compat=0.10)"; prefill "$img"
random_test "v2 (compat=0.10)" "$img"

# A disk whose size is not a multiple of the cluster size: the last
# cluster is partly outside it.
img="$(new odd 20000256)"; prefill "$img"
random_test "size not cluster aligned" "$img"
img="$(new oddx 20000256 -o extended_l2=on -b mid.qcow2 -F qcow2)"
random_test "size not cluster aligned, extended L2 overlay" "$img"

img="$(new c512 16M -o cluster_size=512)"; prefill "$img"
random_test "512-byte clusters" "$img"

img="$(new c2m 96M -o cluster_size=2M)"; prefill "$img"
random_test "2 MiB clusters" "$img"

img="$(new rc1 32M -o refcount_bits=1)"; prefill "$img"
random_test "refcount_bits=1" "$img"

img="$(new rc64 32M -o refcount_bits=64,cluster_size=4k)"; prefill "$img"
random_test "refcount_bits=64, 4k clusters" "$img"

img="$(new extl2 64M -o extended_l2=on)"; prefill "$img"
random_test "extended L2" "$img"

img="$(new extl2s 16M -o extended_l2=on,cluster_size=16k)"; prefill "$img"
random_test "extended L2, 16k clusters" "$img"

# Compressed images: every cluster with data is compressed.
for ct in zlib zstd; do
  src="$(new src-$ct 32M)"; prefill "$src"
  img="$tmpdir/comp-$ct.qcow2"
  qemu-img convert -c -O qcow2 -o compression_type=$ct "$src" "$img"
  random_test "$ct-compressed" "$img"
done

# A three-level chain: raw <- qcow2 <- qcow2 (written).
top="$tmpdir/top.qcow2"
qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 "$top"
qemu-io -f qcow2 -c 'write -P 0x66 2M 100k' "$top" >/dev/null
random_test "three-level backing chain" "$top"

# Overlays over the same backing file: v2 (no zero flag: discard does
# nothing there) and extended L2 (subclusters fall through to backing).
top2="$tmpdir/top-v2.qcow2"
qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 "$top2"
random_test "v2 overlay" "$top2"
top3="$tmpdir/top-extl2.qcow2"
qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 "$top3"
random_test "extended L2 overlay" "$top3"

# Internal snapshot: data clusters and L2 tables are shared; writes must
# copy them, and the snapshot must still read back exactly.
img="$(new snap 64M)"; prefill "$img"
before="$tmpdir/snap-before.raw"
qemu-img convert -O raw "$img" "$before"
qemu-img snapshot -c snap1 "$img"
random_test "internal snapshot (active layer)" "$img"
qemu-img snapshot -a snap1 "$img"
qemu-img compare -q -f qcow2 -F raw "$img" "$before" ||
  fail "snapshot: qemu-img snapshot -a does not give the snapshot back"
qemu-img check -q "$img" || fail "snapshot: check after snapshot -a"
ok "internal snapshot restored"

# Several threads at once, neighbours sharing edge clusters.
img="$(new mt 64M)"; prefill "$img"
random_test "4 threads, 64k clusters" "$img" 4
img="$(new mt512 12M -o cluster_size=512)"; prefill "$img"
random_test "3 threads, 512-byte clusters" "$img" 3
img="$(new mtext 32M -o extended_l2=on,cluster_size=32k -b mid.qcow2 -F qcow2)"
random_test "3 threads, extended L2 overlay" "$img" 3

# A full host file system: writes fail with ENOSPC, the rest stays
# exact, and the image checks clean once space is back.
for opts in cluster_size=64k cluster_size=512 extended_l2=on; do
  img="$(new enospc 16M -o $opts)"; prefill "$img"
  shadow="$tmpdir/shadow.raw"; rm -f "$shadow"
  qemu-img convert -O raw "$img" "$shadow"
  $UNIT "$prog" enospc "$img" "$shadow" "$seed" 400 ||
    fail "ENOSPC ($opts): random operations failed"
  check_image "$img" "$shadow" "ENOSPC from the host ($opts)"
  rm -f "$img"
done

# Races in one cluster: overlapping writes and a discard or zeroing.
for kind in plain overlay extl2; do
  case $kind in
    plain) img="$(new race 16M)" ;;
    overlay) img="$(new race-ov 16M -b mid.qcow2 -F qcow2)" ;;
    extl2) img="$(new race-x 16M -o extended_l2=on -b mid.qcow2 -F qcow2)" ;;
  esac
  $UNIT "$prog" race "$img" "$seed" 200 || fail "race ($kind) failed"
  rc=0; qemu-img check -q "$img" || rc=$?
  [ "$rc" -eq 0 ] || fail "race ($kind): qemu-img check exit $rc"
  ok "race: overlapping writes and discards ($kind)"
done

# The nbdkit plugin writes too: the same qemu-io commands through NBD
# into the image and directly into a raw copy must leave equal disks.
# The two writes in flight together do not overlap: overlapping ones may
# land in either order, through NBD and on the raw file alike.
plugin="$abs_top_builddir/plugin/.libs/nbdkit-qcow2nbd-plugin.so"
if ! command -v nbdkit >/dev/null || [ ! -f "$plugin" ]; then
  echo "skipped: plugin writes (nbdkit or the plugin missing)"
elif [ -n "${QCOW2NBD_SANITIZERS:-}" ] ||
     grep -q __asan_init <<< "$(nm -D "$plugin" 2>/dev/null)"; then
  echo "skipped: plugin writes (a sanitized plugin cannot be loaded)"
else
  img="$(new plugin 32M)"; prefill "$img"
  raw="$tmpdir/plugin.raw"
  qemu-img convert -O raw "$img" "$raw"
  cat > "$tmpdir/cmds.sh" <<'CMDS'
qemu-io -f raw -c 'write -P 0x21 1000 70000' -c 'write -z 2M 200k' \
  -c 'write -z -u 4M 128k' -c 'write -P 0x31 5000000 3' \
  -c 'aio_write -P 0x41 8M 64k' -c 'aio_write -P 0x42 9M 32k' \
  -c 'aio_flush' -c 'flush' -c 'discard 1M 1M' \
  -c 'write -P 0x51 -f 20M 1M' "$1" >/dev/null
CMDS
  nbdkit -U - -f "$plugin" file="$img" \
    --run "sh '$tmpdir/cmds.sh' \"\$uri\"" || fail "plugin: qemu-io failed"
  sh "$tmpdir/cmds.sh" "$raw"
  check_image "$img" "$raw" "plugin writes"
  nbdkit -U - -f "$plugin" file="$img" readonly=true \
    --run 'nbdinfo --can write "$uri"' &&
    fail "plugin: readonly=true still writable"
  ok "plugin readonly=true"
fi
