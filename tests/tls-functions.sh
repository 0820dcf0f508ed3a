# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Helpers for the TLS tests, sourced after functions.sh: certificates made
# with the openssl command (an "openssl ca" setup, which can backdate and
# revoke), credential directories in the layouts the server, qemu and
# libnbd read, and a good client that keeps copying the export in the
# background while refused clients come and go, so that each refusal is
# seen not to disturb anybody else.

# ---- certificates ------------------------------------------------------

# make_ca DIR CN: a CA able to sign, revoke and issue CRLs.  The policy
# keeps the request's order C, O, CN, so RFC 4514 prints CN first.
make_ca ()
{
  local d=$1 cn=$2
  mkdir -p "$d/newcerts"
  : > "$d/index.txt"
  echo 01 > "$d/serial"
  echo 01 > "$d/crlnumber"
  cat > "$d/ca.cnf" <<'EOF'
[ca]
default_ca = ca_default
[ca_default]
dir = .
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
unique_subject = no
[policy_any]
countryName = optional
organizationName = optional
commonName = supplied
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
[v3_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 365 \
    -keyout "$d/ca-key.pem" -out "$d/ca-cert.pem" -subj "/O=Example/CN=$cn" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1 ||
    fail "openssl: cannot make CA $cn"
}

# sign CADIR NAME SUBJECT EXTENSIONS [STARTDATE ENDDATE]: NAME-key.pem and
# NAME-cert.pem in $certs.  EXTENSIONS is v3_server or v3_client.
sign ()
{
  local ca=$1 name=$2 subj=$3 ext=$4 dates=()
  [ $# -ge 6 ] && dates=(-startdate "$5" -enddate "$6")
  openssl req -newkey rsa:2048 -nodes -subj "$subj" \
    -keyout "$certs/$name-key.pem" -out "$certs/$name.csr" >/dev/null 2>&1 ||
    fail "openssl req $name"
  (cd "$ca" && openssl ca -batch -config ca.cnf -notext -extensions "$ext" \
     -cert ca-cert.pem -keyfile ca-key.pem ${dates[@]+"${dates[@]}"} \
     -in "$certs/$name.csr" -out "$certs/$name-cert.pem") >/dev/null 2>&1 ||
    fail "openssl ca $name"
}

# server_dir DIR CADIR: the qemu-nbd/nbdkit layout --tls-certs reads,
# with the server certificate signed in $certs and no CA key.
server_dir ()
{
  mkdir -p "$1"
  cp "$2/ca-cert.pem" "$1/ca-cert.pem"
  cp "$certs/server-cert.pem" "$certs/server-key.pem" "$1/"
}

# client_dir DIR CERTNAME CADIR: the layout qemu and libnbd read; an
# empty CERTNAME gives a client that only trusts CADIR.
client_dir ()
{
  mkdir -p "$1"
  cp "$3/ca-cert.pem" "$1/ca-cert.pem"
  if [ -n "$2" ]; then
    cp "$certs/$2-cert.pem" "$1/client-cert.pem"
    cp "$certs/$2-key.pem" "$1/client-key.pem"
  fi
}

# ---- refusals beside a good client -------------------------------------

# start_good_loop URI REF: copy URI with nbdcopy over and over in the
# background, counting copies equal to REF in $loop_ok and the others
# (or failures) in $loop_bad; returns after the first good copy.
start_good_loop ()
{
  local uri=$1 ref=$2
  loop_stop="$tmpdir/loop.stop"
  loop_ok="$tmpdir/loop.ok"
  loop_bad="$tmpdir/loop.bad"
  : > "$loop_ok"
  : > "$loop_bad"
  (
    while [ ! -e "$loop_stop" ]; do
      if run_timeout 60 nbdcopy "$uri" "$tmpdir/loop.raw" \
           2>>"$tmpdir/loop.err" &&
         cmp -s "$ref" "$tmpdir/loop.raw"; then
        echo . >> "$loop_ok"
      else
        echo . >> "$loop_bad"
      fi
    done
  ) &
  loop_pid=$!
  cleanup_fn kill "$loop_pid"
  wait_loop_past 0
}

loop_count () { wc -l < "$1"; }

# wait_loop_past N: wait until the loop has succeeded more than N times.
wait_loop_past ()
{
  local i
  for (( i = 0; i < 600; i++ )); do
    [ "$(loop_count "$loop_ok")" -gt "$1" ] && return 0
    [ "$(loop_count "$loop_bad")" -eq 0 ] ||
      fail "good client failed during refusals: $(cat "$tmpdir/loop.err")"
    sleep 0.1
  done
  fail "good client loop made no progress"
}

# stop_good_loop: one more good copy after the refusals, then stop; not
# one copy may have failed.
stop_good_loop ()
{
  wait_loop_past "$(loop_count "$loop_ok")"
  touch "$loop_stop"
  wait "$loop_pid" || true
  [ "$(loop_count "$loop_bad")" -eq 0 ] ||
    fail "good client failed: $(cat "$tmpdir/loop.err")"
  ok "good client succeeded $(loop_count "$loop_ok") times during the refusals"
}

# refused WHAT LOG-REGEX CMD...: CMD must fail, the server must log a
# line matching the extended regex (if not empty) and still be serving.
# CMD's output is left in $tmpdir/refused.out.
refused ()
{
  local what=$1 pattern=$2; shift 2
  local before
  before=$(wc -l < "$server_log")
  if run_timeout 60 "$@" >"$tmpdir/refused.out" 2>&1; then
    cat "$tmpdir/refused.out" >&2
    fail "$what: the client was not refused"
  fi
  if [ -n "$pattern" ]; then
    local i found=0
    for (( i = 0; i < 50; i++ )); do
      if grep -qE -- "$pattern" <<< "$(tail -n +"$(( before + 1 ))" "$server_log")"
      then found=1; break; fi
      sleep 0.1
    done
    if [ "$found" = 0 ]; then
      tail -n +"$(( before + 1 ))" "$server_log" | grep -v debug >&2
      fail "$what: server did not log '$pattern'"
    fi
  fi
  server_alive "after $what"
  ok "refused: $what"
}
