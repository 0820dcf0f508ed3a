# SPDX-License-Identifier: MIT
# Hostile images (in the spirit of QEMU's iotest 080): make-hostile.py
# patches images made by qemu-img, test-hostile opens and reads them and
# checks the outcome each one must have.  test-hostile is always
# built with ASan and UBSan, so memory errors and
# leaks on error paths fail the test even in a build without
# --enable-sanitizers (it links qcow2/libqcow2-asan.la, the library built
# with the sanitizers).  Included from tests/Makefile.am.

HOSTILE_SANITIZE = $(ASAN_UBSAN_CFLAGS)

TESTS += test-hostile.sh
check_PROGRAMS += test-hostile
EXTRA_DIST += test-hostile.sh make-hostile.py

test_hostile_SOURCES = test-hostile.c
test_hostile_CPPFLAGS = -I$(top_srcdir)
test_hostile_CFLAGS = $(WARN_CFLAGS) $(HOSTILE_SANITIZE)
test_hostile_LDFLAGS = $(HOSTILE_SANITIZE)
test_hostile_LDADD = ../qcow2/libqcow2-asan.la
