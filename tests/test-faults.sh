#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Failing storage (issue 12, item 4): the image (and its backing file) on
# faultfs, which fails chosen host reads, writes and fsyncs on command,
# while real clients use the server:
#  1. a data write that fails (EIO, ENOSPC) fails its request with that
#     error and nothing else: other connections are served, the range
#     reads as before (the allocation was undone: no metadata points at
#     the unwritten cluster), and the cluster is reused, not leaked;
#  2. short host writes and reads are completed, not taken for errors or
#     end of file, on the inline, io_uring and splice paths;
#  3. host read errors (data, backing file, an L2 table) fail only the
#     reads that meet them, and only while they last;
#  4. once an fsync has failed, no FLUSH or FUA write succeeds again,
#     even after the fault is gone: every write, zeroing, trim and flush
#     gets EIO, reads go on, the log says why, and the server exits 1;
#     after a restart every byte of an acknowledged FLUSH is there, the
#     dirty bit makes the open rebuild the refcounts, and `qemu-img
#     check` exits 0;
#  5. a storm of random requests while host writes fail now and then:
#     answered requests read back, failed ones leave old or new data;
#  6. a new L2 table whose L1 entry fails to be written is not leaked:
#     after a clean shutdown `qemu-img check` finds no leak.
# FAULTS_SEED=N replays the storm; FAULTS_STORM=N makes it N requests
# long (default 400; `make check-stress` runs 5000).

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/faultfs-functions.sh"

requires qemu-img qemu-io cmp
requires_python_nbd
requires_server
requires_faultfs

seed=${FAULTS_SEED:-$RANDOM$RANDOM}
echo "seed $seed (FAULTS_SEED=$seed replays)"

b="$tmpdir/backing" m="$tmpdir/mnt"
mkdir -p "$b" "$m"
faultfs_mount "$b" "$m" || fail "faultfs did not mount"
img="$m/img.qcow2"

ctl () { faultfs_ctl "$m" "$@"; }
# steps STEP...: client requests and their expected outcomes (faults.py).
steps ()
{
  run_timeout 120 "$PYTHON" "$abs_top_srcdir/tests/faults.py" "$uri" "$@" ||
    fail "steps: $*"
}

# stop_expect STATUS: stop the server, which must exit with STATUS.
stop_expect ()
{
  local rc=0 i
  kill -TERM "$server_pid"
  for (( i = 0; i < 300; i++ )); do
    _alive "$server_pid" || break
    sleep 0.1
  done
  wait "$server_pid" || rc=$?
  [ "$rc" -eq "$1" ] || fail "server exited with status $rc, expected $1"
}

# host_offset GUEST: where the guest byte GUEST of the image lives now.
host_offset ()
{
  qemu-img map -U -f qcow2 --output=json "$img" | "$PYTHON" -c '
import json, sys
g = int(sys.argv[1])
for e in json.load(sys.stdin):
    if e["start"] <= g < e["start"] + e["length"] and e["depth"] == 0 \
       and "offset" in e:
        print(e["offset"] + g - e["start"]); break
else:
    raise SystemExit("guest %d is not allocated in the top image" % g)
' "$1"
}

# l2_offset: host offset of the first L2 table (L1 entry 0).
l2_offset ()
{
  "$PYTHON" - "$img" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
    f.seek(l1); e = struct.unpack(">Q", f.read(8))[0]
print(e & 0x00fffffffffffe00)
EOF
}

T=1099511627776      # "to the end of the file" for rule ranges

# A 64 MiB image over an 8 MiB backing file of 0xaa bytes, made in the
# backing directory; the server reaches both through faultfs.
qemu-img create -q -f raw "$b/base.raw" 8M
qemu-io -f raw -c 'write -P 0xaa 0 8M' "$b/base.raw" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw \
  "$b/img.qcow2" 64M

start_server "$img" --discard=unmap
steps 'write:0:64k:0x11=OK' 'flush=OK' 'read:64k:64k:0xaa=OK'

# ---- 1. failed data writes --------------------------------------------------

# The L2 table of the first 512 MiB exists now: the next allocating
# write allocates only data clusters, at the end of the file.
end=$(file_size "$b/img.qcow2")
ctl fail write eio path=/img.qcow2 off="$end" len=$T
# 4 KiB (copy-on-write of the rest of the cluster from the backing file,
# written inline) and 256 KiB (four clusters, through io_uring).
steps 'write:1M:4k:0x22=EIO' 'c2/read:0:64k:0x11=OK' \
      'write:2M:256k:0x23=EIO' 'c2/write:0:4k:0x12=OK' \
      'read:1M:64k:0xaa=OK' 'read:2M:256k:0xaa=OK'
