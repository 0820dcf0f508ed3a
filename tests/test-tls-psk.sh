#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# TLS with pre-shared keys (psktool's identity:hexkey files) against the
# GnuTLS clients: qemu-img with tls-creds-psk over TLS 1.3 and TLS 1.2,
# nbdinfo and nbdcopy with tls-psk-file, each reading the export
# correctly.  Then, while a background nbdcopy loop with the right key
# keeps succeeding: a plain client, a wrong key, an unknown identity and a
# client that goes silent after STARTTLS (handshake timeout) are refused.
# Last, a server with both certificates and PSK: PSK clients must get a
# PSK suite even over TLS 1.2, where they also offer certificate suites.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img qemu-io nbdinfo nbdcopy openssl cmp
requires_server

key_alice=$(openssl rand -hex 32)
key_bob=$(openssl rand -hex 32)
key_wrong=$(openssl rand -hex 32)

# The server's file: comments and blank lines are allowed there.
keys="$tmpdir/keys.psk"
printf '# test keys\nalice:%s\n\nbob:%s\n' "$key_alice" "$key_bob" > "$keys"

# Client files: qemu wants DIR/keys.psk, libnbd any file.
mkdir -p "$tmpdir/qemu-psk" "$tmpdir/qemu-wrong"
printf 'alice:%s\n' "$key_alice" > "$tmpdir/qemu-psk/keys.psk"
printf 'alice:%s\n' "$key_wrong" > "$tmpdir/qemu-wrong/keys.psk"
printf 'bob:%s\n' "$key_bob" > "$tmpdir/bob.psk"
printf 'bob:%s\n' "$key_wrong" > "$tmpdir/bob-wrong.psk"
printf 'carol:%s\n' "$key_alice" > "$tmpdir/carol.psk"

img="$tmpdir/img.qcow2"
make_image "$img" 40M
image_io "$img" \
  "write -P 0xa5 0 2M" \
  "write -P 0x3c $(( 17 * 1024 * 1024 + 511 )) 1M" \
  "write -z 30M 2M"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

# ---- good clients ------------------------------------------------------

start_server "$img" --tls-psk "$keys" --handshake-timeout 3 -vv
psk_port=$port
psk_obj="tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qemu-psk,username=alice"
nbd_opts="driver=nbd,host=127.0.0.1,port=$psk_port,tls-creds=tls0"

run_timeout 60 qemu-img convert --object "$psk_obj" \
  --image-opts "$nbd_opts" -O raw "$tmpdir/out1.raw" ||
  fail "qemu-img convert over TLS-PSK"
cmp "$ref" "$tmpdir/out1.raw" || fail "qemu-img over TLS-PSK: wrong data"
grep -q 'TLSv1.3 .*PSK' "$server_log" || fail "qemu-img PSK was not TLS 1.3"
ok "qemu-img convert, PSK, TLS 1.3"

run_timeout 60 qemu-img convert \
  --object "$psk_obj,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
  --image-opts "$nbd_opts" -O raw "$tmpdir/out2.raw" ||
  fail "qemu-img convert over TLS 1.2 PSK"
cmp "$ref" "$tmpdir/out2.raw" || fail "qemu-img over TLS 1.2 PSK: wrong data"
grep -q 'TLSv1.2 .*PSK' "$server_log" || fail "TLS 1.2 PSK not logged"
ok "qemu-img convert, PSK, TLS 1.2"

psk_uri="nbds://bob@127.0.0.1:$psk_port/?tls-psk-file=$tmpdir/bob.psk"
out="$(run_timeout 60 nbdinfo "$psk_uri")" || fail "nbdinfo over TLS-PSK"
grep -q 'with TLS' <<<"$out" || fail "nbdinfo does not report TLS: $out"
run_timeout 60 nbdcopy "$psk_uri" "$tmpdir/out3.raw" ||
  fail "nbdcopy over TLS-PSK"
cmp "$ref" "$tmpdir/out3.raw" || fail "nbdcopy over TLS-PSK: wrong data"
ok "nbdinfo, nbdcopy, PSK"

# ---- refusals, with a good client running all along --------------------

