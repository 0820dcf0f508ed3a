#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Read a matrix of images made by qemu-img and qemu-io through libqcow2
# (test-qcow2-read) and compare the guest bytes with `qemu-img convert -O
# raw` and our map with `qemu-img map --output=json`: v2 and v3, cluster
# sizes 512 to 2M, every refcount width, an odd virtual size, zlib and
# zstd compression (with streams crossing host clusters), extended L2
# over a backing file, zero clusters, a raw/qcow2 chain with overlays
# larger than their backing, a fragmented image, preallocation, external
# data files.  Any mismatch fails the test.

source "$(dirname "$0")/functions.sh"

requires qemu-img qemu-io cmp
reader=$abs_top_builddir/tests/test-qcow2-read
[ -x "$reader" ] || fail "$reader not built"
cd "$tmpdir"

# The comparison of our map (JSON from test-qcow2-read -m) with qemu's.
# Segments are compared at every boundary either side has:
#   ours data/compressed -> qemu present, data, same depth (for a raw
#     layer qemu reports holes of the file as zero instead: accepted);
#     DATA host offsets must match qemu's where it gives one;
#   ours zero -> qemu present, zero, not data, same depth;
#   ours unallocated -> qemu not present, or (past the end of a shorter
#     backing layer) present zero synthesized by that layer.
cat > mapcmp.py <<'EOF'
import json, subprocess, sys

ours_path, image, fmt = sys.argv[1:4]
ours = json.load(open(ours_path))
qemu = json.loads(subprocess.check_output(
    ["qemu-img", "map", "--output=json", "-f", fmt, image]))
chain = json.loads(subprocess.check_output(
    ["qemu-img", "info", "--backing-chain", "--output=json", "-f", fmt,
     image]))
if isinstance(chain, dict):
    chain = [chain]
layer_fmt = [c["format"] for c in chain]
layer_size = [c["virtual-size"] for c in chain]

def find(lst, off):
    lo, hi = 0, len(lst) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if lst[mid]["start"] <= off:
            lo = mid
        else:
            hi = mid - 1
    return lst[lo]

def fail(msg):
    print("map mismatch: %s" % msg, file=sys.stderr)
    sys.exit(1)

end_o = ours[-1]["start"] + ours[-1]["length"] if ours else 0
end_q = qemu[-1]["start"] + qemu[-1]["length"] if qemu else 0
if end_o != end_q:
    fail("ours covers %d bytes, qemu %d" % (end_o, end_q))
cuts = sorted({e["start"] for e in ours} | {e["start"] for e in qemu}
              | {end_o})
for a, b in zip(cuts, cuts[1:]):
    o, q = find(ours, a), find(qemu, a)
    what = "[%d, %d): ours %s, qemu %s" % (a, b, o, q)
    t = o["type"]
    if t in ("data", "compressed"):
        if not q["present"] or q["depth"] != o["depth"] - 1:
            fail(what)
        raw = layer_fmt[q["depth"]] == "raw"
        if not q["data"] and not (raw and q["zero"]):
            fail(what)
        if t == "data" and q["data"] and "offset" in q:
            if q["offset"] + (a - q["start"]) != o["offset"] + (a - o["start"]):
                fail("host offset " + what)
    elif t == "zero":
        if not q["present"] or q["data"] or not q["zero"] \
           or q["depth"] != o["depth"] - 1:
            fail(what)
    elif t == "unallocated":
        if q["data"] or not q["zero"]:
            fail(what)
        if q["present"] and not (q["depth"] > 0
                                 and a >= layer_size[q["depth"]]):
            fail(what)
    else:
        fail("unknown type " + what)
EOF

