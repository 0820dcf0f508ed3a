# SPDX-License-Identifier: MIT
# Floods, memory bounds, disconnect storms: the small tests that 'make
# check' runs, and the long ones of 'make check-stress' (side by side
# with qemu-nbd).  Included from tests/Makefile.am.

FLOOD_TESTS = \
	test-flood.sh \
	test-memory.sh \
	test-storm.sh \
	$(NULL)

FLOOD_STRESS_TESTS = \
	stress-flood.sh \
	stress-memory.sh \
	stress-storm.sh \
	$(NULL)

TESTS += $(FLOOD_TESTS)
STRESS_TESTS += $(FLOOD_STRESS_TESTS)
check_SCRIPTS += $(FLOOD_TESTS) $(FLOOD_STRESS_TESTS)
EXTRA_DIST += \
	$(FLOOD_TESTS) \
	$(FLOOD_STRESS_TESTS) \
	flood.py \
	flood-functions.sh \
	memload.py \
	storm.py \
	rawnbd.py \
	$(NULL)
