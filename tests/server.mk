# SPDX-License-Identifier: MIT
# Functional tests: start the real qcow2-nbd server and talk to it with
# real clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh, nbd-client,
# fio) and with raw sockets.  Included from tests/Makefile.am.

FUNCTIONAL_TESTS = \
	test-matrix.sh \
	test-clients.sh \
	test-read-paths.sh \
	test-protocol-abuse.sh \
	test-lifecycle.sh \
	test-trickle.sh \
	test-coalesce.sh \
	test-units.sh \
	$(NULL)

TESTS += $(FUNCTIONAL_TESTS)
check_SCRIPTS += $(FUNCTIONAL_TESTS)
EXTRA_DIST += \
	$(FUNCTIONAL_TESTS) \
	compare-map.py \
	client-checks.py \
	read-paths.py \
	abuse.py \
	socket-activate.py \
	trickle.py \
	coalesce.py \
	$(NULL)
