#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# TLS with X.509 certificates against the GnuTLS clients people use:
# qemu-img (TLS 1.3, and TLS 1.2 forced by a priority string), nbdinfo,
# nbdcopy and nbd-client -l each read the export correctly; then, while
# a background nbdcopy loop with good credentials keeps succeeding, the
# server refuses plain clients, a client that trusts another CA, client
# certificates from another CA, expired, revoked (CRL) or missing, one
# whose name is not in the authz file, and plaintext after STARTTLS,
# logging the reason each time.  Certificates come from tls-functions.sh
# (an "openssl ca" setup, which can backdate and revoke).

SMOKE_TEST=1
source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"

requires qemu-img qemu-io nbdinfo nbdcopy openssl cmp
requires_server

# ---- certificates ------------------------------------------------------

certs="$tmpdir/certs"
mkdir -p "$certs"
make_ca "$certs/ca" "Test CA"
make_ca "$certs/ca2" "Other CA"
sign "$certs/ca" server "/C=GB/O=Example/CN=localhost" v3_server
sign "$certs/ca" client "/C=GB/O=Example/CN=client" v3_client
sign "$certs/ca" intruder "/C=GB/O=Example/CN=intruder" v3_client
sign "$certs/ca2" alien "/C=GB/O=Example/CN=client" v3_client
sign "$certs/ca" expired "/C=GB/O=Example/CN=client" v3_client \
  20200101000000Z 20200201000000Z
sign "$certs/ca" revoked "/C=GB/O=Example/CN=revoked" v3_client
(cd "$certs/ca" &&
 openssl ca -batch -config ca.cnf -cert ca-cert.pem -keyfile ca-key.pem \
   -revoke "$certs/revoked-cert.pem" &&
 openssl ca -batch -config ca.cnf -cert ca-cert.pem -keyfile ca-key.pem \
   -gencrl -out ca-crl.pem) >/dev/null 2>&1 || fail "openssl: cannot revoke"

# Server directory: the qemu-nbd/nbdkit layout, with a CRL.
srv="$tmpdir/server-creds"
server_dir "$srv" "$certs/ca"
cp "$certs/ca/ca-crl.pem" "$srv/"

client_dir "$tmpdir/good" client "$certs/ca"
client_dir "$tmpdir/intruder" intruder "$certs/ca"
client_dir "$tmpdir/alien" alien "$certs/ca"
client_dir "$tmpdir/expired" expired "$certs/ca"
client_dir "$tmpdir/revoked" revoked "$certs/ca"
client_dir "$tmpdir/nocert" "" "$certs/ca"
client_dir "$tmpdir/wrongca" client "$certs/ca2"

# The allow-list: RFC 4514 names, with a comment and a blank line that
# must be ignored.
authz="$tmpdir/authz.txt"
printf '# clients allowed\n\nCN=client,O=Example,C=GB\nCN=revoked,O=Example,C=GB\n' \
  > "$authz"

# ---- image -------------------------------------------------------------

img="$tmpdir/img.qcow2"
make_image "$img" 48M -o cluster_size=64k
image_io "$img" \
  "write -P 0x5a 0 1M" \
  "write -P 0x33 $(( 10 * 1024 * 1024 + 4097 )) 3M" \
  "write -z 20M 1M" \
  "write -P 0x77 $(( 48 * 1024 * 1024 - 65536 )) 65536"
ref="$tmpdir/ref.raw"
image_to_raw "$img" "$ref"

# ---- good clients ------------------------------------------------------

start_server "$img" --export-name disk1 --tls-certs "$srv" \
  --tls-authz-file "$authz" -vv
tls_port=$port
good="$tmpdir/good"
nbds="nbds://127.0.0.1:$tls_port/disk1"
x509_obj="tls-creds-x509,id=tls0,endpoint=client,dir=$good"
nbd_opts="driver=nbd,host=127.0.0.1,port=$tls_port,export=disk1,tls-creds=tls0"

# qemu-img, default priority: TLS 1.3.
run_timeout 60 qemu-img convert --object "$x509_obj" \
  --image-opts "$nbd_opts" -O raw "$tmpdir/out1.raw" ||
  fail "qemu-img convert over TLS"
cmp "$ref" "$tmpdir/out1.raw" || fail "qemu-img convert over TLS: wrong data"
grep -q 'TLSv1.3' "$server_log" || fail "default qemu-img TLS was not TLS 1.3"
run_timeout 60 qemu-img compare --object "$x509_obj" \
  --image-opts "driver=raw,file.filename=$ref" "$nbd_opts" >/dev/null ||
  fail "qemu-img compare over TLS"
ok "qemu-img convert/compare, X.509, TLS 1.3"

