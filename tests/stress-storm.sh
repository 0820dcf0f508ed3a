#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# make check-stress: tests/test-storm.sh with the 10,000 cycles
# (two storms of 5,000 at once), then the same storms against qemu-nbd
# 7.2 for the figures.
STORM_CYCLES=5000 STORM_QEMU_NBD=1 \
  exec "$abs_top_srcdir/tests/test-storm.sh"
