# SPDX-License-Identifier: MIT
# End-to-end write tests (issue 3) and TLS writes (issue 5): a
# differential test against a shadow raw file on many kinds of image,
# concurrency races (overlapping allocating writes, discards racing
# writes, fio with verification), kill -9 under a write load, and writes
# over TLS.  Included at the end of tests/Makefile.am.

WRITE_TESTS = \
	test-differential.sh \
	test-concurrency.sh \
	test-crash.sh \
	test-tls-write.sh \
	$(NULL)

TESTS += $(WRITE_TESTS)
check_SCRIPTS += $(WRITE_TESTS)
EXTRA_DIST += \
	$(WRITE_TESTS) \
	differential.py \
	crash-load.py \
	$(NULL)
