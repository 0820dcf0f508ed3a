#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every read path of the server against qemu-img's view of the image:
# copied reads, zero-copy reads (a read-only export, and the backing file
# under a writable overlay), compressed clusters (partly decoded, cached,
# decoded on other workers) with zlib and zstd, holes and zero clusters,
# with structured replies, DF, and simple replies (read-paths.py).

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io
requires_python_nbd
requires_server

# 24 MiB: random data, compressible text, zeros, and an odd tail.
raw="$tmpdir/data.raw"
"$PYTHON" - "$raw" <<'PY'
import random, sys
r = random.Random(7)
M = 1 << 20
text = b"".join(b"read-paths line %06d of compressible text\n" % i for i in range(200000))
parts = [r.randbytes(6 * M), text[:5 * M], bytes(2 * M), r.randbytes(3 * M),
         text[:7 * M], r.randbytes(M - 1536)]
open(sys.argv[1], "wb").write(b"".join(parts))
PY

plain="$tmpdir/plain.qcow2"
qemu-img convert -q -f raw -O qcow2 "$raw" "$plain" || fail "convert $raw"
# Zero clusters and an unallocated stretch inside the data.
image_io "$plain" "write -z 1M 192k" "discard 2M 1M" "write -z -u 16M 64k"
for ct in zlib zstd; do
  qemu-img convert -q -c -f qcow2 -O qcow2 -o compression_type=$ct \
    "$plain" "$tmpdir/$ct.qcow2" || fail "convert -c ($ct)"
done
small="$tmpdir/small.qcow2"
qemu-img convert -q -f qcow2 -O qcow2 -o cluster_size=4096 "$plain" "$small" ||
  fail "convert (4k clusters)"
overlay="$tmpdir/overlay.qcow2"
make_image "$overlay" "$(file_size "$raw")" -b "$plain" -F qcow2
image_io "$overlay" "write -P 0x5a 3M 100k" "write -z 7M 1M" \
  "write -P 0xa5 $(( 20 * 1048576 + 4096 )) 2M"

seed=1
for img in "$plain" "$tmpdir/zlib.qcow2" "$tmpdir/zstd.qcow2" "$small" "$overlay"; do
  name=$(basename "$img")
  image_to_raw "$img" "$tmpdir/ref.raw"
  ro=--read-only
  [ "$img" = "$overlay" ] && ro=
  # Three workers, so a compressed read has others to decode it.
  start_server "$img" $ro --threads 3 -v -v -v
  run_timeout 600 "$PYTHON" "$abs_top_srcdir/tests/read-paths.py" \
    "$uri" "$tmpdir/ref.raw" "$seed" || fail "$name: reads differ"
  stop_server
  seed=$(( seed + 1 ))
  case "$name" in
    plain.qcow2|overlay.qcow2)
      # Large reads of files we do not write went zero-copy.
      grep -q 'zero-copy' "$server_log" ||
        fail "$name: no read went zero-copy"
      ok "$name: $(grep -c 'zero-copy' "$server_log") zero-copy reads" ;;
    *)
      ok "$name" ;;
  esac
done

# The overlay's own clusters are written by us: never zero-copy.  Its
# data is all in [3M, 3M+100k) and [20M+4k, 22M+4k); reads there must
# not go zero-copy, while reads of the backing file may.
start_server "$overlay" --threads 2 -v -v -v
"$PYTHON" - "$uri" <<'PY' || fail "overlay reads"
import sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pread(1 << 20, 20 << 20)           # overlay data only
h.pread(1 << 20, 9 << 20)            # backing file only
h.shutdown()
PY
stop_server
grep 'READ .* offset 20971520 length 1048576' "$server_log" | grep -q zero-copy &&
  fail "overlay: a read of the overlay's own data went zero-copy"
grep 'READ .* offset 9437184 length 1048576' "$server_log" | grep -q zero-copy ||
  fail "overlay: a read of the backing file did not go zero-copy"
ok "zero-copy only for files we never write"
