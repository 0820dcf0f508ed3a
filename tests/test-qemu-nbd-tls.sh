#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd mode with TLS: --object tls-creds-x509 / tls-creds-psk and
# --tls-creds, --tls-authz with authz-simple and authz-list-file, each
# set-up run against Debian's qemu-nbd 7.2 and ours with the same clients
# (qemu-img, nbdinfo): whoever qemu-nbd serves, we serve; whoever it
# refuses (no certificate while verify-peer is on, a name the authz
# object does not allow, a wrong key, plain text), we refuse.
# authz-list-file cannot be created by qemu-nbd 7.2 (a QEMU bug), so it is
# checked against ours alone.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/tls-functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img nbdinfo openssl
requires_qemu_nbd_oracle

certs="$tmpdir/certs"
mkdir -p "$certs"
make_ca "$certs/ca" "Test CA"
sign "$certs/ca" server "/C=GB/O=Example/CN=localhost" v3_server
sign "$certs/ca" client "/C=GB/O=Example/CN=client" v3_client
sign "$certs/ca" intruder "/C=GB/O=Example/CN=intruder" v3_client
srv="$tmpdir/server-creds"
server_dir "$srv" "$certs/ca"
client_dir "$tmpdir/good" client "$certs/ca"
client_dir "$tmpdir/intruder" intruder "$certs/ca"
client_dir "$tmpdir/nocert" "" "$certs/ca"

key=$(openssl rand -hex 32)
mkdir -p "$tmpdir/psk-server" "$tmpdir/psk-alice" "$tmpdir/psk-wrong"
printf 'alice:%s\n' "$key" > "$tmpdir/psk-server/keys.psk"
printf 'alice:%s\n' "$key" > "$tmpdir/psk-alice/keys.psk"
printf 'alice:%s\n' "$(openssl rand -hex 32)" > "$tmpdir/psk-wrong/keys.psk"

printf '{"rules": [{"match": "C=GB,O=Example,CN=cl*", "policy": "allow", "format": "glob"},
  {"match": "C=GB,O=Example,CN=intruder", "policy": "deny"}],
 "policy": "deny"}\n' > "$tmpdir/rules.json"

img="$tmpdir/img.qcow2"
make_image "$img" 4M
image_io "$img" "write -P 0x5a 0 1M"

# tls_start WHO ARGS...: serve $img on 127.0.0.1 with -t; sets tls_port.
tls_start ()
{
  local who=$1 i; shift
  tls_port=$(pick_unused_port)
  qnbd_log="$tmpdir/tls-$who-$tls_port.log"
  _server_logs+=("$qnbd_log")
  (PATH="$tmpdir/path-$who:$PATH" exec qemu-nbd -t -b 127.0.0.1 \
     -p "$tls_port" "$@" -f qcow2 "$img") > "$qnbd_log" 2>&1 </dev/null &
  qnbd_pid=$!
  cleanup_fn _kill_server "$qnbd_pid"
  for (( i = 0; i < 300; i++ )); do
    _alive "$qnbd_pid" || fail "qemu-nbd ($who $*) exited"
    port_accepts "$tls_port" && return 0
    sleep 0.1
  done
  fail "qemu-nbd ($who $*) not listening after 30 s"
}

# client_x509 DIR: qemu-img reads the export with x509 client creds DIR.
client_x509 ()
{
  run_timeout 60 qemu-img convert \
    --object "tls-creds-x509,id=tls0,endpoint=client,dir=$1" \
    --image-opts "driver=nbd,host=127.0.0.1,port=$tls_port,tls-creds=tls0" \
    -O raw "$tmpdir/out.raw" > "$tmpdir/client.out" 2>&1 &&
    qemu-io -f raw -c 'read -P 0x5a 0 1M' "$tmpdir/out.raw" |
      grep -q 'read 1048576'
}

client_psk ()
{
  run_timeout 60 qemu-img convert \
    --object "tls-creds-psk,id=tls0,endpoint=client,dir=$1,username=alice" \
    --image-opts "driver=nbd,host=127.0.0.1,port=$tls_port,tls-creds=tls0" \
    -O raw "$tmpdir/out.raw" > "$tmpdir/client.out" 2>&1
}

client_plain ()
{
  run_timeout 60 nbdinfo --size "nbd://127.0.0.1:$tls_port" \
    > "$tmpdir/client.out" 2>&1
}

