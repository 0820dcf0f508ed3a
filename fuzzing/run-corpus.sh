#!/bin/sh
# SPDX-License-Identifier: MIT
# 'make check': replay the seed corpus through the fuzz target (built with
# the configured sanitizers), so a seed that crashes fails the build.
set -e
srcdir="${srcdir:-$(dirname "$0")}"
set -- "$srcdir"/corpus/*
if [ ! -e "$1" ]; then
    echo "$0: no corpus in $srcdir/corpus"
    exit 1
fi
./fuzz-qcow2 "$@"
