# SPDX-License-Identifier: MIT
# The shape of the library: qcow2/ calls down only, no circle of files
# (docs/architecture.md), checked on gcc's call graphs.  Included from
# tests/Makefile.am.

TESTS += test-qcow2-layers.sh
EXTRA_DIST += test-qcow2-layers.sh callgraph.py
