#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The server's life from the outside: --help/--version, refusing bad
# options, missing and encrypted images, the pid file, stopping with
# SIGTERM/SIGINT while clients are mid-transfer, --max-connections,
# --handshake-timeout, and systemd socket activation.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io nbdinfo nbdcopy cmp
requires_python_nbd
requires_server

mib=$(( 1024 * 1024 ))
img="$tmpdir/img.qcow2"
make_image "$img" 64M
image_io "$img" "write -P 0x5a 0 60M" "write -P 0x11 61M 7777"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"


# ---- --help, --version, bad options ------------------------------------

out="$("$QCOW2_NBD" --version 2>&1)" || fail "--version exited $?: $out"
grep -qE '[0-9]+\.[0-9]+' <<< "$out" || fail "--version: no version: $out"
ok "--version exits 0: $out"

out="$("$QCOW2_NBD" --help 2>&1)" || fail "--help exited $?"
grep -q serve <<< "$out" || fail "--help does not mention serve: $out"
out="$("$QCOW2_NBD" serve --help 2>&1)" || fail "serve --help exited $?"
for o in --port --bind --socket --export-name --description --read-only \
         --threads --max-connections --handshake-timeout --pid-file; do
  grep -q -- "$o" <<< "$out" || fail "serve --help does not mention $o"
done
ok "--help and serve --help exit 0 and list the options"

rc=0
out="$("$QCOW2_NBD" serve "$img" --no-such-option 2>&1)" || rc=$?
[ "$rc" -eq 1 ] || fail "a bad option: exit status $rc, want 1: $out"
[ -n "$out" ] || fail "a bad option: no message"
ok "a bad option exits 1: $out"

rc=0
out="$("$QCOW2_NBD" frobnicate 2>&1)" || rc=$?
[ "$rc" -eq 1 ] || fail "an unknown command: exit status $rc, want 1: $out"
ok "an unknown command exits 1"

rc=0
out="$("$QCOW2_NBD" serve "$img" --port notaport --bind 127.0.0.1 \
         2>&1)" || rc=$?
[ "$rc" -eq 1 ] || fail "--port notaport: exit status $rc, want 1: $out"
ok "an invalid port exits 1"

rc=0
out="$("$QCOW2_NBD" serve "$img" --threads 0x --port "$(pick_unused_port)" \
         --bind 127.0.0.1 2>&1)" || rc=$?
[ "$rc" -eq 1 ] || fail "--threads 0x: exit status $rc, want 1: $out"
ok "an invalid --threads value exits 1"

rc=0
missing="$tmpdir/does-not-exist.qcow2"
out="$(run_timeout 30 "$QCOW2_NBD" serve "$missing" \
         --port "$(pick_unused_port)" --bind 127.0.0.1 2>&1)" || rc=$?
[ "$rc" -eq 1 ] || fail "missing image: exit status $rc, want 1: $out"
grep -q "does-not-exist" <<< "$out" ||
  fail "missing image: message does not name the file: $out"
grep -qi "no such file" <<< "$out" ||
  fail "missing image: message does not say why: $out"
ok "a missing image exits 1: $out"

enc="$tmpdir/enc.qcow2"
if qemu-img create -q -f qcow2 --object secret,id=sec0,data=123456 \
     -o encrypt.format=luks,encrypt.key-secret=sec0 "$enc" 16M 2>/dev/null
then
  rc=0
  out="$(run_timeout 30 "$QCOW2_NBD" serve "$enc" \
           --port "$(pick_unused_port)" --bind 127.0.0.1 2>&1)" || rc=$?
  [ "$rc" -eq 1 ] || fail "encrypted image: exit status $rc, want 1: $out"
  grep -qi encrypt <<< "$out" ||
    fail "encrypted image: message does not mention encryption: $out"
  ok "an encrypted image is refused: $out"
else
  echo "SKIP part: qemu-img cannot create LUKS-encrypted qcow2"
fi

