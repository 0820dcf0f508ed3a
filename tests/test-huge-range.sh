#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A 1 TiB sparse qcow2 image over extended headers (tests/exthdr.py,
# case huge): one BLOCK_STATUS covers the whole export, one
# WRITE_ZEROES zeroes all of it (freeing the data clusters written
# first), and a second BLOCK_STATUS says so in one extent per context.
# Then qemu-img check must find the image clean and qemu-img map must
# see the whole disk as zeros, and a plain client beside it must have
# been served meanwhile.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io
requires_server
[ -x "$PYTHON" ] || skip "$PYTHON not found"

exthdr="$abs_top_srcdir/tests/exthdr.py"
tib=$(( 1024 * 1024 * 1024 * 1024 ))

img="$tmpdir/huge.qcow2"
make_image "$img" "$tib"
image_io "$img" \
  "write -P 0x5a 0 1M" \
  "write -P 0x33 512G 1M" \
  "write -P 0x44 $(( tib - 65536 )) 64k"

start_server "$img" --export-name disk --discard=unmap -v
run_timeout 900 "$PYTHON" "$exthdr" --port "$port" disk /dev/null huge ||
  fail "exthdr case huge"
# Another client is served once the zeroing is done (nothing was left
# locked or parked).
out="$(run_timeout 120 qemu-io -f raw -r -c "read -P 0 512G 1M" \
         "$uri/disk" 2>&1)" || fail "qemu-io after the zeroing: $out"
grep -qiE 'fail|error|mismatch' <<< "$out" &&
  fail "qemu-io after the zeroing: $out"
stop_server
ok "one BLOCK_STATUS and one WRITE_ZEROES over 1 TiB"

check_clean "$img" "after zeroing 1 TiB"
qemu-img map --output=json "$img" > "$tmpdir/map.json" ||
  fail "qemu-img map"
"$PYTHON" - "$tmpdir/map.json" "$tib" <<'PY' || fail "qemu-img map: $(head -c 600 "$tmpdir/map.json")"
import json, sys
m = json.load(open(sys.argv[1]))
size = int(sys.argv[2])
pos = 0
for e in m:
    assert e["start"] == pos, e
    assert e["zero"] and not e["data"], e
    pos += e["length"]
assert pos == size, pos
PY
ok "qemu-img check and map: the 1 TiB image is clean and all zeros"
