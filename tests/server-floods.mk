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
STRESS_TARGETS += check-stress-floods
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

# The long tests, one after the other, each with its log (NAME.log) and
# a PASS/FAIL/SKIP line like make check's (automake's harness runs only
# the tests that are in TESTS).  Ends with a count, and fails if one did.
check-stress-floods: $(check_SCRIPTS)
	@pass=0; fail=0; skip=0; \
	for t in $(FLOOD_STRESS_TESTS); do \
	  $(TESTS_ENVIRONMENT) $(srcdir)/$$t >$$t.log 2>&1; rc=$$?; \
	  case $$rc in \
	    0) echo "PASS: $$t"; pass=$$((pass + 1)) ;; \
	    77) echo "SKIP: $$t: $$(grep -m1 '^SKIP' $$t.log)"; \
	        skip=$$((skip + 1)) ;; \
	    *) echo "FAIL: $$t (see tests/$$t.log)"; fail=$$((fail + 1)) ;; \
	  esac; \
	done; \
	echo "check-stress-floods: $$pass passed, $$fail failed, $$skip skipped"; \
	test $$fail -eq 0
.PHONY: check-stress-floods
CLEANFILES += $(FLOOD_STRESS_TESTS:=.log)
