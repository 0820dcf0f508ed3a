#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The server side of writes, with real clients: the flags a writable and
# a read-only export advertise; qemu-img convert and qemu-io writes, zeroes
# and discards at odd offsets; libnbd WRITE with FUA, WRITE_ZEROES with
# NO_HOLE and FAST_ZERO, TRIM with --discard=ignore and =unmap, FLUSH,
# several connections, out-of-range writes, EPERM on -r; a corrupt-flagged
# image refused unless -r; and a full host file system, which must give
# the client ENOSPC while the server keeps serving and the image stays
# consistent.  Every change is mirrored into a raw shadow file, and each
# image is compared with it and checked by qemu-img after a clean stop.

SMOKE_TEST=1
. "${abs_top_srcdir:-$(dirname "$0")/..}/tests/functions.sh"

requires qemu-img qemu-io nbdinfo
requires_python_nbd
requires_server

size=$(( 64 * 1024 * 1024 ))

# check_image IMG SHADOW: after the server stopped, IMG reads like SHADOW
# and qemu-img check calls it clean.
check_image ()
{
  local out rc=0
  out="$(qemu-img compare -f qcow2 -F raw "$1" "$2" 2>&1)" ||
    fail "$1 differs from its shadow: $out"
  out="$(qemu-img check -f qcow2 "$1" 2>&1)" || rc=$?
  [ "$rc" -eq 0 ] || fail "qemu-img check $1 exited $rc: $out"
}

# same_as_shadow SHADOW: the export reads exactly like the raw SHADOW.
same_as_shadow ()
{
  local out
  out="$(run_timeout 120 qemu-img compare -f raw -F raw "$1" "$uri" 2>&1)" ||
    fail "$uri differs from $1: $out"
}

# flag NAME: one boolean of nbdinfo --json for $uri.
flag ()
{
  "$PYTHON" -c '
import json, sys
print(str(json.load(sys.stdin)["exports"][0][sys.argv[1]]).lower())' "$1" \
    <"$tmpdir/info.json"
}

# ---- a writable export -------------------------------------------------

img="$tmpdir/a.qcow2"
shadow="$tmpdir/a.raw"
make_image "$img" "$size"
make_raw "$shadow" "$size"

start_server "$img"
run_timeout 30 nbdinfo --json "$uri" >"$tmpdir/info.json" ||
  fail "nbdinfo --json $uri"
for f in can_flush can_fua can_trim can_zero can_fast_zero can_multi_conn \
         can_cache can_df; do
  [ "$(flag "$f")" = true ] || fail "writable export: $f is not set"
done
[ "$(flag is_read_only)" = false ] || fail "writable export is read-only"
ok "writable export advertises FUA, TRIM, WRITE_ZEROES, FAST_ZERO, MULTI_CONN"

# qemu-img convert -n: a backup tool writing a whole disk (data, zero
# runs it skips or zeroes with FAST_ZERO, odd tail).
src="$tmpdir/src.raw"
make_raw "$src" "$size"
"$PYTHON" - "$src" <<'EOF'
import os, random, sys
r = random.Random(3)
with open(sys.argv[1], "r+b") as f:
    for _ in range(40):
        off = r.randrange(0, 64 << 20)
        n = min(r.randrange(1, 600000), (64 << 20) - off)
        f.seek(off)
        f.write(bytes([r.randrange(1, 256)]) * n)
EOF
run_timeout 120 qemu-img convert -n -f raw -O raw "$src" "$uri" ||
  fail "qemu-img convert -n into $uri"
cp "$src" "$shadow"
same_as_shadow "$shadow"
ok "qemu-img convert -n wrote the whole disk"

# qemu-io at odd offsets: write, write -z, discard (ignored by default:
# the data stays), and the same on the shadow.
qio=(-c 'write -P 0x33 12345 70000'
     -c 'write -P 0x44 1048575 2'
     -c 'write -z 200001 100000'
     -c 'write -P 0x55 5000000 3000000'
     -c 'discard 5242880 1048576'
     -c 'write -z 8388608 1048576'
     -c 'aio_write -P 0x66 9000000 65536'
     -c 'aio_write -P 0x77 9032768 65536'
     -c 'aio_flush'
     -c 'flush')
out="$(run_timeout 60 qemu-io -f raw "${qio[@]}" "$uri" 2>&1)" ||
  fail "qemu-io writes through NBD: $out"
