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
grep -q 'READ .* offset 20971520 length 1048576: .*zero-copy' "$server_log" &&
  fail "overlay: a read of the overlay's own data went zero-copy"
grep -q 'READ .* offset 9437184 length 1048576: .*zero-copy' "$server_log" ||
  fail "overlay: a read of the backing file did not go zero-copy"
ok "zero-copy only for files we never write"

# Clients that ask for many large reads and never read the replies hold
# the pipes of those replies: at most a few per connection, so they
# cannot use up the server's file descriptors, and everyone else is
# still served.
image_to_raw "$plain" "$tmpdir/ref.raw"
start_server "$plain" --read-only --threads 1 --export-name stall
fds_before=$(ls "/proc/$server_pid/fd" | wc -l)
ready="$tmpdir/stalled"
"$PYTHON" - "$port" "$tmpdir/ref.raw" "$ready" <<'PY' &
import os, struct, sys, time
sys.path.insert(0, os.environ["abs_top_srcdir"] + "/tests")
import abuse
port, ref, ready = int(sys.argv[1]), sys.argv[2], sys.argv[3]
x = abuse.Ctx("127.0.0.1", port, b"stall", ref)
conns = []
for _ in range(3):
    c = x.good_conn()
    for i in range(128):
        c.s.sendall(struct.pack(">IHHQQI", abuse.REQ_MAGIC, 0, abuse.CMD_READ,
                                i + 1, (i * 262144) % (x.size - 262144), 262144))
    conns.append(c)
open(ready, "w").close()
time.sleep(30)
PY
stalled_pid=$!
cleanup_fn _kill_server "$stalled_pid"
wait_for_file "$ready" "the stalled clients did not connect"
sleep 2
fds=$(ls "/proc/$server_pid/fd" | wc -l)
# 3 sockets, and at most 8 pipes (16 fds) per connection.
[ "$fds" -le $(( fds_before + 3 + 3 * 16 )) ] ||
  fail "stalled clients hold $(( fds - fds_before )) file descriptors"
run_timeout 120 "$PYTHON" "$abs_top_srcdir/tests/read-paths.py" \
  "$uri/stall" "$tmpdir/ref.raw" 9 || fail "reads beside stalled clients"
kill "$stalled_pid" 2>/dev/null; wait "$stalled_pid" 2>/dev/null || true
stop_server
ok "stalled clients hold $(( fds - fds_before )) file descriptors; others are served"
