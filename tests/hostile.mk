# SPDX-License-Identifier: MIT
# Hostile images (in the spirit of QEMU's iotest 080): make-hostile.py
# patches images made by qemu-img, test-hostile opens and reads them and
# checks the outcome each one must have.  test-hostile compiles the
# library sources itself, always with ASan and UBSan, so memory errors and
# leaks on error paths fail the test even in a build without
# --enable-sanitizers.  Included from tests/Makefile.am.

HOSTILE_SANITIZE = -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined -fno-omit-frame-pointer

TESTS += test-hostile.sh
check_PROGRAMS += test-hostile
EXTRA_DIST += test-hostile.sh make-hostile.py

test_hostile_SOURCES = \
	test-hostile.c \
	../qcow2/io.c \
	../qcow2/corrupt.c \
	../qcow2/open.c \
	../qcow2/cache.c \
	../qcow2/map.c \
	../qcow2/compress.c \
	../qcow2/sync.c \
	$(NULL)
test_hostile_CPPFLAGS = -I$(top_srcdir)
test_hostile_CFLAGS = $(WARN_CFLAGS) $(HOSTILE_SANITIZE) \
	$(ZLIB_CFLAGS) $(ZSTD_CFLAGS)
test_hostile_LDFLAGS = $(HOSTILE_SANITIZE)
test_hostile_LDADD = $(ZLIB_LIBS) $(ZSTD_LIBS)
