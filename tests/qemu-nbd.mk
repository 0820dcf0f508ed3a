# SPDX-License-Identifier: MIT
# qemu-nbd mode: the program run as qemu-nbd (server/qemu-nbd), compared
# with Debian's qemu-nbd 7.2 for its command line, messages, exports,
# lifecycle, TLS and -L.  Included from tests/Makefile.am.

QEMU_NBD_TESTS = \
	test-qemu-nbd-cli.sh \
	test-qemu-nbd-export.sh \
	test-qemu-nbd-lifecycle.sh \
	test-qemu-nbd-tls.sh \
	test-qemu-nbd-list.sh \
	$(NULL)

TESTS += $(QEMU_NBD_TESTS)
check_SCRIPTS += $(QEMU_NBD_TESTS)
EXTRA_DIST += $(QEMU_NBD_TESTS) qemu-nbd-functions.sh
