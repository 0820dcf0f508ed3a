#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# kill -9 under a write load with persistent bitmaps, exported and not,
# enabled and disabled, next to one that was inconsistent already: after
# each kill qemu-img check must exit 0 or 3 (leaks only), every write
# acknowledged before a completed FLUSH must read back (crash-load.py),
# and the bitmaps must be reported exactly as QEMU reports them after
# qemu-nbd is killed the same way on a copy of the same image: every
# bitmap consistent at the start in use (inconsistent), never silently
# clean, and --bitmap must refuse them.  Then a graceful stop under the
# same load: the bitmaps must be consistent, and (read back by qemu-nbd)
# dirty for every granule an acknowledged request touched and for no
# granule no request touched.  BITMAP_CRASH_SEED=N replays the choices.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/bitmap-functions.sh"

requires qemu-img qemu-nbd nbdinfo
requires_python_nbd
requires_server

seed=${BITMAP_CRASH_SEED:-$RANDOM$RANDOM}
echo "seed $seed (BITMAP_CRASH_SEED=$seed replays)"
RANDOM=$(( seed % 32768 ))
MiB=$(( 1024 * 1024 ))
load="$abs_top_srcdir/tests/crash-load.py"
img="$tmpdir/disk.qcow2"

# check_rc WHAT: qemu-img check must exit 0 or 3 (leaks); sets check_st.
check_rc ()
{
  check_st=0
  qemu-img check "$img" >"$tmpdir/check.out" 2>&1 || check_st=$?
  case $check_st in
    0|3) ;;
    *) cat "$tmpdir/check.out" >&2
       fail "$1: qemu-img check exited $check_st" ;;
  esac
}

kill_quietly ()
{
  kill "$1" 2>/dev/null || true
}

# fresh_bitmaps: b64k and b4k enabled, off disabled, made anew (after a
# kill they are inconsistent and can only be removed).
fresh_bitmaps ()
{
  local b
  for b in b64k b4k off; do
    qemu-img bitmap --remove "$img" "$b" 2>/dev/null || true
  done
  qemu-img bitmap --add -g 64k "$img" b64k
  qemu-img bitmap --add -g 4k "$img" b4k
  qemu-img bitmap --add --disable -g 64k "$img" off
}

# start_load LOG SEED: crash-load.py against the server; waits until it
# has had 20 requests acknowledged.
start_load ()
{
  "$PYTHON" "$load" write "$uri" "$1" --seed "$2" >"$tmpdir/load.out" 2>&1 &
  load_pid=$!
  cleanup_fn kill_quietly "$load_pid"
  local i
  for (( i = 0; i < 300; i++ )); do
    [ "$(grep -c '^A ' "$1" 2>/dev/null || true)" -ge 20 ] 2>/dev/null &&
      return 0
    _alive "$load_pid" || break
    sleep 0.1
  done
  cat "$tmpdir/load.out" >&2
  fail "the load did not get 20 requests answered"
}

wait_load ()
{
  run_timeout 60 tail --pid="$load_pid" -f /dev/null ||
    fail "the load did not end"
  wait "$load_pid" || { cat "$tmpdir/load.out" >&2; fail "crash-load.py"; }
}

make_image "$img" $(( 32 * MiB ))
image_io "$img" 'write -P 0x11 0 8M' 'write -c -P 0x12 16M 1M'
# "stale": in use since a crash of QEMU, before any of ours.
qemu-img bitmap --add "$img" stale
start_qemu_nbd "$img" "$tmpdir/qemu.sock"
kill -KILL "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
bitmaps_have "$img" "stale 65536 in-use auto" || fail "no stale bitmap"
check_rc "the starting image"

