#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# NBD_OPT_LIST of many exports with long names and descriptions: the
# server answers in batches of at most 16 KiB (so a long list costs no
# more memory than a short one); the client must get every export, once,
# in name order, with its description, and the option after LIST must
# still be understood (the stream stays in step across batches).  150
# files with 200-byte names and two --export images with 4000-byte
# descriptions make about 40 KiB of replies.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img
requires_python_nbd
requires_server

dir="$tmpdir/images"
mkdir -p "$dir"
pad=$(printf 'n%.0s' $(seq 1 190))
for (( i = 0; i < 150; i++ )); do
  : >"$dir/$(printf '%s%05d.raw' "$pad" "$i")"
done
make_image "$tmpdir/a.qcow2" 1M
make_image "$tmpdir/b.qcow2" 2M
desc_a=$(printf 'A%.0s' $(seq 1 4000))
desc_b=$(printf 'b,%.0s' $(seq 1 1000))
start_server --export-dir="$dir" \
  --export="aaa=$tmpdir/a.qcow2,description=$desc_a" \
  --export="zzz=$tmpdir/b.qcow2,description=${desc_b//,/,,}" -v

"$PYTHON" - "$port" "$pad" "$desc_a" "$desc_b" <<'EOF' || fail "NBD_OPT_LIST"
import sys, nbd
port, pad, desc_a, desc_b = sys.argv[1:5]
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_tcp("127.0.0.1", port)
seen = []
h.opt_list(lambda name, desc: seen.append((name, desc)))
want = [("aaa", desc_a)]
want += [("%s%05d.raw" % (pad, i), "") for i in range(150)]
want += [("zzz", desc_b)]
if seen != want:
    sys.exit("got %d exports, %s first; want %d" % (len(seen), seen[:1],
                                                     len(want)))
# The stream is in step: the next option is answered.
h.set_export_name("zzz")
h.opt_info()
if h.get_size() != 2 << 20:
    sys.exit("zzz: size %d" % h.get_size())
h.opt_abort()
EOF
ok "NBD_OPT_LIST: 152 exports over several batches, in order, then INFO"
stop_server
exit 0
