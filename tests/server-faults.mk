# SPDX-License-Identifier: MIT
# Failing storage and power cuts (issue 12): faultfs, a FUSE
# pass-through file system that injects EIO, ENOSPC and short transfers
# on command and records every write and fsync; the server on top of it
# with real clients; and the crash states a power cut could leave,
# rebuilt from its log and checked with qemu-img.  The long power-cut
# run is `make check-stress`.  Included from tests/Makefile.am.

FAULT_TESTS = \
	test-faults.sh \
	test-powercut.sh \
	$(NULL)

TESTS += $(FAULT_TESTS)
check_SCRIPTS += $(FAULT_TESTS)
EXTRA_DIST += \
	$(FAULT_TESTS) \
	faultfs-functions.sh \
	faults.py \
	powercut.py \
	$(NULL)

if HAVE_FUSE3
check_PROGRAMS += faultfs
faultfs_SOURCES = faultfs.c
faultfs_CFLAGS = $(AM_CFLAGS) $(FUSE3_CFLAGS)
faultfs_LDADD = $(FUSE3_LIBS)
else
EXTRA_DIST += faultfs.c
endif

# The long runs, never part of make check (`make check-stress` at the
# top): thousands of crash states per workload, and a long storm of
# failing host writes.  The variables can be overridden from the
# environment (see test-powercut.sh and test-faults.sh).
STRESS_ENVIRONMENT = \
	abs_top_srcdir=$(abs_top_srcdir) \
	abs_top_builddir=$(abs_top_builddir) \
	PYTHON=/usr/bin/python3 \
	$(NULL)
STRESS_TARGETS += check-stress-faults
check-stress-faults: $(check_PROGRAMS)
	@start=$$(date +%s); \
	$(STRESS_ENVIRONMENT) POWERCUT_SCALE=$${POWERCUT_SCALE:-4} \
	  POWERCUT_STATES=$${POWERCUT_STATES:-2500} \
	  POWERCUT_BUDGET=$${POWERCUT_BUDGET:-512} \
	  $(srcdir)/test-powercut.sh && \
	$(STRESS_ENVIRONMENT) FAULTS_STORM=$${FAULTS_STORM:-5000} \
	  $(srcdir)/test-faults.sh && \
	echo "check-stress-faults: passed in $$(( $$(date +%s) - start )) s"
.PHONY: check-stress-faults
