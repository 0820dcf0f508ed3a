# SPDX-License-Identifier: MIT
# Unit tests of libqcow2 through its synchronous layer, on images made by
# qemu-img and qemu-io, and of the nbdkit plugin built on it.  Included
# from tests/Makefile.am.

unit_test_programs = \
	test-qcow2-read \
	test-qcow2-cache \
	$(NULL)

unit_test_scripts = \
	test-qcow2-read.sh \
	test-qcow2-corrupt.sh \
	test-plugin.sh \
	$(NULL)

check_PROGRAMS += $(unit_test_programs)
check_SCRIPTS += $(unit_test_scripts)
TESTS += \
	test-qcow2-cache \
	$(unit_test_scripts) \
	$(NULL)
EXTRA_DIST += $(unit_test_scripts)

test_qcow2_read_SOURCES = test-qcow2-read.c
test_qcow2_read_LDADD = ../qcow2/libqcow2.la

test_qcow2_cache_SOURCES = test-qcow2-cache.c
test_qcow2_cache_LDADD = ../qcow2/libqcow2.la -lpthread

# test-plugin.sh skips when the plugin is instrumented (ASan or TSan):
# a plain nbdkit cannot dlopen it.
if ENABLE_SANITIZERS
TESTS_ENVIRONMENT += QCOW2NBD_SANITIZERS=1
endif
if ENABLE_TSAN
TESTS_ENVIRONMENT += QCOW2NBD_SANITIZERS=1
endif
