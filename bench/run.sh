#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# qcow2-nbd against qemu-nbd, side by side in one run.
#
# Runs the same fio jobs (nbd engine) against qcow2-nbd, qemu-nbd (its
# default aio and --aio=io_uring) and, for reads, nbdkit's null plugin (the
# ceiling of the protocol and of fio on this machine), one server after the
# other, in two passes in opposite orders whose results are averaged
# (writes go to a fresh copy of the fixture for each run), and
# prints a table of IOPS or MiB/s, the ratio to the better
# qemu-nbd, and each server's CPU time per request (from /proc).  Also
# peak RSS while serving a 1 TiB image and the time from start to
# accepting connections.  Ratios, not absolute numbers, are what carry
# from one machine to another.
#
#   make bench                     (from the top of the build tree)
#   BENCH_SIZE=512M BENCH_RUNTIME=5 bench/run.sh    (a quicker run)
#
# Needs: qemu-img, qemu-io, qemu-nbd, fio (nbd engine), nbdkit, python3
# with libnbd bindings (/usr/bin/python3).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
builddir=${abs_top_builddir:-$(cd "$here/.." && pwd)}
server=$builddir/server/qcow2-nbd
size=${BENCH_SIZE:-2G}
runtime=${BENCH_RUNTIME:-10}
workdir=${BENCH_DIR:-$builddir/bench/fixtures}
out=${BENCH_OUT:-$builddir/bench/results}
py=/usr/bin/python3
port=${BENCH_PORT:-10899}

for t in qemu-img qemu-io qemu-nbd fio nbdkit "$py"; do
    command -v "$t" >/dev/null || { echo "bench: $t is missing" >&2; exit 1; }
done
[ -x "$server" ] || { echo "bench: build first ($server missing)" >&2; exit 1; }
mkdir -p "$workdir" "$out"

"$py" "$here/fixtures.py" "$workdir" "$size"

# X.509 credentials for the TLS runs (server and client directories).
tlsdir=$workdir/tls
if [ ! -f "$tlsdir/client/ca-cert.pem" ]; then
    mkdir -p "$tlsdir/server" "$tlsdir/client"
    (
        cd "$tlsdir"
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bench CA" \
            -keyout ca-key.pem -out ca-cert.pem
        openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
            -keyout server/server-key.pem -out server.csr
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.cnf
        openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem \
            -CAcreateserial -days 3650 -extfile san.cnf -out server/server-cert.pem
        cp ca-cert.pem server/ && cp ca-cert.pem client/
    ) >/dev/null 2>&1
fi

pid=
stop ()
{
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=
    fi
}
trap 'stop; rm -f "$workdir/work.qcow2"' EXIT

wait_port ()
{
    local i
    for i in $(seq 1 500); do
        if "$py" -c "import socket,sys; s=socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.01
    done
    echo "bench: server did not start" >&2
    return 1
}

# start NAME IMAGE [rw]: start server NAME on IMAGE (read-only unless rw),
# set $pid and $uri.
start ()
{
    local name=$1 img=$2 ro_ours=--read-only ro_qemu=-r
    if [ "${3:-}" = rw ]; then ro_ours= ro_qemu=; fi
    uri="nbd://127.0.0.1:$port"
    case "$name" in
        *-tls) uri="nbds://localhost:$port/?tls-certificates=$tlsdir/client" ;;
    esac
    case "$name" in
        qcow2-nbd) "$server" serve "$img" $ro_ours -p "$port" -b 127.0.0.1 2>>"$out/server.log" & ;;
        qemu-nbd) qemu-nbd -f qcow2 $ro_qemu -t -e 16 -p "$port" -b 127.0.0.1 "$img" 2>>"$out/server.log" & ;;
        qemu-nbd-uring) qemu-nbd -f qcow2 $ro_qemu -t -e 16 --aio=io_uring -p "$port" -b 127.0.0.1 "$img" 2>>"$out/server.log" & ;;
        qcow2-nbd-tls) "$server" serve "$img" --read-only -p "$port" -b 127.0.0.1 \
                           --tls-certs "$tlsdir/server" 2>>"$out/server.log" & ;;
        qemu-nbd-tls) qemu-nbd -f qcow2 -r -t -e 16 -p "$port" -b 127.0.0.1 \
                          --object "tls-creds-x509,id=tls0,endpoint=server,verify-peer=off,dir=$tlsdir/server" \
                          --tls-creds tls0 "$img" 2>>"$out/server.log" & ;;
        nbdkit-null) nbdkit -f -p "$port" -i 127.0.0.1 null "size=$(stat -c %s "$workdir/full.raw")" 2>>"$out/server.log" & ;;
    esac
    pid=$!
    wait_port
}

cpu_ticks ()
{
    awk '{print $14 + $15}' "/proc/$pid/stat"
}

