#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd mode, the lifecycle scripts rely on, each step done against
# Debian's qemu-nbd 7.2 and ours: exit 0 when the last client that got
# to the transmission phase leaves (listing does not count) unless -t;
# SIGTERM, SIGINT and SIGHUP end the server with status 0, the socket
# removed and the pid file left; clients beyond --shared wait ungreeted
# for a free slot; --fork returns only once a client can be served (0),
# or 1 with the error; socket activation; and image locks seen both ways.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img qemu-io nbdinfo
requires_python_nbd
requires_qemu_nbd_oracle

for who in oracle ours; do
  mkdir -p "$tmpdir/$who"
  qemu-img create -q -f qcow2 "$tmpdir/$who/q.qcow2" 4M
done

# ---- exit after the last client, unless -t ----------------------------

for who in oracle ours; do
  sock="$tmpdir/$who/last.sock"
  qnbd_cwd="$tmpdir/$who" qnbd_start "$who" "$sock" -f qcow2 q.qcow2
  nbdinfo --list "nbd+unix:///?socket=$sock" > /dev/null
  nbdinfo --list "nbd+unix:///?socket=$sock" > /dev/null
  # Still there after two listings: a connect must succeed.
  nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null ||
    fail "$who: gone after clients that only listed the exports"
  qnbd_wait_exit "$qnbd_pid" "$who without -t, after its client"
  [ "$qnbd_rc" -eq 0 ] || fail "$who exited $qnbd_rc after its last client"
  [ -e "$sock" ] && fail "$who left its socket behind"
done
ok "without -t: exit 0 after the last client; listing clients do not count"

# ---- -t, and the signals ----------------------------------------------

for sig in TERM INT HUP; do
  for who in oracle ours; do
    sock="$tmpdir/$who/sig.sock"
    pidf="$tmpdir/$who/sig.pid"
    rm -f "$pidf"
    qnbd_cwd="$tmpdir/$who" qnbd_start "$who" "$sock" -t --pid-file="$pidf" \
      -f qcow2 q.qcow2
    wait_for_file "$pidf" "$who wrote no pid file"
    qemu-io -f raw -c 'write -P 0x5a 0 1M' "nbd+unix:///?socket=$sock" \
      > /dev/null || fail "$who: write through the export"
    nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null ||
      fail "$who -t: gone after a client"
    [ "$(cat "$pidf")" = "$qnbd_pid" ] || fail "$who: pid file is not its pid"
    kill -"$sig" "$qnbd_pid"
    qnbd_wait_exit "$qnbd_pid" "$who after SIG$sig"
    [ "$qnbd_rc" -eq 0 ] || fail "$who exited $qnbd_rc after SIG$sig"
    [ -e "$sock" ] && fail "$who left its socket after SIG$sig"
    [ -e "$pidf" ] || fail "$who removed its pid file (qemu-nbd leaves it)"
    check_clean "$tmpdir/$who/q.qcow2" "$who after SIG$sig"
  done
done
ok "-t: SIGTERM, SIGINT and SIGHUP: exit 0, socket removed, pid file left"

# ---- clients beyond --shared wait, ungreeted -----------------------------

# Client A takes the only slot; B connects and must get no greeting
# while A is there (A's requests are answered meanwhile), then be served
# once A leaves.
cat > "$tmpdir/shared.py" <<'EOF'
import select, socket, struct, sys, nbd
sock = sys.argv[1]
a = nbd.NBD()
a.connect_unix(sock)
b = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
b.connect(sock)
for i in range(3):
    a.pread(4096, i * 4096)          # the server is busy with A...
r, _, _ = select.select([b], [], [], 0)
if r:
    sys.exit("B was greeted while A held the only slot")
a.shutdown()
del a
b.settimeout(30)
greeting = b.recv(8)
if greeting != b"NBDMAGIC":
    sys.exit("B got no greeting once A left: %r" % greeting)

EOF
for who in oracle ours; do
  sock="$tmpdir/$who/shared.sock"
  qnbd_cwd="$tmpdir/$who" qnbd_start "$who" "$sock" -t -e 1 -f qcow2 q.qcow2
  run_timeout 60 "$PYTHON" "$tmpdir/shared.py" "$sock" ||
    fail "$who: --shared=1 did not hold the second client back"
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "$who -e 1"
done
ok "-e 1: a second client waits ungreeted until the first leaves"

# ---- --fork ------------------------------------------------------------

for who in oracle ours; do
  sock="$tmpdir/$who/fork.sock"
  pidf="$tmpdir/$who/fork.pid"
  rc=0
  (cd "$tmpdir/$who" && qnbd "$who" --fork -t -k "$sock" --pid-file="$pidf" \
     -f qcow2 q.qcow2) > "$tmpdir/fork.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || { cat "$tmpdir/fork.out" >&2; fail "$who --fork: $rc"; }
  [ -s "$tmpdir/fork.out" ] && fail "$who --fork printed something"
  # Returned: serving now, no waiting.
  [ -S "$sock" ] || fail "$who --fork returned before its socket existed"
  [ -s "$pidf" ] || fail "$who --fork returned before its pid file"
  dpid=$(cat "$pidf")
  cleanup_fn _kill_server "$dpid"
  nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null ||
    fail "$who --fork: not serving once returned"
  kill -TERM "$dpid"
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$dpid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$dpid" 2>/dev/null && fail "$who --fork: daemon ignored SIGTERM"
  rc=0
  (cd "$tmpdir/$who" && qnbd "$who" --fork -k "$sock" missing.qcow2) \
    > "$tmpdir/fork-$who.err" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] || fail "$who --fork with a missing image: status $rc"
  grep -q "Could not open 'missing.qcow2'" "$tmpdir/fork-$who.err" ||
    fail "$who --fork did not pass the error on"