ctl clear
ctl fail write enospc path=/img.qcow2 off="$end" len=$T
steps 'write:3M:8k:0x24=ENOSPC' 'read:3M:64k:0xaa=OK'
ctl clear
steps 'write:4M:64k:0x25=OK' 'flush=OK'
[ "$(host_offset 4194304)" = "$end" ] ||
  fail "the cluster of the failed writes was not reused (4M is at" \
       "$(host_offset 4194304), not $end): leaked"
ok "failed data writes: EIO/ENOSPC on the wire, ranges unchanged," \
   "cluster reused"

# ---- 2. short writes and reads ----------------------------------------------

# A short write through io_uring never reaches the server as such: FUSE
# turns a short asynchronous direct write into EIO (fuse_get_res_by_io).
# Only a small write the worker makes itself (inline) sees it, and the
# worker sends even those through io_uring for a while after one was
# slow, so a data write made short may succeed or fail, but never leave
# a hole.  Where the library writes synchronously (zeroing part of a
# cluster, the refcount blocks and L2 tables a flush writes) short
# writes must always be completed.
ctl fail write short path=/img.qcow2 count=1
steps 'write:5M:4k:0x31=OK|EIO' 'read:5M:4k:0x31/0xaa=OK'
ctl fail write short path=/img.qcow2 count=1
steps 'write:5M:64k:0x33=OK|EIO' 'read:5M:64k:0x33/0x31/0xaa=OK'
ctl clear
steps 'write:5M:64k:0x33=OK' 'write:6M:1M:0x32=OK'
steps 'write:7M:12k:0x34=OK'
ctl clear
ctl fail write short path=/img.qcow2
steps 'zero:5246976:8k=OK' 'flush=OK'
ctl clear
# Short reads of the image (never spliced: it is written) and small
# copied reads of the backing file.  A spliced read that comes back short
# is taken by FUSE for the end of the file: it shrinks the size it
# caches, and reads past it return nothing until the next stat.
ctl fail read short path=/img.qcow2
ctl fail read short path=/base.raw count=2
steps 'read:5M:4k:0x33=OK' 'read:5246976:8k:0=OK' 'read:5255168:52k:0x33=OK' \
      'read:6M:1M:0x32=OK' 'read:7M:12k:0x34=OK' 'read:7M:64k:0x34/0xaa=OK' \
      'read:1M:4k:0xaa=OK' 'read:3M:64k:0xaa=OK' 'read:0:4k:0x12=OK' \
      'c2/read:4k:60k:0x11=OK'
short_reads=$(sed -n 's/^rule read short .* hits=\([0-9]*\).*/\1/p' \
  "$m/.faultfs" | awk '{ s += $1 } END { print s + 0 }')
[ "$(sed -n 's/^rule read short path=.base.raw .* hits=\([0-9]*\).*/\1/p' \
     "$m/.faultfs")" = 2 ] ||
  fail "the backing file's reads were not made short"
[ "${short_reads:-0}" -gt 2 ] || fail "no read of the image was made short"
n=$(faultfs_injected "$m")
ctl clear
ok "short host writes and reads completed ($short_reads short reads," \
   "$n faults injected so far)"

# ---- 3. read errors ---------------------------------------------------------

h0=$(host_offset 0)
ctl fail read eio path=/img.qcow2 off="$h0" len=65536
steps 'read:0:4k:0x12=EIO' 'c2/read:5M:4k:0x33=OK' 'read:4M:64k:0x25=OK'
ctl clear
ctl fail read eio path=/base.raw off=1048576 len=2097152
# 4 KiB is copied, 256 KiB spliced (the backing file is read-only).
steps 'read:1M:4k:0xaa=EIO' 'read:2M:256k:0xaa=EIO' 'read:4M:4k:0x25=OK' \
      'read:3M:4k:0xaa=OK'
ctl clear
steps 'read:0:4k:0x12=OK' 'read:1M:4k:0xaa=OK' 'read:2M:256k:0xaa=OK'
ok "host read errors fail only the reads that meet them"

# ---- 4. a failed fsync ------------------------------------------------------

# flushed_steps: what every later restart must find (FLUSH acknowledged).
flushed=('read:0:4k:0x12=OK' 'read:4k:60k:0x11=OK' 'read:4M:64k:0x25=OK'
         'read:5M:4k:0x33=OK' 'read:5246976:8k:0=OK' 'read:5255168:52k:0x33=OK'
         'read:6M:1M:0x32=OK' 'read:7M:12k:0x34=OK')

