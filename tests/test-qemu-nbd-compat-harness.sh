#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Proof that the qemu-nbd compatibility harness can tell: the oracle
# against itself passes every pattern, and each deliberately broken
# qemu-nbd (qemu-nbd-compat/broken-qemu-nbd.sh: an option dropped, a
# wrong exit status, a changed message, --fork returning early) fails
# the patterns that see the change, with the difference named.
source "$(dirname "$0")/functions.sh"

[ -x /usr/bin/qemu-nbd ] || skip "the oracle /usr/bin/qemu-nbd is not installed"
requires qemu-img qemu-io nbdinfo nbdcopy certtool
requires_python_nbd

runner=$abs_top_srcdir/tests/qemu-nbd-compat/runner.py
broken=$abs_top_srcdir/tests/qemu-nbd-compat/broken-qemu-nbd.sh

# The oracle against itself: anything but a clean pass is a harness
# bug (an observation that is not deterministic, or not normalised).
"$PYTHON" "$runner" --candidate /usr/bin/qemu-nbd >"$tmpdir/self.log" 2>&1 || {
  cat "$tmpdir/self.log"
  fail "the oracle does not pass against itself"
}
grep -q '^[0-9]* passed, 0 failed' "$tmpdir/self.log" ||
  fail "no summary line from the oracle against itself"
ok "oracle against itself: $(tail -n1 "$tmpdir/self.log")"

# expect_fail BREAK PATTERN KEY: with that breakage, PATTERN must FAIL
# and the report must name KEY among its differences.
expect_fail ()
{
  local kind=$1 pattern=$2 key=$3 rc=0
  mkdir -p "$tmpdir/$kind"
  printf '#!/bin/sh\nQNC_BREAK=%s exec %q "$@"\n' "$kind" "$broken" \
    >"$tmpdir/$kind/qemu-nbd"
  chmod +x "$tmpdir/$kind/qemu-nbd"
  "$PYTHON" "$runner" --candidate "$tmpdir/$kind/qemu-nbd" "$pattern" \
    >"$tmpdir/$kind.log" 2>&1 || rc=$?
  if [ "$rc" != 1 ] || ! grep -q "^FAIL: $pattern " "$tmpdir/$kind.log" ||
     ! grep -q "^    $key" "$tmpdir/$kind.log"; then
    cat "$tmpdir/$kind.log"
    fail "broken candidate '$kind' not caught by $pattern (exit $rc, key $key)"
  fi
  ok "broken candidate '$kind' caught by $pattern: $(grep -m1 "^    $key" "$tmpdir/$kind.log")"
}

expect_fail drop-description libnbd-info-list "info.exports"
expect_fail drop-description libnbd-list-exports "info.exports"
expect_fail drop-persistent libnbd-example-list-exports "second"
expect_fail ignore-shared imageio-qcow2-unix "shared."
expect_fail exit-status error-missing-file "exit"
expect_fail exit-status nbdkit-doc-partition "exit"
expect_fail message error-wrong-format "stderr"
expect_fail fork-early qemu-doc-fork-shared-ro "ready."
