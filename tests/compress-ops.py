# SPDX-License-Identifier: MIT
"""Requests through QEMU's compress filter, one scenario at a time.

Usage: compress-ops.py QEMU_NBD WORKDIR
       compress-ops.py --map IMAGE    (the map as below, one run a line)

For each scenario below: a fresh image made with qemu-img (and qemu-io
or a snapshot first, where the scenario says), QEMU_NBD started by
libnbd's socket activation with --image-opts driver=compress over it,
the requests sent with strict mode off (so unaligned requests reach the
server as sent), and every answer printed; then qemu-img check's exit
status, the image's map, each run marked compressed (data without a
host offset), zero or data, and where the order of the streams is fixed
the file's size (equal only if the streams are QEMU's byte for byte).
The test runs this against Debian's
qemu-nbd and ours and compares the two reports line for line, so
nothing here says what the answers should be: the oracle does.  Data is
derived from the scenario and request number, the same on both sides.
"""

import hashlib
import json
import os
import random
import subprocess
import sys

import nbd

K = 1024

# name, qemu-img create -o options, size, prep, server options, requests.
# prep: qemu-io commands on the new image, "snapshot" for qemu-img
# snapshot -c, "backing" for a backing file full of 0x77, "bitmap" for a
# persistent dirty bitmap (4 KiB granularity) whose bits are reported.
# Requests: (op, offset, length[, data]) with op w (write), wf (write
# with FUA), z (write zeroes), zf (fast zero), zn (zero, no hole),
# t (trim), r (read: a digest), and data one of text, rand, zero, or
# a byte value.
SCENARIOS = [
    ("overwrite", "cluster_size=65536", 256 * K, [], [], [
        ("w", 0, 64 * K, 1), ("w", 64 * K, 64 * K, "rand"),
        ("w", 0, 64 * K, 2), ("w", 64 * K, 64 * K, "rand"),
        ("w", 64 * K, 64 * K, 3), ("w", 128 * K, 100, 4),
        ("w", 128 * K + 100, 100, 5), ("r", 128 * K, 200),
        ("w", 192 * K, 64 * K, "zero"), ("r", 0, 256 * K)]),
    ("multi-cluster", "cluster_size=65536", 1024 * K, [], [], [
        ("w", 1000, 300 * K, "text"), ("r", 0, 1024 * K),
        ("w", 512 * K, 256 * K, "rand"), ("w", 768 * K, 4 * K, "text"),
        ("w", 772 * K, 4 * K, "text"), ("r", 0, 1024 * K)]),
    ("small-clusters", "cluster_size=512", 100001, [], [], [
        ("w", 99840, 160, "text"), ("r", 99840, 160),
        ("w", 99328, 512, 1), ("w", 99500, 10, 2),
        ("w", 0, 20000, "text"), ("r", 0, 100352)]),
    ("zeroes", "cluster_size=65536", 128 * K, [], [], [
        ("w", 64 * K, 64 * K, "text"), ("z", 1000, 100),
        ("z", 0, 64 * K), ("r", 0, 64 * K), ("z", 70000, 1000),
        ("zf", 131000, 72), ("zf", 64 * K, 64 * K), ("z", 131000, 72),
        ("zn", 0, 64 * K), ("r", 0, 128 * K)]),
    ("extended-l2", "cluster_size=65536,extended_l2=on", 256 * K, [], [], [
        ("w", 0, 64 * K, "text"), ("w", 64 * K, 64 * K, "rand"),
        ("w", 128 * K, 1000, "text"), ("r", 128 * K, 1000),
        ("w", 192 * K, 4 * K, "rand"), ("w", 0, 64 * K, "rand"),
        ("r", 0, 256 * K)]),
    ("zstd", "cluster_size=65536,compression_type=zstd", 256 * K, [], [], [
        ("w", 0, 64 * K, "text"), ("w", 64 * K, 64 * K, "rand"),
        ("w", 128 * K, 1000, "text"), ("w", 192 * K, 4 * K, "rand"),
        ("w", 0, 64 * K, "rand"), ("r", 0, 256 * K)]),
    ("2M-clusters", "cluster_size=2097152", 4096 * K, [], [], [
        ("w", 0, 2048 * K, "text"), ("w", 2048 * K, 256 * K, "text"),
        ("w", 2304 * K, 256 * K, "text"), ("r", 0, 4096 * K)]),
    ("version-2", "compat=0.10", 256 * K, [], [], [
        ("w", 0, 64 * K, "text"), ("w", 64 * K, 64 * K, "rand"),
        ("w", 128 * K, 1000, "text"), ("z", 192 * K, 64 * K),
        ("w", 0, 64 * K, "rand"), ("r", 0, 256 * K)]),
    ("backing", "cluster_size=65536", 256 * K, ["backing"], [], [
        ("w", 1000, 100, "text"), ("r", 0, 64 * K),
        ("w", 64 * K, 64 * K, "text"), ("z", 128 * K, 64 * K),
        ("w", 128 * K, 100, 3), ("r", 0, 256 * K)]),
    ("allocated", "cluster_size=65536", 256 * K,
     ["write -P 1 0 64k", "write -P 1 64k 64k", "write -z 64k 64k",
      "write -z 128k 64k"], [], [
        ("w", 64 * K, 64 * K, "text"), ("w", 128 * K, 64 * K, "text"),
        ("w", 0, 64 * K, "text"), ("w", 0, 64 * K, "rand"),
        ("w", 64 * K, 64 * K, "rand"), ("r", 0, 256 * K)]),
    ("snapshot", "cluster_size=65536", 256 * K,
     ["write -P 1 0 64k", "snapshot"], [], [
        ("w", 0, 64 * K, "text"), ("w", 0, 4 * K, "rand"),
        ("w", 0, 64 * K, "rand"), ("w", 64 * K, 64 * K, "text"),
        ("r", 0, 256 * K)]),
    ("refcount-1-bit", "refcount_bits=1", 1024 * K, [], [], [
        ("w", 0, 64 * K, "text"), ("w", 64 * K, 64 * K, "text"),
        ("w", 128 * K, 128 * K, "text"), ("r", 0, 1024 * K)]),
    ("bitmap", "cluster_size=65536", 1024 * K,
     ["write -P 1 64k 64k", "write -z 64k 64k", "bitmap"], [], [
        ("w", 70000, 100, "text"), ("z", 200000, 100),
        ("zf", 270000, 100), ("w", 400 * K, 64 * K, "rand"),
        ("w", 600 * K, 4 * K, "text")]),
    ("read-only-odd-size", "cluster_size=65536", 100 * K, [], ["-r"], [
        ("r", 64 * K, 36 * K)]),
    ("overlay-odd-size", "cluster_size=65536", 100 * K, [], ["-s"], [
        ("w", 0, 1000, "text"), ("r", 0, 1000)]),
    ("offset", "cluster_size=65536", 128 * K, [], ["-o", "512"], [
        ("w", 0, 1000, "text"), ("w", 1000, 1000, "text"),
        ("r", 0, 2000)]),
    ("detect-zeroes", "cluster_size=65536", 256 * K, [],
     ["--detect-zeroes=on"], [
        ("w", 0, 64 * K, "zero"), ("w", 64 * K, 100, "zero"),
        ("w", 128 * K, 64 * K, "text"), ("w", 128 * K, 100, "zero"),
        ("w", 192 * K, 100, "zero"), ("r", 0, 256 * K)]),
    ("discard-unmap", "cluster_size=65536", 256 * K, [],
     ["--discard=unmap", "--detect-zeroes=unmap"], [
        ("w", 0, 64 * K, "text"), ("w", 0, 64 * K, "zero"),
        ("w", 64 * K, 100, "zero"), ("t", 128 * K, 64 * K),
        ("w", 128 * K, 64 * K, "text"), ("t", 128 * K, 64 * K),
        ("w", 128 * K, 64 * K, "text"), ("wf", 192 * K, 64 * K, "text"),
        ("r", 0, 256 * K)]),
]


