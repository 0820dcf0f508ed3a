#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# "qcow2-nbd attach" and "detach", and our "qemu-nbd -c" and "-d" beside
# Debian's qemu-nbd, inside a TCG virtual machine with
# Debian's kernel and nbd.ko: every scenario of attach-scenarios.sh in one
# VM, each reported by name (nomodule first: it needs nbd.ko not yet
# loaded).  Part of 'make check-kernel'; KERNEL_SCENARIOS="name ..."
# runs a subset.  Two vCPUs so that -C 2 gets two hardware queues.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/kernel/vm.sh"
source "$abs_top_srcdir/tests/kernel/attach-scenarios.sh"

requires qemu-img qemu-io nbdcopy debugfs
requires_server
vm_requires

VM_SMP=2 vm_start
for s in ${KERNEL_SCENARIOS:-nomodule attach ioctl attach_ro errors qemu_nbd}; do
  scenario "$s" "sc_$s"
done
vm_stop
scenarios_report
