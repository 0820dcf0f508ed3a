#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd mode with QEMU's compress filter (--image-opts driver=compress
# over qcow2), against Debian's qemu-nbd 7.2:
#  - copies onto fresh images with nbdcopy (socket activation, as libnbd's
#    copy-file-to-qcow2-compressed.sh; and over a socket with virt-v2v's
#    options, several connections) and qemu-img convert, for zlib and
#    zstd, 64 KiB, 2 MiB and 512-byte clusters, extended L2, disks that
#    are not a whole number of 64 KiB: both servers must end alike, and
#    when the copy succeeds both images pass qemu-img check, read as the
#    source, and map to the same runs of compressed, data and zero
#    clusters (with compressed clusters among them);
#  - the library itself (test-compress-lib) from four threads packing
#    streams into the same host clusters: random writes, rewrites and
#    zeroings on every kind of image, 2-bit refcounts included;
#  - single requests (tests/compress-ops.py): overwrites refused with
#    EIO, unaligned writes and zeroes widened to whole clusters, streams
#    that do not shrink, backing files, snapshots, preallocated zero
#    clusters, extended L2, zstd, version 2, 1-bit refcounts, -r, -s,
#    -o, detect-zeroes and discard, what the handshake tells a client;
#  - kill -9 of ours during compressed writes: qemu-img check finds at
#    most leaks, and flushed data reads back;
#  - the options QEMU refuses, with its messages.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img qemu-io nbdcopy nbdinfo
requires_python_nbd
requires_qemu_nbd_oracle
requires_qcow2_feature compression_type=zstd

# ---- the source ---------------------------------------------------------

# make_source FILE SIZE: 64 KiB blocks of random bytes, zeros, text, a
# few random 512-byte sectors in zeros, text with zero runs; the same
# bytes every time.
make_source ()
{
  "$PYTHON" - "$1" "$2" <<'EOF'
import random, sys
path, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(15)
words = [b"qcow2", b"cluster", b"compress", b"stream", b"deflate",
         b"zstd", b"sector", b"refcount"]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return out[:n]
out = bytearray()
i = 0
while len(out) < size:
    k = i % 5
    if k == 0:
        b = rng.randbytes(65536)
    elif k == 1:
        b = bytes(65536)
    elif k == 2:
        b = text(65536)
    elif k == 3:
        b = bytearray(65536)
        for s in rng.sample(range(128), 6):
            b[s * 512:(s + 1) * 512] = rng.randbytes(512)
    else:
        b = text(65536)
        b[8192:40960] = bytes(32768)
    out += b
    i += 1
open(path, "wb").write(out[:size])
EOF
}

# wait_unlocked IMG: wait (30 s at most) until no process holds IMG's
# image locks (qemu-img info cannot open an image a writer has).
wait_unlocked ()
{
  local i
  for (( i = 0; i < 300; i++ )); do
    qemu-img info "$1" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$1 is still locked after 30 s"
}

compress_opts ()
{
  echo "driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=$1"
}

# map_runs IMG: the image's map as runs of compressed (data without a
# host offset), data and zero clusters, with their depth.
map_runs ()
{
  "$PYTHON" "$abs_top_srcdir/tests/compress-ops.py" --map "$1"
}

# ---- copies ---------------------------------------------------------------

