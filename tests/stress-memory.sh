#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# make check-stress: tests/test-memory.sh with the 64 clients
# (2 rounds of a 32 MiB WRITE and READ each, and 64 x 32 MiB READs left
# unread), then the same against qemu-nbd 7.2 for the figures.
MEMORY_CLIENTS=64 MEMORY_ROUNDS=2 MEMORY_DEAF_READS=64 MEMORY_QEMU_NBD=1 \
  exec "$abs_top_srcdir/tests/test-memory.sh"
