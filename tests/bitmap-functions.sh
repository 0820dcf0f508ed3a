# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers of the dirty bitmap and snapshot tests (sourced after
# functions.sh): qemu-nbd started side by side with our server as the
# oracle, images with bitmaps of several granularities, and the bitmaps
# qemu-img info reports.

# start_qemu_nbd IMAGE SOCKET [QEMU-NBD-ARGS...]: qemu-nbd -t on a Unix
# socket, waited for (30 s at most), killed at exit.  Sets qemu_pid and
# qemu_uri; its output goes to $tmpdir/qemu-nbd.N.log.
_qemu_count=0
start_qemu_nbd ()
{
  local img=$1 s=$2 i log; shift 2
  _qemu_count=$(( _qemu_count + 1 ))
  log="$tmpdir/qemu-nbd.$_qemu_count.log"
  rm -f "$s"
  qemu-nbd -t -f qcow2 -k "$s" "$@" "$img" >"$log" 2>&1 </dev/null &
  qemu_pid=$!
  cleanup_fn _kill_server "$qemu_pid"
  qemu_uri="nbd+unix:///?socket=$s"
  # Ready when a client is answered: qemu-nbd binds its socket before it
  # listens, and listens before it opens the image (and marks its bitmaps
  # in use); a client is answered only once the export exists.
  for (( i = 0; i < 300; i++ )); do
    if [ -S "$s" ] &&
       run_timeout 60 nbdinfo --size "$qemu_uri" >/dev/null 2>&1; then
      return 0
    fi
    _alive "$qemu_pid" || break
    sleep 0.1
  done
  cat "$log" >&2
  fail "qemu-nbd did not serve $img"
}

# stop_qemu_nbd [PID]: stop the last qemu-nbd (or PID) and wait for it
# (it writes its bitmaps back on the way out).
stop_qemu_nbd ()
{
  local pid=${1:-$qemu_pid}
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# bitmaps_of IMAGE: "name granularity flags..." per bitmap, one a line,
# as qemu-img info reports them (flags: in-use, auto).
bitmaps_of ()
{
  qemu-img info -U --output=json "$1" | "$PYTHON" -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"]
for b in d.get("bitmaps", []):
    print(b["name"], b["granularity"], *b["flags"])'
}

# bitmaps_have IMAGE TEXT: does a line of bitmaps_of IMAGE hold TEXT?
# (Not grep -q at the end of a pipe: under pipefail its early exit can
# fail the writer.)
bitmaps_have ()
{
  local b
  b="$(bitmaps_of "$1")"
  [[ "$b" == *"$2"* ]]
}

# dirty_map URI BITMAP: the qemu:dirty-bitmap extents, as JSON.
dirty_map ()
{
  nbdinfo --json --map="qemu:dirty-bitmap:$2" "$1" ||
    fail "nbdinfo --map=qemu:dirty-bitmap:$2 $1"
}

# qemu_dirty_map SOCKET BITMAP: QEMU's NBD client's view of the bitmap
# (qemu-img map with x-dirty-bitmap, REQ_ONE requests).
qemu_dirty_map ()
{
  qemu-img map --output=json --image-opts \
    "driver=nbd,server.type=unix,server.path=$1,x-dirty-bitmap=qemu:dirty-bitmap:$2" ||
    fail "qemu-img map x-dirty-bitmap=$2 on $1"
}

# serve_refused WHAT MESSAGE IMAGE ARGS...: qcow2-nbd serve IMAGE ARGS
# must fail at start-up, saying MESSAGE.
serve_refused ()
{
  local what=$1 msg=$2 rc=0; shift 2
  "$QCOW2_NBD" serve "$@" --socket "$tmpdir/refused.sock" \
    >"$tmpdir/refused.out" 2>&1 || rc=$?
  [ "$rc" = 1 ] || fail "$what: serve $* exited $rc, want 1"
  grep -qF -- "$msg" "$tmpdir/refused.out" ||
    { cat "$tmpdir/refused.out" >&2; fail "$what: no message '$msg'"; }
}

# nbdsh: libnbd's shell, run by the Python that has the bindings (the
# nbdsh script runs whatever python3 comes first on PATH).
nbdsh ()
{
  "$PYTHON" -m nbd "$@"
}
