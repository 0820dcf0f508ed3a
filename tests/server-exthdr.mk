# SPDX-License-Identifier: MIT
# Extended headers (issue 16): a raw-socket client (exthdr.py) checking
# every request and reply form against the protocol document over TCP,
# a Unix socket and TLS, and a 1 TiB image that one BLOCK_STATUS and one
# WRITE_ZEROES cover whole.  Included from tests/Makefile.am.

EXTHDR_TESTS = \
	test-extended-headers.sh \
	test-huge-range.sh \
	$(NULL)

TESTS += $(EXTHDR_TESTS)
check_SCRIPTS += $(EXTHDR_TESTS)
EXTRA_DIST += $(EXTHDR_TESTS) exthdr.py
