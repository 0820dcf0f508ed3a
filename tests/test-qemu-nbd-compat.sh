#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Issue 15's drop-in test: every invocation pattern of the corpus
# (qemu-nbd-compat/corpus.py: real qemu-nbd command lines from libnbd,
# nbdkit, virt-v2v, oVirt imageio, QEMU's iotests, CI scripts and qemu's
# documentation) run against Debian's qemu-nbd and against our build's
# qemu-nbd mode, comparing what clients observe.  Prints PASS/FAIL per
# pattern with its source.  QEMU_NBD_CANDIDATE points it at another
# candidate; without a candidate the test is skipped.
source "$(dirname "$0")/functions.sh"

candidate=${QEMU_NBD_CANDIDATE:-$abs_top_builddir/server/qemu-nbd}
[ -x "$candidate" ] ||
  skip "no candidate: $candidate does not exist (the qemu-nbd mode is not built)"
[ -x /usr/bin/qemu-nbd ] || skip "the oracle /usr/bin/qemu-nbd is not installed"
requires qemu-img qemu-io nbdinfo nbdcopy certtool
requires_python_nbd

"$PYTHON" "$abs_top_srcdir/tests/qemu-nbd-compat/runner.py" \
  --oracle /usr/bin/qemu-nbd --candidate "$candidate"
