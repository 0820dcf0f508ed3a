# SPDX-License-Identifier: MIT
# The shape of the server: the transmission phase's files call only the
# files below them (read from the built objects).  Included from
# tests/Makefile.am.

LAYER_TESTS = test-layers.sh

TESTS += $(LAYER_TESTS)
check_SCRIPTS += $(LAYER_TESTS)
EXTRA_DIST += $(LAYER_TESTS)
