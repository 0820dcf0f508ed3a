#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Writes over TLS (issue 5 asks each TLS client to read and write): with
# X.509 certificates (client certificates verified) and with PSK, the
# GnuTLS clients write into the export: qemu-img convert -n of a raw file
# (TLS 1.3, and TLS 1.2 forced by a priority string), nbdcopy into
# nbds:// (several connections), qemu-io writes, zeroes and discards
# with FUA; each time the export reads back as expected, and after a
# clean stop `qemu-img check` exits 0 and qemu's own reading of the image
# agrees.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img qemu-io nbdcopy openssl cmp
requires_python_nbd
requires_server

MiB=$(( 1024 * 1024 ))
size=$(( 24 * MiB ))

# ---- credentials ---------------------------------------------------------

certs="$tmpdir/certs"
mkdir -p "$certs"
make_ca "$certs/ca" "Write CA"
sign "$certs/ca" server "/CN=localhost" v3_server
sign "$certs/ca" client "/CN=client" v3_client
srv="$tmpdir/server-creds"
cli="$tmpdir/client-creds"
server_dir "$srv" "$certs/ca"
client_dir "$cli" client "$certs/ca"

key=$(openssl rand -hex 32)
printf 'alice:%s\n' "$key" > "$tmpdir/server.psk"
mkdir -p "$tmpdir/qemu-psk"
printf 'alice:%s\n' "$key" > "$tmpdir/qemu-psk/keys.psk"

# ---- data ----------------------------------------------------------------

# Two raw files of the export's size, with data, zero runs and holes.
make_data ()
{
  "$PYTHON" - "$1" "$size" "$2" <<'EOF'
import random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
buf = bytearray(size)
off = 0
while off < size:
    n = min(rng.randint(1, 1 << 20), size - off)
    if rng.random() < 0.6:
        buf[off:off + n] = rng.randbytes(n)
    off += n + rng.randint(0, 1 << 19)
open(path, "wb").write(buf)
EOF
}
make_data "$tmpdir/a.raw" 1
make_data "$tmpdir/b.raw" 2
make_data "$tmpdir/c.raw" 3

# tls_writes NAME QEMU-OBJECT NBDS-URI SERVER-ARGS...
tls_writes ()
{
  local name=$1 obj=$2 nbds=$3; shift 3
  local img="$tmpdir/$name.qcow2"
  make_image "$img" "$size" -o cluster_size=64k
  image_io "$img" "write -P 0x5a 0 3M"
  start_server "$img" "$@" -vv
  local opts="driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0"
  nbds=${nbds//@PORT@/$port}

  # qemu-img convert -n into the export: writes, zeroes (with NO_HOLE /
  # FAST_ZERO probing) over TLS 1.3.
  run_timeout 120 qemu-img convert -n -f raw --object "$obj" \
    "$tmpdir/a.raw" --target-image-opts "$opts" ||
    fail "$name: qemu-img convert -n into the export over TLS 1.3"
  run_timeout 60 qemu-img compare --object "$obj" --image-opts \
    "driver=raw,file.filename=$tmpdir/a.raw" "$opts" >/dev/null ||
    fail "$name: export differs after qemu-img convert -n (TLS 1.3)"
  grep -q 'TLSv1.3' "$server_log" || fail "$name: no TLS 1.3 session logged"
  ok "$name: qemu-img convert -n writes over TLS 1.3"

  # TLS 1.2 forced.
  local n12
  n12=$(grep -c 'TLSv1.2' "$server_log" || true)
  run_timeout 120 qemu-img convert -n -f raw \
    --object "$obj,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
    "$tmpdir/b.raw" --target-image-opts "$opts" ||
    fail "$name: qemu-img convert -n over TLS 1.2"
  [ "$(grep -c 'TLSv1.2' "$server_log" || true)" -gt "$n12" ] ||
    fail "$name: the priority string did not give TLS 1.2"
  run_timeout 60 qemu-img compare \
    --object "$obj,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
    --image-opts "driver=raw,file.filename=$tmpdir/b.raw" "$opts" >/dev/null ||
    fail "$name: export differs after qemu-img convert -n (TLS 1.2)"
  ok "$name: qemu-img convert -n writes over TLS 1.2"

  # nbdcopy into nbds:// (up to four connections with CAN_MULTI_CONN).
  run_timeout 120 nbdcopy --flush "$tmpdir/c.raw" "$nbds" ||
    fail "$name: nbdcopy into $nbds"
  run_timeout 120 nbdcopy "$nbds" "$tmpdir/back.raw" ||
    fail "$name: nbdcopy out of $nbds"
  cmp "$tmpdir/c.raw" "$tmpdir/back.raw" ||
    fail "$name: nbdcopy over TLS: export differs from what was written"
  ok "$name: nbdcopy writes over TLS"

  # qemu-io: writes with FUA, zeroes, discards, then reads with -P.
  local rc=0
  run_timeout 60 qemu-io --object "$obj" --image-opts "$opts" \
    -c 'write -P 0x61 -f 4096 65536' -c 'write -z 1M 1M' \
    -c 'write -P 0x62 3000001 77777' -c 'discard 8M 1M' -c 'flush' \
    -c 'read -P 0x61 4096 65536' -c 'read -P 0 1M 1M' \
    -c 'read -P 0x62 3000001 77777' >"$tmpdir/qio.out" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || grep -qiE 'error|fail|mismatch' "$tmpdir/qio.out"; then
    cat "$tmpdir/qio.out" >&2
    fail "$name: qemu-io writes over TLS"
  fi
  # The expected content, by the same commands on a raw copy (the
  # discarded range is whatever the export reads there now).
  cp "$tmpdir/c.raw" "$tmpdir/expect.raw"
  image_io "$tmpdir/expect.raw" -f raw 'write -P 0x61 4096 65536' \
    'write -z 1M 1M' 'write -P 0x62 3000001 77777'
  run_timeout 60 "$PYTHON" - "$nbds" "$tmpdir/expect.raw" <<'EOF' ||
import sys, nbd
h = nbd.NBD()
h.set_uri_allow_local_file(True)   # tls-certificates= names a directory
h.connect_uri(sys.argv[1])
d = h.pread(1 << 20, 8 << 20)
with open(sys.argv[2], "r+b") as f:
    f.seek(8 << 20)
    f.write(d)
EOF
    fail "$name: reading the discarded range"
  run_timeout 120 nbdcopy "$nbds" "$tmpdir/back.raw" ||
    fail "$name: nbdcopy out of $nbds"
  cmp "$tmpdir/expect.raw" "$tmpdir/back.raw" ||
    fail "$name: export differs after qemu-io writes"
  ok "$name: qemu-io write/zero/discard with FUA over TLS"

  stop_server
  check_clean "$img" "$name"
  image_to_raw "$img" "$tmpdir/qemu-view.raw"
  cmp "$tmpdir/expect.raw" "$tmpdir/qemu-view.raw" ||
    fail "$name: qemu reads the image differently after the stop"
  ok "$name: clean stop, check clean, qemu agrees"
}

tls_writes x509 \
  "tls-creds-x509,id=tls0,endpoint=client,dir=$cli" \
  "nbds://127.0.0.1:@PORT@?tls-certificates=$cli" \
  --tls-certs "$srv" --tls-verify-peer --discard=unmap

tls_writes psk \
  "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qemu-psk,username=alice" \
  "nbds://alice@127.0.0.1:@PORT@?tls-psk-file=$tmpdir/qemu-psk/keys.psk" \
  --tls-psk "$tmpdir/server.psk" --discard=unmap
