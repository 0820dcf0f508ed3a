#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The nbdkit plugin: serve a qcow2 chain (compressed, zero and
# unallocated clusters, a backing file shorter than the overlay) with the
# built nbdkit-qcow2nbd-plugin.so, read it through NBD with qemu-img and
# nbdcopy and compare with qemu-img's own conversion, and compare
# `nbdinfo --map` with `qemu-img map`.

source "$(dirname "$0")/functions.sh"
set -euo pipefail

requires nbdkit nbdinfo nbdcopy qemu-img qemu-io cmp
plugin=$abs_top_builddir/plugin/.libs/nbdkit-qcow2nbd-plugin.so
[ -f "$plugin" ] || skip "plugin not built ($plugin)"
# An ASan-instrumented plugin cannot be dlopen'ed by the distribution's
# (uninstrumented) nbdkit.
if [ -n "${QCOW2NBD_SANITIZERS:-}" ] || nm -D "$plugin" 2>/dev/null | grep __asan_init >/dev/null; then
  skip "plugin built with sanitizers; nbdkit cannot load it"
fi

cd "$tmpdir"

# A compressed base smaller than the overlay, and an overlay with data,
# zero clusters (over base data) and unallocated ranges.
"$PYTHON" - <<'EOF'
import random
r = random.Random(3)
with open("base.raw", "wb") as f:
    for i in range(1024):
        n = r.randrange(4096)
        f.write(r.randbytes(n) + bytes([i & 0xff]) * (4096 - n))
EOF
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=4096,compression_type=zstd \
  base.raw base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 12M
qemu-io -f qcow2 -c 'write -P 0x5a 1000 100000' -c 'write -z 2M 131072' \
  -c 'write -P 0x6b 9M 70000' top.qcow2 >/dev/null
qemu-img convert -f qcow2 -O raw top.qcow2 expected.raw

run () { nbdkit -U - -f "$plugin" file=top.qcow2 "$@"; }

run --run 'qemu-img convert -f raw -O raw "$uri" qemu.raw'
cmp expected.raw qemu.raw
run l2-cache-size=64k --run 'nbdcopy "$uri" nbdcopy.raw'
cmp expected.raw nbdcopy.raw
run --run 'nbdinfo --can multi-conn "$uri"'
run --run 'nbdinfo --json --map "$uri"' > nbd-map.json

qemu-img map --output=json -f qcow2 top.qcow2 > qemu-map.json
"$PYTHON" - <<'EOF'
import json, sys
nbd = json.load(open("nbd-map.json"))
qemu = json.load(open("qemu-map.json"))
def ranges(lst, key):
    out = []
    for e in lst:
        start, length, kind = key(e)
        if out and out[-1][2] == kind and out[-1][1] == start:
            out[-1][1] += length
        else:
            out.append([start, start + length, kind])
    return out
a = ranges(nbd, lambda e: (e["offset"], e["length"],
                           "data" if e["type"] == 0 else "zero"))
b = ranges(qemu, lambda e: (e["start"], e["length"],
                            "data" if e["data"] else "zero"))
if a != b:
    print("nbdinfo --map:", a, "\nqemu-img map:", b, file=sys.stderr)
    sys.exit(1)
if not any(k == "data" for _, _, k in a) or not any(k == "zero" for _, _, k in a):
    print("map lacks data or zero ranges: the test image is wrong", a,
          file=sys.stderr)
    sys.exit(1)
EOF

# A missing image must fail to start, with the library's reason.
if nbdkit -U - -f "$plugin" file=nonexistent.qcow2 --run true 2>err.txt; then
  echo "$0: nbdkit started on a missing image"
  exit 1
fi
echo "ok"
