#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Writes, zeroes and trims through L2 entries a hostile image planted:
# one pointing at the L1 table and one pointing past the end of the file,
# both with COPIED set so a naive server would write in place (over the
# L1 table) or hand the same host cluster out twice.  Each must fail
# with EIO, mark the image corrupt (after which, as in QEMU, it takes no
# more writes), and leave the server serving reads of the rest.
source "$abs_top_srcdir/tests/functions.sh"
requires qemu-img qemu-io "$PYTHON"

# make_hostile IMG: an image whose guest cluster 0 points at the L1 table
# and guest cluster 1 far past EOF; cluster 16 (1M) is sound.
make_hostile ()
{
  local img=$1
  make_image "$img" 4M
  image_io "$img" "write -P 0x11 0 64k" "write -P 0x22 64k 64k" \
    "write -P 0x33 1M 64k"
  "$PYTHON" - "$img" <<'PY'
import struct, sys
path = sys.argv[1]
with open(path, "r+b") as f:
    h = f.read(104)
    l1_off = struct.unpack(">Q", h[40:48])[0]
    f.seek(l1_off)
    l2_off = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    copied = 1 << 63
    f.seek(l2_off)
    f.write(struct.pack(">Q", copied | l1_off))       # the L1 table
    f.write(struct.pack(">Q", copied | (1 << 40)))    # 1 TiB: past EOF
PY
}

expect_eio ()
{
  local what=$1; shift
  local out
  if out="$(qemu-io -f raw "$uri" "$@" 2>&1)" &&
     ! grep -qi 'error' <<<"$out"; then
    fail "$what succeeded on a hostile L2 entry: $out"
  fi
  grep -qi 'input/output error' <<<"$out" ||
    fail "$what: expected EIO, got: $out"
  server_alive || fail "server died after $what"
  ok "$what: EIO"
}

# Each case on a fresh image: the first corruption found marks the image
# corrupt, after which (as in QEMU) every write fails anyway.
n=0
for case in "write in place over the L1 table|write -P 0x44 0 512" \
            "write in place past EOF|write -P 0x44 64k 512" \
            "zeroing an entry pointing at the L1 table|write -z 0 64k" \
            "discarding a past-EOF entry|discard 64k 64k"; do
  what=${case%%|*} cmd=${case#*|}
  n=$((n + 1))
  img="$tmpdir/hostile-$n.qcow2"
  make_hostile "$img"
  start_server "$img" --discard=unmap
  expect_eio "$what" -c "$cmd"
  # The rest of the disk is still read; no more writes once corrupt.
  qemu-io -f raw "$uri" -c 'read -P 0x33 1M 64k' >/dev/null ||
    fail "$what: other clusters no longer read"
  expect_eio "$what, then a sound write" -c 'write -P 0x55 2M 4k'
  stop_server
  # The L1 table is intact and the image marked corrupt, as QEMU would.
  info="$(qemu-img info --output=json "$img")" || fail "qemu-img info: $info"
  grep -q '"corrupt": true' <<<"$info" || fail "$what: not marked corrupt"
  qemu-io -r -f qcow2 -c 'read -P 0x33 1M 64k' "$img" >/dev/null ||
    fail "$what: the L1 table was damaged"
  ok "$what: L1 table intact, image marked corrupt"
done
