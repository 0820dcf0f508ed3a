#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Serve a matrix of qcow2 images made by qemu-img/qemu-io (v2 and v3,
# cluster sizes 512 to 2M, every refcount width, odd sizes, zlib and
# zstd compression, extended L2, zero clusters, a raw/qcow2 backing chain,
# heavy fragmentation, preallocation, external data files) and check for
# each that the export reads exactly like qemu's view of the image and
# that base:allocation and qemu:allocation-depth agree with qemu-img map.

SMOKE_TEST=1
source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io nbdinfo
requires_python_nbd
requires_server

compare_map="$abs_top_srcdir/tests/compare-map.py"

# check_image IMAGE DESCRIPTION: serve, compare contents and both maps.  Each image is checked in a subshell with its
# own cleanups so one failing image does not hide the others; the test
# fails at the end with the list.
failures=()
check_image ()
{
  local rc=0
  set +e
  (
    set -e
    _cleanup_cmds=()
    _server_logs=()
    trap _run_cleanups EXIT
    check_one_image "$@"
  )
  rc=$?
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "FAIL (continuing): $2" >&2
    failures+=("$2")
  fi
}

check_one_image ()
{
  local img=$1 desc=$2 out
  start_server "$img" --read-only
  compare_with_uri "$img"
  # HOLE and ZERO must match qemu-img map exactly, and whatever the
  # export calls ZERO must also read as zeroes.
  image_to_raw "$img" "$tmpdir/content.raw"
  out="$("$PYTHON" "$compare_map" \
           --content "$tmpdir/content.raw" base "$img" "$uri" 2>&1)" ||
    fail "$desc: $out"
  out="$("$PYTHON" "$compare_map" depth "$img" "$uri" 2>&1)" ||
    fail "$desc: $out"
  stop_server
  rm -f "$tmpdir/content.raw"
  ok "$desc"
}

# fill IMAGE SIZE: patterned data at odd offsets, ranges that cross
# clusters, zeroed ranges (aligned and not) and a write that ends exactly
# at the end of the device.
fill ()
{
  local img=$1 size=$2
  local third=$(( size / 3 + 333 ))
  local half=$(( size / 2 / 131072 * 131072 ))
  local quarter=$(( size / 4 + 1000 ))
  image_io "$img" \
    "write -P 0x11 0 512" \
    "write -P 0x5a 12345 7777" \
    "write -P 0xa5 $third 70001" \
    "write -z $half 131072" \
    "write -P 0x3c $(( half + 131072 )) 1" \
    "write -z $quarter 9000" \
    "write -P 0xee $(( size - 5000 )) 5000"
}

mib=$(( 1024 * 1024 ))

# ---- version and cluster size ------------------------------------------

img="$tmpdir/v2.qcow2"
make_image "$img" 4M -o compat=0.10
fill "$img" $(( 4 * mib ))
check_image "$img" "v2 (compat=0.10), 64k clusters"

