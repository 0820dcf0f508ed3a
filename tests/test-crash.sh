#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# kill -9 under a write load (issue 3), many times over the same images:
# crash-load.py writes from four connections with periodic FLUSH and FUA,
# logging what was acknowledged before each completed FLUSH; the server
# is killed at a random moment; then `qemu-img check` must exit 0 or 3
# (leaks only), every byte acknowledged before the last completed FLUSH
# must read back exactly (and bytes never written must be unchanged), and
# the server must start again on the image and serve the same data.  With
# lazy_refcounts=on the image is dirty after a kill: one start and stop of
# our server (a read-write open repairs it) must leave it checking clean,
# exit 0.  CRASH_SEED=N replays the random choices; CRASH_ROUNDS=N sets
# the number of kills per image kind.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img cmp
requires_python_nbd
requires_server

seed=${CRASH_SEED:-$RANDOM$RANDOM}
rounds=${CRASH_ROUNDS:-6}
echo "seed $seed (CRASH_SEED=$seed replays)"
RANDOM=$(( seed % 32768 ))
MiB=$(( 1024 * 1024 ))
load="$abs_top_srcdir/tests/crash-load.py"

# check_rc IMG WHAT ALLOWED...: qemu-img check's exit status must be one
# of ALLOWED.
check_rc ()
{
  local img=$1 what=$2 rc=0 a; shift 2
  qemu-img check "$img" >"$tmpdir/check.out" 2>&1 || rc=$?
  for a in "$@"; do
    [ "$rc" -eq "$a" ] && return 0
  done
  cat "$tmpdir/check.out" >&2
  fail "$what: qemu-img check $img exited $rc (allowed: $*)"
}

# kill_quietly PID: for cleanups of processes that have usually ended.
kill_quietly ()
{
  kill "$1" 2>/dev/null || true
}

# crash_rounds NAME IMG LAZY(0|1): ROUNDS kills on IMG.
crash_rounds ()
{
  local name=$1 img=$2 lazy=$3 i ms rc
  local before="$tmpdir/$name.before.raw" after="$tmpdir/$name.after.raw"
  image_to_raw "$img" "$before"
  for (( i = 1; i <= rounds; i++ )); do
    local what="$name round $i" log="$tmpdir/$name.$i.log"
    start_server "$img"
    "$PYTHON" "$load" write "$uri" "$log" --seed "$(( seed + i ))" \
      >"$tmpdir/load.out" 2>&1 &
    local load_pid=$!
    cleanup_fn kill_quietly "$load_pid"
    ms=$(( 100 + RANDOM % 1400 ))
    sleep "$(( ms / 1000 )).$(printf '%03d' $(( ms % 1000 )))"
    _alive "$server_pid" || fail "$what: server died under the load"
    kill -KILL "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    rc=0
    run_timeout 60 tail --pid="$load_pid" -f /dev/null || rc=$?
    [ "$rc" -eq 0 ] || fail "$what: the load did not end after the kill"
    wait "$load_pid" || {
      cat "$tmpdir/load.out" >&2
      fail "$what: crash-load.py write failed"
    }

    # A non-lazy image must be consistent as it is: leaks at most.
    [ "$lazy" = 1 ] || check_rc "$img" "$what, after kill -9" 0 3

    # qemu's reading of the crashed image must hold every durable write.
    image_to_raw "$img" "$after"
    "$PYTHON" "$load" verify "$log" "$before" "$after" \
      >"$tmpdir/verify.out" 2>&1 || {
      cat "$tmpdir/verify.out" >&2
      fail "$what: acknowledged and flushed data lost (killed after $ms ms)"
    }

    # Our server must open it again (repairing a dirty image) and serve
    # exactly what qemu read.
    start_server "$img"
    local out
    out="$(qemu-img compare -f raw "$after" -F raw "$uri" 2>&1)" ||
      fail "$what: restarted server serves other data: $out"
    stop_server
    if [ "$lazy" = 1 ]; then
      check_rc "$img" "$what, lazy refcounts, after one read-write open" 0
    else
      check_rc "$img" "$what, after a restart" 0 3
    fi
    echo "  $what: killed after $ms ms; $(tail -n 1 "$tmpdir/verify.out")"
    mv "$after" "$before"
    rm -f "$log"
  done
  rm -f "$before"
  ok "$name: $rounds kills under load, flushed data intact, check clean"
}

img="$tmpdir/plain.qcow2"
make_image "$img" $(( 32 * MiB ))
crash_rounds "64k-clusters" "$img" 0

back="$tmpdir/back.raw"
"$PYTHON" -c '
import random, sys
random.seed(7)
open(sys.argv[1], "wb").write(random.randbytes(32 << 20))' "$back"
img="$tmpdir/over-backing.qcow2"
make_image "$img" $(( 32 * MiB )) -o cluster_size=4k,refcount_bits=8 \
  -b "$back" -F raw
crash_rounds "4k-clusters-over-backing" "$img" 0

img="$tmpdir/lazy.qcow2"
make_image "$img" $(( 32 * MiB )) -o lazy_refcounts=on,cluster_size=16k
crash_rounds "lazy-refcounts" "$img" 1

img="$tmpdir/lazy-back.qcow2"
make_image "$img" $(( 32 * MiB )) -o lazy_refcounts=on -b "$back" -F raw
crash_rounds "lazy-refcounts-over-backing" "$img" 1
