# SPDX-License-Identifier: MIT
# QEMU's compress filter in the qemu-nbd mode (--image-opts driver=compress
# over qcow2): copies, single requests, the export and the refusals,
# each against Debian's qemu-nbd 7.2.  Included from tests/Makefile.am.

TESTS += test-compress-write.sh
check_SCRIPTS += test-compress-write.sh
EXTRA_DIST += test-compress-write.sh compress-ops.py compress-crash.py

check_PROGRAMS += test-compress-lib
test_compress_lib_SOURCES = test-compress-lib.c
test_compress_lib_LDADD = ../qcow2/libqcow2.la -lpthread
