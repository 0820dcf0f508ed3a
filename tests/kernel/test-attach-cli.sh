#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# attach and detach from the command line, on the host (no VM, no nbd.ko
# needed): --help, usage errors, a device that is no NBD device refused
# before the image is looked at, and, where this host has no nbd.ko
# loaded, the advice to load it.  The kernel side is in the VM tests.

source "$abs_top_srcdir/tests/functions.sh"

requires_server

# expect STATUS PATTERN CMD...: CMD exits STATUS saying PATTERN.
expect ()
{
  local want=$1 pattern=$2 rc=0 out; shift 2
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, want $want: $out"
  grep -q -- "$pattern" <<< "$out" ||
    fail "'$*' does not say '$pattern': $out"
}

expect 0 'attach IMAGE DEVICE' "$QCOW2_NBD" --help
expect 0 'detach DEVICE' "$QCOW2_NBD" --help
for o in --read-only --discard --connections --fork --pid-file --no-netlink \
         --threads --l2-cache-size; do
  expect 0 "$o" "$QCOW2_NBD" attach --help
done
expect 0 'detach DEVICE' "$QCOW2_NBD" detach --help
ok "--help lists attach, detach and their options"

expect 1 'missing IMAGE' "$QCOW2_NBD" attach
expect 1 'missing DEVICE' "$QCOW2_NBD" attach x.qcow2
expect 1 'unexpected argument' "$QCOW2_NBD" attach x.qcow2 /dev/nbd0 y
expect 1 'must be a number from 1 to 64' \
  "$QCOW2_NBD" attach -C 0 x.qcow2 /dev/nbd0
expect 1 'must be a number from 1 to 64' \
  "$QCOW2_NBD" attach --connections=65 x.qcow2 /dev/nbd0
expect 1 '--discard must be ignore or unmap' \
  "$QCOW2_NBD" attach --discard=maybe x.qcow2 /dev/nbd0
expect 1 'unknown option' "$QCOW2_NBD" attach --bogus x.qcow2 /dev/nbd0
expect 1 'missing DEVICE' "$QCOW2_NBD" detach
expect 1 'unexpected argument' "$QCOW2_NBD" detach /dev/nbd0 /dev/nbd1
ok "usage errors exit 1 with a reason"

# The device is checked before the image: no such image here.
expect 1 '/dev/null is not an NBD device' \
  "$QCOW2_NBD" attach "$tmpdir/none.qcow2" /dev/null
expect 1 '/dev/null is not an NBD device' "$QCOW2_NBD" detach /dev/null
expect 1 "$tmpdir/none: no such device" \
  "$QCOW2_NBD" attach "$tmpdir/none.qcow2" "$tmpdir/none"
ok "devices that are no NBD device are refused before the image"

if [ ! -e /sys/module/nbd ] && [ ! -e /dev/nbd0 ]; then
  expect 1 "not loaded; load it with 'modprobe nbd'" \
    "$QCOW2_NBD" attach "$tmpdir/none.qcow2" /dev/nbd0
  expect 1 "modprobe nbd" "$QCOW2_NBD" detach /dev/nbd0
  ok "without nbd.ko: 'modprobe nbd' advised"
else
  ok "nbd.ko is loaded here: the advice is checked in the VM only"
fi