start_good_loop "$psk_uri" "$ref"

refused "plain nbdinfo" "not permitted before TLS" \
  env LIBNBD_DEBUG=1 nbdinfo "nbd://127.0.0.1:$psk_port"
grep -q 'TLS' "$tmpdir/refused.out" ||
  fail "plain nbdinfo: no mention of TLS: $(cat "$tmpdir/refused.out")"

refused "qemu-img, wrong key, TLS 1.3" "TLS handshake failed" \
  qemu-img info \
  --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qemu-wrong,username=alice" \
  --image-opts "$nbd_opts"
refused "qemu-img, wrong key, TLS 1.2" "TLS handshake failed" \
  qemu-img info \
  --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qemu-wrong,username=alice,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
  --image-opts "$nbd_opts"
refused "nbdinfo, wrong key" "TLS handshake failed" \
  nbdinfo "nbds://bob@127.0.0.1:$psk_port/?tls-psk-file=$tmpdir/bob-wrong.psk"
refused "nbdinfo, unknown identity" 'unknown PSK identity "carol"' \
  nbdinfo "nbds://carol@127.0.0.1:$psk_port/?tls-psk-file=$tmpdir/carol.psk"

# STARTTLS, then silence: the handshake deadline (3 s) must end it.
start=$(date +%s)
refused "silent after STARTTLS" "TLS handshake failed: handshake timed out" \
  "$PYTHON" "$abs_top_srcdir/tests/starttls-client.py" "$psk_port" silent
elapsed=$(( $(date +%s) - start ))
grep -q '^dropped cleanly$' "$tmpdir/refused.out" ||
  fail "silent client: $(cat "$tmpdir/refused.out")"
[ "$elapsed" -lt 25 ] || fail "silent client held for $elapsed s"

stop_good_loop
stop_server

# ---- certificates and PSK on one server --------------------------------

certs="$tmpdir/certs"
mkdir -p "$certs"
make_ca "$certs/ca" "PSK test CA"
sign "$certs/ca" server "/CN=localhost" v3_server
creds="$tmpdir/creds"
server_dir "$creds" "$certs/ca"
client_dir "$tmpdir/ca-only" "" "$certs/ca"

start_server "$img" --tls-certs "$creds" --tls-psk "$keys" -vv
run_timeout 60 qemu-img convert \
  --object "tls-creds-psk,id=tls0,endpoint=client,dir=$tmpdir/qemu-psk,username=alice,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
  --image-opts "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0" \
  -O raw "$tmpdir/out4.raw" || fail "TLS 1.2 PSK against certs+PSK"
cmp "$ref" "$tmpdir/out4.raw" || fail "TLS 1.2 PSK against certs+PSK: data"
run_timeout 60 qemu-img convert --object "$psk_obj" \
  --image-opts "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0" \
  -O raw "$tmpdir/out5.raw" || fail "TLS 1.3 PSK against certs+PSK"
cmp "$ref" "$tmpdir/out5.raw" || fail "TLS 1.3 PSK against certs+PSK: data"
run_timeout 60 nbdcopy "nbds://127.0.0.1:$port?tls-certificates=$tmpdir/ca-only" \
  "$tmpdir/out6.raw" || fail "X.509 client against certs+PSK"
cmp "$ref" "$tmpdir/out6.raw" || fail "X.509 client against certs+PSK: data"
ok "certificates and PSK together, TLS 1.2 and 1.3"
stop_server

# ---- a malformed PSK file is refused at startup ------------------------

printf 'alice:not-hex\n' > "$tmpdir/bad.psk"
rc=0
run_timeout 20 "$QCOW2_NBD" serve "$img" --port "$(pick_unused_port)" \
  --bind 127.0.0.1 --tls-psk "$tmpdir/bad.psk" >"$tmpdir/bad.log" 2>&1 ||
  rc=$?
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] ||
  fail "server started with a malformed PSK file"
grep -q 'bad.psk:1' "$tmpdir/bad.log" ||
  fail "malformed PSK file: unhelpful message: $(cat "$tmpdir/bad.log")"
ok "malformed PSK file refused at startup"
