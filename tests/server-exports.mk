# SPDX-License-Identifier: MIT
# Many exports from one server: --export-dir with 200 images, idle close
# and the open cap, writes to several exports at once.  Included from
# tests/Makefile.am.

EXPORTS_TESTS = \
	test-exports-dir.sh \
	test-exports-idle.sh \
	test-exports-list.sh \
	test-exports-write.sh \
	$(NULL)

TESTS += $(EXPORTS_TESTS)
check_SCRIPTS += $(EXPORTS_TESTS)
EXTRA_DIST += \
	$(EXPORTS_TESTS) \
	exports-hold.py \
	$(NULL)
