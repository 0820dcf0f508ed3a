# SPDX-License-Identifier: MIT
# Server-side write tests: WRITE/FUA, FLUSH, TRIM, WRITE_ZEROES through
# real clients, the advertised flags, read-only exports, a full host
# file system, and space given back by TRIM (against qemu-nbd).  Included from tests/Makefile.am.

SERVERWRITE_TESTS = \
	test-write-server.sh \
	test-write-hostile.sh \
	test-discard.sh \
	$(NULL)

TESTS += $(SERVERWRITE_TESTS)
check_SCRIPTS += $(SERVERWRITE_TESTS)
EXTRA_DIST += $(SERVERWRITE_TESTS) nbd-ops.py
