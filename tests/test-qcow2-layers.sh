#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qcow2/ calls down only (docs/architecture.md): no two files of the
# library call each other, directly or round a circle.  gcc writes each
# file's call graph (-fcallgraph-info) and callgraph.py looks for
# circles in the graph of files; a failure names the calls that close
# the circle.  The fix is to move the shared piece down into a lower
# file, or to pass a callback.
source "$(dirname "$0")/functions.sh"

requires gcc
cg="$tmpdir/cg"
mkdir "$cg"
probe="$tmpdir/probe.c"
echo 'int f (void) { return 0; }' >"$probe"
gcc -fcallgraph-info -c -o /dev/null -dumpdir "$cg/" "$probe" \
    >/dev/null 2>&1 || skip "gcc has no -fcallgraph-info"
rm -f "$cg"/*.ci

for f in "$abs_top_srcdir"/qcow2/*.c; do
  gcc -w -DHAVE_CONFIG_H -I"$abs_top_srcdir" -I"$abs_top_builddir" \
      -fcallgraph-info -c -o /dev/null -dumpdir "$cg/" "$f" ||
    fail "cannot compile $f for its call graph"
done
[ "$(find "$cg" -name '*.ci' | wc -l)" -gt 10 ] ||
  fail "gcc wrote no call graphs"

if ! "$PYTHON" "$abs_top_srcdir/tests/callgraph.py" --floors "$cg" \
     >"$tmpdir/out"; then
  cat "$tmpdir/out" >&2
  fail "qcow2/ has a call circle (see docs/architecture.md)"
fi
cat "$tmpdir/out"
ok "qcow2/ calls down only"