! grep -qiE 'error|failed' <<<"$out" || fail "qemu-io: $out"
# The shadow gets the same except the discard, which the server ignores.
image_io "$shadow" -f raw 'write -P 0x33 12345 70000' \
  'write -P 0x44 1048575 2' 'write -z 200001 100000' \
  'write -P 0x55 5000000 3000000' 'write -z 8388608 1048576' \
  'write -P 0x66 9000000 65536' 'write -P 0x77 9032768 65536'
same_as_shadow "$shadow"
ok "qemu-io writes, zeroes and an ignored discard at odd offsets"

# libnbd: FUA, NO_HOLE, FAST_ZERO, TRIM, FLUSH, two connections, errors.
run_timeout 120 "$PYTHON" - "$uri" "$shadow" <<'EOF' || fail "libnbd checks"
import errno, sys
import nbd

uri, shadow = sys.argv[1], sys.argv[2]
sh = open(shadow, "r+b")

def put(off, data):
    sh.seek(off)
    sh.write(data)

def fail(msg):
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)

def expect_err(what, want, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.args[1] != want:
            fail("%s: errno %s, want %s" % (what, e.errno, want))
        return
    fail("%s succeeded" % what)

h = nbd.NBD()
# The server, not libnbd, must answer out-of-range requests.
h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_BOUNDS)
h.connect_uri(uri)
h2 = nbd.NBD()
h2.connect_uri(uri)
size = h.get_size()

# FUA write, read back on the other connection.
d = b"\xa5" * 100000
h.pwrite(d, 777, nbd.CMD_FLAG_FUA)
put(777, d)
if h2.pread(len(d), 777) != d:
    fail("FUA write not visible on the second connection")

# Zeroes with NO_HOLE, plain, and FAST_ZERO where only metadata changes
# (a whole unallocated cluster: must succeed).
h.zero(1000, 3000, nbd.CMD_FLAG_NO_HOLE)
put(3000, bytes(1000))
h.zero(300000, 65536 * 100 + 1)
put(65536 * 100 + 1, bytes(300000))
h.zero(65536 * 4, 65536 * 300, nbd.CMD_FLAG_FAST_ZERO)
put(65536 * 300, bytes(65536 * 4))

# FAST_ZERO of part of a data cluster would mean writing zeros: ENOTSUP
# at once, and the data must be untouched.
d = b"\x5a" * 65536
h.pwrite(d, 65536 * 400)
put(65536 * 400, d)
try:
    h.zero(4096, 65536 * 400 + 100, nbd.CMD_FLAG_FAST_ZERO)
except nbd.Error as e:
    if e.args[1] != errno.ENOTSUP:
        fail("partial FAST_ZERO: errno %s, want ENOTSUP" % e.errno)
else:
    put(65536 * 400 + 100, bytes(4096))
sh.seek(65536 * 400)
if h.pread(65536, 65536 * 400) != sh.read(65536):
    fail("data after FAST_ZERO differs")

# TRIM is ignored with the default --discard=ignore: data stays.
h.trim(65536 * 2, 65536 * 400)
if h.pread(65536, 65536 * 400) != d:
    fail("TRIM with --discard=ignore changed the data")

# Writes from both connections at once, then one FLUSH on the other.
cookies = []
for i in range(64):
    c = h if i % 2 else h2
    b = bytes([i + 1]) * 4099
    off = 20000000 + i * 4099
    put(off, b)
    buf = nbd.Buffer.from_bytearray(bytearray(b))
    cookies.append((c, buf, c.aio_pwrite(buf, off)))
for c, _, ck in cookies:
    while not c.aio_command_completed(ck):
        c.poll(-1)
h2.flush()
sh.flush()
sh.seek(20000000)
if h.pread(64 * 4099, 20000000) != sh.read(64 * 4099):
    fail("concurrent writes read back wrong")

# Out of range: ENOSPC for writes and zeroes, EINVAL for trim; the
# connection stays usable.
expect_err("write past the end", errno.ENOSPC, h.pwrite, b"x" * 10,
           size - 5)
expect_err("zero past the end", errno.ENOSPC, h.zero, 10, size - 5)
expect_err("trim past the end", errno.EINVAL, h.trim, 10, size - 5)
h.pwrite(b"tail", size - 4)
put(size - 4, b"tail")
if h.pread(4, size - 4) != b"tail":
    fail("connection unusable after the out-of-range write")

