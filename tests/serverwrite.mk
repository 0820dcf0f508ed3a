# SPDX-License-Identifier: MIT
# Server-side write tests: WRITE/FUA, FLUSH, TRIM, WRITE_ZEROES through
# real clients, the advertised flags, read-only exports and a full host
# file system.  Included from tests/Makefile.am.

SERVERWRITE_TESTS = \
	test-write-server.sh \
	test-write-hostile.sh \
	$(NULL)

TESTS += $(SERVERWRITE_TESTS)
check_SCRIPTS += $(SERVERWRITE_TESTS)
EXTRA_DIST += $(SERVERWRITE_TESTS)
