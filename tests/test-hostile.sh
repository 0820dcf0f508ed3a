#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Make the hostile images in a temporary directory and run test-hostile
# over them (see make-hostile.py for the manifest format).
source "$(dirname "$0")/functions.sh"
set -e

requires qemu-img qemu-io
"$PYTHON" -c 'import struct' >/dev/null 2>&1 || skip "$PYTHON does not run"

"$PYTHON" "$abs_top_srcdir/tests/make-hostile.py" "$tmpdir"
"$abs_top_builddir/tests/test-hostile" "$tmpdir"
