#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qemu-nbd mode, the command line: --version and --help as scripts parse
# them, and every usage mistake and common start-up error (missing file,
# wrong format, lock held, bad values, unknown or ambiguous options,
# conflicting options, bad --object and image options) printing exactly
# what Debian's qemu-nbd 7.2 prints, with its exit status.

. "$(dirname "$0")/functions.sh"
. "$(dirname "$0")/qemu-nbd-functions.sh"

requires qemu-img nbdinfo
requires_qemu_nbd_oracle

# ---- --version and --help -------------------------------------------------

v_oracle=$("$QEMU_NBD_ORACLE" --version | head -1 | awk '{print $2}')
v_ours=$(qnbd ours --version | head -1)
[[ "$v_ours" =~ ^qemu-nbd\ ([0-9.]+)\ \(qcow2-nbd\ [^\ ]+\)$ ]] ||
  fail "--version first line '$v_ours' is not 'qemu-nbd X.Y.Z (qcow2-nbd V)'"
[ "${BASH_REMATCH[1]}" = "$v_oracle" ] ||
  fail "--version says ${BASH_REMATCH[1]}, the reference is $v_oracle"
# ovirt-imageio's parser: the second word, split on dots, all numbers.
[ "$(qnbd ours --version | head -1 | awk '{print $2}' | tr -cd '0-9.')" = \
  "$v_oracle" ] || fail "--version's second word is not the version"
ok "--version: $v_ours"

qnbd oracle --help > "$tmpdir/help.oracle"
qnbd ours --help > "$tmpdir/help.ours"
# The option descriptions are qemu-nbd's, line for line; only the last
# lines (where to report bugs) are ours.
diff -u <(sed '/^See <https/,$d' "$tmpdir/help.oracle") \
        <(sed '/^This is qcow2-nbd/,$d' "$tmpdir/help.ours") >&2 ||
  fail "--help differs from qemu-nbd's"
for opt in $(grep -o -- '--[a-z-]*' "$tmpdir/help.oracle" | sort -u); do
  grep -q -- "$opt" "$tmpdir/help.ours" || fail "--help lacks $opt"
done
grep -q selinux "$tmpdir/help.ours" || fail "--help lacks selinux"
grep -q -- '-B, --bitmap' "$tmpdir/help.ours" || fail "--help lacks -B"
ok "--help: qemu-nbd's layout and every option"

# ---- the same mistakes, the same words ----------------------------------

# Identical files in both working directories, so relative names in the
# messages compare equal.
for who in oracle ours; do
  d="$tmpdir/run-$who"
  mkdir -p "$d"
  qemu-img create -q -f qcow2 "$d/q.qcow2" 1M
  truncate -s 1M "$d/r.raw"
  head -c 2048 /dev/zero | tr '\0' 'x' > "$d/junk"
  qemu-img create -q -f qcow2 -u -b gone.qcow2 -F qcow2 "$d/top.qcow2" 1M
  qemu-img create -q -f qcow2 "$d/bm.qcow2" 1M
  qemu-img bitmap --add "$d/bm.qcow2" b1
  qemu-img snapshot -c s1 "$d/bm.qcow2"
  mkdir -p "$d/dir"
done
mkdir -p "$tmpdir/pki"
long=$(printf 'a%.0s' $(seq 4097))
sock="$tmpdir/never.sock"

n=0
check_same ()
{
  local what=$1; shift
  n=$((n + 1))
  run_both "case$n" "$@"
  same_output "case$n" "$what"
}

check_same "no arguments"
check_same "two files" q.qcow2 r.raw
check_same "unknown long option" --bogus q.qcow2
check_same "unknown short option" -Q q.qcow2
check_same "missing argument, short" q.qcow2 -p
check_same "missing argument, long" q.qcow2 --port
check_same "argument to a flag" --help=3
check_same "ambiguous abbreviation" --s q.qcow2
check_same "missing file" -k "$sock" missing.qcow2
check_same "a directory" -k "$sock" dir
check_same "raw file with -f qcow2" -k "$sock" -f qcow2 r.raw
check_same "junk with -f qcow2" -k "$sock" --format=qcow2 junk
check_same "unknown format" -k "$sock" -f nosuchformat q.qcow2
check_same "missing backing file" -k "$sock" top.qcow2
check_same "empty file name" -k "$sock" ''
check_same "relative socket" -k rel.sock q.qcow2
check_same "bad shared count" -e -1 q.qcow2
check_same "shared not a number" --shared=x q.qcow2
check_same "bad offset" -o x q.qcow2
check_same "offset with a suffix" --offset 1k q.qcow2
check_same "negative offset" -k "$sock" -o -1 q.qcow2
check_same "export name too long" -x "$long" q.qcow2
check_same "description too long" -D "$long" q.qcow2
check_same "bad cache mode" --cache=x q.qcow2
check_same "cache twice" -n --cache=none q.qcow2
check_same "bad aio mode" --aio=x q.qcow2
check_same "aio twice" --aio=threads --aio=io_uring q.qcow2
check_same "aio=native without O_DIRECT" -k "$sock" --aio=native q.qcow2
check_same "bad discard mode" --discard=x q.qcow2
check_same "discard twice" --discard=unmap --discard=ignore q.qcow2
check_same "bad detect-zeroes" --detect-zeroes=x q.qcow2
check_same "detect-zeroes=unmap before discard" --detect-zeroes=unmap \
  --discard=unmap q.qcow2
