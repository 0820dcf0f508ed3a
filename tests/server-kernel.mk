# SPDX-License-Identifier: MIT
# The Linux kernel client (tests/kernel/): Debian's kernel, nbd.ko and
# nbd-client in a TCG virtual machine against qcow2-nbd on the host, and
# "qcow2-nbd attach" inside it.  make check runs the command-line checks
# of attach/detach and a short smoke VM; 'make check-kernel' runs every
# scenario (two VMs, a few minutes), and so does make check after
# ./configure --enable-kernel-tests.  Included from tests/Makefile.am.

KERNEL_CHECK_TESTS = \
	kernel/test-attach-cli.sh \
	kernel/test-kernel-smoke.sh \
	$(NULL)

KERNEL_VM_TESTS = \
	kernel/test-kernel-client.sh \
	kernel/test-kernel-attach.sh \
	$(NULL)

TESTS += $(KERNEL_CHECK_TESTS)
check_SCRIPTS += $(KERNEL_CHECK_TESTS)
# ./configure --enable-kernel-tests: all of it in make check.  (Listing
# them under a conditional also gives check-kernel automake's rules.)
if ENABLE_KERNEL_TESTS
TESTS += $(KERNEL_VM_TESTS)
check_SCRIPTS += $(KERNEL_VM_TESTS)
endif
EXTRA_DIST += \
	$(KERNEL_CHECK_TESTS) \
	$(KERNEL_VM_TESTS) \
	kernel/README \
	kernel/vm.sh \
	kernel/init \
	kernel/guest.sh \
	kernel/mkinitramfs.sh \
	kernel/client-scenarios.sh \
	kernel/attach-scenarios.sh \
	$(NULL)

check-kernel: $(check_SCRIPTS) $(KERNEL_VM_TESTS)
	$(MAKE) $(AM_MAKEFLAGS) check TESTS="$(KERNEL_VM_TESTS)"
.PHONY: check-kernel

# The cached Debian part of the VM's initramfs (vm.sh).
clean-local: clean-kernel-cache
clean-kernel-cache:
	rm -rf kernel/cache
.PHONY: clean-kernel-cache
