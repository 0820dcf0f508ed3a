# SPDX-License-Identifier: MIT
# Tests of the allocator and header side of the write engine: refcounts
# of every width, refcount block/table and L1 growth (C, internal API),
# dirty-image repair and QEMU-compatible image locking (shell).  Included
# from tests/Makefile.am.

check_PROGRAMS += test-qcow2-alloc
check_SCRIPTS += test-qcow2-alloc.sh
TESTS += \
	test-qcow2-alloc \
	test-qcow2-alloc.sh \
	$(NULL)
EXTRA_DIST += test-qcow2-alloc.sh

test_qcow2_alloc_SOURCES = test-qcow2-alloc.c
test_qcow2_alloc_LDADD = ../qcow2/libqcow2.la -lpthread
