#!/bin/sh
# SPDX-License-Identifier: MIT
# 'make check': run the libFuzzer builds of the NBD fuzz targets for a
# fixed number of runs each (FUZZ_RUNS, default 100000: seconds, not
# minutes), starting from the seed corpus, with a fixed seed so a run can
# be repeated.  New inputs go to a scratch directory, never into the
# tree.  Skips when configure found no clang with libFuzzer.
set -e
srcdir="${srcdir:-$(dirname "$0")}"
runs="${FUZZ_RUNS:-100000}"
for t in handshake request; do
    if [ ! -x "./fuzz-$t.libfuzzer" ]; then
        echo "SKIP: no clang with libFuzzer and the sanitizer runtimes" \
             "(Debian: clang, libclang-rt-14-dev) when configure ran"
        exit 77
    fi
done
work=$(mktemp -d "${TMPDIR:-/tmp}/qcow2-nbd-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
for t in handshake:72000 request:8192; do
    max_len=${t#*:}
    t=${t%%:*}
    mkdir "$work/$t"
    # handshake: room for the seed that sends an option over the 64 KiB
    # limit, so the payload can be drained whole.
    ./fuzz-$t.libfuzzer -runs="$runs" -seed=1 -max_len="$max_len" \
        -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
        -artifact_prefix="./fuzz-$t-" "$work/$t" "$srcdir/corpus-$t" \
        >"$work/$t.log" 2>&1 || {
        cat "$work/$t.log"
        ls ./fuzz-$t-* 2>/dev/null || :
        echo "FAIL: fuzz-$t found a problem (log above)"
        exit 1
    }
    echo "ok: fuzz-$t: $(grep -E '^#[0-9]+.*DONE' "$work/$t.log" | tail -n1)"
done
