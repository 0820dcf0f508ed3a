# SPDX-License-Identifier: MIT
# The libqcow2 write path: a differential test of random writes, zeroes
# and discards against a raw shadow file on many kinds of image, and a
# race test of overlapping writes and discards.  Included from
# tests/Makefile.am.

check_PROGRAMS += test-qcow2-write
check_SCRIPTS += test-qcow2-write.sh
TESTS += test-qcow2-write.sh
EXTRA_DIST += test-qcow2-write.sh

test_qcow2_write_SOURCES = test-qcow2-write.c
test_qcow2_write_LDADD = ../qcow2/libqcow2.la -lpthread
