# SPDX-License-Identifier: MIT
# Persistent dirty bitmaps and internal snapshots (issue 13): against
# qemu-nbd 7.2 as the oracle, an incremental backup end to end, kill -9
# under a write load with bitmaps, every snapshot of a compressed image.
# Included from tests/Makefile.am.

BITMAP_TESTS = \
	test-bitmaps.sh \
	test-incremental-backup.sh \
	test-bitmaps-crash.sh \
	test-snapshots.sh \
	$(NULL)

TESTS += $(BITMAP_TESTS)
check_SCRIPTS += $(BITMAP_TESTS)
EXTRA_DIST += \
	$(BITMAP_TESTS) \
	bitmap-functions.sh \
	bitmap-diff.py \
	bitmap-meta.py \
	$(NULL)