# copy_case NAME CLIENT CREATE_OPTS SIZE EXPECT [SERVER_OPTS...]: copy a
# source of SIZE bytes onto a fresh image (qemu-img create -o
# CREATE_OPTS) with CLIENT through each server, and compare the
# outcomes.  EXPECT is "ok", or the message with which the copy fails
# through qemu-nbd (and must fail through ours).
copy_case ()
{
  local name=$1 client=$2 opts=$3 size=$4 expect=$5 who rc img sock
  shift 5
  make_source "$tmpdir/$name.src" "$size"
  for who in oracle ours; do
    img="$tmpdir/$name-$who.qcow2"
    sock="$tmpdir/$name-$who.sock"
    qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
    rc=0
    case $client in
      nbdcopy)
        # libnbd's copy-file-to-qcow2-compressed.sh: socket activation.
        run_timeout 300 env PATH="$tmpdir/path-$who:$PATH" \
          nbdcopy "$tmpdir/$name.src" -- \
          [ qemu-nbd "$@" --image-opts "$(compress_opts "$img")" ] \
          2>"$tmpdir/$name-$who.err" || rc=$?
        ;;
      nbdcopy-socket|convert)
        qnbd_start "$who" "$sock" "$@" --image-opts "$(compress_opts "$img")"
        if [ "$client" = convert ]; then
          # -S 0: qemu-img's sparse detection would write some clusters
          # twice, which the filter refuses (with both servers).
          run_timeout 300 qemu-img convert -n -S 0 -f raw -O raw \
            "$tmpdir/$name.src" "nbd+unix:///?socket=$sock" \
            2>"$tmpdir/$name-$who.err" || rc=$?
        else
          run_timeout 300 nbdcopy "$tmpdir/$name.src" \
            "nbd+unix:///?socket=$sock" 2>"$tmpdir/$name-$who.err" || rc=$?
        fi
        kill "$qnbd_pid" 2>/dev/null || true
        qnbd_wait_exit "$qnbd_pid" "$name ($who)"
        ;;
    esac
    echo "$rc" > "$tmpdir/$name-$who.rc"
  done
  # nbdcopy leaves a server it activated to finish on its own: wait for
  # the image to be let go before looking at it.
  for who in oracle ours; do
    wait_unlocked "$tmpdir/$name-$who.qcow2"
  done

  local orc crc
  orc=$(cat "$tmpdir/$name-oracle.rc")
  crc=$(cat "$tmpdir/$name-ours.rc")
  for who in oracle ours; do
    rc=$(cat "$tmpdir/$name-$who.rc")
    if [ "$expect" = ok ] && [ "$rc" != 0 ]; then
      cat "$tmpdir/$name-$who.err" >&2
      fail "$name: the copy through $who failed (status $rc)"
    fi
    if [ "$expect" != ok ] && { [ "$rc" = 0 ] ||
         ! grep -q -- "$expect" "$tmpdir/$name-$who.err"; }; then
      cat "$tmpdir/$name-$who.err" >&2
      fail "$name: the copy through $who did not fail with '$expect'"
    fi
  done
  for who in oracle ours; do
    img="$tmpdir/$name-$who.qcow2"
    qemu-img check -q "$img" >&2 || fail "$name: qemu-img check of $who's image"
    [ "$orc" != 0 ] && continue
    qemu-img compare -q -f raw -F qcow2 "$tmpdir/$name.src" "$img" ||
      fail "$name: $who's image does not read as the source"
    map_runs "$img" > "$tmpdir/$name-$who.map"
  done
  if [ "$orc" != 0 ]; then
    ok "$name: $client fails through both with '$expect'"
    return
  fi
  diff -u "$tmpdir/$name-oracle.map" "$tmpdir/$name-ours.map" >&2 ||
    fail "$name: the image maps differently from qemu-nbd's (oracle first)"
  grep -q ' compressed$' "$tmpdir/$name-ours.map" ||
    fail "$name: no compressed cluster in the image"
  ok "$name: $client copies as qemu-nbd does ($(grep -c . "$tmpdir/$name-ours.map") runs)"
}

M=$((1024 * 1024))
EIO="Input/output error"
copy_case zlib-64k nbdcopy cluster_size=65536 $((4 * M)) ok
copy_case zlib-64k-convert convert cluster_size=65536 $((4 * M)) ok
copy_case zstd-64k nbdcopy cluster_size=65536,compression_type=zstd $((4 * M)) ok
copy_case zstd-64k-convert convert cluster_size=65536,compression_type=zstd \
  $((4 * M)) ok
copy_case zlib-2M-convert convert cluster_size=2097152 $((4 * M)) ok
copy_case zstd-2M-convert convert cluster_size=2097152,compression_type=zstd \
  $((4 * M)) ok
# nbdcopy writes 256 KiB requests: the second one into a 2 MiB cluster
# finds it compressed already, which QEMU refuses.
copy_case zlib-2M nbdcopy cluster_size=2097152 $((4 * M)) "$EIO"
# 512-byte clusters: a disk that is not a whole number of 64 KiB.
copy_case zlib-512 nbdcopy cluster_size=512 $((4 * M + 1536)) ok
copy_case zstd-512-convert convert cluster_size=512,compression_type=zstd \
  $((4 * M + 1536)) ok