def payload(name, i, kind, length):
    rng = random.Random(f"{name}/{i}")
    if kind == "rand":
        return rng.randbytes(length)
    if kind == "zero":
        return bytes(length)
    if kind == "text":
        words = [b"qcow2", b"cluster", b"compress", b"stream", b"refcount",
                 b"deflate", b"zstd", b"sector", b"virt-v2v", b"nbdcopy"]
        out = bytearray()
        while len(out) < length:
            out += rng.choice(words) + b" "
        return bytes(out[:length])
    return bytes([kind]) * length


def image_map(img):
    r = subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2",
                        img], capture_output=True, text=True, check=True)
    runs = []
    for e in json.loads(r.stdout):
        kind = ("compressed" if e["data"] and "offset" not in e
                else "data" if e["data"] else "zero")
        v = [e["length"], e["depth"], kind]
        if runs and runs[-1][1:] == v[1:]:
            runs[-1][0] += v[0]
        else:
            runs.append(v)
    return runs


def scenario(prog, work, name, opts, size, prep, server_opts, ops):
    d = os.path.join(work, name)
    os.makedirs(d)
    img = os.path.join(d, "disk.qcow2")
    create = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if "backing" in prep:
        base = os.path.join(d, "base.qcow2")
        subprocess.run(create + [base, str(size)], check=True)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c",
                        f"write -P 0x77 0 {size}", base],
                       check=True, stdout=subprocess.DEVNULL)
        create += ["-b", base, "-F", "qcow2"]
    subprocess.run(create + ["-o", opts, img, str(size)], check=True)
    io = [c for c in prep if c not in ("backing", "snapshot", "bitmap")]
    if io:
        args = ["qemu-io", "-f", "qcow2"]
        for c in io:
            args += ["-c", c]
        subprocess.run(args + [img], check=True, stdout=subprocess.DEVNULL)
    if "snapshot" in prep:
        subprocess.run(["qemu-img", "snapshot", "-c", "s1", img], check=True)
    if "bitmap" in prep:
        subprocess.run(["qemu-img", "bitmap", "--add", "--granularity",
                        "4096", img, "b1"], check=True)

    print(f"== {name}")
    h = nbd.NBD()
    h.set_strict_mode(0)
    try:
        h.connect_systemd_socket_activation(
            [prog] + server_opts + ["--image-opts",
                                    "driver=compress,file.driver=qcow2,"
                                    f"file.file.driver=file,"
                                    f"file.file.filename={img}"])
    except nbd.Error as e:
        print(f"connect: {e.errno}")
        return
    print("size", h.get_size(), "block sizes",
          h.get_block_size(nbd.SIZE_MINIMUM),
          h.get_block_size(nbd.SIZE_PREFERRED),
          h.get_block_size(nbd.SIZE_MAXIMUM),
          "fast zero", h.can_fast_zero(), "trim", h.can_trim())
    for i, op in enumerate(ops):
        kind, off, length = op[:3]
        try:
            if kind in ("w", "wf"):
                flags = nbd.CMD_FLAG_FUA if kind == "wf" else 0
                h.pwrite(payload(name, i, op[3], length), off, flags)
            elif kind == "z":
                h.zero(length, off)
            elif kind == "zf":
                h.zero(length, off, nbd.CMD_FLAG_FAST_ZERO)
            elif kind == "zn":
                h.zero(length, off, nbd.CMD_FLAG_NO_HOLE)
            elif kind == "t":
                h.trim(length, off)
            elif kind == "r":
                data = h.pread(length, off)
                print(op, "->", hash_bytes(data))
                continue
            print(op, "-> ok")
        except nbd.Error as e:
            print(op, "->", e.errno)
    h.shutdown()
    # Closing the handle waits for the server, which exits once its one
    # client has gone (and so has released the image).
    del h
    r = subprocess.run(["qemu-img", "check", "-q", img],
                       capture_output=True)
    print("check", r.returncode)
    print("map", image_map(img))
    # Streams are packed one after the other, so the file's size tells
    # whether ours are QEMU's, byte for byte.  Only where the order is
    # fixed: qemu-nbd compresses a request's clusters in parallel and
    # packs them in the order they finish.
    cs = int(dict(o.split("=") for o in opts.split(","))
             .get("cluster_size", 65536))
    if all(op[1] // cs == (op[1] + op[2] - 1) // cs
           for op in ops if op[0] in ("w", "wf")):
        print("file size", os.path.getsize(img))
    if "bitmap" in prep:
        print("dirty", dirty_runs(img, size))


