#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Hostile metadata on the read path: poke L1 and L2 entries, subcluster
# bitmaps and compressed streams of images made by qemu-img, and check
# that reading the touched range fails with EIO and a "corruption"
# message, that the rest of the image still reads correctly, and that a
# data cluster past the end of the file reads as zeros (our documented
# choice, as QEMU).

source "$(dirname "$0")/functions.sh"

requires qemu-img qemu-io cmp
reader=$abs_top_builddir/tests/test-qcow2-read
[ -x "$reader" ] || fail "$reader not built"
cd "$tmpdir"

# poke.py IMAGE l1 INDEX [VALUE]         print / set an L1 entry
# poke.py IMAGE l2 CLUSTER [VALUE [BITMAP]]  print / set the L2 entry
#                                         (and bitmap) of a guest cluster
# poke.py IMAGE bytes OFFSET HEX           overwrite bytes
cat > poke.py <<'EOF'
import struct, sys
path, what = sys.argv[1], sys.argv[2]
f = open(path, "r+b")
hdr = f.read(112)
cluster_bits = struct.unpack(">I", hdr[20:24])[0]
l1_off = struct.unpack(">Q", hdr[40:48])[0]
version = struct.unpack(">I", hdr[4:8])[0]
incompat = struct.unpack(">Q", hdr[72:80])[0] if version >= 3 else 0
esize = 16 if incompat & 16 else 8
nl2 = (1 << cluster_bits) // esize
def at(off, fmt, val=None):
    # bash arithmetic is signed 64-bit: take values modulo 2^64.
    val = None if val is None else val & (2**64 - 1)
    f.seek(off)
    if val is None:
        print("%#x" % struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0])
    else:
        f.write(struct.pack(fmt, val))
if what == "l1":
    i = int(sys.argv[3])
    at(l1_off + 8 * i, ">Q", int(sys.argv[4], 0) if len(sys.argv) > 4 else None)
