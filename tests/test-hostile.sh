#!/bin/sh
# SPDX-License-Identifier: MIT
# Make the hostile images in a temporary directory and run test-hostile
# over them (see make-hostile.py for the manifest format).
set -e

for prog in qemu-img qemu-io; do
    if ! command -v "$prog" >/dev/null 2>&1; then
        echo "$0: SKIP: $prog is not installed"
        exit 77
    fi
done
python="${PYTHON:-/usr/bin/python3}"
if ! "$python" -c 'import struct' >/dev/null 2>&1; then
    echo "$0: SKIP: $python does not run"
    exit 77
fi
srcdir="${abs_top_srcdir:-$(dirname "$0")/..}/tests"
builddir="${abs_top_builddir:-..}/tests"

tmp="$(mktemp -d /tmp/test-hostile.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT INT TERM

"$python" "$srcdir/make-hostile.py" "$tmp"
"$builddir/test-hostile" "$tmp"