# qemu-img with TLS 1.2 forced by the GnuTLS priority string.
n12=$(grep -c 'TLSv1.2' "$server_log" || true)
run_timeout 60 qemu-img convert \
  --object "$x509_obj,priority=NORMAL:-VERS-ALL:+VERS-TLS1.2" \
  --image-opts "$nbd_opts" -O raw "$tmpdir/out2.raw" ||
  fail "qemu-img convert over TLS 1.2"
cmp "$ref" "$tmpdir/out2.raw" || fail "qemu-img over TLS 1.2: wrong data"
[ "$(grep -c 'TLSv1.2' "$server_log" || true)" -gt "$n12" ] ||
  fail "priority NORMAL:-VERS-ALL:+VERS-TLS1.2 did not give TLS 1.2"
ok "qemu-img convert, X.509, TLS 1.2"

# libnbd: nbdinfo and nbdcopy (several connections).
out="$(run_timeout 60 nbdinfo "$nbds?tls-certificates=$good")" ||
  fail "nbdinfo over TLS"
grep -q 'with TLS' <<<"$out" || fail "nbdinfo does not report TLS: $out"
grep -q 'export-size: 50331648' <<<"$out" || fail "nbdinfo size: $out"
run_timeout 60 nbdcopy "$nbds?tls-certificates=$good" "$tmpdir/out3.raw" ||
  fail "nbdcopy over TLS"
cmp "$ref" "$tmpdir/out3.raw" || fail "nbdcopy over TLS: wrong data"
ok "nbdinfo, nbdcopy, X.509"

# nbd-client 3.24: TLS 1.2, STARTTLS as its first option, then LIST.
if command -v nbd-client >/dev/null 2>&1; then
  out="$(run_timeout 60 nbd-client -l 127.0.0.1 "$tls_port" \
           -certfile "$good/client-cert.pem" -keyfile "$good/client-key.pem" \
           -cacertfile "$good/ca-cert.pem" -tlshostname localhost 2>&1)" ||
    fail "nbd-client -l over TLS: $out"
  grep -qx 'disk1' <<<"$out" || fail "nbd-client -l did not list disk1: $out"
  ok "nbd-client -l, X.509"
else
  echo "nbd-client not installed: not tested"
fi

# A client that queues 64 MiB of reads and only then starts reading the
# replies: the server's sends over TLS must hit EAGAIN in the worker and
# resume with OpenSSL's half-written records, for TLS 1.3 and 1.2.  (This
# client is Python's OpenSSL; the transport is what is under test.)
for ver in 1.3 1.2; do
  run_timeout 120 "$PYTHON" - "$tls_port" "$good" "$ref" "$ver" <<'EOF' ||
import socket, ssl, struct, sys, time
port, creds, ref_path, ver = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ref = open(ref_path, "rb").read()
s = socket.create_connection(("127.0.0.1", port), timeout=60)
def recv_exact(sock, n):
    b = bytearray()
    while len(b) < n:
        d = sock.recv(min(n - len(b), 1 << 20))
        if not d:
            raise SystemExit("unexpected EOF")
        b += d
    return bytes(b)
IHAVEOPT = 0x49484156454F5054
recv_exact(s, 18)
s.sendall(struct.pack(">I", 3))                         # FIXED_NEWSTYLE|NO_ZEROES
s.sendall(struct.pack(">QII", IHAVEOPT, 5, 0))          # STARTTLS
_, _, rtype, rlen = struct.unpack(">QIII", recv_exact(s, 20))
assert rtype == 1 and rlen == 0, "STARTTLS refused"
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(creds + "/ca-cert.pem")
ctx.load_cert_chain(creds + "/client-cert.pem", creds + "/client-key.pem")
if ver == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
t = ctx.wrap_socket(s, server_hostname="localhost")
assert t.version() == "TLSv1." + ver[-1], t.version()
name = b"disk1"
t.sendall(struct.pack(">QII", IHAVEOPT, 7, 4 + len(name) + 2) +
          struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
while True:                                             # INFO..., then ACK
    _, _, rtype, rlen = struct.unpack(">QIII", recv_exact(t, 20))
    recv_exact(t, rlen)
    if rtype == 1:
        break
    assert rtype == 3, "NBD_OPT_GO failed: %#x" % rtype
size = len(ref)
reqs = {}
chunk = 2 << 20
for h in range(32):
    off = (h * 1234567 * 512) % (size - chunk)
    reqs[h] = off
    t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 0, h, off, chunk))
time.sleep(2)                   # let the server fill the socket and wait
while reqs:
    magic, err, h = struct.unpack(">IIQ", recv_exact(t, 16))
    assert magic == 0x67446698 and err == 0, "bad reply %#x %d" % (magic, err)
    off = reqs.pop(h)
    if recv_exact(t, chunk) != ref[off:off + chunk]:
        raise SystemExit("wrong data at %d" % off)
t.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 99, 0, 0))   # DISC
t.close()
EOF
    fail "slow reader over TLS $ver"
