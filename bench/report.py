#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Collect fio results and print the comparison table (Markdown)."""
import json
import os
import platform
import sys

SERVERS = ["qcow2-nbd", "qemu-nbd", "qemu-nbd-uring", "nbdkit-null"]
# TLS jobs run qcow2-nbd-tls and qemu-nbd-tls; they are shown in the
# qcow2-nbd and qemu-nbd columns.
TLS_ALIASES = {"qcow2-nbd-tls": "qcow2-nbd", "qemu-nbd-tls": "qemu-nbd"}


def record(path, job, server, fio_json, ticks, clk_tck):
    with open(fio_json) as f:
        data = json.load(f)
    j = data["jobs"][0]
    rd, wr = j["read"], j["write"]
    ios = rd["total_ios"] + wr["total_ios"]
    iops = rd["iops"] + wr["iops"]
    bw = (rd["bw_bytes"] + wr["bw_bytes"]) / (1 << 20)
    cpu_us = int(ticks) / int(clk_tck) * 1e6 / ios if ios else 0
    with open(path, "a") as f:
        f.write(f"job\t{job}\t{server}\t{iops:.0f}\t{bw:.1f}\t{cpu_us:.1f}\n")


def record_copy(path, job, server, nbytes, ns, ticks, clk_tck):
    """An nbdcopy run of NBYTES in 1 MiB requests taking NS nanoseconds."""
    secs = int(ns) / 1e9
    reqs = int(nbytes) / (1 << 20)
    cpu_us = int(ticks) / int(clk_tck) * 1e6 / reqs if reqs else 0
    bw = int(nbytes) / (1 << 20) / secs
    with open(path, "a") as f:
        f.write(f"job\t{job}\t{server}\t{reqs / secs:.0f}\t{bw:.1f}\t{cpu_us:.1f}\n")


def metric(path, name, server, value):
    with open(path, "a") as f:
        f.write(f"metric\t{name}\t{server}\t{value}\n")


def table(path):
    jobs, metrics, runs = {}, {}, {}
    for line in open(path):
        kind, name, server, *vals = line.rstrip("\n").split("\t")
        if kind == "job":
            # Several runs of a job on a server (the bench's passes) are
            # averaged.
            server = TLS_ALIASES.get(server, server)
            sums = runs.setdefault((name, server), [0.0] * len(vals) + [0])
            for i, v in enumerate(vals):
                sums[i] += float(v)
            sums[-1] += 1
            vals = [str(x / sums[-1]) for x in sums[:-1]]
        (jobs if kind == "job" else metrics).setdefault(name, {})[server] = vals
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}")
    print()
    print("| workload | qcow2-nbd | qemu-nbd | qemu-nbd io_uring | nbdkit null | ratio | CPU µs/req ours | CPU µs/req qemu-nbd | CPU ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, res in jobs.items():
        big = "1m" in name or "64k" in name

        def val(s):
            if s not in res:
                return None
            return float(res[s][1]) if big else float(res[s][0])

        def fmt(s):
            v = val(s)
            if v is None:
                return "-"
            return f"{v:.0f} MiB/s" if big else f"{v:.0f} IOPS"

        ours = val("qcow2-nbd")
        qemu = max(v for v in (val("qemu-nbd"), val("qemu-nbd-uring")) if v is not None)
        ratio = f"{ours / qemu:.2f}x" if ours and qemu else "-"
        q_cpu = [float(res[s][2]) for s in ("qemu-nbd", "qemu-nbd-uring") if s in res]
        best_q = min(q_cpu) if q_cpu else 0
        our_cpu = float(res["qcow2-nbd"][2]) if "qcow2-nbd" in res else 0
        cpu_ratio = f"{our_cpu / best_q:.2f}x" if best_q else "-"
        print(f"| {name} | {fmt('qcow2-nbd')} | {fmt('qemu-nbd')} | {fmt('qemu-nbd-uring')} "
              f"| {fmt('nbdkit-null')} | {ratio} | {our_cpu:.1f} | {best_q:.1f} | {cpu_ratio} |")
    print()
    for name, res in metrics.items():
        parts = ", ".join(f"{s}: {v[0]}" for s, v in res.items())
        print(f"- {name}: {parts}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "record":
        record(*sys.argv[2:])
    elif cmd == "record-copy":
        record_copy(*sys.argv[2:])
    elif cmd == "metric":
        metric(*sys.argv[2:])
    elif cmd == "table":
        table(sys.argv[2])
