#!/bin/sh
# SPDX-License-Identifier: MIT
# 'make check': replay every seed corpus through the replay build of its
# fuzz target (built with the configured sanitizers), so a seed that
# crashes fails the build.
set -e
srcdir="${srcdir:-$(dirname "$0")}"
for t in qcow2:corpus handshake:corpus-handshake request:corpus-request; do
    target=${t%%:*}
    dir=$srcdir/${t#*:}
    set -- "$dir"/*
    if [ ! -e "$1" ]; then
        echo "$0: no corpus in $dir"
        exit 1
    fi
    ./fuzz-"$target" "$@" >/dev/null
    echo "ok: $# seeds replayed through fuzz-$target"
done
