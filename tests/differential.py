# SPDX-License-Identifier: MIT
# Differential write test: several NBD connections at once issue random
# writes, write-zeroes (plain, NO_HOLE, FAST_ZERO), trims and reads of
# random sizes and alignments over the whole export, while the same
# operations are mirrored into an in-memory shadow that starts as a raw
# copy of the image.  Two operations in flight never overlap (a range
# lock), so the shadow is well defined, but they may share a cluster,
# which is where copy-on-write races live.  Trimmed ranges are undefined
# by NBD, so after a trim the range is read back and that becomes the
# shadow; every later read and the final qemu-img compare still check it.
# At the end: a flush from every connection, and the shadow is written to
# the output file for qemu-img compare.
#
# usage: differential.py URI SHADOW_IN SHADOW_OUT [--seed N] [--conns N]
#            [--ops N] [--max-len N] [--trim-noop] [--cluster N]
#            [--lax-fast-zero]

import argparse
import os
import random
import sys
import threading

import nbd

MiB = 1 << 20

p = argparse.ArgumentParser()
p.add_argument("uri")
p.add_argument("shadow_in")
p.add_argument("shadow_out")
p.add_argument("--seed", type=int, default=None)
p.add_argument("--conns", type=int, default=4)
p.add_argument("--ops", type=int, default=300, help="operations per connection")
p.add_argument("--max-len", type=int, default=2 * MiB + 4096 + 3)
p.add_argument("--cluster", type=int, default=65536,
               help="cluster size, to aim offsets at cluster boundaries")
p.add_argument("--lax-fast-zero", action="store_true",
               help="a refused FAST_ZERO may have zeroed part of the range "
               "(NBD allows it; qemu-nbd does it; we promise not to)")
p.add_argument("--trim-noop", action="store_true",
               help="trims must not change anything (--discard=ignore)")
args = p.parse_args()

seed = args.seed if args.seed is not None else random.randrange(1 << 30)
print("differential: seed %d" % seed, flush=True)

with open(args.shadow_in, "rb") as f:
    shadow = bytearray(f.read())
size = len(shadow)


class Failure(Exception):
    pass


# ---- range lock: no two operations in flight overlap ---------------------

busy_lock = threading.Condition()
busy = []                       # [(start, end)] in flight


def acquire(start, end):
    with busy_lock:
        while any(s < end and start < e for s, e in busy):
            busy_lock.wait()
        busy.append((start, end))


def release(start, end):
    with busy_lock:
        busy.remove((start, end))
        busy_lock.notify_all()


# ---- random ranges: odd sizes, cluster edges, the device's end -----------