elif what == "l2":
    c = int(sys.argv[3])
    f.seek(l1_off + 8 * (c // nl2))
    l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    e = l2 + esize * (c % nl2)
    at(e, ">Q", int(sys.argv[4], 0) if len(sys.argv) > 4 else None)
    if len(sys.argv) > 5:
        at(e + 8, ">Q", int(sys.argv[5], 0))
elif what == "bytes":
    f.seek(int(sys.argv[3], 0))
    f.write(bytes.fromhex(sys.argv[4]))
EOF

failures=0
fail () { echo "FAIL: $*"; failures=$((failures + 1)); }

# must_fail NAME IMAGE START,LEN: reading the range gives EIO, reported
# as corruption.
must_fail ()
{
  if $UNIT "$reader" -r "$3" "$2" out.raw 2> err.txt; then
    fail "$1: read of $3 succeeded"
  elif ! grep -q 'Input/output error' err.txt || ! grep -q corruption err.txt; then
    fail "$1: read of $3 failed without EIO + corruption:"; cat err.txt
  else
    echo "ok: $1 ($(grep -m1 corruption err.txt | sed 's/.*corruption: //'))"
  fi
}

# must_read NAME IMAGE START,LEN PATTERN: the range reads as PATTERN.
must_read ()
{
  local start=${3%,*} len=${3#*,}
  if ! $UNIT "$reader" -r "$3" "$2" out.raw 2> err.txt; then
    fail "$1: read of $3 failed:"; cat err.txt; return
  fi
  $PYTHON -c "import sys; sys.exit(open('out.raw','rb').read() != bytes([$4]) * $len)" ||
    fail "$1: range $3 does not read as $4"
}

fresh ()
{
  qemu-img create -q -f qcow2 -o cluster_size=65536 "$@" img.qcow2 4M
  qemu-io -f qcow2 -c 'write -P 1 0 256k' img.qcow2 >/dev/null
}

c=65536
fresh
must_read clean img.qcow2 0,$((4 * c)) 1

good=$($PYTHON poke.py img.qcow2 l2 1)
$PYTHON poke.py img.qcow2 l2 1 $((good | (1 << 56)))
must_fail "L2 reserved bit 56" img.qcow2 $c,$c
must_read "neighbour of a bad L2 entry" img.qcow2 0,$c 1
$PYTHON poke.py img.qcow2 l2 1 $((good | 2))
must_fail "L2 reserved bit 1" img.qcow2 $c,512
$PYTHON poke.py img.qcow2 l2 1 $((good + 512))
must_fail "unaligned data offset" img.qcow2 $((c + 100)),100
$PYTHON poke.py img.qcow2 l2 1 $(((1 << 40) | (1 << 63)))
must_read "data cluster past EOF" img.qcow2 $c,$c 0
$PYTHON poke.py img.qcow2 l2 1 $good
must_read "restored" img.qcow2 0,$((4 * c)) 1

l1=$($PYTHON poke.py img.qcow2 l1 0)
$PYTHON poke.py img.qcow2 l1 0 $((l1 + 512))
must_fail "unaligned L2 table" img.qcow2 0,512
$PYTHON poke.py img.qcow2 l1 0 $((l1 | 2))
must_fail "L1 reserved bit" img.qcow2 0,512
$PYTHON poke.py img.qcow2 l1 0 $(((1 << 40) | (1 << 63)))
must_fail "L2 table past EOF" img.qcow2 0,512

# Extended L2: 2k subclusters.
rm img.qcow2
fresh -o extended_l2=on
ent=$($PYTHON poke.py img.qcow2 l2 0)
$PYTHON poke.py img.qcow2 l2 0 $ent $(((1 << 32) | 1))
must_fail "subcluster allocated and zero" img.qcow2 0,512
$PYTHON poke.py img.qcow2 l2 0 0 1
must_fail "allocated subcluster without offset" img.qcow2 0,512
$PYTHON poke.py img.qcow2 l2 0 $ent 0xfffffffe
must_read "unallocated subcluster" img.qcow2 0,2048 0
must_read "allocated subcluster" img.qcow2 2048,2048 1
$PYTHON poke.py img.qcow2 l2 0 $ent 0x1fffffffe
must_read "zero subcluster" img.qcow2 0,2048 0

# Compressed clusters: garbage streams, streams cut short, bitmaps on
# compressed extended L2 entries.
$PYTHON -c "
import random
r = random.Random(5)
open('data.raw', 'wb').write(b''.join(r.randbytes(1000) + bytes([i]) * 64536 for i in range(1, 5)))"
for ct in zlib zstd; do
  qemu-img convert -q -c -f raw -O qcow2 -o compression_type=$ct data.raw comp.qcow2
  ent=$($PYTHON poke.py comp.qcow2 l2 1)
  coff=$((ent & ((1 << 54) - 1)))
  must_read "$ct: clean" comp.qcow2 $((c + 2000)),1000 2
  $PYTHON poke.py comp.qcow2 bytes $coff "$(head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  must_fail "$ct: garbage stream" comp.qcow2 $c,512
  must_read "$ct: next compressed cluster" comp.qcow2 $((2 * c + 2000)),1000 3
  ent2=$($PYTHON poke.py comp.qcow2 l2 2)
  # Zero additional sectors: the stream is cut to under 512 bytes.
  $PYTHON poke.py comp.qcow2 l2 2 $((ent2 & ~(0xff << 54)))
  must_fail "$ct: stream cut short" comp.qcow2 $((2 * c)),512
done
qemu-img convert -q -c -f raw -O qcow2 -o extended_l2=on data.raw comp-el2.qcow2
ent=$($PYTHON poke.py comp-el2.qcow2 l2 0)
must_read "compressed extended L2: clean" comp-el2.qcow2 2000,1000 1
$PYTHON poke.py comp-el2.qcow2 l2 0 $ent 1
must_fail "compressed cluster with a bitmap" comp-el2.qcow2 0,512

[ "$failures" -eq 0 ]
