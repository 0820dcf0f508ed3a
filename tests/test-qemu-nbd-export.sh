#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd mode, what a client sees: for each set of options, the export
# (size, flags, block sizes, meta contexts, name, description) as nbdinfo
# reports it must be the one Debian's qemu-nbd 7.2 offers; then what the
# options do to the data: raw images written in place, probed raw images
# guarding their first sector, --snapshot leaving the image untouched,
# windows (--offset, raw offset/size), backing=null, detect-zeroes with
# discard, and cache=none keeping written data out of the page cache.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img qemu-io nbdinfo
requires_qemu_nbd_oracle

# Fresh identical images for both servers in $tmpdir/img-WHO.
make_images ()
{
  local who d
  for who in oracle ours; do
    d="$tmpdir/img-$who"
    rm -rf "$d"
    mkdir -p "$d"
    qemu-img create -q -f qcow2 "$d/base.qcow2" 4M
    qemu-io -f qcow2 -c 'write -P 0x11 0 4M' "$d/base.qcow2" >/dev/null
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$d/q.qcow2" 4M
    qemu-io -f qcow2 -c 'write -P 0x22 1M 1M' "$d/q.qcow2" >/dev/null
    truncate -s 4M "$d/r.raw"
    qemu-io -f raw -c 'write -P 0x33 64k 64k' "$d/r.raw" >/dev/null
    truncate -s 1000000 "$d/odd.raw"
    qemu-img create -q -f qcow2 "$d/bm.qcow2" 4M
    qemu-img bitmap --add "$d/bm.qcow2" b1
    qemu-io -f qcow2 -c 'write -P 0x44 0 64k' "$d/bm.qcow2" >/dev/null
    qemu-img snapshot -c s1 "$d/bm.qcow2"
    qemu-io -f qcow2 -c 'write -P 0x45 1M 64k' "$d/bm.qcow2" >/dev/null
  done
}

# export_case WHAT ARGS...: both servers with ARGS (relative image names),
# one nbdinfo each; the reports must match and both servers must exit 0
# once that client has gone.
n=0
export_case ()
{
  local what=$1 who; shift
  n=$((n + 1))
  for who in oracle ours; do
    qnbd_cwd="$tmpdir/img-$who" qnbd_start "$who" "$tmpdir/e$n-$who.sock" "$@"
    info_json "$tmpdir/e$n-$who.sock" "${EXPORT:-}" > "$tmpdir/e$n.$who.json" ||
      fail "$what: nbdinfo against $who failed"
    qnbd_wait_exit "$qnbd_pid" "$what ($who)"
    [ "$qnbd_rc" -eq 0 ] ||
      fail "$what: $who exited $qnbd_rc after its one client"
  done
  diff -u "$tmpdir/e$n.oracle.json" "$tmpdir/e$n.ours.json" >&2 ||
    fail "$what: the export differs from qemu-nbd's (oracle first)"
}

make_images
export_case "qcow2 with a backing file" -f qcow2 q.qcow2
export_case "qcow2, probed" q.qcow2
export_case "raw" -f raw r.raw
export_case "raw, probed" r.raw
export_case "raw, probed, read-only" -r r.raw
export_case "raw, size not a multiple of 512" -f raw odd.raw
export_case "read-only qcow2" -r -f qcow2 q.qcow2
export_case "allocation depth" -A -f qcow2 q.qcow2
export_case "shared by 2: multi-conn" -e 2 -f qcow2 q.qcow2
export_case "shared without limit, read-only" -e 0 -r -f qcow2 q.qcow2
EXPORT=disk1 export_case "named, described" -x disk1 -D "a test disk" \
  -f qcow2 q.qcow2
export_case "cache=none, aio=native" --cache=none --aio=native -f qcow2 q.qcow2
export_case "writethrough" --cache=writethrough -f raw r.raw
export_case "unsafe" --cache=unsafe -f raw r.raw
export_case "discard and detect-zeroes" --discard=unmap \
  --detect-zeroes=unmap -f qcow2 q.qcow2
export_case "snapshot" -s -f qcow2 q.qcow2
export_case "snapshot of a raw image" -s -f raw r.raw
export_case "offset into a raw image" -o 65536 -f raw r.raw
export_case "offset into a qcow2 image" -o 1048576 -f qcow2 q.qcow2
export_case "image-opts" --image-opts driver=qcow2,file.filename=q.qcow2
export_case "image-opts, probing" --image-opts file.filename=q.qcow2
export_case "image-opts, file driver" --image-opts driver=file,filename=r.raw
export_case "json, qcow2 without backing" \
  'json:{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"},"backing":null}'