# ---- pid file ----------------------------------------------------------

start_server "$img" --read-only
[ "$(cat "$pid_file")" = "$server_pid" ] ||
  fail "pid file holds '$(cat "$pid_file")', server pid is $server_pid"
ok "pid file written with the server's pid once listening"
run_timeout 60 nbdinfo "$uri" >/dev/null || fail "nbdinfo $uri"
stop_server
[ ! -e "$pid_file" ] || fail "pid file $pid_file left behind after SIGTERM"
ok "SIGTERM: exit 0 and pid file removed"

# ---- SIGTERM / SIGINT with clients mid-transfer ------------------------

# A Python client that reads the export in a loop, announcing its first
# successful read; it must end (with or without error) once the server
# goes, never hang.
cat > "$tmpdir/reader.py" <<'EOF'
import sys, nbd
uri, ready = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
n = 0
try:
    while True:
        for off in range(0, size, 4 << 20):
            h.pread(min(4 << 20, size - off), off)
            n += 1
            if n == 1:
                open(ready, "w").close()
except nbd.Error as e:
    print("reader stopped after %d reads: %s" % (n, e.string))
EOF

for sig in TERM INT; do
  start_server "$img" --read-only
  rm -f "$tmpdir/ready"
  "$PYTHON" "$tmpdir/reader.py" "$uri" "$tmpdir/ready" \
    >"$tmpdir/reader.out" 2>&1 &
  reader=$!
  cleanup_fn _kill_server "$reader"
  run_timeout 300 nbdcopy --connections=4 "$uri" "$tmpdir/copy.raw" \
    >"$tmpdir/nbdcopy.out" 2>&1 &
  copier=$!
  cleanup_fn _kill_server "$copier"
  wait_for_file "$tmpdir/ready" "the reader never read anything"
  stop_server "$sig"
  [ ! -e "$pid_file" ] || fail "pid file left behind after SIG$sig"
  # The clients must notice and end, not hang.
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$reader" 2>/dev/null || kill -0 "$copier" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$reader" 2>/dev/null; then
    fail "a reading client still hangs 30 s after SIG$sig"
  fi
  if kill -0 "$copier" 2>/dev/null; then
    fail "nbdcopy still hangs 30 s after SIG$sig"
  fi
  wait "$reader" || true
  # nbdcopy either finished before the signal (then the copy is exact)
  # or failed; it must never succeed with wrong data.
  if wait "$copier"; then
    cmp -s "$ref" "$tmpdir/copy.raw" ||
      fail "nbdcopy reported success across SIG$sig but the copy differs"
  fi
  rm -f "$tmpdir/copy.raw"
  ok "SIG$sig with clients mid-transfer: server exits 0, clients end"
done

# ---- --max-connections 1 -----------------------------------------------

start_server "$img" --read-only --max-connections 1
# The holder keeps its connection for a while, and says when it is about
# to let go; the second client, once served, checks that the holder had
# already said so.  An ordering, not a duration: it holds on any load.
cat > "$tmpdir/hold.py" <<'EOF'
import sys, time, nbd
uri, ready, leaving, hold = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
h.pread(512, 0)
open(ready, "w").close()
time.sleep(hold)
open(leaving, "w").close()
h.shutdown()
EOF
cat > "$tmpdir/second.py" <<'EOF'
import os, sys, nbd
uri, leaving = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(uri)
data = h.pread(7777, 61 << 20)
assert data == b"\x11" * 7777, "wrong data"
if leaving and not os.path.exists(leaving):
    sys.exit("served while the first client still held its connection")
h.shutdown()
EOF
rm -f "$tmpdir/ready" "$tmpdir/leaving"
"$PYTHON" "$tmpdir/hold.py" "$uri" "$tmpdir/ready" "$tmpdir/leaving" 2 &
holder=$!
cleanup_fn _kill_server "$holder"
wait_for_file "$tmpdir/ready" "the first client never connected"
run_timeout 60 "$PYTHON" "$tmpdir/second.py" "$uri" "$tmpdir/leaving" ||
  fail "--max-connections 1: the second client failed or was served early"