# job NAME IMAGE-KEY FIO-ARGS...: run one workload against every server.
results=$out/results.tsv
: > "$results"
job ()
{
    local name=$1 key=$2; shift 2
    local servers="qcow2-nbd qemu-nbd qemu-nbd-uring"
    case "$name" in
        *-tls) servers="qcow2-nbd-tls qemu-nbd-tls" ;;
        *read*) servers="$servers nbdkit-null" ;;
    esac
    # Two passes of half the run time each, the second in reverse order
    # (ABBA): no server always runs first, after a quiet spell, or last.
    local order s
    order="$servers $(printf '%s\n' $servers | tac | tr '\n' ' ')"
    for s in $order; do
        [ "$s" = nbdkit-null ] && [ "$key" != full ] && continue
        case "$key" in
            overwrite)   # a private copy of the fully written image
                cp "$workdir/full.qcow2" "$workdir/work.qcow2"
                start "$s" "$workdir/work.qcow2" rw ;;
            empty)       # allocating writes into a new image
                rm -f "$workdir/work.qcow2"
                qemu-img create -q -f qcow2 "$workdir/work.qcow2" "$(stat -c %s "$workdir/full.raw")"
                start "$s" "$workdir/work.qcow2" rw ;;
            *) start "$s" "$workdir/$key.qcow2" ;;
        esac
        local t0 t1
        t0=$(cpu_ticks)
        fio --output-format=json --output="$out/$name.$s.json" \
            --name="$name" --ioengine=nbd --uri="$uri" \
            --time_based --runtime="$pass_runtime" --ramp_time=1 --group_reporting \
            "$@" >/dev/null
        t1=$(cpu_ticks)
        stop
        "$py" "$here/report.py" record "$results" "$name" "$s" \
            "$out/$name.$s.json" "$((t1 - t0))" "$(getconf CLK_TCK)"
    done
}

pass_runtime=$(( (runtime + 1) / 2 ))

# Every fixture in the page cache before the first job, so the first
# server measured does not pay for reading them from disk.
cat "$workdir"/*.qcow2 > /dev/null

echo "bench: running (each job ${runtime}s per server, in two passes) ..." >&2
job randread-4k-qd1     full --rw=randread --bs=4k --iodepth=1
job randread-4k-qd32    full --rw=randread --bs=4k --iodepth=32
job randread-4k-4conn   full --rw=randread --bs=4k --iodepth=8 --numjobs=4
job seqread-1m          full --rw=read --bs=1M --iodepth=8
job frag-randread-64k   frag --rw=randread --bs=64k --iodepth=16
job frag-seqread-1m     frag --rw=read --bs=1M --iodepth=8
job zstd-randread-4k    zstd --rw=randread --bs=4k --iodepth=32
job zstd-seqread-1m     zstd --rw=read --bs=1M --iodepth=8
job zlib-randread-4k    zlib --rw=randread --bs=4k --iodepth=32
job overlay-randread-4k overlay --rw=randread --bs=4k --iodepth=32
job randwrite-4k-overwrite overwrite --rw=randwrite --bs=4k --iodepth=32
job randwrite-4k-alloc  empty --rw=randwrite --bs=4k --iodepth=32
job seqwrite-1m-alloc   empty --rw=write --bs=1M --iodepth=8

# TLS: fio's nbd engine refuses tls-certificates= in URIs (libnbd keeps
# local file access off unless the program allows it), so TLS throughput
# is measured with nbdcopy, with the plaintext figure beside it.
copy_job ()
{
    local name=$1 key=$2 s
    shift 2
    for s in "$@" $(printf '%s\n' "$@" | tac); do
        start "$s" "$workdir/$key.qcow2"
        local t0 t1 ns0 ns1 bytes
        bytes=$(stat -c %s "$workdir/full.raw")
        t0=$(cpu_ticks)
        ns0=$(date +%s%N)
        nbdcopy --request-size=1048576 --connections=1 --requests=8 "$uri" null:
        ns1=$(date +%s%N)
        t1=$(cpu_ticks)
        stop
        "$py" "$here/report.py" record-copy "$results" "$name" "$s" "$bytes" \
            "$((ns1 - ns0))" "$((t1 - t0))" "$(getconf CLK_TCK)"
    done
}
copy_job copy-1m-plain full qcow2-nbd qemu-nbd
copy_job copy-1m-tls   full qcow2-nbd-tls qemu-nbd-tls

# Memory: a 1 TiB image with thousands of L2 tables, read across all of them.
for s in qcow2-nbd qemu-nbd; do
    start "$s" "$workdir/huge.qcow2"
    fio --output-format=json --output=/dev/null --name=rss --ioengine=nbd \
        --uri="nbd://127.0.0.1:$port" --rw=randread --bs=4k --iodepth=16 \
        --time_based --runtime=5 >/dev/null
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    stop
    "$py" "$here/report.py" metric "$results" "peak RSS, 1 TiB image (KiB)" "$s" "$rss"
done

# Start-up: time from exec to accepting connections.
for s in qcow2-nbd qemu-nbd; do
    t0=$(date +%s%N)
    start "$s" "$workdir/full.qcow2"
    t1=$(date +%s%N)
    stop
    "$py" "$here/report.py" metric "$results" "start to accepting (ms)" "$s" "$(( (t1 - t0) / 1000000 ))"
done

"$py" "$here/report.py" table "$results" | tee "$out/latest.md"
