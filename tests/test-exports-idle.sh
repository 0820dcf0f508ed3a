#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The life of --export-dir images: opened on first use, closed once idle
# for --idle-timeout seconds and opened again when wanted; never closed
# while a connection uses them; and with --max-open-exports open and in
# use, another is refused (NBD_REP_ERR_POLICY) until one is let go.  No
# timing is assumed: the server's log lines are waited for (120 s at
# most), and an export held by a client is shown to outlive the idle
# timeout of another export opened after it.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io
requires_python_nbd
requires_server

hold="$abs_top_srcdir/tests/exports-hold.py"
dir="$tmpdir/images"
mkdir -p "$dir"
for x in a:0x11 b:0x22 c:0x33; do
  f="$dir/${x%%:*}.qcow2"
  make_image "$f" 1M
  image_io "$f" "write -P ${x#*:} 0 64k"
done

# wait_count COUNT PATTERN: wait_log with a generous bound.
wait_count () { wait_log "$1" "$2" 120; }

count () { grep -c -- "$1" "$server_log" || true; }

# read_ok NAME PATTERN
read_ok ()
{
  qemu-io -r -f raw -c "read -P $2 0 64k" "nbd://127.0.0.1:$port/$1" \
    >"$tmpdir/read.out" 2>&1 || fail "reading $1: $(cat "$tmpdir/read.out")"
  grep -qiE 'error|fail|mismatch' "$tmpdir/read.out" &&
    fail "reading $1: $(cat "$tmpdir/read.out")"
  return 0
}

# hold_start NAME PATTERN: a client holding NAME; sets held_pid, held_dir.
hold_start ()
{
  held_dir="$tmpdir/hold-$1"
  rm -rf "$held_dir"
  mkdir -p "$held_dir"
  run_timeout 300 "$PYTHON" "$hold" "$port" "$1" "$2" "$held_dir" \
    >"$held_dir/out" 2>&1 &
  held_pid=$!
  cleanup_fn touch "$held_dir/go"
  wait_for_file "$held_dir/ready" "the client never got $1"
}

# hold_end DIR PID
hold_end ()
{
  touch "$1/go"
  wait "$2" || fail "a holding client failed: $(cat "$1/out")"
}

start_server --export-dir="$dir" --idle-timeout=1 --max-open-exports=2 -v

# ---- idle close and reopen --------------------------------------------

read_ok a.qcow2 0x11
wait_count 1 "export 'a.qcow2': opened"
wait_count 1 "export 'a.qcow2': closed"
read_ok a.qcow2 0x11
wait_count 2 "export 'a.qcow2': opened"
wait_count 2 "export 'a.qcow2': closed"
ok "an idle export is closed, and opened again when wanted"

# ---- in use: never closed ----------------------------------------------

closed_a=$(count "export 'a.qcow2': closed")
hold_start a.qcow2 0x11
a_dir=$held_dir a_pid=$held_pid
opened_b=$(count "export 'b.qcow2': opened")
read_ok b.qcow2 0x22
# b was opened after a was taken, and has outlived its idle timeout:
wait_count $(( opened_b + 1 )) "export 'b.qcow2': closed"
[ "$(count "export 'a.qcow2': closed")" -eq "$closed_a" ] ||
  fail "a.qcow2 was closed while a client used it"
hold_end "$a_dir" "$a_pid"
wait_count $(( closed_a + 1 )) "export 'a.qcow2': closed"
ok "an export in use outlives the idle timeout, and closes after"

# ---- the cap on open exports ---------------------------------------------

hold_start a.qcow2 0x11
a_dir=$held_dir a_pid=$held_pid
hold_start b.qcow2 0x22
b_dir=$held_dir b_pid=$held_pid
out=$(qemu-img info "nbd://127.0.0.1:$port/c.qcow2" 2>&1) &&
  fail "a third export opened past --max-open-exports=2: $out"
echo "$out" | grep -q "too many exports in use" ||
  fail "no clear reason for the refusal: $out"
closed_a=$(count "export 'a.qcow2': closed")
hold_end "$a_dir" "$a_pid"
# Once a is let go (and closed when idle), c takes its place.
wait_count $(( closed_a + 1 )) "export 'a.qcow2': closed"
read_ok c.qcow2 0x33
hold_end "$b_dir" "$b_pid"
server_alive "after the cap"
ok "--max-open-exports: refused while all are in use, served after"

stop_server
exit 0
