#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The part of the kernel-client suite that runs in 'make check': one VM
# with one vCPU (the cheapest under TCG), nbd.ko's absence reported by
# attach, every byte of an image read through nbd-client, and
# qcow2-nbd attach/ext4/detach in the guest leaving a clean image.
# 'make check-kernel' runs these and the rest.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/kernel/vm.sh"
source "$abs_top_srcdir/tests/kernel/client-scenarios.sh"
source "$abs_top_srcdir/tests/kernel/attach-scenarios.sh"

requires qemu-img qemu-io nbdcopy debugfs
requires_server
vm_requires

VM_SMP=1 vm_start
for s in ${KERNEL_SCENARIOS:-nomodule readback attach}; do
  scenario "$s" "sc_$s"
done
vm_stop
scenarios_report
