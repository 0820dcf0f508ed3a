#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every real NBD client on the machine against the server: nbdcopy with
# four connections, fio random reads with verification, qemu-io reads at
# odd offsets, nbdinfo (--list, --json), nbd-client -l, libnbd from
# Python (structured replies, DF, REQ_ONE, EPERM, EINVAL), a Unix socket,
# and export name matching.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io qemu-nbd nbdinfo nbdcopy cmp
requires_python_nbd
requires_server

mib=$(( 1024 * 1024 ))

# An image with patterns written at odd offsets, a zeroed range, a
# compressed part and an odd size, plus qemu's raw view of it.
size=$(( 40 * mib + 3 * 512 ))
img="$tmpdir/img.qcow2"
make_image "$img" "$size" -o cluster_size=4k
image_io "$img" \
  "write -P 0x11 0 1M" \
  "write -P 0x22 12345 6789" \
  "write -P 0x33 4095 2" \
  "write -P 0x44 3M 5M" \
  "write -z 4M 64k" \
  "write -P 0x55 $(( 20 * mib + 511 )) 131073" \
  "write -P 0x66 $(( size - 70000 )) 70000"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

start_server "$img" --read-only --export-name exp1 \
  --description "qcow2-nbd test export"
main_uri="$uri/exp1"
main_port=$port

# ---- nbdinfo -----------------------------------------------------------

json="$(run_timeout 60 nbdinfo --json "$main_uri")" ||
  fail "nbdinfo --json $main_uri"
"$PYTHON" - "$size" <<EOF || fail "nbdinfo --json output: $json"
import json, sys
size = int(sys.argv[1])
j = json.loads('''$json''')
e = j["exports"][0]
want = {
    "export-name": "exp1",
    "description": "qcow2-nbd test export",
    "export-size": size,
    "is_read_only": True,
    "can_multi_conn": True,
    "can_df": True,
    "block_size_minimum": 1,
    "block_size_preferred": 4096,
    "block_size_maximum": 33554432,
}
for k, v in want.items():
    if e.get(k) != v:
        sys.exit("nbdinfo --json: %s = %r, want %r" % (k, e.get(k), v))
if not j.get("structured"):
    sys.exit("nbdinfo --json: structured replies not negotiated")
for ctx in ("base:allocation", "qemu:allocation-depth"):
    if ctx not in e.get("contexts", []):
        sys.exit("nbdinfo --json: context %s not listed" % ctx)
EOF
ok "nbdinfo --json: name, description, size, flags, block sizes, contexts"

list="$(run_timeout 60 nbdinfo --list --json "$uri")" ||
  fail "nbdinfo --list --json $uri"
"$PYTHON" - <<EOF || fail "nbdinfo --list output: $list"
import json, sys
j = json.loads('''$list''')
names = [(e.get("export-name"), e.get("description")) for e in j["exports"]]
if ("exp1", "qcow2-nbd test export") not in names:
    sys.exit("export exp1 with its description not listed: %r" % names)
EOF
ok "nbdinfo --list shows the export and its description"

if run_timeout 60 nbdinfo "$uri/wrong-name" >"$tmpdir/wrong.out" 2>&1; then
  fail "nbdinfo of a wrong export name succeeded"
fi
grep -qi 'error\|unknown\|no such' "$tmpdir/wrong.out" ||
  fail "nbdinfo wrong export name: unexpected output: $(cat "$tmpdir/wrong.out")"
server_alive "after a wrong export name"
run_timeout 60 nbdinfo "$main_uri" >/dev/null ||
  fail "nbdinfo after a wrong export name"
ok "a wrong export name fails cleanly and the server keeps serving"

# ---- nbd-client -l -----------------------------------------------------

if command -v nbd-client >/dev/null 2>&1; then
  out="$(run_timeout 60 nbd-client -l 127.0.0.1 "$port" 2>&1)" ||
    fail "nbd-client -l 127.0.0.1 $port: $out"
  grep -q '^exp1' <<< "$out" ||
    fail "nbd-client -l does not list exp1: $out"
  ok "nbd-client -l lists the export"
else
  echo "SKIP part: nbd-client not installed"
fi

# ---- nbdcopy -----------------------------------------------------------

run_timeout 300 nbdcopy --connections=4 "$main_uri" "$tmpdir/copy.raw" ||
  fail "nbdcopy --connections=4 $main_uri"
cmp "$ref" "$tmpdir/copy.raw" || fail "nbdcopy output differs from the image"
ok "nbdcopy --connections=4 copies the image exactly"
rm -f "$tmpdir/copy.raw"

# nbdcopy to stdout: no zero-skipping, single stream.
run_timeout 300 nbdcopy --connections=1 --requests=1 "$main_uri" - |
  cmp - "$ref" || fail "nbdcopy to a pipe differs from the image"
ok "nbdcopy --connections=1 to a pipe"

# ---- qemu-img and qemu-io ---------------------------------------------

compare_with_uri "$img" "$main_uri"
ok "qemu-img compare"

# qemu-io reads at odd offsets and lengths, across clusters and up to the
# end of the device, each checked against the pattern written there.
qio_reads=(
  "read -P 0x11 0 1"
  "read -P 0x11 1 4094"
  "read -P 0x22 12345 6789"
  "read -P 0x22 12346 6787"
  "read -P 0x33 4095 2"
  "read -P 0x44 $(( 3 * mib )) $mib"
  "read -P 0x44 $(( 4 * mib + 65536 )) $(( mib + 1 ))"
  "read -P 0x44 $(( 3 * mib + 4097 )) 8191"
  "read -P 0x0 $(( 4 * mib + 1 )) 65535"
  "read -P 0x55 $(( 20 * mib + 511 )) 131073"
  "read -P 0x55 $(( 20 * mib + 4095 )) 3"
  "read -P 0x66 $(( size - 70000 )) 70000"
  "read -P 0x66 $(( size - 1 )) 1"
  "read -P 0x66 $(( size - 4097 )) 4097"
  "read -P 0x0 $(( 30 * mib + 77 )) 100000"
)
args=()
for c in "${qio_reads[@]}"; do args+=(-c "$c"); done
out="$(run_timeout 120 qemu-io -f raw -r "${args[@]}" "$main_uri" 2>&1)" ||
  fail "qemu-io reads: $out"