done
cmp "$tmpdir/fork-oracle.err" "$tmpdir/fork-ours.err" ||
  fail "--fork: the start-up error differs from qemu-nbd's"
# A warning at start-up makes the parent exit 1, the daemon serving on.
for who in oracle ours; do
  truncate -s 1M "$tmpdir/$who/p.raw"
  sock="$tmpdir/$who/warn.sock"
  pidf="$tmpdir/$who/warn.pid"
  rc=0
  (cd "$tmpdir/$who" && qnbd "$who" --fork -k "$sock" --pid-file="$pidf" \
     p.raw) > "$tmpdir/warn-$who.err" 2>&1 || rc=$?
  [ "$rc" -eq 1 ] || fail "$who --fork with a warning: status $rc"
  cleanup_fn _kill_server "$(cat "$pidf")"
  nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null ||
    fail "$who --fork: not serving after its warning"
done
cmp "$tmpdir/warn-oracle.err" "$tmpdir/warn-ours.err" ||
  fail "--fork: the probing warning differs from qemu-nbd's"
ok "--fork: returns 0 once serving, 1 with the error or a warning"

# ---- socket activation -------------------------------------------------

for who in oracle ours; do
  sock="$tmpdir/$who/act.sock"
  (cd "$tmpdir/$who" && PATH="$tmpdir/path-$who:$PATH" exec \
     "$PYTHON" "$abs_top_srcdir/tests/socket-activate.py" "$sock" \
     qemu-nbd -f qcow2 q.qcow2) > "$tmpdir/act-$who.log" 2>&1 &
  apid=$!
  cleanup_fn _kill_server "$apid"
  wait_for_file "$sock" "$who: the activation socket never appeared"
  nbdinfo --size "nbd+unix:///?socket=$sock" > /dev/null ||
    fail "$who: nothing served on the activation socket"
  qnbd_wait_exit "$apid" "$who, socket-activated"
  [ "$qnbd_rc" -eq 0 ] || fail "$who socket-activated exited $qnbd_rc"
  rc=0
  (cd "$tmpdir/$who" && PATH="$tmpdir/path-$who:$PATH" exec \
     "$PYTHON" "$abs_top_srcdir/tests/socket-activate.py" "$sock-2" \
     qemu-nbd -p 10809 -f qcow2 q.qcow2) > "$tmpdir/act2-$who.err" 2>&1 ||
    rc=$?
  [ "$rc" -eq 1 ] || fail "$who: socket activation with -p: status $rc"
done
cmp "$tmpdir/act2-oracle.err" "$tmpdir/act2-ours.err" ||
  fail "socket activation with -p: message differs from qemu-nbd's"
ok "socket activation, and qemu-nbd's refusal of -p with it"

# ---- image locks, both ways ----------------------------------------------

sock="$tmpdir/ours/lock.sock"
qnbd_cwd="$tmpdir/ours" qnbd_start ours "$sock" -t -f qcow2 q.qcow2
rc=0
qemu-img info "$tmpdir/ours/q.qcow2" > "$tmpdir/lock.out" 2>&1 || rc=$?
[ "$rc" -ne 0 ] && grep -q 'Failed to get shared "write" lock' \
  "$tmpdir/lock.out" || fail "qemu-img does not see our write lock"
qemu-img info -U "$tmpdir/ours/q.qcow2" > /dev/null ||
  fail "qemu-img info -U refused while we serve"
kill -TERM "$qnbd_pid"
qnbd_wait_exit "$qnbd_pid" "lock holder"
truncate -s 1M "$tmpdir/ours/l.raw"
qnbd_cwd="$tmpdir/ours" qnbd_start ours "$sock" -t -f raw l.raw
# A raw export shares write (qemu-nbd does too) but not resize.
qemu-io -f raw -c 'write 0 4k' "$tmpdir/ours/l.raw" > "$tmpdir/lock2.out" 2>&1 ||
  { cat "$tmpdir/lock2.out" >&2; fail "raw: a second writer was refused"; }
rc=0
qemu-img resize -f raw "$tmpdir/ours/l.raw" 2M > "$tmpdir/lock3.out" 2>&1 ||
  rc=$?
[ "$rc" -ne 0 ] || fail "raw: the image was resized under the export"
kill -TERM "$qnbd_pid"
qnbd_wait_exit "$qnbd_pid" "raw lock holder"
ok "image locks: qemu-img sees ours (qcow2 and raw), as with qemu-nbd"
