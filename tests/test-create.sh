#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qcow2-nbd create: make images over a matrix of options (version 2 and
# 3, cluster sizes 512 to 2M, every refcount width, extended L2, zstd,
# lazy refcounts, qcow2 and raw backing files, relative backing names,
# huge sizes with small clusters) and check each with the oracle:
# `qemu-img check` is clean before and after qemu-io writes into it,
# `qemu-img info` shows the options asked for, the data reads back, and
# our own server opens it and serves exactly what qemu-img sees.  Then
# the refusals: each bad request exits 1 with a message and leaves no
# file behind, and an existing file is never touched.

SMOKE_TEST=1
source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io nbdinfo
requires_server

create ()
{
  "$QCOW2_NBD" create "$@"
}

# check_info IMAGE KEY=VALUE...: fields of `qemu-img info --output=json`
# (dotted paths into the JSON; booleans as true/false).
check_info ()
{
  local img=$1 out; shift
  qemu-img info --output=json "$img" >"$tmpdir/info.json" ||
    fail "qemu-img info $img"
  out="$("$PYTHON" - "$tmpdir/info.json" "$@" <<'EOF'
import json, sys
info = json.load(open(sys.argv[1]))
bad = []
for kv in sys.argv[2:]:
    key, want = kv.split("=", 1)
    v = info
    for part in key.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if isinstance(v, bool):
        v = "true" if v else "false"
    if str(v) != want:
        bad.append("%s is %r, expected %r" % (key, v, want))
if bad:
    print("; ".join(bad))
    sys.exit(1)
EOF
)" || fail "qemu-img info $img: $out"
}

# compare_window IMAGE OFFSET LENGTH: that range of the image (with its
# backing chain) must read the same through the last started server.
# Both sides are read with qemu-io and hex dumped: qemu-img compare over
# a raw window trusts block status, which does not look through to the
# backing file there, and qemu-img dd cannot skip (7.2).
compare_window ()
{
  local img=$1 off=$2 len=$3
  qemu-io -r -f qcow2 -c "read -v $off $len" "$img" >"$tmpdir/win-a" ||
    fail "qemu-io read of [$off, +$len) of $img"
  qemu-io -r -f raw -c "read -v $off $len" "$uri" >"$tmpdir/win-b" ||
    fail "qemu-io read of [$off, +$len) of $uri"
  grep -E '^[0-9a-f]+:' "$tmpdir/win-a" >"$tmpdir/win-a.hex" || true
  grep -E '^[0-9a-f]+:' "$tmpdir/win-b" >"$tmpdir/win-b.hex" || true
  [ "$(wc -l <"$tmpdir/win-a.hex")" -eq $(( len / 16 )) ] ||
    fail "qemu-io read -v of $img: short dump"
  cmp -s "$tmpdir/win-a.hex" "$tmpdir/win-b.hex" ||
    fail "[$off, +$len) of $img reads differently through $uri"
}

# check_image IMAGE SIZE DESC [KEY=VALUE...]: the whole round for one
# freshly created image.
check_image ()
{
  local img=$1 size=$2 desc=$3 got; shift 3
  check_clean "$img" "as created"
  check_info "$img" format=qcow2 virtual-size="$size" "$@"
  # Data in the middle, across clusters, and in the very last cluster
  # (the last L1 entry, far out in a huge image).
  image_io "$img" 'write -P 0x5a 123456 70000' 'read -P 0x5a 123456 70000' \
           "write -P 0xa5 $(( size - 4096 )) 4096" \
           "read -P 0xa5 $(( size - 4096 )) 4096"
  check_clean "$img" "after qemu-io writes"
  start_server "$img" --read-only
  got="$(nbdinfo --size "$uri")" || fail "$desc: nbdinfo --size"
  [ "$got" = "$size" ] || fail "$desc: export size $got, expected $size"
  # The ends of the image, where the data went, through our server.
  local win=$(( size < (256 << 10) ? size : (256 << 10) ))
  compare_window "$img" 0 "$win"
  compare_window "$img" $(( size - win )) "$win"
  # The whole image when that is quick: qemu-img compare asks for block
  # status once per L2 table's worth of guest space, which takes minutes
  # for terabytes in 4k clusters.
  local cs
  cs="$("$PYTHON" -c 'import json, sys
print(json.load(open(sys.argv[1]))["cluster-size"])' "$tmpdir/info.json")"
  if [ $(( size / (cs * cs / 8) )) -le 2048 ]; then
    compare_with_uri "$img"
  fi
  stop_server
  ok "$desc"
}

