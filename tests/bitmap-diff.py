# SPDX-License-Identifier: MIT
# Differential dirty-bitmap test against qemu-nbd: the same random
# sequence of writes (some FUA), write-zeroes (plain, NO_HOLE, FAST_ZERO),
# trims and flushes goes to two servers serving copies of one image, ours
# and qemu-nbd, each offering the same bitmaps; after every few requests
# the dirty maps of every bitmap are read from both (the whole disk, and
# random ranges with and without REQ_ONE) and must be the same extents.
# A FAST_ZERO one server refuses is done again without it there (a
# client writes the zeros itself then), so both images stay alike.
#
# usage: bitmap-diff.py OURS_URI QEMU_URI BITMAP... [--seed N] [--ops N]
#            [--cluster N]
# Exit 0 when every comparison agreed, 1 with the first difference.

import argparse
import random
import sys

import nbd

MiB = 1 << 20

p = argparse.ArgumentParser()
p.add_argument("ours")
p.add_argument("qemu")
p.add_argument("bitmaps", nargs="+")
p.add_argument("--seed", type=int, default=None)
p.add_argument("--ops", type=int, default=400)
p.add_argument("--cluster", type=int, default=65536)
p.add_argument("--check-every", type=int, default=20)
args = p.parse_args()

seed = args.seed if args.seed is not None else random.randrange(1 << 30)
print("bitmap-diff: seed %d" % seed, flush=True)
rng = random.Random(seed)
contexts = ["qemu:dirty-bitmap:" + b for b in args.bitmaps]


def connect(uri):
    h = nbd.NBD()
    for c in contexts:
        h.add_meta_context(c)
    h.connect_uri(uri)
    for c in contexts:
        if not h.can_meta_context(c):
            sys.exit("FAIL: %s does not offer %s" % (uri, c))
    return h


servers = {"ours": connect(args.ours), "qemu-nbd": connect(args.qemu)}
size = servers["ours"].get_size()
if servers["qemu-nbd"].get_size() != size:
    sys.exit("FAIL: the two exports differ in size")


def extents(h, ctx, offset, length, flags=0):
    """The (length, flags) extents CTX reports for one BLOCK_STATUS."""
    got = {}

    def cb(metacontext, off, entries, err):
        if metacontext == ctx:
            got["e"] = list(zip(entries[0::2], entries[1::2]))
            got["off"] = off
    h.block_status(length, offset, cb, flags=flags)
    if "e" not in got or got["off"] != offset:
        raise SystemExit("FAIL: no %s extents at %d" % (ctx, offset))
    return got["e"]


def whole_map(h, ctx):
    out, off = [], 0
    while off < size:
        e = extents(h, ctx, off, min(size - off, 1 << 31))
        out += e
        off += sum(n for n, _ in e)
    # Merge what two requests cut apart.
    merged = []
    for n, f in out:
        if merged and merged[-1][1] == f:
            merged[-1] = (merged[-1][0] + n, f)
        else:
            merged.append((n, f))
    return merged


def compare(step):
    for ctx in contexts:
        a = whole_map(servers["ours"], ctx)
        b = whole_map(servers["qemu-nbd"], ctx)
        if a != b:
            sys.exit("FAIL: after %s, %s differs:\n  ours     %s\n"
                     "  qemu-nbd %s" % (step, ctx, a[:20], b[:20]))
        for _ in range(4):
            off = rng.randrange(size)
            length = rng.randrange(1, min(size - off, 8 * MiB) + 1)
            for flags in (0, nbd.CMD_FLAG_REQ_ONE):
                a = extents(servers["ours"], ctx, off, length, flags)
                b = extents(servers["qemu-nbd"], ctx, off, length, flags)
                if a != b:
                    sys.exit("FAIL: after %s, %s [%d, +%d) flags %d "
                             "differs:\n  ours     %s\n  qemu-nbd %s"
                             % (step, ctx, off, length, flags, a[:20],
                                b[:20]))


def pick_range(max_len):
    c = args.cluster
    r = rng.random()
    if r < 0.3:                     # around a cluster boundary
        off = rng.randrange(size // c) * c + rng.randrange(-700, 700)
    elif r < 0.4:                   # the end of the disk
        off = size - rng.randrange(1, 3 * c)
    else:
        off = rng.randrange(size)
    off = max(0, min(off, size - 1))
    length = rng.choice([1, 3, 512, 4096, c, c + 1, 3 * c - 5,
                         rng.randrange(1, max_len)])
    return off, max(1, min(length, size - off))


def both(name, fn):
    """Run FN on both servers; return the errors (None for success)."""
    errs = {}
    for who, h in servers.items():
        try:
            fn(h)
            errs[who] = None
        except nbd.Error as e:
            errs[who] = e
    return errs


for i in range(args.ops):
    kind = rng.choices(["write", "zero", "trim", "flush"], [6, 3, 2, 1])[0]
    step = "request %d (%s)" % (i, kind)
    if kind == "write":
        off, length = pick_range(2 * MiB)
        data = rng.randbytes(length)
        fua = nbd.CMD_FLAG_FUA if rng.random() < 0.2 else 0
        errs = both(step, lambda h: h.pwrite(data, off, flags=fua))
    elif kind == "zero":
        off, length = pick_range(8 * MiB)
        flags = rng.choice([0, nbd.CMD_FLAG_NO_HOLE, nbd.CMD_FLAG_FAST_ZERO])
        errs = both(step, lambda h: h.zero(length, off, flags=flags))
        for who, e in errs.items():
            # The client would write the zeros itself.
            if e is not None and flags == nbd.CMD_FLAG_FAST_ZERO:
                servers[who].zero(length, off)
                errs[who] = None
    elif kind == "trim":
        off, length = pick_range(8 * MiB)
        errs = both(step, lambda h: h.trim(length, off))
    else:
        errs = both(step, lambda h: h.flush())
    for who, e in errs.items():
        if e is not None:
            sys.exit("FAIL: %s: %s answered %s" % (step, who, e))
    if (i + 1) % args.check_every == 0:
        compare(step)

compare("the last request")
for h in servers.values():
    h.flush()
    h.shutdown()
print("bitmap-diff: %d requests, dirty maps identical" % args.ops)