copy_case extl2-64k nbdcopy cluster_size=65536,extended_l2=on $((4 * M)) ok
# virt-v2v -oo compressed: its qemu-nbd options, nbdcopy over the socket
# (several connections: --shared=0 offers multi-conn).
copy_case v2v-64k nbdcopy-socket cluster_size=65536 $((4 * M)) ok \
  -t --shared=0 --discard=unmap
# A disk that is not a whole number of clusters cannot be written
# through the filter (QEMU refuses the write permission).
copy_case zlib-64k-odd nbdcopy cluster_size=65536 $((4 * M + 512)) \
  "Image size is not a multiple of request alignment"

# ---- the library from several threads -----------------------------------

lib="$abs_top_builddir/tests/test-compress-lib"
[ -x "$lib" ] || fail "$lib not built"
seed="${COMPRESS_SEED:-$$}"
echo "seed $seed (COMPRESS_SEED=$seed to repeat)"
for opts in cluster_size=65536 cluster_size=65536,compression_type=zstd \
            cluster_size=512 cluster_size=2097152,compression_type=zstd \
            cluster_size=65536,extended_l2=on compat=0.10 \
            cluster_size=4096,refcount_bits=2; do
  img="$tmpdir/lib.qcow2"
  size=16M
  [ "$opts" = cluster_size=512 ] && size=2M
  rm -f "$img"
  qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
  run_timeout 600 $UNIT "$lib" "$img" "$tmpdir/lib.raw" "$seed" 4 300 ||
    fail "test-compress-lib on $opts (seed $seed)"
  qemu-img check -q "$img" >&2 || fail "$opts: qemu-img check"
  qemu-img compare -q -f raw -F qcow2 "$tmpdir/lib.raw" "$img" ||
    fail "$opts: the image does not read as the threads wrote it"
  # (Eight 2 MiB clusters may all end up rewritten or zeroed.)
  case $opts in *2097152*) continue ;; esac
  qemu-img check --output=json "$img" | grep -q '"compressed-clusters"' ||
    fail "$opts: no compressed cluster"
done
ok "the library from 4 threads: every kind of image checks clean and reads as written"

# ---- single requests ------------------------------------------------------

for who in oracle ours; do
  mkdir -p "$tmpdir/ops-$who"
  run_timeout 600 "$PYTHON" "$abs_top_srcdir/tests/compress-ops.py" \
    "$tmpdir/path-$who/qemu-nbd" "$tmpdir/ops-$who" \
    > "$tmpdir/ops-$who.txt" 2>&1 ||
    { cat "$tmpdir/ops-$who.txt" >&2; fail "compress-ops.py against $who"; }
done
diff -u "$tmpdir/ops-oracle.txt" "$tmpdir/ops-ours.txt" >&2 ||
  fail "requests through the filter: answers or images differ from qemu-nbd's (oracle first)"
grep -q "EIO" "$tmpdir/ops-ours.txt" || fail "no request was refused"
ok "$(grep -c '^== ' "$tmpdir/ops-ours.txt") scenarios of single requests answered as qemu-nbd answers them"

# ---- kill -9 in the middle of compressed writes ---------------------------

# Whatever moment the server dies at: at most leaks (ORDERING.md), and
# what a completed FLUSH covered reads back.
make_source "$tmpdir/crash.src" $((16 * M))
for kill_after in 0 3 12; do
  img="$tmpdir/crash-$kill_after.qcow2"
  qemu-img create -q -f qcow2 "$img" 16M
  qnbd_start ours "$tmpdir/crash-$kill_after.sock" -t --shared=0 \
    --image-opts "$(compress_opts "$img")"
  run_timeout 300 "$PYTHON" "$abs_top_srcdir/tests/compress-crash.py" \
    "$tmpdir/crash-$kill_after.sock" "$qnbd_pid" "$tmpdir/crash.src" \
    "$kill_after" || fail "crash after $kill_after writes: the client failed"
  qnbd_wait_exit "$qnbd_pid" "the killed server"
  # The kernel lets go of the image (and its lock) when the killed
  # server's io_uring has finished with it, which may be a little after
  # the process is gone.
  wait_unlocked "$img"
  rc=0
  qemu-img check -q "$img" >&2 || rc=$?
  [ "$rc" = 0 ] || [ "$rc" = 3 ] ||
    fail "crash after $kill_after writes: qemu-img check exits $rc"
  qemu-img convert -f qcow2 -O raw "$img" "$tmpdir/crash-$kill_after.raw"
  cmp -n $((8 * M)) "$tmpdir/crash.src" "$tmpdir/crash-$kill_after.raw" ||
    fail "crash after $kill_after writes: flushed data lost"
  rm -f "$tmpdir/crash-$kill_after.raw"
