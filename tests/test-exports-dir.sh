#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Many exports from one server (--export-dir, --export): 200 qcow2
# images in a directory, each written by qemu-io with its own pattern
# and size, a raw image, a corrupt image, and what must not be served (a
# hidden file, a symbolic link, a subdirectory, a file outside).  Checks:
# - NBD_OPT_LIST (nbdsh) gives exactly the exports, with descriptions
#   (no file whose name is not UTF-8);
#   nbdinfo --list --json their sizes;
# - clients on several exports at once (8 parallel streams of qemu-io)
#   read back what qemu-io wrote, through --max-open-exports=16, so the
#   server cycles through all 200 images;
# - the corrupt image is refused at GO with the library's reason (and
#   logged) while the others serve;
# - unknown names, "" without a default, and path traversal attempts
#   are refused with NBD_REP_ERR_UNKNOWN;
# - files added after start are served, removed ones no longer listed;
# - after three passes over all 200 images the server holds no more fds
#   of them than 16 open exports take (16 x (1 + threads)), and its RSS
#   has not grown since the first pass.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/flood-functions.sh"

requires qemu-img qemu-io nbdinfo
requires_python_nbd
requires_server

n=200
threads=2
max_open=16
dir="$tmpdir/images"
mkdir -p "$dir" "$dir/sub"

# Image I: (1 + I % 4) MiB, pattern I % 251 + 1 at 0 and at 512k.
pat () { echo $(( $1 % 251 + 1 )); }
name () { printf 'img%03d.qcow2' "$1"; }

make_image "$tmpdir/template.qcow2" 1M
for (( i = 0; i < n; i++ )); do
  f="$dir/$(name $i)"
  qemu-img create -q -f qcow2 "$f" $(( 1 + i % 4 ))M ||
    fail "qemu-img create $f"
done
# One qemu-io per image writes both patterns.
for (( i = 0; i < n; i++ )); do
  p=$(pat $i)
  qemu-io -f qcow2 -c "write -P $p 0 64k" -c "write -P $p 512k 4k" \
    "$dir/$(name $i)" >/dev/null || fail "qemu-io write $(name $i)"
done
make_raw "$dir/raw.img" 2M
qemu-io -f raw -c 'write -P 0x5a 1M 64k' "$dir/raw.img" >/dev/null ||
  fail "qemu-io write raw.img"
# A corrupt image: its L1 table offset is not cluster aligned.
make_image "$dir/corrupt.qcow2" 1M
printf '\x00\x00\x00\x00\x00\x03\x02\x01' |
  dd of="$dir/corrupt.qcow2" bs=1 seek=40 conv=notrunc status=none
# Not exports.
make_image "$tmpdir/outside.qcow2" 1M
make_image "$dir/.hidden.qcow2" 1M
make_image "$dir/"$'not-utf8-\xff.qcow2' 1M
make_image "$dir/sub/inner.qcow2" 1M
ln -s "$tmpdir/outside.qcow2" "$dir/link.qcow2"
# A pinned export, outside the directory, with a description.
make_image "$tmpdir/pinned.qcow2" 3M
image_io "$tmpdir/pinned.qcow2" 'write -P 0x77 0 64k'

start_server --export-dir="$dir" \
  --export="pinned=$tmpdir/pinned.qcow2,ro,description=The pinned,, one" \
  --max-open-exports=$max_open --idle-timeout=3600 --threads $threads \
  --handshake-timeout=0 -v
base="nbd://127.0.0.1:$port"

# ---- LIST ---------------------------------------------------------------

list_exports ()
{
  "$PYTHON" - "$port" <<'EOF'
import sys, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_tcp("127.0.0.1", sys.argv[1])
seen = []
h.opt_list(lambda name, desc: seen.append((name, desc)))
h.opt_abort()
for name, desc in seen:
    print("%s\t%s" % (name, desc))
EOF
}

list_exports >"$tmpdir/list.out" || fail "NBD_OPT_LIST failed"
{
  for (( i = 0; i < n; i++ )); do printf '%s\t\n' "$(name $i)"; done
  printf 'corrupt.qcow2\t\n'
  printf 'pinned\tThe pinned, one\n'
  printf 'raw.img\t\n'
} | LC_ALL=C sort >"$tmpdir/list.want"
LC_ALL=C sort "$tmpdir/list.out" >"$tmpdir/list.got"
diff -u "$tmpdir/list.want" "$tmpdir/list.got" ||
  fail "NBD_OPT_LIST does not give exactly the exports"
ok "NBD_OPT_LIST: $(wc -l <"$tmpdir/list.got") exports, no hidden file," \
   "link, subdirectory or name that is not UTF-8"

