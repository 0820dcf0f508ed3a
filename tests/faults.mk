# SPDX-License-Identifier: MIT
# Failing storage and power cuts (issue 12): faultfs, a FUSE
# pass-through file system that injects EIO, ENOSPC and short transfers
# on command and records every write and fsync; the server on top of it
# with real clients; and the crash states a power cut could leave,
# rebuilt from its log and checked with qemu-img.  The long power-cut
# run is `make check-stress`.  Included from tests/Makefile.am.

FAULT_TESTS = \
	test-faults.sh \
	$(NULL)

TESTS += $(FAULT_TESTS)
check_SCRIPTS += $(FAULT_TESTS)
EXTRA_DIST += \
	$(FAULT_TESTS) \
	faultfs-functions.sh \
	$(NULL)

if HAVE_FUSE3
check_PROGRAMS += faultfs
faultfs_SOURCES = faultfs.c
faultfs_CFLAGS = $(AM_CFLAGS) $(FUSE3_CFLAGS)
faultfs_LDADD = $(FUSE3_LIBS)
else
EXTRA_DIST += faultfs.c
endif