cd "$tmpdir"

# ---- the matrix ----------------------------------------------------------

G=$(( 1 << 30 ))
T=$(( 1 << 40 ))

# NAME SIZE(bytes) CREATE-OPTIONS | expected info fields
matrix=(
  "default|$G||cluster-size=65536 format-specific.data.compat=1.1 format-specific.data.refcount-bits=16 format-specific.data.extended-l2=false format-specific.data.compression-type=zlib format-specific.data.lazy-refcounts=false"
  "v2|$G|--compat 0.10|cluster-size=65536 format-specific.data.compat=0.10 format-specific.data.refcount-bits=16"
  "v2-512|$(( 64 << 20 ))|--compat=v2 --cluster-size 512|cluster-size=512 format-specific.data.compat=0.10"
  "v3-512|$(( 64 << 20 ))|--cluster-size 512|cluster-size=512 format-specific.data.compat=1.1"
  "4k|$G|--cluster-size 4k|cluster-size=4096"
  "2M|$(( 10 * G ))|--cluster-size 2M|cluster-size=2097152"
  "rc1|$G|--refcount-bits 1|format-specific.data.refcount-bits=1"
  "rc2|$G|--refcount-bits 2 --cluster-size 4k|format-specific.data.refcount-bits=2"
  "rc4|$G|--refcount-bits 4|format-specific.data.refcount-bits=4"
  "rc8|$G|--refcount-bits 8 --cluster-size 2M|format-specific.data.refcount-bits=8"
  "rc32|$G|--refcount-bits 32|format-specific.data.refcount-bits=32"
  "rc64|$G|--refcount-bits=64 --cluster-size 4096|format-specific.data.refcount-bits=64 cluster-size=4096"
  "rc1-512|$(( 20 * G ))|--refcount-bits 1 --cluster-size 512|format-specific.data.refcount-bits=1 cluster-size=512"
  "rc64-512-huge-l1|$(( 100 * G ))|--refcount-bits 64 --cluster-size 512|format-specific.data.refcount-bits=64 cluster-size=512"
  "extl2|$G|--extended-l2|format-specific.data.extended-l2=true cluster-size=65536"
  "extl2-16k|$G|--extended-l2 --cluster-size 16k|format-specific.data.extended-l2=true cluster-size=16384"
  "extl2-2M|$(( 10 * G ))|--extended-l2 --cluster-size 2M|format-specific.data.extended-l2=true cluster-size=2097152"
  "zstd|$G|--compression-type zstd|format-specific.data.compression-type=zstd"
  "zlib-explicit|$G|--compression-type=zlib|format-specific.data.compression-type=zlib"
  "lazy|$G|--lazy-refcounts|format-specific.data.lazy-refcounts=true"
  "all-v3|$G|--extended-l2 --compression-type zstd --lazy-refcounts --refcount-bits 64 --cluster-size 32k|format-specific.data.extended-l2=true format-specific.data.compression-type=zstd format-specific.data.lazy-refcounts=true format-specific.data.refcount-bits=64 cluster-size=32768"
  "4T-4k|$(( 4 * T ))|--cluster-size 4k|cluster-size=4096"
  "16T-64k|$(( 16 * T ))||cluster-size=65536"
  "8T-4k-max|$(( 8 * T ))|--cluster-size 4k --refcount-bits 1|cluster-size=4096"
  "256T-2M|$(( 256 * T ))|--cluster-size 2M|cluster-size=2097152"
)

for m in "${matrix[@]}"; do
  IFS='|' read -r name size opts fields <<<"$m"
  img="$tmpdir/$name.qcow2"
  # shellcheck disable=SC2086
  create -q $opts "$img" "$size" || fail "$name: create $opts $img $size"
  # shellcheck disable=SC2086
  check_image "$img" "$size" "$name ($opts)" $fields
  rm -f "$img"
done

# ---- backing files -------------------------------------------------------

make_image "$tmpdir/base.qcow2" 96M
image_io "$tmpdir/base.qcow2" 'write -P 0x11 0 1M' 'write -P 0x22 50M 3M'
make_raw "$tmpdir/base.raw" 32M
image_io "$tmpdir/base.raw" -f raw 'write -P 0x33 1M 2M'
# A raw file that is not a whole number of sectors: qemu-img rounds up.
make_raw "$tmpdir/odd.raw" 1000000