check_same "list with a file" -L q.qcow2
check_same "list with an export name" -L -x foo
check_same "list with fork" -L --fork
check_same "tls-authz without creds" --tls-authz=a q.qcow2
check_same "tls-hostname without creds" --tls-hostname=h q.qcow2
check_same "unknown tls creds" --tls-creds=nope q.qcow2
check_same "tls-hostname when serving" --object secret,id=s,data=x \
  --tls-creds=s --tls-hostname=h q.qcow2
check_same "creds that are no creds" --object secret,id=s,data=x \
  --tls-creds=s q.qcow2
check_same "selinux without a socket" --selinux-label=x q.qcow2
check_same "unknown object type" --object nosuch,id=x q.qcow2
check_same "object without id" --object secret,data=x q.qcow2
check_same "bad object id" --object secret,id=1x,data=x q.qcow2
check_same "duplicate object id" --object secret,id=s,data=x \
  --object secret,id=s,data=y q.qcow2
check_same "secret without data" --object secret,id=s q.qcow2
check_same "secret with data and file" --object secret,id=s,data=x,file=y \
  q.qcow2
check_same "unknown object property" \
  --object "tls-creds-x509,id=t,dir=$tmpdir/pki,foo=1" q.qcow2
check_same "bad endpoint" \
  --object "tls-creds-x509,id=t,dir=$tmpdir/pki,endpoint=x" q.qcow2
check_same "missing certificates" \
  --object "tls-creds-x509,id=t,dir=$tmpdir/pki,endpoint=server" q.qcow2
check_same "missing psk file" \
  --object "tls-creds-psk,id=t,dir=$tmpdir/pki,endpoint=server" q.qcow2
check_same "authz-simple without identity" --object authz-simple,id=a q.qcow2
check_same "image-opts with -f" --image-opts -f qcow2 q.qcow2
check_same "image-opts, a file name alone" -k "$sock" --image-opts q.qcow2
check_same "image-opts, unknown option" -k "$sock" \
  --image-opts driver=qcow2,file.filename=q.qcow2,foo=1
check_same "json, not json" -k "$sock" 'json:{bad'
check_same "json, unknown driver" -k "$sock" \
  'json:{"driver":"nosuch","file":{"driver":"file","filename":"q.qcow2"}}'
check_same "json, file as a node name" -k "$sock" \
  'json:{"driver":"qcow2","file":"q.qcow2"}'
check_same "json, read-only node exported writable" -k "$sock" \
  'json:{"driver":"qcow2","read-only":true,"file":{"driver":"file","filename":"q.qcow2"}}'
check_same "json, raw offset past the end" -k "$sock" \
  'json:{"driver":"raw","offset":2000000,"file":{"driver":"file","filename":"r.raw"}}'
check_same "unknown bitmap" -k "$sock" -B nosuch bm.qcow2
check_same "unknown snapshot" -k "$sock" -l nosuch bm.qcow2
check_same "unknown snapshot id" -k "$sock" -l snapshot.id=9 bm.qcow2
check_same "bad snapshot parameter" -k "$sock" -l snapshot.id=1,snapshot.x=2 \
  bm.qcow2
check_same "list with a bitmap" -L -B b1
ok "$n usage mistakes and start-up errors worded and ended as qemu-nbd's"

# ---- a lock held by another qemu-nbd ------------------------------------

mkdir -p "$tmpdir/shared"
locked="$tmpdir/shared/locked.qcow2"
qemu-img create -q -f qcow2 "$locked" 1M
qnbd_start oracle "$tmpdir/holder.sock" -t -f qcow2 "$locked"
check_same "image locked by another qemu-nbd" -k "$sock" -f qcow2 "$locked"
check_same "image locked, read-only" -k "$sock" -r -f qcow2 "$locked"
ok "lock conflicts reported in qemu-nbd's words"

# ---- -c and -d where no device can be used --------------------------------

# The host may have nbd.ko loaded, so no real /dev/nbdN: a path that does
# not exist, and /dev/null, which the kernel refuses NBD_SET_SOCK on.
# -k keeps qemu-nbd's socket file (left behind when -c fails) here.
nodev="$tmpdir/no-such-nbd"
check_same "-c, no such device" -k "$sock" -c "$nodev" q.qcow2
check_same "-c, no such device, -v" -k "$sock" -v -c "$nodev" q.qcow2
check_same "-c, not an NBD device" -k "$sock" -c /dev/null q.qcow2
check_same "-c, not an NBD device, -v" -k "$sock" -v --connect=/dev/null q.qcow2
check_same "-c, missing image" -k "$sock" -c "$nodev" missing.qcow2
check_same "-c, missing image, -v" -k "$sock" -v -c /dev/null missing.qcow2
check_same "-c without a file" -c /dev/null
check_same "-c with TLS" -c /dev/null --object \
  tls-creds-x509,id=t,dir="$tmpdir/pki",endpoint=server --tls-creds=t q.qcow2
check_same "-d, no such device" -d "$nodev"
check_same "-d, not an NBD device" -d /dev/null
check_same "-d without a device" -d
check_same "-d with two arguments" -d /dev/null q.qcow2
check_same "-c and -d: FILE is the device" -c "$nodev" -d /dev/null
check_same "-d in list mode" -L -d
ok "-c and -d without a usable device: qemu-nbd's words and status"