# The names as bytes on the wire (libnbd drops those that are not UTF-8,
# so it cannot tell): every one UTF-8, as many as above.
"$PYTHON" - "$port" "$abs_top_srcdir/tests" $(( n + 3 )) <<'EOF' ||
import socket, struct, sys
sys.path.insert(0, sys.argv[2])
import rawnbd
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
rawnbd.recv_exact(s, 18)
s.sendall(rawnbd.CLIENT_FLAGS + rawnbd.opt(rawnbd.OPT_LIST))
names = []
while True:
    _, _, typ, length = struct.unpack(">QIII", rawnbd.recv_exact(s, 20))
    body = rawnbd.recv_exact(s, length)
    if typ != 2:
        break
    nlen = struct.unpack(">I", body[:4])[0]
    names.append(body[4:4 + nlen])
if typ != rawnbd.REP_ACK:
    sys.exit("NBD_OPT_LIST ended with %#x" % typ)
for name in names:
    name.decode("utf-8")        # raises for a name that is not UTF-8
if len(names) != int(sys.argv[3]):
    sys.exit("%d names on the wire" % len(names))
EOF
  fail "NBD_OPT_LIST on the wire"

# nbdinfo --list: INFO on each (so every image is opened, through the
# cap); the corrupt one is left out with an error, the rest have their
# sizes.  nbdinfo takes about 0.2 s an export whatever the server (the
# same with nbdkit), so the listing outlasts the default handshake
# timeout: hence --handshake-timeout=0 above.
# (Debian 12's nbdinfo --list --json writes invalid JSON: the text is
# parsed.)
nbdinfo --list "$base" >"$tmpdir/list.txt" 2>"$tmpdir/list.err" || true
"$PYTHON" - "$tmpdir/list.txt" "$n" <<'EOF' || fail "nbdinfo --list output"
import re, sys
got = {}
cur = None
for line in open(sys.argv[1]):
    m = re.match(r'^export="(.*)":$', line)
    if m:
        cur = got.setdefault(m.group(1), {})
        continue
    m = re.match(r'^\t([a-z_-]+): (.*)$', line)
    if m and cur is not None:
        cur[m.group(1)] = m.group(2)
n = int(sys.argv[2])
want = {"img%03d.qcow2" % i: (1 + i % 4) << 20 for i in range(n)}
want["raw.img"] = 2 << 20
want["pinned"] = 3 << 20
if set(got) != set(want):
    sys.exit("names differ: missing %s, extra %s"
             % (sorted(set(want) - set(got))[:5],
                sorted(set(got) - set(want))[:5]))
for name, size in want.items():
    if int(got[name]["export-size"].split()[0]) != size:
        sys.exit("%s: size %s, want %d" % (name, got[name]["export-size"],
                                           size))
if got["pinned"].get("description") != "The pinned, one":
    sys.exit("pinned: description %r" % got["pinned"].get("description"))
if got["pinned"]["is_read_only"] != "true" \
   or got["img000.qcow2"]["is_read_only"] != "false":
    sys.exit("read-only flags wrong")
EOF
grep -q "corrupt.qcow2" "$tmpdir/list.err" ||
  fail "nbdinfo --list said nothing of the corrupt image"
ok "nbdinfo --list: names, sizes, description, read-only flags"

# ---- reading through many exports at once ----------------------------

# read_range FIRST STEP: read back every STEP-th image from FIRST.
read_range ()
{
  local i p
  for (( i = $1; i < n; i += $2 )); do
    p=$(pat $i)
    qemu-io -r -f raw -c "read -P $p 0 64k" -c "read -P $p 512k 4k" \
      -c "read -P 0 64k 64k" "$base/$(name $i)" >"$tmpdir/read-$1.out" 2>&1 ||
      { cat "$tmpdir/read-$1.out" >&2; return 1; }
    grep -qiE 'error|fail|mismatch' "$tmpdir/read-$1.out" &&
      { cat "$tmpdir/read-$1.out" >&2; return 1; }
  done
  return 0
}

# pass WHAT: 8 clients at once, each on its share of the 200.
pass ()
{
  local pids=() k
  for (( k = 0; k < 8; k++ )); do
    read_range $k 8 &
    pids+=($!)
  done
  for k in "${pids[@]}"; do
    wait "$k" || fail "$1: a client read the wrong bytes or failed"
  done
  wait_all_closed
}