h.flush()
h.shutdown()
h2.shutdown()
sh.close()
EOF
same_as_shadow "$shadow"
ok "FUA, NO_HOLE, FAST_ZERO, ignored TRIM, FLUSH, two connections, ENOSPC"

stop_server
check_image "$img" "$shadow"
ok "after SIGTERM the image equals its shadow and checks clean"

# ---- --discard=unmap ---------------------------------------------------

start_server "$img" --discard=unmap
run_timeout 60 "$PYTHON" - "$uri" "$shadow" <<'EOF' || fail "unmap checks"
import sys
import nbd
uri, shadow = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(uri)
sh = open(shadow, "r+b")
# Whole clusters at 5 MiB (written with 0x55 above) are deallocated; the
# unaligned edges are either left alone or zeroed: read them to mirror.
off, n = 5 * 1048576 + 1000, 1048576
h.trim(n, off, nbd.CMD_FLAG_FUA)
got = h.pread(n, off)
start = (off + 65535) // 65536 * 65536
end = (off + n) // 65536 * 65536
if got[start - off:end - off] != bytes(end - start):
    sys.exit("trimmed clusters do not read as zeros")
sh.seek(off)
sh.write(got)
sh.close()
ext = []
h.block_status(end - start, start,
               lambda ctx, o, e, err: ext.extend(e) or 0)
if not ext or not (ext[1] & nbd.STATE_HOLE):
    sys.exit("trimmed clusters are not reported as a hole: %r" % ext[:4])
# With --discard=unmap, a WRITE_ZEROES without NO_HOLE may deallocate.
h.zero(65536 * 8, 65536 * 200)
h.flush()
h.shutdown()
with open(shadow, "r+b") as sh:
    sh.seek(65536 * 200)
    sh.write(bytes(65536 * 8))
EOF
same_as_shadow "$shadow"
stop_server
check_image "$img" "$shadow"
ok "--discard=unmap deallocates whole clusters; image checks clean"

# ---- many writes into the same unallocated clusters -------------------

# Four connections (on two workers) each own every fourth 512-byte sector
# and keep hundreds of single-sector writes in flight, so nearly every
# write lands in a cluster another one is allocating: the library answers
# QCOW2_BLOCKED and the worker parks the request until the allocation
# ends.  A lost wake-up hangs here; a wrong ordering loses sectors.
cimg="$tmpdir/c.qcow2"
make_image "$cimg" 16M -o cluster_size=64k
start_server "$cimg" --threads 2
run_timeout 300 "$PYTHON" - "$uri" "$tmpdir/c.raw" <<'EOF' ||
import random, sys
import nbd
uri, shadow, size = sys.argv[1], sys.argv[2], 16 << 20
hs = []
for _ in range(4):
    h = nbd.NBD()
    h.connect_uri(uri)
    hs.append(h)
