#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Header side of the write engine, against QEMU as the oracle:
#  - dirty repair: a lazy_refcounts image whose QEMU writer was killed
#    (-9) is dirty with stale refcounts (qemu-img check says corrupt);
#    one writable open by our library must leave it clean (check exit 0)
#    with the data intact;
#  - image locking: QEMU holding an image makes our writable open fail
#    with QEMU's message, and our writable open makes QEMU's writers and
#    readers fail, in both directions;
#  - autoclear bits we don't maintain are cleared by a writable open.

source "$(dirname "$0")/functions.sh"
requires qemu-img qemu-io
tool=$abs_top_builddir/tests/test-qcow2-alloc
[ -x "$tool" ] || fail "$tool not built"
cd "$tmpdir"

check_exit ()
{
  local st=0
  qemu-img check "$1" >check.out 2>&1 || st=$?
  echo "$st"
}

# ---- dirty repair ------------------------------------------------------
for opts in cluster_size=65536 cluster_size=4096,refcount_bits=1 \
            cluster_size=65536,refcount_bits=64; do
  img=dirty.qcow2
  rm -f "$img"
  make_image "$img" 64M -o "lazy_refcounts=on,$opts"
  image_io "$img" 'write -P 0x11 0 1M' 'write -P 0x22 8M 64k'
  # A writer that dies without closing: with lazy refcounts it never
  # wrote the refcounts of what it allocated, and the dirty bit stays.
  rm -f cmds; mkfifo cmds
  qemu-io "$img" <cmds >qio.out 2>&1 &
  qpid=$!
  exec 3>cmds
  # qemu-io reads a pipe a command at a time as input arrives.
  for c in 'write -P 0x33 16M 2M' 'write -P 0x44 32M 4k' 'flush' ''; do
    echo "$c" >&3
    sleep 0.3
  done
  for _ in $(seq 100); do
    grep -q 'wrote 4096' qio.out && break
    sleep 0.1
  done
  grep -q 'wrote 4096' qio.out || { cat qio.out >&2; fail "qemu-io did not write"; }
  kill -9 "$qpid"
  wait "$qpid" 2>/dev/null || true
  exec 3>&-
  st=$(check_exit "$img")
  [ "$st" = 2 ] || { cat check.out >&2; fail "$opts: expected a dirty image with corruptions (check exit 2), got $st"; }

  $UNIT "$tool" open-rw "$img" 2>tool.err || { cat tool.err >&2; fail "$opts: writable open of the dirty image failed"; }
  grep -q 'rebuilding its refcounts' tool.err || fail "$opts: no repair message"
  st=$(check_exit "$img")
  [ "$st" = 0 ] || { cat check.out >&2; fail "$opts: after repair qemu-img check exited $st"; }
  image_io "$img" 'read -P 0x11 0 1M' 'read -P 0x22 8M 64k' \
    'read -P 0x33 16M 2M' 'read -P 0x44 32M 4k'
  ok "dirty lazy_refcounts image ($opts) repaired, check clean, data intact"
done

# ---- locking -----------------------------------------------------------
img=locked.qcow2
make_image "$img" 16M
image_io "$img" 'write -P 0x55 0 64k'

# QEMU writer holds it: our writable open is refused with QEMU's words.
( { sleep 5; } | qemu-io "$img" >/dev/null 2>&1 ) &
qpid=$!
sleep 1
if $UNIT "$tool" open-rw "$img" 2>tool.err; then
  fail "writable open succeeded while qemu-io holds the image"
fi
grep -q 'failed to get .write. lock: is another process using the image' \
  tool.err || { cat tool.err >&2; fail "unexpected message"; }
ok "qemu-io holding the image: $(head -1 tool.err)"
wait "$qpid" || true

# QEMU reader holds it: a writer is refused too (qcow2 readers deny writes).
( { sleep 5; } | qemu-io -r "$img" >/dev/null 2>&1 ) &
qpid=$!
sleep 1
if $UNIT "$tool" open-rw "$img" 2>tool.err; then
  fail "writable open succeeded while qemu-io -r holds the image"
fi
ok "qemu-io -r holding the image: writable open refused"
wait "$qpid" || true

# We hold it writable: qemu-io can neither write nor read it.  (Held
# for up to 10 minutes, killed once done: no timing to lose.)
$UNIT "$tool" hold "$img" 600 >hold.out 2>&1 &
hpid=$!
for _ in $(seq 600); do grep -q holding hold.out && break; sleep 0.1; done
grep -q holding hold.out || { cat hold.out >&2; fail "hold did not start"; }
if qemu-io -c 'write 0 512' "$img" >qio.out 2>&1; then
  fail "qemu-io wrote to an image we hold writable"
fi
grep -q 'Failed to get "write" lock' qio.out || { cat qio.out >&2; fail "qemu-io: unexpected message"; }
if qemu-io -r -c 'read 0 512' "$img" >qio.out 2>&1; then
  fail "qemu-io -r opened an image we hold writable"
fi
grep -q 'Failed to get shared "write" lock' qio.out || { cat qio.out >&2; fail "qemu-io -r: unexpected message"; }
kill "$hpid" 2>/dev/null || true
wait "$hpid" 2>/dev/null || true
ok "our writable open locks out qemu-io writers and readers"

# Once we are gone the image is usable and clean again.
st=$(check_exit "$img")
[ "$st" = 0 ] || { cat check.out >&2; fail "check after hold exited $st"; }
image_io "$img" 'read -P 0x55 0 64k'

# ---- autoclear ---------------------------------------------------------
# Bit 0 (bitmaps) is ours to keep now: a writable open and close leaves
# it set and the bitmap consistent; an autoclear bit we don't know (5) is
# cleared, as the spec asks of a writer.
img=bitmap.qcow2
make_image "$img" 16M
qemu-img bitmap --add "$img" b0
$PYTHON - "$img" <<'PY' || fail "could not set autoclear bit 5"
import struct, sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(88)
    v = struct.unpack('>Q', f.read(8))[0]
    if not v & 1:
        sys.exit(1)
    f.seek(88)
    f.write(struct.pack('>Q', v | 1 << 5))
PY
$UNIT "$tool" open-rw "$img" 2>tool.err || { cat tool.err >&2; fail "open bitmap image"; }
$PYTHON - "$img" <<'PY' || fail "autoclear bits after a writable open: want bit 0 only"
import struct, sys
h = open(sys.argv[1], 'rb').read(96)
sys.exit(0 if struct.unpack('>Q', h[88:96])[0] == 1 else 1)
PY
qemu-img info --output=json "$img" >info.json
$PYTHON - info.json <<'PY' || { cat info.json >&2; fail "bitmap b0 not kept consistent"; }
import json, sys
bm = json.load(open(sys.argv[1]))['format-specific']['data']['bitmaps']
sys.exit(0 if [(b['name'], b['flags']) for b in bm] == [('b0', ['auto'])]
         else 1)
PY
st=$(check_exit "$img")
[ "$st" = 0 ] || { cat check.out >&2; fail "check after a writable open of a bitmap image exited $st"; }
ok "writable open keeps the bitmaps autoclear bit and the bitmap, clears bit 5"