wait "$holder" || fail "the first client failed"
ok "--max-connections 1: a second client waits until the first leaves"
run_timeout 60 "$PYTHON" "$tmpdir/second.py" "$uri" "" ||
  fail "a client after the first left"
ok "--max-connections 1: the slot is free again once the first leaves"
stop_server

# ---- handshake timeout -------------------------------------------------

start_server "$img" --read-only --handshake-timeout 2
cat > "$tmpdir/silent.py" <<'EOF'
import socket, sys, time
port, greet = int(sys.argv[1]), sys.argv[2] == "greet"
s = socket.create_connection(("127.0.0.1", port), timeout=30)
t = time.monotonic()
if greet:
    # Read the greeting, send the client flags, then say nothing more.
    buf = b""
    while len(buf) < 18:
        buf += s.recv(18 - len(buf))
    s.sendall(b"\0\0\0\3")
try:
    while s.recv(4096):
        pass
except ConnectionResetError:
    pass
except socket.timeout:
    sys.exit("still connected after 30 s")
print("%.2f" % (time.monotonic() - t))
EOF
"$PYTHON" "$tmpdir/silent.py" "$port" silent >"$tmpdir/silent.out" 2>&1 &
silent=$!
"$PYTHON" "$tmpdir/silent.py" "$port" greet >"$tmpdir/greet.out" 2>&1 &
greet=$!
cleanup_fn _kill_server "$silent"
cleanup_fn _kill_server "$greet"
sleep 0.5
# Other clients are served while the silent ones wait.
run_timeout 20 nbdinfo "$uri" >/dev/null ||
  fail "nbdinfo while silent clients are connected"
compare_with_uri "$img"
ok "clients are served while silent clients sit in the handshake"
for p in silent greet; do
  pid_var=$p
  wait "${!pid_var}" || fail "$p client: $(cat "$tmpdir/$p.out")"
  t="$(cat "$tmpdir/$p.out")"
  "$PYTHON" -c "import sys; t = float('$t'); sys.exit(0 if 1.5 <= t <= 25 else 1)" ||
    fail "--handshake-timeout 2: $p client dropped after $t s"
  ok "--handshake-timeout 2: a $p client is dropped after $t s"
done
# A client that finished its handshake is not subject to the timeout.
cat > "$tmpdir/idle.py" <<'EOF'
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
time.sleep(4)
assert h.pread(7777, 61 << 20) == b"\x11" * 7777
h.shutdown()
EOF
run_timeout 60 "$PYTHON" "$tmpdir/idle.py" "$uri" ||
  fail "a connected client idle for 4 s was dropped by the handshake timeout"
ok "an idle client past the handshake is kept"
server_alive "after handshake timeouts"
stop_server

# ---- socket activation -------------------------------------------------

START_SERVER_NO_PORT=1 \
SERVER_WRAPPER="$PYTHON $abs_top_srcdir/tests/socket-activate.py @PORT@" \
  start_server "$img" --read-only
compare_with_uri "$img"
run_timeout 60 nbdinfo "$uri" >/dev/null || fail "nbdinfo, socket activated"
ok "socket activation on 127.0.0.1:$port"
stop_server
ok "socket-activated server stops with exit 0"

sa_sock="$tmpdir/activated.sock"
SERVER_WRAPPER="$PYTHON $abs_top_srcdir/tests/socket-activate.py $sa_sock" \
  START_SERVER_SOCKET="$sa_sock" start_server "$img" --read-only
run_timeout 60 nbdcopy "$uri" "$tmpdir/copy.raw" ||
  fail "nbdcopy over a socket-activated Unix socket"
cmp -s "$ref" "$tmpdir/copy.raw" || fail "socket-activated Unix copy differs"
ok "socket activation on a Unix socket"
stop_server