def pick_range(rng):
    c = args.cluster
    r = rng.random()
    if r < 0.35:
        length = rng.randint(1, 4096)
    elif r < 0.7:
        length = rng.randint(1, 4 * c if 4 * c < args.max_len else args.max_len)
    elif r < 0.85:
        length = rng.randint(1, args.max_len)
    else:
        length = rng.choice([c, 2 * c, 512, 4096, c // 2 or 1, c + 1, c - 1 or 1])
    length = max(1, min(length, size))
    r = rng.random()
    if r < 0.3:                 # at or near a cluster boundary
        k = rng.randrange(0, (size + c - 1) // c)
        offset = k * c + rng.choice([0, 0, 1, -1, 511, -511, c // 2])
    elif r < 0.4:               # touching the end of the device
        offset = size - length + rng.choice([0, 0, -1, -777])
    else:
        offset = rng.randrange(0, size)
    offset = max(0, min(offset, size - 1))
    length = min(length, size - offset)
    return offset, length


def check_read(h, offset, length, what):
    got = h.pread(length, offset)
    want = bytes(shadow[offset:offset + length])
    if got != want:
        i = next(i for i in range(length) if got[i] != want[i])
        raise Failure("%s: read [%d, +%d) differs at byte %d (offset %d): "
                      "got %#x, want %#x"
                      % (what, offset, length, i, offset + i, got[i], want[i]))


stats = {}
stats_lock = threading.Lock()


def count(name):
    with stats_lock:
        stats[name] = stats.get(name, 0) + 1


errors = []


def worker(idx):
    rng = random.Random(seed * 1000 + idx)
    h = nbd.NBD()
    h.set_handle_name("conn%d" % idx)
    h.connect_uri(args.uri)
    if h.is_read_only():
        raise Failure("export is read-only")
    for need in ("can_flush", "can_fua", "can_trim", "can_zero",
                 "can_fast_zero", "can_multi_conn"):
        if not getattr(h, need)():
            raise Failure("server does not advertise %s" % need)
    try:
        for n in range(args.ops):
            if errors:
                return
            offset, length = pick_range(rng)
            op = rng.choices(["write", "zero", "trim", "read", "flush"],
                             weights=[50, 16, 12, 18, 4])[0]
            acquire(offset, offset + length)
            try:
                what = "conn%d op%d %s [%d, +%d)" % (idx, n, op, offset, length)
                if op == "write":
                    data = rng.randbytes(length)
                    flags = nbd.CMD_FLAG_FUA if rng.random() < 0.1 else 0
                    h.pwrite(data, offset, flags)
                    shadow[offset:offset + length] = data
                    count("write")
                elif op == "zero":
                    flags = 0
                    r = rng.random()
                    if r < 0.3:
                        flags |= nbd.CMD_FLAG_NO_HOLE
                    elif r < 0.5:
                        flags |= nbd.CMD_FLAG_FAST_ZERO
                    if rng.random() < 0.1:
                        flags |= nbd.CMD_FLAG_FUA
                    try:
                        h.zero(length, offset, flags)
                    except nbd.Error as e:
                        # FAST_ZERO may refuse, and then must not have
                        # changed anything: the shadow stays, reads check.
                        if not (flags & nbd.CMD_FLAG_FAST_ZERO) or \
                           e.errno != "ENOTSUP":
                            raise
                        count("fast-zero refused")
                        if args.lax_fast_zero:
                            shadow[offset:offset + length] = \
                                h.pread(length, offset)
                    else:
                        shadow[offset:offset + length] = bytes(length)
                        count("zero" + (" fast" if flags & nbd.CMD_FLAG_FAST_ZERO
                                        else " no-hole" if flags & nbd.CMD_FLAG_NO_HOLE
                                        else ""))
                    check_read(h, offset, length, what)
                elif op == "trim":
                    h.trim(length, offset)
                    if args.trim_noop:
                        check_read(h, offset, length, what + " (trim ignored)")
                    else:
                        got = h.pread(length, offset)
                        shadow[offset:offset + length] = got
                        # Undefined, but it must be stable.
                        if h.pread(length, offset) != got:
                            raise Failure("%s: trimmed range reads differently "
                                          "twice" % what)
                    count("trim")
                elif op == "read":
                    check_read(h, offset, length, what)
                    count("read")
                else:
                    h.flush()
                    count("flush")
            finally:
                release(offset, offset + length)
        h.flush()
        h.shutdown()
    except nbd.Error as e:
        raise Failure("conn%d: %s" % (idx, e))


def run(idx):
    try:
        worker(idx)
    except Exception as e:      # reported by the main thread
        errors.append(e)


threads = [threading.Thread(target=run, args=(i,)) for i in range(args.conns)]
for t in threads:
    t.start()
for t in threads:
    t.join()
if errors:
    for e in errors:
        print("FAIL: differential (seed %d): %s" % (seed, e), file=sys.stderr)
    sys.exit(1)

# A last full read from a fresh connection, chunk by chunk, so a mismatch
# names its offset rather than just "differ".
h = nbd.NBD()
h.connect_uri(args.uri)
try:
    step = 4 * MiB
    for off in range(0, size, step):
        check_read(h, off, min(step, size - off), "final read")
except Failure as e:
    print("FAIL: differential (seed %d): %s" % (seed, e), file=sys.stderr)
    sys.exit(1)
h.shutdown()

with open(args.shadow_out, "wb") as f:
    f.write(shadow)
print("differential: " + ", ".join("%s %d" % kv for kv in sorted(stats.items())))