# Partially compressible data: every 4k block is random for a varying
# share and a pattern for the rest, some blocks all random, some zero, so
# compressed sizes vary and 4k-cluster streams cross host clusters.
cat > mkdata.py <<'EOF'
import os, random, sys
path, size = sys.argv[1], int(sys.argv[2])
rnd = random.Random(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
with open(path, "wb") as f:
    for blk in range(size // 4096):
        kind = rnd.randrange(10)
        if kind == 0:
            f.write(b"\0" * 4096)
        elif kind == 1:
            f.write(rnd.randbytes(4096))
        else:
            n = rnd.randrange(4096)
            f.write(rnd.randbytes(n) + bytes([blk & 0xff]) * (4096 - n))
    f.write(rnd.randbytes(size % 4096))
EOF

# expect.py MAP WHAT...: the image really exercises what the case is
# for, so a qemu-img that writes something else can't make a case vacuous.
cat > expect.py <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
end = m[-1]["start"] + m[-1]["length"]
have = {
    "data": any(e["type"] == "data" for e in m),
    "zero": any(e["type"] == "zero" for e in m),
    "unallocated": any(e["type"] == "unallocated" for e in m),
    "compressed": any(e["type"] == "compressed" for e in m),
    "compressed-cross": any(
        e["type"] == "compressed" and e["cluster_offset"] == 0 and
        e["offset"] // 4096 != (e["offset"] + e["compressed_length"] - 1) // 4096
        for e in m),
    "backing": any(e["depth"] >= 2 for e in m),
    "depth3": any(e["depth"] >= 3 for e in m),
}
# subcluster:N: an extent boundary inside the image not aligned to N.
for w in sys.argv[2:]:
    if w.startswith("subcluster:"):
        n = int(w.split(":")[1])
        have[w] = any(e["start"] % n for e in m)
missing = [w for w in sys.argv[2:] if not have[w]]
if missing:
    print("%s lacks %s" % (sys.argv[1], missing), file=sys.stderr)
    sys.exit(1)
EOF

failures=0
cases=0

# check NAME IMAGE [FORMAT]: read IMAGE with libqcow2 twice (default
# parameters, then odd chunks, tiny map arrays and the smallest cache),
# compare bytes and maps with qemu's.
check ()
{
  local name=$1 img=$2 fmt=${3:-qcow2} what=${4:-data}
  cases=$((cases + 1))
  qemu-img convert -f "$fmt" -O raw "$img" "$name.expected"
  if ! $UNIT "$reader" -m "$name.map1" "$img" "$name.out1" ||
     ! cmp "$name.expected" "$name.out1" ||
     ! $PYTHON mapcmp.py "$name.map1" "$img" "$fmt" ||
     ! $UNIT "$reader" -b 65537 -e 3 -c 65536 -m "$name.map2" "$img" "$name.out2" ||
     ! cmp "$name.expected" "$name.out2" ||
     ! $PYTHON mapcmp.py "$name.map2" "$img" "$fmt" ||
     ! $PYTHON expect.py "$name.map1" $what; then
    echo "FAIL: $name"
    failures=$((failures + 1))
  else
    echo "ok: $name"
  fi
  rm -f "$name.expected" "$name.out1" "$name.out2"
}

io ()
{
  local img=$1; shift
  local args=()
  for c in "$@"; do args+=(-c "$c"); done
  qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null
}

# Patterned writes at odd offsets, zeroes, overwrites: the common filler.
fill ()
{
  local img=$1 size=$2
  io "$img" \
     "write -P 0x11 0 4096" \
     "write -P 0x22 1001 70000" \
     "write -P 0x33 $((size / 3 + 777)) 200000" \
     "write -z $((size / 3 + 100000)) 50000" \
     "write -P 0x44 $((size / 2)) 512" \
     "write -P 0x55 $((size - 3000)) 3000" \
     "write -P 0x66 $((size / 5)) 1048576" \
     "write -P 0x77 $((size / 5 + 4096)) 8192" \
     "write -P 0x88 4M 2M" \
     "write -z 4M 2M"
}

# v2 and v3, every cluster size.
for compat in 0.10 1.1; do
  for cs in 512 4096 65536 2097152; do
    n=c$compat-$cs
    qemu-img create -q -f qcow2 -o compat=$compat,cluster_size=$cs $n.qcow2 40M
    fill $n.qcow2 $((40 << 20))
    check $n $n.qcow2 qcow2 "data $([ $compat = 1.1 ] && echo zero)"
  done
done

# Every refcount width.
for rb in 1 2 4 8 16 32 64; do
  qemu-img create -q -f qcow2 -o refcount_bits=$rb,cluster_size=4096 \
    rb$rb.qcow2 8M
  fill rb$rb.qcow2 $((8 << 20))
  check rb$rb rb$rb.qcow2
done

# A virtual size that is not a multiple of the cluster size.
odd=100000256
qemu-img create -q -f qcow2 odd.qcow2 $odd
fill odd.qcow2 $odd
io odd.qcow2 "write -P 0x99 $((odd - 512)) 512"
check odd odd.qcow2
qemu-img create -q -f qcow2 -o cluster_size=2M odd2m.qcow2 $odd
fill odd2m.qcow2 $odd
check odd2m odd2m.qcow2

# Compressed images, zlib and zstd; 4k clusters put streams across host
# cluster boundaries.
$PYTHON mkdata.py data.raw $((6 << 20)) 7
for ct in zlib zstd; do
  for cs in 4096 65536 2097152; do
    n=comp-$ct-$cs
    qemu-img convert -q -c -f raw -O qcow2 \
      -o compression_type=$ct,cluster_size=$cs data.raw $n.qcow2
    check $n $n.qcow2 qcow2 "compressed $([ $cs = 4096 ] && echo compressed-cross)"
  done
done
# A compressed image written over: mixes compressed and normal clusters.
cp comp-zstd-65536.qcow2 comp-mixed.qcow2
io comp-mixed.qcow2 "write -P 0xab 100000 10000" "write -z 1048576 65536"
check comp-mixed comp-mixed.qcow2 qcow2 "data compressed zero"
# A v2 compressed image (zlib only).
qemu-img convert -q -c -f raw -O qcow2 -o compat=0.10,cluster_size=4096 \
  data.raw comp-v2.qcow2
check comp-v2 comp-v2.qcow2 qcow2 "compressed compressed-cross"

# Extended L2: subcluster writes and zeroes over a backing file, so some
# subclusters are unallocated and read through.
qemu-img create -q -f qcow2 -o cluster_size=65536 el2-base.qcow2 16M
io el2-base.qcow2 "write -P 0xb1 0 16M"
for cs in 16384 65536 2097152; do
  n=el2-$cs
  sc=$((cs / 32))
  qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs \
    -b el2-base.qcow2 -F qcow2 $n.qcow2 16M
  io $n.qcow2 \
     "write -P 0xc1 $sc $sc" \
     "write -P 0xc2 $((3 * sc)) $((2 * sc))" \
     "write -z $((6 * sc)) $sc" \
     "write -P 0xc3 $((cs + 5 * sc)) $((40 * sc))" \
     "write -z $((3 * cs + 2 * sc)) $((3 * sc))" \
     "write -P 0xc4 $((8 << 20)) 1234" \
     "discard $((cs * 6)) $cs"
  check $n $n.qcow2 qcow2 "data zero backing subcluster:$cs"
done
# Extended L2 without backing file.
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 el2-nb.qcow2 8M
fill el2-nb.qcow2 $((8 << 20))
check el2-nb el2-nb.qcow2 qcow2 "data zero unallocated subcluster:65536"

# Zero clusters (v3): plain zero over backing data, preallocated zero
# (write -z without -u over allocated clusters), discards.
qemu-img create -q -f qcow2 zero-base.qcow2 8M
io zero-base.qcow2 "write -P 0xd1 0 8M"
qemu-img create -q -f qcow2 -b zero-base.qcow2 -F qcow2 zero.qcow2 8M
io zero.qcow2 \
   "write -z 0 131072" \
   "write -P 0xd2 1M 1M" \
   "write -z 1M 65536" \
   "write -z -u 1572864 131072" \
   "write -P 0xd3 3M 65536" \
   "discard 3M 65536"
check zero zero.qcow2 qcow2 "data zero backing"

# A three-level chain: raw base, qcow2 middle larger than it, qcow2 top
# larger still; each layer writes its own ranges.
truncate -s 3000000 chain-base.raw
io_raw () { qemu-io -f raw -c "$1" chain-base.raw >/dev/null; }
io_raw "write -P 0xe1 0 1M"
io_raw "write -P 0xe2 2000000 1000000"
qemu-img create -q -f qcow2 -b chain-base.raw -F raw chain-mid.qcow2 6M
io chain-mid.qcow2 "write -P 0xe3 512 4096" "write -P 0xe4 2900000 300000" \
   "write -z 1M 65536" "write -P 0xe5 5M 100000"
qemu-img create -q -f qcow2 -o cluster_size=4096 -b chain-mid.qcow2 \
  -F qcow2 chain-top.qcow2 10M
io chain-top.qcow2 "write -P 0xe6 300000 5000" "write -P 0xe7 9M 4096" \
   "write -z 2000000 8192"
check chain chain-top.qcow2 qcow2 "data zero depth3 unallocated"
check chain-mid chain-mid.qcow2 qcow2 "data zero backing unallocated"

# A fragmented image: many small writes in random order.
qemu-img create -q -f qcow2 -o cluster_size=4096 frag.qcow2 16M
$PYTHON - > frag.cmds <<'EOF'
import random
r = random.Random(42)
slots = list(range(0, 4000))
r.shuffle(slots)
for i, s in enumerate(slots[:600]):
    print("write -P %d %d %d" % (i % 250 + 1, s * 4096 + r.randrange(3000),
                                 r.randrange(1, 9000)))
EOF
mapfile -t cmds < frag.cmds
io frag.qcow2 "${cmds[@]}"
check frag frag.qcow2

# Preallocation.
for p in metadata falloc full; do
  qemu-img create -q -f qcow2 -o preallocation=$p,cluster_size=65536 \
    prealloc-$p.qcow2 8M
  fill prealloc-$p.qcow2 $((8 << 20))
  check prealloc-$p prealloc-$p.qcow2
done

# External data files, raw and not.
for raw in on off; do
  n=extdata-$raw
  qemu-img create -q -f qcow2 -o data_file=$n.data,data_file_raw=$raw \
    $n.qcow2 8M
  fill $n.qcow2 $((8 << 20))
  check $n $n.qcow2
done

echo "$cases cases, $failures failures"
[ "$failures" -eq 0 ]