export_case "json, a window of a raw file" \
  'json:{"driver":"raw","offset":65536,"size":1048576,"file":{"driver":"file","filename":"r.raw"}}'
export_case "json, locking off, cache.direct" \
  'json:{"driver":"raw","cache":{"direct":true},"file":{"driver":"file","filename":"r.raw","locking":"off"}}'
export_case "a bitmap" -B b1 -f qcow2 bm.qcow2
export_case "a bitmap, read-only, allocation depth" -B b1 -r -A bm.qcow2
export_case "an internal snapshot by name" -l s1 bm.qcow2
export_case "an internal snapshot by id" -l snapshot.id=1 -f qcow2 bm.qcow2
ok "$n option sets: the same export as qemu-nbd's"

# ---- what the options do to the data -------------------------------------

# Serve with ours, run qemu-io commands through the export (fail unless
# they succeed), stop the server.
ours_io ()
{
  local args=$1 fmt=$2; shift 2
  local c cmds=()
  for c in "$@"; do cmds+=(-c "$c"); done
  # shellcheck disable=SC2086
  qnbd_start ours "$tmpdir/io.sock" -t $args
  run_timeout 60 qemu-io -f "$fmt" "${cmds[@]}" \
    "nbd+unix:///?socket=$tmpdir/io.sock" > "$tmpdir/io.out" 2>&1 ||
    { cat "$tmpdir/io.out" >&2; fail "qemu-io $* through ours ($args)"; }
  grep -qiE 'error|fail|mismatch' "$tmpdir/io.out" &&
    { cat "$tmpdir/io.out" >&2; fail "qemu-io $* through ours ($args)"; }
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "ours ($args)"
  [ "$qnbd_rc" -eq 0 ] || fail "ours ($args) exited $qnbd_rc after SIGTERM"
}

cd "$tmpdir/img-ours"

# A raw image, written in place.
ours_io "-f raw r.raw" raw 'write -P 0x44 1M 64k' 'write -z 2M 64k' \
  'read -P 0x44 1M 64k'
qemu-io -f raw -c 'read -P 0x44 1M 64k' -c 'read -P 0x33 64k 64k' \
  -c 'read -P 0 2M 64k' r.raw | grep -q 'read 65536/65536' ||
  fail "raw writes did not reach the file"
ok "raw images are written in place"

# A probed raw image: a qcow2 header may not be written into sector 0
# (EPERM, as qemu-nbd), other data may.  With -f raw anything goes.
printf 'QFI\xfb\0\0\0\3' > "$tmpdir/magic"
head -c 504 /dev/zero >> "$tmpdir/magic"
declare -A pid
for who in oracle ours; do
  cp "$tmpdir/img-ours/r.raw" "$tmpdir/probe-$who.raw"
  qnbd_cwd="$tmpdir" qnbd_start "$who" "$tmpdir/p-$who.sock" -t \
    "probe-$who.raw"
  pid[$who]=$qnbd_pid
done
for who in oracle ours; do
  rc=0
  nbdcopy "$tmpdir/magic" "nbd+unix:///?socket=$tmpdir/p-$who.sock" \
    > "$tmpdir/probe.$who.out" 2>&1 || rc=$?
  [ "$rc" -ne 0 ] || fail "$who let a qcow2 header into a probed raw image"
  qemu-io -f raw -c 'write -P 0x55 0 4k' \
    "nbd+unix:///?socket=$tmpdir/p-$who.sock" > "$tmpdir/probe2.$who.out" 2>&1
  grep -q 'wrote 4096/4096' "$tmpdir/probe2.$who.out" ||
    fail "$who refused ordinary data in sector 0 of a probed raw image"
  kill -TERM "${pid[$who]}"
  qnbd_wait_exit "${pid[$who]}" "$who serving a probed raw image"
done
cmp "$tmpdir/probe-oracle.raw" "$tmpdir/probe-ours.raw" ||
  fail "probed raw images differ after the same writes"
cp r.raw explicit.raw
ours_io "-f raw explicit.raw" raw "write -P 0x51 0 512"
ok "probed raw images guard their first sector as qemu-nbd does"

# --snapshot: the writes are seen through the export, the image is not
# touched, and the overlay is gone afterwards.
mkdir -p "$tmpdir/snaptmp"
sum=$(md5sum < q.qcow2)
TMPDIR="$tmpdir/snaptmp" qnbd_start ours "$tmpdir/s.sock" -t -s -f qcow2 \
  q.qcow2