done
ok "kill -9 during compressed writes: no corruption, flushed data kept"

# ---- the export -----------------------------------------------------------

n=0
for args in "" "-r"; do
  n=$((n + 1))
  for who in oracle ours; do
    d="$tmpdir/info-$who"
    mkdir -p "$d"
    qemu-img create -q -f qcow2 "$d/e$n.qcow2" 4M
    # shellcheck disable=SC2086
    qnbd_start "$who" "$d/e$n.sock" $args --image-opts "$(compress_opts "$d/e$n.qcow2")"
    info_json "$d/e$n.sock" > "$tmpdir/info$n.$who.json"
    qnbd_wait_exit "$qnbd_pid" "nbdinfo ($who)"
  done
  diff -u "$tmpdir/info$n.oracle.json" "$tmpdir/info$n.ours.json" >&2 ||
    fail "the export (${args:-read-write}) differs from qemu-nbd's (oracle first)"
done
ok "the export as nbdinfo sees it, read-write and read-only"

# ---- what QEMU refuses ----------------------------------------------------

for who in oracle ours; do
  d="$tmpdir/run-$who"
  mkdir -p "$d"
  qemu-img create -q -f qcow2 "$d/e.qcow2" 4M
  qemu-img create -q -f qcow2 "$d/odd.qcow2" 100K
  qemu-img create -q -f qcow2 -o cluster_size=2M "$d/odd2m.qcow2" 3M
  truncate -s 1M "$d/r.raw"
done
n=0
refused ()
{
  n=$((n + 1))
  run_both "refused$n" -k "refused$n.sock" "$@"
  same_output "refused$n" "qemu-nbd $*"
  grep -q . "$tmpdir/refused$n.ours.err" || fail "qemu-nbd $*: no message"
  [ "$(cat "$tmpdir/refused$n.ours.rc")" = 1 ] || fail "qemu-nbd $*: not status 1"
}
refused --image-opts driver=compress
refused --image-opts driver=compress,file.driver=file,file.filename=e.qcow2
refused --image-opts driver=compress,file.filename=e.qcow2
refused --image-opts driver=compress,file.driver=raw,file.file.filename=r.raw
refused --image-opts driver=compress,file.driver=raw,file.file.filename=missing.raw
refused --image-opts driver=compress,file.driver=compress,file.file.driver=qcow2,file.file.file.filename=e.qcow2
refused --image-opts driver=compress,file=e
refused --image-opts driver=compress,file.driver=qcow2
refused --image-opts driver=compress,file.driver=qcow2,file.filename=e.qcow2
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=e.qcow2,level=9
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=e.qcow2,file.level=9
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=e.qcow2,file.file.level=9
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=missing.qcow2
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=r.raw
refused --image-opts driver=compress,read-only=on,file.driver=qcow2,file.file.filename=e.qcow2
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=e.qcow2,file.backing=null
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=odd.qcow2
refused --image-opts driver=compress,file.driver=qcow2,file.file.filename=odd2m.qcow2
refused -f compress e.qcow2
refused 'json:{"driver":"compress"}'
refused 'json:{"driver":"compress","file":{"driver":"raw","file":{"driver":"file","filename":"r.raw"}}}'
refused 'json:{"driver":"compress","file":{"driver":"qcow2","file":{"driver":"file","filename":"odd.qcow2"}}}'
ok "$n refusals worded as qemu-nbd words them"
