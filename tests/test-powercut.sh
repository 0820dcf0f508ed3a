#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Power cuts (issue 12, item 5): for each workload, the server writes
# the image through faultfs, which logs every write and fsync in order;
# then powercut.py rebuilds the images a power cut could have left at
# every point (everything up to an fsync plus any subset of the writes
# after it, some of them torn at a sector) and checks each: `qemu-img
# check` exits 0 or 3, and every sector reads as a value it may have -
# what the last acknowledged FLUSH or FUA write made durable, or a later
# request's data - never another request's data, another sector's, or
# garbage.  Each workload ends with a clean shutdown, checked too.
#
# Workloads: allocating writes, overwrites, discards (--discard=unmap)
# with clusters reused, write-zeroes with and without NO_HOLE, L2 table
# allocation (2 KiB clusters), refcount blocks and refcount table growth
# (512-byte clusters, 64-bit refcounts), a lazy_refcounts image,
# copy-on-write from a backing file, and the same while host writes fail
# now and then (cow-eio: a failed write is written again; no state may
# show a cluster linked whose data never made it, where the backing
# file's data must show).  (An L1 table never grows on a valid image: it
# covers the virtual size, and open refuses one that does not.)
#
# make check runs a bounded pass; `make check-stress` a long one:
#   POWERCUT_SCALE   requests per workload, in units of 40 (default 1)
#   POWERCUT_STATES  about how many crash states per workload (default 100)
#   POWERCUT_BUDGET  most crash states per epoch (default 32)
#   POWERCUT_SEED    replays a run
#   POWERCUT_ONLY    run only the workloads named (space separated)
#   POWERCUT_KEEP    a directory to copy the log and failed states to

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/faultfs-functions.sh"

requires qemu-img
requires_python_nbd
requires_server
requires_faultfs

seed=${POWERCUT_SEED:-$RANDOM$RANDOM}
scale=${POWERCUT_SCALE:-1}
budget=${POWERCUT_BUDGET:-32}
states=${POWERCUT_STATES:-100}
echo "seed $seed (POWERCUT_SEED=$seed replays), scale $scale," \
     "about $states states per workload, at most $budget per epoch"
pc="$abs_top_srcdir/tests/powercut.py"

# The crash states are many short-lived files: in memory if we can.
work="$tmpdir"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  work="$(mktemp -d /dev/shm/qcow2-nbd-powercut.XXXXXX)"
  cleanup_fn rm -rf "$work"
fi

# workload NAME DISK CLUSTER [QEMU-IMG -o OPTIONS]
workload ()
{
  local name=$1 disk=$2 cluster=$3 opts=${4:-} backing=0
  local d="$tmpdir/$name" t0
  case " ${POWERCUT_ONLY:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  t0=$(date +%s.%N)
  mkdir -p "$d/b" "$d/m"
  local create=(-o "cluster_size=$cluster${opts:+,$opts}")
  if [ "${name%-eio}" = cow ]; then
    backing=$(( disk / 2 ))
    "$PYTHON" "$pc" backing "$d/b/base.raw" "$backing"
    create+=(-b base.raw -F raw)
  fi
  make_image "$d/b/img.qcow2" "$disk" "${create[@]}"
  cp "$d/b/img.qcow2" "$d/initial.img"
  faultfs_mount "$d/b" "$d/m" "$d/log" || fail "$name: faultfs did not mount"
  start_server "$d/m/img.qcow2" --discard=unmap
  run_timeout 600 "$PYTHON" "$pc" run "$uri" "$name" "$seed" \
    "$d/m/.faultfs" "$d/ops.json" "$disk" "$cluster" "$scale" "$backing" ||
    fail "$name: the workload failed"
  stop_server
  faultfs_ctl "$d/m" mark closed
  faultfs_umount "$d/m"
  check_clean "$d/b/img.qcow2" "$name: after the clean shutdown"
  mkdir -p "$work/$name"
  [ "$backing" = 0 ] || ln -s "$d/b/base.raw" "$work/$name/base.raw"
  run_timeout 3600 nice "$PYTHON" "$pc" check "$d/log" "$d/initial.img" \
    "$d/ops.json" "$work/$name" --seed "$seed" --budget "$budget" \
    --states "$states" --torn --backing-bytes "$backing" | tee "$d/result" || {
    if [ -n "${POWERCUT_KEEP:-}" ]; then
      mkdir -p "$POWERCUT_KEEP/$name"
      cp -r "$d/log" "$d/ops.json" "$d/initial.img" "$work/$name/failed" \
        "$POWERCUT_KEEP/$name/"
    fi
    fail "$name: crash states failed (replay with POWERCUT_SEED=$seed" \
         "POWERCUT_ONLY=$name; POWERCUT_KEEP=DIR keeps the failed states)"
  }
  echo "$name: $(awk -v t0="$t0" -v t1="$(date +%s.%N)" \
    'BEGIN { printf "%.1f s in all", t1 - t0 }')"
  rm -rf "$work/$name" "$d/log"
}

MiB=$(( 1 << 20 ))
workload alloc $(( 8 * MiB )) 65536
workload overwrite $(( 8 * MiB )) 65536
workload discard $(( 8 * MiB )) 65536
workload zero $(( 8 * MiB )) 65536
workload l2 $(( 8 * MiB )) 2048
workload growth $(( 4 * scale * MiB )) 512 refcount_bits=64
workload lazy $(( 8 * MiB )) 65536 lazy_refcounts=on
workload cow $(( 8 * MiB )) 65536
workload cow-eio $(( 8 * MiB )) 65536

total=$(cat "$tmpdir"/*/result 2>/dev/null |
  awk '/crash states checked/ { s += $2; f += $(NF-3) }
       END { printf "%d states, %d failures", s, f }')
ok "power cuts: $total"
