#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The Linux kernel's NBD client (Debian's nbd.ko and nbd-client in a TCG
# virtual machine) against qcow2-nbd on the host: every scenario of
# client-scenarios.sh in one VM, each reported by name.  Part of
# 'make check-kernel'; KERNEL_SCENARIOS="name ..." runs a subset.  Four
# vCPUs so that nbd-client -C 4 gets four hardware queues.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/tls-functions.sh"
source "$abs_top_srcdir/tests/kernel/vm.sh"
source "$abs_top_srcdir/tests/kernel/client-scenarios.sh"

requires qemu-img qemu-io qemu-nbd nbdcopy openssl debugfs
requires_server
vm_requires

VM_SMP=4 vm_start
for s in ${KERNEL_SCENARIOS:-readback ext4 multiconn readonly bigreq tls \
                              kill discard}; do
  scenario "$s" "sc_$s"
done
vm_stop
scenarios_report