[ -z "$(ls -A "$tmpdir/snaptmp")" ] ||
  fail "--snapshot left its overlay visible in TMPDIR while serving"
qemu-io -f raw -c 'write -P 0x66 0 1M' -c 'read -P 0x66 0 1M' \
  -c 'read -P 0x22 1M 1M' -c 'read -P 0x11 2M 1M' \
  "nbd+unix:///?socket=$tmpdir/s.sock" > "$tmpdir/snap.out"
grep -qiE 'error|mismatch' "$tmpdir/snap.out" &&
  { cat "$tmpdir/snap.out" >&2; fail "--snapshot: reads through the export"; }
kill -TERM "$qnbd_pid"
qnbd_wait_exit "$qnbd_pid" "--snapshot"
[ "$(md5sum < q.qcow2)" = "$sum" ] || fail "--snapshot changed the image"
[ -z "$(ls -A "$tmpdir/snaptmp")" ] || fail "--snapshot left files behind"
check_clean q.qcow2 "after --snapshot"
ok "--snapshot: writes go to a temporary overlay, the image is untouched"

# Windows: --offset over qcow2, raw offset and size.
ours_io "-o 1048576 -f qcow2 q.qcow2" raw 'read -P 0x22 0 1M' \
  'read -P 0x11 1M 2M' 'write -P 0x77 0 64k'
qemu-io -f qcow2 -c 'read -P 0x77 1M 64k' q.qcow2 | grep -q 'read 65536' ||
  fail "--offset: the write did not land at the offset"
ours_io 'json:{"driver":"raw","offset":65536,"size":131072,"file":{"driver":"file","filename":"r.raw"}}' \
  raw 'read -P 0x33 0 64k' 'read -P 0 64k 64k'
ok "windows: --offset and raw offset/size"

# backing=null: what the backing file would show reads as zeros.
ours_io 'json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"q.qcow2"}}' \
  raw 'read -P 0 2M 1M' 'read -P 0x77 1M 64k' 'read -P 0x22 1088k 960k'
ok "backing=null hides the backing file"

# detect-zeroes=unmap with discard=unmap: zeros written deallocate, as
# with qemu-nbd (compare the maps of the two images afterwards).
make_images
for who in oracle ours; do
  qnbd_cwd="$tmpdir/img-$who" qnbd_start "$who" "$tmpdir/z-$who.sock" \
    --discard=unmap --detect-zeroes=unmap -f raw r.raw
  qemu-io -f raw -c 'write -P 0 0 4M' "nbd+unix:///?socket=$tmpdir/z-$who.sock" \
    > /dev/null
  qnbd_wait_exit "$qnbd_pid" "$who with detect-zeroes"
done
for who in oracle ours; do
  qemu-img map --output=json -f raw "$tmpdir/img-$who/r.raw" \
    > "$tmpdir/zmap.$who"
done
diff -u "$tmpdir/zmap.oracle" "$tmpdir/zmap.ours" >&2 ||
  fail "detect-zeroes=unmap: the raw file's allocation differs"
grep -q '"data": true' "$tmpdir/zmap.ours" &&
  fail "detect-zeroes=unmap: zeros were written, not unmapped"
ok "detect-zeroes=unmap deallocates written zeros as qemu-nbd does"

# cache=none: data written through the export stays out of the page
# cache (O_DIRECT), as with qemu-nbd; without it, it is cached.
if command -v fincore >/dev/null; then
  for cache in none writeback; do
    rm -f "$tmpdir/big.raw"
    truncate -s 64M "$tmpdir/big.raw"
    qnbd_cwd="$tmpdir" qnbd_start ours "$tmpdir/c-$cache.sock" -f raw \
      --cache=$cache big.raw
    qemu-io -f raw -c 'write -P 0x99 0 32M' \
      "nbd+unix:///?socket=$tmpdir/c-$cache.sock" > /dev/null
    qnbd_wait_exit "$qnbd_pid" "cache=$cache"
    pages=$(fincore --noheadings --output PAGES "$tmpdir/big.raw" |
              tr -d ' ')
    qemu-io -f raw -c 'read -P 0x99 0 32M' "$tmpdir/big.raw" |
      grep -q 'read 33554432' || fail "cache=$cache: data not written"
    if [ "$cache" = none ]; then
      [ "$pages" -lt 1024 ] ||
        fail "cache=none: $pages pages of written data in the page cache"
    else
      [ "$pages" -ge 4096 ] ||
        fail "cache=writeback: only $pages pages cached (is fincore right?)"
    fi
  done
  ok "cache=none writes around the page cache"
fi