# No SIZE: the backing file's.
create -q -b base.qcow2 -F qcow2 ov1.qcow2 || fail "create -b base.qcow2"
check_image ov1.qcow2 $(( 96 << 20 )) "qcow2 backing, size from it" \
  backing-filename=base.qcow2 backing-filename-format=qcow2
# The overlay shows the backing file's data.
image_io ov1.qcow2 'read -P 0x22 50M 1M'

create -q --backing=base.raw --backing-format=raw ov2.qcow2 ||
  fail "create -b base.raw"
check_image ov2.qcow2 $(( 32 << 20 )) "raw backing, size from it" \
  backing-filename=base.raw backing-filename-format=raw
image_io ov2.qcow2 'read -P 0x33 1M 1M'

create -q -b odd.raw -F raw ov3.qcow2 || fail "create -b odd.raw"
check_image ov3.qcow2 1000448 "odd-sized raw backing, rounded up" \
  backing-filename=odd.raw

# An overlay larger than its backing file, version 2, small clusters.
create -q -b "$tmpdir/base.qcow2" -F qcow2 --compat 0.10 \
       --cluster-size 4k ov4.qcow2 1G || fail "create v2 overlay"
check_image ov4.qcow2 "$G" "v2 overlay larger than its backing file" \
  backing-filename="$tmpdir/base.qcow2" format-specific.data.compat=0.10

# 512-byte clusters: no room for the feature name table next to the
# backing file name, which must still fit.
create -q -b base.qcow2 -F qcow2 --cluster-size 512 ov5.qcow2 ||
  fail "create 512-byte overlay"
check_image ov5.qcow2 $(( 96 << 20 )) "overlay with 512-byte clusters" \
  backing-filename=base.qcow2 cluster-size=512

# A three-level chain made only by us.
create -q -b ov1.qcow2 -F qcow2 --extended-l2 ov6.qcow2 ||
  fail "create overlay of an overlay"
check_image ov6.qcow2 $(( 96 << 20 )) "overlay of our overlay" \
  backing-filename=ov1.qcow2 format-specific.data.extended-l2=true
image_io ov6.qcow2 'read -P 0x11 0 64k' 'read -P 0x22 51M 1M'

# A relative name is relative to the new image's directory, not to the
# working directory, and is stored as given.
mkdir -p sub
make_image sub/rbase.qcow2 8M
image_io sub/rbase.qcow2 'write -P 0x44 0 64k'
create -q -b rbase.qcow2 -F qcow2 sub/rel.qcow2 || fail "create sub/rel"
[ ! -e rbase.qcow2 ] || fail "test setup: rbase.qcow2 in the cwd"
check_image sub/rel.qcow2 $(( 8 << 20 )) "relative backing name" \
  backing-filename=rbase.qcow2
image_io sub/rel.qcow2 'read -P 0x44 8k 8k'

# ---- what the command prints ---------------------------------------------

out="$(create v.qcow2 1000)" || fail "create v.qcow2 1000"
case "$out" in
  "Formatting 'v.qcow2', fmt=qcow2 cluster_size=65536 "*" size=1024 "*)
    ;;
  *) fail "unexpected message: $out" ;;
esac
check_info v.qcow2 virtual-size=1024
check_clean v.qcow2 "size rounded up"
out="$(create -q q.qcow2 1M)" || fail "create -q"
[ -z "$out" ] || fail "create -q printed: $out"
# Version 3 images carry QEMU's feature name table; version 2 ones don't.
grep -q 'extended L2 entries' q.qcow2 || fail "no feature name table"
create -q --compat 0.10 q2.qcow2 1M || fail "create v2"
! grep -q 'extended L2 entries' q2.qcow2 || fail "feature table in v2"
grep -q -- '--cluster-size' <<< "$("$QCOW2_NBD" create --help)" ||
  fail "create --help"
grep -q 'create' <<< "$("$QCOW2_NBD" --help)" || fail "--help lacks create"
ok "messages"

# ---- refusals ------------------------------------------------------------

# expect_fail DESC PATTERN IMAGE ARGS...: create must exit 1 with a
# message matching PATTERN and leave no IMAGE behind.
expect_fail ()
{
  local desc=$1 pattern=$2 img=$3 rc=0; shift 3
  create "$img" "$@" >"$tmpdir/out" 2>"$tmpdir/err" || rc=$?
  [ "$rc" -eq 1 ] || {
    cat "$tmpdir/out" "$tmpdir/err" >&2
    fail "$desc: exit status $rc, expected 1"
  }
  grep -qiE "$pattern" "$tmpdir/err" || {
    cat "$tmpdir/err" >&2
    fail "$desc: no message matching '$pattern'"
  }
  [ ! -e "$img" ] || fail "$desc: $img left behind"
  ok "refused: $desc"
}