r = random.Random(7)
expect = bytearray(size)
for _ in range(3):
    pending = []
    for k, h in enumerate(hs):
        used = set()      # NBD does not order overlapping requests
        for _ in range(500):
            s = r.randrange(0, size // 512 // 4) * 4 + k
            if s in used:
                continue
            used.add(s)
            b = bytes([r.randrange(1, 256)]) * 512
            expect[s * 512:(s + 1) * 512] = b
            buf = nbd.Buffer.from_bytearray(bytearray(b))
            pending.append((h, buf, h.aio_pwrite(buf, s * 512)))
    for h, _, c in pending:
        while not h.aio_command_completed(c):
            h.poll(-1)
hs[0].flush()
for o in range(0, size, 1 << 20):
    if hs[(o >> 20) % 4].pread(1 << 20, o) != expect[o:o + (1 << 20)]:
        sys.exit("interleaved writes lost data in MiB %d" % (o >> 20))
for h in hs:
    h.shutdown()
with open(shadow, "wb") as f:
    f.write(expect)
EOF
  fail "interleaved writes from four connections"
stop_server
check_image "$cimg" "$tmpdir/c.raw"
ok "interleaved writes into shared unallocated clusters from 4 connections"

# ---- read-only ---------------------------------------------------------

start_server "$img" --read-only
run_timeout 30 nbdinfo --json "$uri" >"$tmpdir/info.json" ||
  fail "nbdinfo --json $uri"
[ "$(flag is_read_only)" = true ] || fail "-r export is not read-only"
for f in can_fua can_trim can_zero can_fast_zero; do
  [ "$(flag "$f")" = false ] || fail "read-only export: $f is set"
done
run_timeout 30 "$PYTHON" - "$uri" <<'EOF' || fail "EPERM checks"
import errno, sys
import nbd
h = nbd.NBD()
h.set_strict_mode(0)       # send what the flags say not to
h.connect_uri(sys.argv[1])
for what, fn in (("write", lambda: h.pwrite(b"x" * 512, 0)),
                 ("zero", lambda: h.zero(512, 0)),
                 ("trim", lambda: h.trim(512, 0))):
    try:
        fn()
    except nbd.Error as e:
        if e.args[1] != errno.EPERM:
            sys.exit("%s on -r: errno %s, want EPERM" % (what, e.errno))
    else:
        sys.exit("%s on a read-only export succeeded" % what)
h.flush()
h.pread(512, 0)
h.shutdown()
EOF
stop_server
check_image "$img" "$shadow"
ok "read-only export: flags, EPERM for write/zero/trim, image untouched"

# ---- a corrupt-flagged image: refused writable, served with -r ---------

bad="$tmpdir/corrupt.qcow2"
make_image "$bad" 1M
"$PYTHON" - "$bad" <<'EOF'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(72)
    v, = struct.unpack(">Q", f.read(8))
    f.seek(72)
    f.write(struct.pack(">Q", v | 2))     # incompatible bit 1: corrupt
EOF
rc=0
out="$(run_timeout 30 "$QCOW2_NBD" serve "$bad" --bind 127.0.0.1 \
        --port "$(pick_unused_port)" 2>&1)" || rc=$?
[ "$rc" -ne 0 ] || fail "served a corrupt-flagged image writable"
grep -q -- '--read-only' <<<"$out" ||
  fail "no hint to use --read-only for a corrupt image: $out"
start_server "$bad" --read-only
stop_server
ok "corrupt-flagged image refused writable ($rc), served with -r"

# ---- a full host file system -------------------------------------------

small="$tmpdir/small"
mkdir "$small"
if ! mount -t tmpfs -o size=8M tmpfs "$small" 2>/dev/null; then
  echo "SKIP: $test_name: cannot mount a tmpfs (not root?): the ENOSPC part"
  exit 77
fi
cleanup_fn umount -l "$small"

full="$small/full.qcow2"
make_image "$full" "$size"
start_server "$full"
run_timeout 120 "$PYTHON" - "$uri" <<'EOF' || fail "ENOSPC checks"
import errno, sys
import nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
written = {}
chunk = 1 << 20
# First a small write into an unallocated cluster: its head and tail
# are zero ranges, which tmpfs cannot fallocate (FALLOC_FL_ZERO_RANGE),
# so the server writes zeros instead.
small = 63 * chunk + 1000
h.pwrite(b"\x77" * 3000, small)
want = bytes(1000) + b"\x77" * 3000 + bytes(65536 - 4000)
if h.pread(65536, 63 * chunk) != want:
    sys.exit("small write on tmpfs reads back wrong")
for i in range(63):
    data = bytes([i + 1]) * chunk
    try:
        h.pwrite(data, i * chunk)
    except nbd.Error as e:
        if e.args[1] != errno.ENOSPC:
            sys.exit("write %d failed with errno %s, want ENOSPC" %
                     (i, e.errno))
        break
    written[i] = data
else:
    sys.exit("63 MiB fitted in an 8 MiB file system")
if len(written) < 2:
    sys.exit("ENOSPC after only %d MiB" % len(written))
# Small writes into clusters already allocated still work, and so do
# reads, a FLUSH and a fresh connection.
h.pwrite(b"\x99" * 512, 4096)
d = bytearray(written[0])
d[4096:4608] = b"\x99" * 512
written[0] = bytes(d)
h.flush()
h2 = nbd.NBD()
h2.connect_uri(sys.argv[1])
for i, data in written.items():
    if h2.pread(chunk, i * chunk) != data:
        sys.exit("MiB %d reads back wrong after ENOSPC" % i)
if h2.pread(65536, 63 * chunk) != want:
    sys.exit("the small write reads back wrong after ENOSPC")
h.shutdown()
h2.shutdown()
print("ENOSPC after %d MiB" % len(written))
EOF
server_alive "after ENOSPC"
stop_server
rc=0
out="$(qemu-img check -f qcow2 "$full" 2>&1)" || rc=$?
[ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] ||
  fail "qemu-img check after ENOSPC exited $rc: $out"
ok "full file system: ENOSPC to the client, server alive, check exit $rc"