if grep -qiE 'fail|error' <<< "$out"; then
  fail "qemu-io reads: $out"
fi
ok "qemu-io: ${#qio_reads[@]} pattern reads at odd offsets and at the end"

# qemu-io must refuse (client side) to read past the end; the server keeps
# serving afterwards.
if run_timeout 60 qemu-io -f raw -r -c "read $(( size - 512 )) 1024" \
     "$main_uri" >"$tmpdir/past.out" 2>&1 &&
   ! grep -qiE 'error|fail' "$tmpdir/past.out"; then
  fail "qemu-io read past the end succeeded: $(cat "$tmpdir/past.out")"
fi
ok "qemu-io read past the end fails"

# ---- libnbd from Python ------------------------------------------------

run_timeout 300 "$PYTHON" "$abs_top_srcdir/tests/client-checks.py" \
  "$main_uri" "$ref" || fail "client-checks.py"

server_alive "after all clients"
port=$main_port
stop_server
ok "server stopped cleanly"

# ---- fio: random reads with verification ------------------------------

if command -v fio >/dev/null 2>&1 &&
   fio --enghelp=nbd >/dev/null 2>&1; then
  # fio writes blocks with verify headers through qemu-nbd (a writable
  # export of the same qcow2, 4k clusters in random order), then reads
  # them back through our server and checks every header and checksum.
  fimg="$tmpdir/fio.qcow2"
  make_image "$fimg" 32M -o cluster_size=4k
  qsock="$tmpdir/qemu-nbd.sock"
  qemu-nbd -t -f qcow2 -k "$qsock" "$fimg" 2>"$tmpdir/qemu-nbd.log" &
  qpid=$!
  cleanup_fn _kill_server "$qpid"
  for (( i = 0; i < 100; i++ )); do unix_listening "$qsock" && break; sleep 0.1; done
  unix_listening "$qsock" || fail "qemu-nbd did not start: $(cat "$tmpdir/qemu-nbd.log")"
  fio_job=(--name=verify --ioengine=nbd --bs=4k --size=32M
           --verify=crc32c --randrepeat=1 --iodepth=8 --verify_state_save=0)
  run_timeout 300 fio "${fio_job[@]}" --rw=randwrite --do_verify=0 \
    --uri="nbd+unix:///?socket=$qsock" >"$tmpdir/fio-write.out" 2>&1 || {
    cat "$tmpdir/fio-write.out" >&2; fail "fio write through qemu-nbd"; }
  kill "$qpid"; wait "$qpid" 2>/dev/null || true
  qemu-img check -q "$fimg" || fail "qemu-img check after fio writes"

  start_server "$fimg" --read-only
  for rw in randread read; do
    run_timeout 300 fio "${fio_job[@]}" --rw=$rw --uri="$uri" \
      >"$tmpdir/fio-$rw.out" 2>&1 || {
      cat "$tmpdir/fio-$rw.out" >&2; fail "fio --rw=$rw --verify=crc32c"; }
    grep -q 'err= 0' "$tmpdir/fio-$rw.out" ||
      { cat "$tmpdir/fio-$rw.out" >&2; fail "fio --rw=$rw reported errors"; }
    ok "fio --rw=$rw --iodepth=8 with crc32c verification"
  done
  stop_server
else
  echo "SKIP part: fio without the nbd engine"
fi

# ---- Unix socket -------------------------------------------------------

sock_path="$tmpdir/nbd.sock"
start_server "$img" --read-only --socket "$sock_path"
[ -z "$port" ] || fail "start_server set a port for a Unix socket"
compare_with_uri "$img" "$uri"
ok "qemu-img compare over $uri"
out="$(run_timeout 60 nbdinfo --json "$uri")" ||
  fail "nbdinfo over the Unix socket"
grep -q "\"export-size\": $size" <<< "$out" ||
  fail "nbdinfo over the Unix socket: $out"
run_timeout 120 nbdcopy --connections=4 "$uri" "$tmpdir/copy.raw" ||
  fail "nbdcopy over the Unix socket"
cmp "$ref" "$tmpdir/copy.raw" || fail "nbdcopy over the Unix socket differs"
ok "nbdinfo and nbdcopy over the Unix socket"
stop_server
[ ! -S "$sock_path" ] || echo "note: Unix socket $sock_path left behind"
ok "server on the Unix socket stopped cleanly"

# ---- one worker thread, and IPv6 loopback ------------------------------

start_server "$img" --read-only --threads 1
run_timeout 300 nbdcopy --connections=4 "$uri" "$tmpdir/copy.raw" ||
  fail "nbdcopy with --threads 1"
cmp "$ref" "$tmpdir/copy.raw" || fail "nbdcopy with --threads 1 differs"
rm -f "$tmpdir/copy.raw"
stop_server
ok "--threads 1 serves four connections"

if "$PYTHON" -c 'import socket; socket.socket(socket.AF_INET6).bind(("::1", 0))' \
     2>/dev/null; then
  start_server "$img" --read-only --bind ::1
  compare_with_uri "$img"
  stop_server
  ok "--bind ::1: qemu-img compare over $uri"
else
  echo "SKIP part: no IPv6 loopback"
fi
