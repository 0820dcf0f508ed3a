#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Make the benchmark fixtures with qemu-img (once; reused while present).

full.qcow2   SIZE bytes all written: half random, half compressible data
frag.qcow2   the same bytes, 64 KiB clusters written in random order
zlib.qcow2, zstd.qcow2   compressed copies of full
overlay.qcow2  an empty overlay over full.qcow2
huge.qcow2   1 TiB, one 4 KiB write in each of thousands of L2 tables
"""
import os
import random
import subprocess
import sys
import time

import nbd

workdir, size_arg = sys.argv[1], sys.argv[2]
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
size = int(size_arg[:-1]) * units[size_arg[-1]] if size_arg[-1] in units else int(size_arg)
os.chdir(workdir)


def run(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def have(name):
    return os.path.exists(name)


stamp = f"size={size}\n"
if not have("stamp") or open("stamp").read() != stamp:
    for f in os.listdir("."):
        os.unlink(f)
    half = size // 2
    rnd = random.Random(42)
    with open("full.raw", "wb") as f:
        left = half
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
        line = b"".join(b"qcow2-nbd benchmark line %08d compressible text\n" % i
                        for i in range(20000))
        left = size - half
        while left:
            n = min(left, len(line))
            f.write(line[:n])
            left -= n
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "full.raw", "full.qcow2")
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", "full.raw", "zlib.qcow2")
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2",
        "-o", "compression_type=zstd", "full.raw", "zstd.qcow2")
    run("qemu-img", "create", "-f", "qcow2", "-b", "full.qcow2", "-F", "qcow2",
        "overlay.qcow2")

    # Fragmented: the same bytes, clusters written in random order through
    # a writable qemu-nbd.
    run("qemu-img", "create", "-f", "qcow2", "frag.qcow2", str(size))
    sock = os.path.abspath("frag.sock")
    p = subprocess.Popen(["qemu-nbd", "-f", "qcow2", "-k", sock, "frag.qcow2"])
    for _ in range(200):
        h = nbd.NBD()   # a failed connect leaves a handle dead: use a new one
        try:
            h.connect_unix(sock)
            break
        except nbd.Error:
            time.sleep(0.05)
    else:
        sys.exit("bench: qemu-nbd did not start for frag.qcow2")
    order = list(range(size // 65536))
    rnd.shuffle(order)
    with open("full.raw", "rb") as f:
        for c in order:
            f.seek(c * 65536)
            h.pwrite(f.read(65536), c * 65536)
    h.flush()
    h.shutdown()
    p.wait()

    # 1 TiB with one write per 512 MiB (one L2 table each with 64k clusters).
    run("qemu-img", "create", "-f", "qcow2", "huge.qcow2", "1T")
    cmds = []
    for i in range(2048):
        cmds += ["-c", f"write -q -P {i % 255 + 1} {i * 512}M 4k"]
    run("qemu-io", "-f", "qcow2", *cmds, "huge.qcow2")
    open("stamp", "w").write(stamp)
