# SPDX-License-Identifier: MIT
# qcow2-nbd create: images made by our own create subcommand must pass
# qemu-img check and read back through qemu-io and the server.  Included
# from tests/Makefile.am.

CREATE_TESTS = \
	test-create.sh \
	$(NULL)

TESTS += $(CREATE_TESTS)
check_SCRIPTS += $(CREATE_TESTS)
EXTRA_DIST += $(CREATE_TESTS)
