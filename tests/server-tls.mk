# SPDX-License-Identifier: MIT
# TLS tests: the real server with X.509 and PSK credentials against the
# GnuTLS-based clients (qemu-img, nbdinfo, nbdcopy, nbd-client), good
# credentials and refused ones.  Included from tests/Makefile.am.

TLS_TESTS = \
	test-tls-x509.sh \
	test-tls-psk.sh \
	$(NULL)

TESTS += $(TLS_TESTS)
check_SCRIPTS += $(TLS_TESTS)
EXTRA_DIST += $(TLS_TESTS)