def dirty_runs(img, size):
    """The bitmap's dirty runs, as Debian's qemu-nbd -B exports them
    (the same reader for both sides)."""
    h = nbd.NBD()
    h.add_meta_context("qemu:dirty-bitmap:b1")
    h.connect_systemd_socket_activation(
        ["/usr/bin/qemu-nbd", "-r", "-B", "b1", "-f", "qcow2", img])
    runs, off = [], 0
    while off < size:
        seen = []

        def extent(metacontext, offset, entries, err):
            seen.extend(zip(entries[0::2], entries[1::2]))
            return 0
        h.block_status(size - off, off, extent)
        for length, flags in seen:
            if flags & 1:
                runs.append((off, length))
            off += length
    h.shutdown()
    del h
    return runs


def hash_bytes(data):
    return hashlib.sha256(data).hexdigest()[:16]


def handshake(prog, work):
    """What a client that does or does not ask for block sizes hears:
    qemu-nbd refuses NBD_OPT_INFO to one that does not, since the
    filter's minimum block size is above 1, and tells NBD_OPT_GO a
    minimum of 1."""
    img = os.path.join(work, "handshake.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"],
                   check=True)
    print("== handshake")
    for ask in (False, True):
        h = nbd.NBD()
        h.set_opt_mode(True)
        h.set_request_block_size(ask)
        h.connect_systemd_socket_activation(
            [prog, "--image-opts",
             f"driver=compress,file.driver=qcow2,file.file.filename={img}"])
        try:
            h.opt_info()
            print("ask", ask, "info: min", h.get_block_size(nbd.SIZE_MINIMUM))
        except nbd.Error as e:
            print("ask", ask, "info:", e.errno)
        h.opt_go()
        print("ask", ask, "go: block sizes",
              h.get_block_size(nbd.SIZE_MINIMUM),
              h.get_block_size(nbd.SIZE_PREFERRED),
              h.get_block_size(nbd.SIZE_MAXIMUM))
        h.shutdown()
        del h


def main():
    if sys.argv[1] == "--map":
        for run in image_map(sys.argv[2]):
            print(*run)
        return
    prog, work = sys.argv[1], sys.argv[2]
    handshake(prog, work)
    for s in SCENARIOS:
        scenario(prog, work, *s)


if __name__ == "__main__":
    main()