image_fds ()
{
  local f c=0
  for f in /proc/"$server_pid"/fd/*; do
    case "$(readlink "$f")" in "$dir"/*) c=$(( c + 1 )) ;; esac
  done
  echo "$c"
}

rss_kib ()
{
  awk '/^VmRSS:/ { print $2 }' /proc/"$server_pid"/status
}

pass "first pass"
rss1=$(rss_kib)
fds1=$(image_fds)
ok "8 clients at once read back all $n images (fds of images: $fds1," \
   "RSS ${rss1} KiB)"
pass "second pass"
pass "third pass"
rss3=$(rss_kib)
fds3=$(image_fds)
bound=$(( max_open * (1 + threads) ))
[ "$fds3" -le "$bound" ] ||
  fail "$fds3 fds of images open after three passes (at most $bound)"
[ "$fds1" -le "$bound" ] ||
  fail "$fds1 fds of images open after one pass (at most $bound)"
# (A sanitizer's quarantine keeps freed memory: RSS means nothing.)
if ! server_sanitized; then
  [ "$rss3" -le $(( rss1 + 16 * 1024 )) ] ||
    fail "RSS grew from ${rss1} KiB to ${rss3} KiB over two more passes"
fi
ok "after 3 x $n images: $fds3 image fds (bound $bound)," \
   "RSS ${rss1} -> ${rss3} KiB"
grep -c "^qcow2-nbd: export '.*': closed$" "$server_log" | {
  read -r c
  [ "$c" -ge $(( n - max_open )) ] ||
    fail "only $c exports closed: the cap did not close idle ones"
}

# ---- the corrupt image ------------------------------------------------

out=$(qemu-img info --image-opts \
        "driver=nbd,host=127.0.0.1,port=$port,export=corrupt.qcow2" 2>&1) &&
  fail "the corrupt image was served: $out"
echo "$out" | grep -q "cannot be opened: L1 table offset" ||
  fail "no clear reason for the corrupt image: $out"
echo "$out" | grep -q "$dir" &&
  fail "the client was told the server's path: $out"
grep -q "export 'corrupt.qcow2' refused: $dir/corrupt.qcow2: L1 table" \
  "$server_log" || fail "the refusal was not logged"
read_range 7 1000 || fail "img007 not served after the corrupt one"
server_alive "after the corrupt image"
ok "corrupt image refused with the reason, the others serve"

# ---- names that are not exports ---------------------------------------

refused ()
{
  local out
  out=$(qemu-img info --image-opts \
          "driver=nbd,host=127.0.0.1,port=$port,export=$1" 2>&1) &&
    fail "export '$1' was served: $out"
  echo "$out" | grep -q "server reported: no \(default \)\?export" ||
    fail "export '$1': not refused as unknown: $out"
}
refused nope
refused "../outside.qcow2"
refused "..%2Foutside.qcow2"
refused ".."
refused "."
refused ".hidden.qcow2"
refused "link.qcow2"
refused "sub"
refused "sub/inner.qcow2"
refused "sub/../img000.qcow2"
refused "./img000.qcow2"
refused "img000.qcow2/"
refused "$dir/img000.qcow2"
refused "/etc/passwd"
refused "img000.qcow2\\"
# "": no export has that name and no --default-export.
"$PYTHON" - "$port" <<'EOF' || fail "the default export was served"
import sys, nbd
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_tcp("127.0.0.1", sys.argv[1])
h.set_export_name("")
try:
    h.opt_info()
except nbd.Error:
    h.opt_abort()
    sys.exit(0)
sys.exit(1)
EOF
grep -q "outside.qcow2" <(ls -l /proc/"$server_pid"/fd/) &&
  fail "a file outside the directory was opened"
server_alive "after unknown names"
ok "unknown names, \"\" and traversal attempts refused"

# ---- the directory changes --------------------------------------------

qemu-img create -q -f qcow2 "$dir/new.qcow2" 5M
qemu-io -f qcow2 -c 'write -P 0x42 4M 64k' "$dir/new.qcow2" >/dev/null
qemu-io -r -f raw -c 'read -P 0x42 4M 64k' "$base/new.qcow2" \
  >"$tmpdir/new.out" 2>&1 || fail "new image not served: $(cat "$tmpdir/new.out")"
grep -qiE 'error|fail|mismatch' "$tmpdir/new.out" && fail "new image misread"
rm "$dir/img199.qcow2"
wait_all_closed
list_exports >"$tmpdir/list2.out" || fail "NBD_OPT_LIST failed"
grep -q "^new.qcow2	" "$tmpdir/list2.out" || fail "new image not listed"
grep -q "^img199.qcow2	" "$tmpdir/list2.out" && fail "removed image listed"
ok "images added and removed while serving"

# Raw image through nbdcopy.
nbdcopy "$base/raw.img" "$tmpdir/raw.copy" || fail "nbdcopy raw.img"
cmp "$dir/raw.img" "$tmpdir/raw.copy" || fail "raw.img copied wrong"
ok "raw image served"

stop_server
exit 0
