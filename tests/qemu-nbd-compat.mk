# SPDX-License-Identifier: MIT
# Drop-in qemu-nbd compatibility (issue 15): the corpus of real qemu-nbd
# invocations replayed against Debian's qemu-nbd and our qemu-nbd mode
# (skipped until server/qemu-nbd exists), and the proof that the harness
# catches a broken candidate.  QEMU's own iotests that start qemu-nbd are
# too slow and too environment-bound for every CI run: `make
# check-iotests` runs them (qemu-nbd-compat/run-iotests.sh).
# Included from tests/Makefile.am.

QEMU_NBD_COMPAT_TESTS = \
	test-qemu-nbd-compat-harness.sh \
	test-qemu-nbd-compat.sh \
	$(NULL)

TESTS += $(QEMU_NBD_COMPAT_TESTS)
check_SCRIPTS += $(QEMU_NBD_COMPAT_TESTS)
EXTRA_DIST += \
	$(QEMU_NBD_COMPAT_TESTS) \
	qemu-nbd-compat/corpus.py \
	qemu-nbd-compat/observe.py \
	qemu-nbd-compat/runner.py \
	qemu-nbd-compat/broken-qemu-nbd.sh \
	qemu-nbd-compat/run-iotests.sh \
	$(NULL)

# QEMU's iotests with QEMU_NBD_PROG = Debian's qemu-nbd and then ours,
# side by side.  Fetches Debian's qemu source package into a cache on
# first use (apt-get source; root adds a deb-src list).
check-iotests:
	abs_top_builddir=$(abs_top_builddir) \
	  $(srcdir)/qemu-nbd-compat/run-iotests.sh $(IOTESTS_ARGS)

.PHONY: check-iotests