for round in 1 2 3; do
  what="round $round"
  fresh_bitmaps
  # The oracle: qemu-nbd killed the same way on a copy.
  cp "$img" "$tmpdir/oracle.qcow2"
  start_qemu_nbd "$tmpdir/oracle.qcow2" "$tmpdir/qemu.sock"
  kill -KILL "$qemu_pid"
  wait "$qemu_pid" 2>/dev/null || true
  want=$(bitmaps_of "$tmpdir/oracle.qcow2" | sort)

  before="$tmpdir/before.raw" after="$tmpdir/after.raw"
  image_to_raw "$img" "$before"
  log="$tmpdir/load.$round.log"
  start_server "$img" --socket "$tmpdir/ours.sock" --bitmap b64k
  start_load "$log" "$(( seed + round ))"
  ms=$(( RANDOM % 800 ))
  sleep "0.$(printf '%03d' "$ms")"
  kill -KILL "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  wait_load

  check_rc "$what, after kill -9"
  crash_st=$check_st
  got=$(bitmaps_of "$img" | sort)
  [ "$got" = "$want" ] || {
    echo "ours:" >&2; echo "$got" >&2; echo "qemu-nbd:" >&2; echo "$want" >&2
    fail "$what: bitmaps after kill -9 differ from QEMU's"
  }
  image_to_raw "$img" "$after"
  "$PYTHON" "$load" verify "$log" "$before" "$after" \
    >"$tmpdir/verify.out" 2>&1 || {
    cat "$tmpdir/verify.out" >&2
    fail "$what: flushed data lost"
  }
  serve_refused "$what" "bitmap 'b64k' is inconsistent" "$img" \
    --bitmap b64k
  echo "  $what: killed $ms ms after 20 answers, check exit $crash_st;" \
    "$(tail -n 1 "$tmpdir/verify.out")"
done
ok "kill -9 under load: check 0/3, flushed data intact, bitmaps in use as QEMU leaves them"

# A graceful stop under the same load.
fresh_bitmaps
log="$tmpdir/load.stop.log"
start_server "$img" --socket "$tmpdir/ours.sock" --bitmap b64k
start_load "$log" "$(( seed + 9 ))"
stop_server
wait_load
check_rc "after a graceful stop under load"
[ "$(bitmaps_of "$img" | sort)" = "$(printf '%s\n' 'b4k 4096 auto' \
     'b64k 65536 auto' 'off 65536' 'stale 65536 in-use auto')" ] ||
  fail "bitmaps after a graceful stop: $(bitmaps_of "$img")"
start_qemu_nbd "$img" "$tmpdir/qemu.sock" -r -B b64k -B b4k -B off
for b in b64k b4k off; do
  dirty_map "$qemu_uri" "$b" >"$tmpdir/$b.json"
done
stop_qemu_nbd
"$PYTHON" - "$log" "$tmpdir" <<'PY' || fail "bitmaps do not match the requests"
import json, sys
log, d = sys.argv[1], sys.argv[2]
sent, acked = {}, set()
for line in open(log):
    f = line.split()
    if f[:1] == ["I"] and len(f) == 6:
        sent[int(f[1])] = (int(f[3]), int(f[4]))
    elif f[:1] == ["A"] and len(f) >= 2:
        acked.add(int(f[1]))
for name, g in (("b64k", 65536), ("b4k", 4096), ("off", 65536)):
    dirty = set()
    for e in json.load(open("%s/%s.json" % (d, name))):
        if e["type"] == 1:
            dirty |= set(range(e["offset"] // g,
                               (e["offset"] + e["length"]) // g))
    gran = lambda s: set(range(sent[s][0] // g,
                               (sent[s][0] + sent[s][1] - 1) // g + 1))
    must = set().union(*(gran(s) for s in acked))
    may = set().union(*(gran(s) for s in sent))
    if name == "off":
        must = may = set()          # disabled: tracks nothing
    if not must <= dirty or not dirty <= may:
        sys.exit("%s: %d granules acknowledged but clean, %d dirty but "
                 "never written" % (name, len(must - dirty), len(dirty - may)))
    print("%s: %d dirty granules, every acknowledged one among them"
          % (name, len(dirty)))
PY
ok "graceful stop under load: bitmaps consistent, dirty exactly where written"