done
ok "slow reader, 64 MiB queued, TLS 1.3 and 1.2"

# ---- refusals, with a good client running all along --------------------

start_good_loop "$nbds?tls-certificates=$good" "$ref"

# No TLS at all against a server that requires it.
refused "plain nbdinfo" "not permitted before TLS" \
  env LIBNBD_DEBUG=1 nbdinfo "nbd://127.0.0.1:$tls_port/disk1"
grep -q 'TLS' "$tmpdir/refused.out" ||
  fail "plain nbdinfo: no mention of TLS: $(cat "$tmpdir/refused.out")"
refused "plain qemu-img" "not permitted before TLS" \
  qemu-img info "nbd://127.0.0.1:$tls_port/disk1"
grep -q 'TLS' "$tmpdir/refused.out" ||
  fail "plain qemu-img: no mention of TLS: $(cat "$tmpdir/refused.out")"

# The client trusts another CA: it refuses our certificate.
refused "client trusting another CA" "TLS handshake failed" \
  nbdinfo "$nbds?tls-certificates=$tmpdir/wrongca"
# qemu checks the server certificate after the handshake and just hangs
# up, so the server has nothing to log.
refused "qemu-img trusting another CA" "" \
  qemu-img info --object "tls-creds-x509,id=tls0,endpoint=client,dir=$tmpdir/wrongca" \
  --image-opts "$nbd_opts"

# Client certificates we must refuse.
# GnuTLS only sends a certificate whose issuer the server named in its
# CertificateRequest, so libnbd usually sends none at all.
refused "client certificate from another CA" \
  "unable to get local issuer certificate|did not return a certificate" \
  nbdinfo "$nbds?tls-certificates=$tmpdir/alien"
refused "client certificate not in the authz file" \
  'client certificate "CN=intruder,O=Example,C=GB" is not in the authz file' \
  nbdinfo "$nbds?tls-certificates=$tmpdir/intruder"
refused "qemu-img, client certificate not in the authz file" \
  'CN=intruder,O=Example,C=GB" is not in the authz file' \
  qemu-img info \
  --object "tls-creds-x509,id=tls0,endpoint=client,dir=$tmpdir/intruder" \
  --image-opts "$nbd_opts"
refused "expired client certificate" "certificate has expired" \
  nbdinfo "$nbds?tls-certificates=$tmpdir/expired"
refused "revoked client certificate" "certificate revoked" \
  nbdinfo "$nbds?tls-certificates=$tmpdir/revoked"
refused "no client certificate" "did not return a certificate" \
  nbdinfo "$nbds?tls-certificates=$tmpdir/nocert"

# Plaintext after STARTTLS: the ACK comes, then option bytes in clear
# where the ClientHello belongs.  The server must drop the connection
# (at most a TLS alert, then EOF), not hang or crash.
refused "plaintext after STARTTLS" "TLS handshake failed" \
  "$PYTHON" "$abs_top_srcdir/tests/starttls-client.py" "$tls_port" plaintext
grep -q 'dropped cleanly' "$tmpdir/refused.out" ||
  fail "plaintext after STARTTLS: $(cat "$tmpdir/refused.out")"

stop_good_loop
stop_server

# ---- --tls=on: plain and TLS clients both welcome ----------------------

start_server "$img" --tls=on --tls-certs "$srv"
run_timeout 60 nbdcopy "nbd://127.0.0.1:$port" "$tmpdir/out4.raw" ||
  fail "plain nbdcopy against --tls=on"
cmp "$ref" "$tmpdir/out4.raw" || fail "plain nbdcopy: wrong data"
# No client certificate needed without --tls-verify-peer.
run_timeout 60 nbdcopy "nbds://127.0.0.1:$port?tls-certificates=$tmpdir/nocert" \
  "$tmpdir/out5.raw" || fail "nbdcopy over TLS against --tls=on"
cmp "$ref" "$tmpdir/out5.raw" || fail "nbdcopy over TLS: wrong data"
ok "--tls=on serves plain and TLS clients"
stop_server

# ---- bad server credentials are refused at startup ---------------------

bad="$tmpdir/bad-creds"
mkdir -p "$bad"
cp "$certs/server-cert.pem" "$bad/server-cert.pem"
cp "$certs/client-key.pem" "$bad/server-key.pem"        # does not match
rc=0
run_timeout 20 "$QCOW2_NBD" serve "$img" --port "$(pick_unused_port)" \
  --bind 127.0.0.1 --tls-certs "$bad" >"$tmpdir/bad.log" 2>&1 || rc=$?
# 124: still running when timeout killed it, i.e. it started.
[ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] ||
  fail "server started with a key that does not match its certificate"
grep -q 'server-key.pem' "$tmpdir/bad.log" ||
  fail "mismatched key: unhelpful message: $(cat "$tmpdir/bad.log")"
ok "mismatched server key refused at startup"