expect_fail "cluster size not a power of two" "cluster size" \
  bad.qcow2 1G --cluster-size 1000
expect_fail "cluster size too small" "cluster size" \
  bad.qcow2 1G --cluster-size 256
expect_fail "cluster size too large" "cluster size" \
  bad.qcow2 1G --cluster-size 4M
expect_fail "refcount width not a power of two" "refcount" \
  bad.qcow2 1G --refcount-bits 3
expect_fail "refcount width too large" "refcount" \
  bad.qcow2 1G --refcount-bits 128
expect_fail "refcount width other than 16 in v2" "refcount" \
  bad.qcow2 1G --refcount-bits 8 --compat 0.10
expect_fail "missing backing file" "no such file" \
  bad.qcow2 1G -b nonexistent.qcow2 -F qcow2
expect_fail "backing name relative to the cwd" "no such file" \
  sub/bad.qcow2 -b sub/rbase.qcow2 -F qcow2
expect_fail "backing file without format" "format" \
  bad.qcow2 1G -b base.qcow2
expect_fail "backing format without backing file" "backing" \
  bad.qcow2 1G -F qcow2
expect_fail "unsupported backing format" "backing format" \
  bad.qcow2 1G -b base.raw -F vmdk
expect_fail "raw file given as a qcow2 backing file" "backing file" \
  bad.qcow2 1G -b base.raw -F qcow2
expect_fail "extended L2 with 4k clusters" "extended L2" \
  bad.qcow2 1G --extended-l2 --cluster-size 4k
expect_fail "extended L2 in v2" "extended L2" \
  bad.qcow2 1G --extended-l2 --compat 0.10
expect_fail "zstd in v2" "zstd|compression" \
  bad.qcow2 1G --compression-type zstd --compat 0.10
expect_fail "unknown compression type" "compression" \
  bad.qcow2 1G --compression-type lzo
expect_fail "lazy refcounts in v2" "lazy" \
  bad.qcow2 1G --lazy-refcounts --compat 0.10
expect_fail "bad compat level" "compat" \
  bad.qcow2 1G --compat 2.0
expect_fail "size too large for the cluster size" "too large" \
  bad.qcow2 16T --cluster-size 4k
expect_fail "size zero" "size" bad.qcow2 0
expect_fail "size missing" "size" bad.qcow2
expect_fail "bad size" "size" bad.qcow2 12Q
expect_fail "unknown option" "unknown option" bad.qcow2 1G --frobnicate
expect_fail "directory missing" "no such file" nodir/bad.qcow2 1G

# A write that fails half-way (here: the file size limit, EFBIG, in the
# middle of a 16 MiB L1 table) removes the file again.
rc=0
( trap '' XFSZ; ulimit -f 1024; create big.qcow2 4T --cluster-size 4k ) \
  >"$tmpdir/out" 2>"$tmpdir/err" || rc=$?
[ "$rc" -eq 1 ] || fail "failed write: exit status $rc, expected 1"
grep -qi 'too large' "$tmpdir/err" || fail "failed write: no message"
[ ! -e big.qcow2 ] || fail "failed write: half-written file left behind"
ok "refused: failed write, file removed"

# An existing file is refused and left exactly as it was.
printf 'precious data\n' >exists.qcow2
before="$(sha256sum <exists.qcow2)"
rc=0
create exists.qcow2 1G >"$tmpdir/out" 2>"$tmpdir/err" || rc=$?
[ "$rc" -eq 1 ] || fail "existing file: exit status $rc, expected 1"
grep -qi 'exists' "$tmpdir/err" || fail "existing file: no message"
[ "$(sha256sum <exists.qcow2)" = "$before" ] || fail "existing file changed"
ok "refused: existing file, untouched"
# ... and so is an existing qcow2 image.
before="$(sha256sum <q.qcow2)"
rc=0
create q.qcow2 2M 2>/dev/null || rc=$?
[ "$rc" -eq 1 ] || fail "existing image: exit status $rc, expected 1"
[ "$(sha256sum <q.qcow2)" = "$before" ] || fail "existing image changed"
ok "refused: existing image, untouched"