for cs in 512 4k 64k 2M; do
  img="$tmpdir/v3-$cs.qcow2"
  size=4M
  [ "$cs" = 2M ] && size=32M
  make_image "$img" "$size" -o compat=1.1,cluster_size=$cs
  bytes=$(qemu-img info --output=json "$img" |
            "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
  fill "$img" "$bytes"
  check_image "$img" "v3, cluster_size=$cs, $size"
done

img="$tmpdir/v2-512.qcow2"
make_image "$img" 2M -o compat=0.10,cluster_size=512
fill "$img" $(( 2 * mib ))
check_image "$img" "v2, cluster_size=512"

# ---- refcount widths ---------------------------------------------------

for rb in 1 2 4 8 16 32 64; do
  img="$tmpdir/refcount-$rb.qcow2"
  make_image "$img" 3M -o refcount_bits=$rb,cluster_size=4k
  fill "$img" $(( 3 * mib ))
  check_image "$img" "refcount_bits=$rb"
done

# ---- odd virtual size --------------------------------------------------

# Not a multiple of the cluster size (qemu-img keeps 512-byte sectors).
odd=$(( 5 * mib + 64 * 1024 * 3 + 1536 ))
img="$tmpdir/odd.qcow2"
make_image "$img" "$odd" -o cluster_size=64k
fill "$img" "$odd"
check_image "$img" "odd virtual size $odd with 64k clusters"

img="$tmpdir/odd-v2.qcow2"
make_image "$img" "$odd" -o compat=0.10,cluster_size=4k
fill "$img" "$odd"
check_image "$img" "odd virtual size $odd, v2, 4k clusters"

# ---- compression -------------------------------------------------------

# count_spanning_compressed IMAGE: print "COMPRESSED SPANNING", the number
# of compressed L2 entries and of those whose sector range crosses a host
# cluster boundary (read straight from the L1/L2 tables).
count_spanning_compressed ()
{
  "$PYTHON" - "$1" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb")
hdr = f.read(104)
(cluster_bits,) = struct.unpack(">I", hdr[20:24])
l1_size, l1_off = struct.unpack(">IQ", hdr[36:48])
cs = 1 << cluster_bits
x = 62 - (cluster_bits - 8)
f.seek(l1_off)
l1 = struct.unpack(">%dQ" % l1_size, f.read(8 * l1_size))
comp = span = 0
for e in l1:
    l2off = e & 0x00fffffffffffe00
    if not l2off:
        continue
    f.seek(l2off)
    for (ent,) in struct.iter_unpack(">Q", f.read(cs)):
        if ent & (1 << 62):
            comp += 1
            off = ent & ((1 << x) - 1)
            sectors = ((ent >> x) & ((1 << (cluster_bits - 8)) - 1)) + 1
            end = (off & ~511) + sectors * 512
            if off // cs != (end - 1) // cs:
                span += 1
print(comp, span)
EOF
}

# Partly compressible source data: clusters compress to different sizes,
# so with 4k clusters many compressed clusters straddle host clusters.
src="$tmpdir/compressible.raw"
"$PYTHON" - "$src" <<'EOF'
import random, sys
r = random.Random(1234)
size = 6 * 1024 * 1024
with open(sys.argv[1], "wb") as f:
    pos = 0
    while pos < size:
        kind = r.randrange(5)
        n = r.choice([1000, 3000, 4096, 7000, 20000])
        n = min(n, size - pos)
        if kind == 0:
            f.write(bytes(n))                        # zeroes
        elif kind == 1:
            f.write(r.randbytes(n))                  # incompressible
        elif kind == 2:
            f.write(((b"qcow2-nbd %d " % pos) * (n // 12 + 1))[:n])
        else:
            half = r.randbytes(n // 3)
            f.write((half + bytes(n))[:n])           # partly compressible
        pos += n
    f.truncate(size)
EOF

for ctype in zlib zstd; do
  if [ "$ctype" = zstd ]; then
    if ! qemu-img create -q -f qcow2 -o compression_type=zstd \
         "$tmpdir/probe.qcow2" 1M 2>/dev/null; then
      echo "SKIP part: qemu-img has no zstd support"
      continue
    fi
  fi
  for cs in 4k 64k; do
    img="$tmpdir/compressed-$ctype-$cs.qcow2"
    qemu-img convert -q -c -f raw -O qcow2 \
      -o cluster_size=$cs,compression_type=$ctype "$src" "$img" ||
      fail "qemu-img convert -c ($ctype, $cs)"
    # Mix in uncompressed and zero clusters over the compressed ones.
    image_io "$img" "write -P 0x77 100000 5000" "write -z 2M 64k"
    if [ "$cs" = 4k ]; then
      spans="$(count_spanning_compressed "$img")"
      [ "${spans#* }" -gt 0 ] ||
        fail "test setup: no compressed cluster spans host clusters ($spans)"
      echo "($ctype 4k image: compressed clusters, spanning: $spans)"
    fi
    check_image "$img" "$ctype compression, cluster_size=$cs"
  done
done

# v2 images can hold (zlib) compressed clusters too.
img="$tmpdir/compressed-v2.qcow2"
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=4k \
  "$src" "$img" || fail "qemu-img convert -c compat=0.10"
check_image "$img" "zlib compression, v2, cluster_size=4k"

# ---- extended L2 -------------------------------------------------------

# 64k clusters, 32 subclusters of 2k: allocated, zero and unallocated
# subclusters (the last ones show the backing file) in the same cluster.
if qemu-img create -q -f qcow2 -o extended_l2=on "$tmpdir/probe.qcow2" 1M \
   2>/dev/null; then
  back="$tmpdir/xl2-backing.qcow2"
  make_image "$back" 4M
  image_io "$back" "write -P 0x42 0 4M"
  img="$tmpdir/xl2.qcow2"
  make_image "$img" 4M -o extended_l2=on,cluster_size=64k \
    -b "$back" -F qcow2
  image_io "$img" \
    "write -P 0x01 0 2k" \
    "write -z 4k 2k" \
    "write -P 0x02 10k 6k" \
    "write -P 0x03 65535 3" \
    "write -z 131072 65536" \
    "write -P 0x04 200000 1000" \
    "write -z 300000 2048" \
    "write -P 0x05 1M 64k" \
    "write -z 2M 30k"
  check_image "$img" "extended L2, mixed subclusters over a backing file"

  img="$tmpdir/xl2-standalone.qcow2"
  make_image "$img" 3M -o extended_l2=on,cluster_size=64k
  fill "$img" $(( 3 * mib ))
  image_io "$img" "write -P 0x09 6k 2k" "write -z 64k 4k"
  check_image "$img" "extended L2 without backing file"
else
  echo "SKIP part: qemu-img has no extended_l2"
fi

# ---- zero clusters -----------------------------------------------------

img="$tmpdir/zero.qcow2"
make_image "$img" 4M -o cluster_size=64k
image_io "$img" "write -P 0x61 0 4M" "write -z 64k 192k" \
  "write -z 1M 1M" "write -z 3M 128k"
check_image "$img" "zero clusters over allocated data"

img="$tmpdir/zero-over-backing.qcow2"
back="$tmpdir/zero-backing.qcow2"
make_image "$back" 2M
image_io "$back" "write -P 0x33 0 2M"
make_image "$img" 2M -b "$back" -F qcow2
image_io "$img" "write -z 0 64k" "write -z 512k 128k" \
  "write -P 0x44 1M 100"
check_image "$img" "zero clusters hiding the backing file"

# ---- backing chain: raw <- qcow2 <- qcow2 -------------------------------

base="$tmpdir/base.raw"
make_raw "$base" 3M
image_io "$base" -f raw "write -P 0xb1 0 1M" "write -P 0xb2 2M 512k"
mid="$tmpdir/mid.qcow2"
make_image "$mid" 5M -b "$base" -F raw -o cluster_size=4k
image_io "$mid" "write -P 0xc1 512k 1M" "write -z 2M 64k" \
  "write -P 0xc2 4M 8k"
top="$tmpdir/top.qcow2"
make_image "$top" 7M -b "$mid" -F qcow2
image_io "$top" "write -P 0xd1 100k 50k" "write -z 2600k 64k" \
  "write -P 0xd2 6M 123" "write -P 0xd3 $(( 3 * mib - 4096 )) 8192"
check_image "$top" "chain base.raw <- mid.qcow2 <- top.qcow2, each larger"

# ---- fragmentation -----------------------------------------------------

# Thousands of small writes in random guest order: host clusters end up
# in no particular order and L2 entries never coalesce.
img="$tmpdir/frag.qcow2"
make_image "$img" 8M -o cluster_size=4k
"$PYTHON" - > "$tmpdir/frag.cmds" <<'EOF'
import random
r = random.Random(42)
clusters = list(range(8 * 1024 * 1024 // 4096))
r.shuffle(clusters)
for i, c in enumerate(clusters[:2500]):
    off = c * 4096 + r.randrange(0, 3000)
    n = r.randrange(1, 1096)
    if i % 7 == 0:
        print("write -z %d %d" % (c * 4096, 4096))
    else:
        print("write -P 0x%02x %d %d" % (r.randrange(1, 256), off, n))
EOF
qemu-io -f qcow2 "$img" < "$tmpdir/frag.cmds" > "$tmpdir/frag.out" 2>&1 ||
  fail "qemu-io fragmentation writes"
grep -qi error "$tmpdir/frag.out" && fail "qemu-io fragmentation writes"
check_image "$img" "fragmented image (2500 small writes in random order)"

# ---- preallocation -----------------------------------------------------

for prealloc in metadata falloc full; do
  img="$tmpdir/prealloc-$prealloc.qcow2"
  make_image "$img" 3M -o preallocation=$prealloc
  image_io "$img" "write -P 0x71 70000 9999" "write -z 1M 64k"
  check_image "$img" "preallocation=$prealloc"
done

# ---- external data file ------------------------------------------------

for raw in off on; do
  img="$tmpdir/ext-$raw.qcow2"
  data="$tmpdir/ext-$raw.data"
  make_image "$img" 4M -o data_file="$data",data_file_raw=$raw
  fill "$img" $(( 4 * mib ))
  check_image "$img" "external data file, data_file_raw=$raw"
done

if [ "${#failures[@]}" -gt 0 ]; then
  fail "${#failures[@]} image(s) failed: $(printf '[%s] ' "${failures[@]}")"
fi