steps 'write:8M:64k:0x41=OK' 'flush=OK' 'write:9M:64k:0x42=OK'
flushed+=('read:8M:64k:0x41=OK')
ctl fail fsync eio path=/img.qcow2 count=1
steps 'flush=EIO'
ctl clear
# The fault is gone; the failure stays.
steps 'flush=EIO' 'write:10M:4k:0x43=EIO' 'write:8M:4k:0x44:fua=EIO' \
      'write:0:4k:0x45=EIO' 'zero:11M:64k=EIO' 'trim:4M:64k=EIO' \
      'c2/flush=EIO' 'read:8M:64k:0x41=OK' 'read:9M:64k:0x42=OK' \
      'c3/read:0:4k:0x12=OK'
grep -q 'sync failed: Input/output error' "$server_log" ||
  fail "the log does not say that the sync failed"
grep -q 'every write and flush of this image fails with EIO' "$server_log" ||
  fail "the log does not say what the failed state means"
stop_expect 1
grep -q 'final flush failed' "$server_log" ||
  fail "the log does not say why the server exits with status 1"
ok "after a failed fsync: FLUSH, FUA, writes, zeroes and trims fail;" \
   "reads go on; exit 1"

start_server "$img" --discard=unmap
grep -q 'image is dirty' "$server_log" ||
  fail "the restarted server did not find the image dirty"
# An L2 table that cannot be read fails the read, and only while it
# lasts (the cache is cold after the restart).
ctl fail read eio path=/img.qcow2 off="$(l2_offset)" len=65536 count=1
steps 'read:0:4k:0x12=EIO' 'read:0:4k:0x12=OK'
steps "${flushed[@]}" 'read:9M:64k:0x42/0=OK'
stop_server
check_clean "$b/img.qcow2" "after the failed fsync and a restart"
ok "restarted: every flushed byte is there, refcounts rebuilt, check clean"

# The second sync of a flush (after the L2 tables were written), met by
# a FUA write, failing with ENOSPC.
start_server "$img" --discard=unmap
steps 'write:12M:64k:0x51=OK' 'flush=OK'
flushed+=('read:12M:64k:0x51=OK')
ctl fail fsync enospc path=/img.qcow2 after=1 count=1
steps 'write:13M:128k:0x52:fua=ENOSPC' 'flush=EIO' 'read:13M:128k:0x52=OK'
ctl clear
steps 'flush=EIO'
stop_expect 1
start_server "$img" --discard=unmap
steps "${flushed[@]}" 'read:13M:128k:0x52/0=OK'
stop_server
check_clean "$b/img.qcow2" "after a failed second sync and a restart"
ok "a failed second sync (FUA write): ENOSPC, then the same failed state"

# ---- 5. a storm of failing host writes --------------------------------------

start_server "$img" --discard=unmap
run_timeout 600 "$PYTHON" "$abs_top_srcdir/tests/faults.py" "$uri" storm \
  "$seed" "${FAULTS_STORM:-400}" "$m/.faultfs" "$tmpdir/storm.raw" ||
  fail "storm"
server_alive "after the storm"
stop_server
start_server "$img"
out=$(qemu-img compare -f raw "$tmpdir/storm.raw" -F raw "$uri" 2>&1) ||
  fail "after a restart the disk differs from what the storm left: $out"
stop_server
check_clean "$b/img.qcow2" "after the storm"
n=$(faultfs_injected "$m")
ok "storm: everything answered reads back after a restart" \
   "($n faults injected in all)"

# ---- 6. a failed L1 entry write ---------------------------------------------

# 4 KiB clusters: an L2 table covers 2 MiB, so a write at 8M needs a new
# one, whose L1 entry (8 bytes at l1_table_offset + 8 * 4) is made to
# fail.  The table, allocated and written, must be freed once the old
# entry is back on disk, not leaked past the clean close.
img2="$m/l1.qcow2"
qemu-img create -q -f qcow2 -o cluster_size=4k "$b/l1.qcow2" 64M
l1=$("$PYTHON" -c '
import struct, sys
with open(sys.argv[1], "rb") as f:
    f.seek(40); print(struct.unpack(">Q", f.read(8))[0])' "$b/l1.qcow2")
start_server "$img2"
ctl fail write eio path=/l1.qcow2 off=$(( l1 + 32 )) len=8 count=1
steps 'write:8M:4k:0x61=EIO' 'read:8M:4k:0x00=OK'
ctl clear
steps 'write:8M:4k:0x62=OK' 'flush=OK' 'read:8M:4k:0x62=OK'
stop_server
check_clean "$b/l1.qcow2" "after a failed L1 entry write"
ok "a failed L1 entry write: EIO, and the new L2 table is not leaked"