# expect WHO WHAT yes|no CLIENT ARGS...: the client must be served (yes)
# or refused (no).
expect ()
{
  local who=$1 what=$2 want=$3 got=no; shift 3
  "$@" && got=yes
  if [ "$got" != "$want" ]; then
    cat "$tmpdir/client.out" >&2
    fail "$who, $what: served=$got, expected $want"
  fi
}

x509="tls-creds-x509,id=tls0,endpoint=server,dir=$srv"
psk="tls-creds-psk,id=tls0,endpoint=server,dir=$tmpdir/psk-server"
for who in oracle ours; do
  tls_start "$who" --object "$x509" --tls-creds tls0
  expect "$who" "x509, good client" yes client_x509 "$tmpdir/good"
  expect "$who" "x509, no client certificate" no client_x509 "$tmpdir/nocert"
  expect "$who" "x509, plain client" no client_plain
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "$who x509"

  tls_start "$who" --object "$x509,verify-peer=off" --tls-creds tls0
  expect "$who" "verify-peer=off, no certificate" yes client_x509 \
    "$tmpdir/nocert"
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "$who verify-peer=off"

  tls_start "$who" --object "$x509" --tls-creds tls0 --tls-authz authz0 \
    --object "authz-simple,id=authz0,identity=C=GB,,O=Example,,CN=client"
  expect "$who" "authz-simple, allowed" yes client_x509 "$tmpdir/good"
  expect "$who" "authz-simple, other name" no client_x509 "$tmpdir/intruder"
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "$who authz-simple"

  tls_start "$who" --object "$psk" --tls-creds tls0
  expect "$who" "psk, right key" yes client_psk "$tmpdir/psk-alice"
  expect "$who" "psk, wrong key" no client_psk "$tmpdir/psk-wrong"
  kill -TERM "$qnbd_pid"
  qnbd_wait_exit "$qnbd_pid" "$who psk"
done
ok "x509 (verify-peer on and off), authz-simple and PSK as qemu-nbd"

tls_start ours --object "$x509" --tls-creds tls0 --tls-authz rules \
  --object "authz-list-file,id=rules,filename=$tmpdir/rules.json"
expect ours "authz-list-file, glob allows" yes client_x509 "$tmpdir/good"
expect ours "authz-list-file, denied" no client_x509 "$tmpdir/intruder"
kill -TERM "$qnbd_pid"
qnbd_wait_exit "$qnbd_pid" "ours authz-list-file"
ok "authz-list-file: glob and exact rules, default policy"

# -L over TLS: our listing client, against qemu-nbd and against ours,
# prints what qemu-nbd's prints, with X.509 (checking the server's name)
# and with PSK.
n=0
for server in oracle ours; do
  for creds in "x509" "psk"; do
    n=$((n + 1))
    if [ "$creds" = x509 ]; then
      tls_start "$server" --object "$x509" --tls-creds tls0 -x disk -D "over TLS"
      cl=(--object "tls-creds-x509,id=c0,endpoint=client,dir=$tmpdir/good"
          --tls-creds c0 --tls-hostname localhost)
    else
      tls_start "$server" --object "$psk" --tls-creds tls0 -x disk
      cl=(--object "tls-creds-psk,id=c0,endpoint=client,dir=$tmpdir/psk-alice,username=alice"
          --tls-creds c0)
    fi
    for client in oracle ours; do
      qnbd "$client" -L -b 127.0.0.1 -p "$tls_port" "${cl[@]}" \
        > "$tmpdir/tl$n.$client" 2>&1 ||
        { cat "$tmpdir/tl$n.$client" >&2;
          fail "-L over TLS ($creds, $client) against $server"; }
    done
    diff -u "$tmpdir/tl$n.oracle" "$tmpdir/tl$n.ours" >&2 ||
      fail "-L over TLS ($creds) against $server differs from qemu-nbd's"
    grep -q "export: 'disk'" "$tmpdir/tl$n.ours" || fail "-L over TLS: no export"
    kill -TERM "$qnbd_pid"
    qnbd_wait_exit "$qnbd_pid" "$server TLS for -L"
  done
done
ok "-L over TLS (X.509 with --tls-hostname, PSK) as qemu-nbd's"

# Client credentials given to a server: qemu-nbd's refusal, word for word.
run_both wrongend --object "tls-creds-x509,id=tls0,endpoint=client,dir=$srv" \
  --tls-creds tls0 -k "$tmpdir/never.sock" "$img"
same_output wrongend "client credentials for a server"
ok "client credentials refused for serving, as qemu-nbd"
