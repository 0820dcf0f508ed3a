# SPDX-License-Identifier: MIT
"""Client side of test-faults.sh: NBD requests with the outcome each one
must have, while faultfs makes the storage under the server fail.

    faults.py URI STEP...      run the steps in order
    faults.py URI storm SEED N CONTROL OUT
                               N random writes, zeroes, flushes and reads
                               in the first 16 MiB, on two connections,
                               while CONTROL
                               (faultfs's control file) makes host writes
                               fail now and then; then flush, check every
                               byte and save those 16 MiB to OUT

A step is [cN/]OP:ARGS=EXPECT: connection N (default 1; each is opened
at its first use), the request, and OK or the NBD error it must get
(EIO, ENOSPC, ...), or several of them (OK|EIO).  Sizes take k and M
suffixes.
    write:OFF:LEN:BYTE[:fua]   write LEN bytes of BYTE
    read:OFF:LEN:BYTE[/BYTE]   read; every byte must be BYTE (or, per
                               4 KiB block, the alternative)
    flush  zero:OFF:LEN  trim:OFF:LEN
"""

import random
import sys

import nbd

BLOCK = 4096
# The storm's unit: a write that fails part-way (a short write, then an
# error) leaves some sectors new and the rest old.
UNIT = 512


def size(s):
    mult = {"k": 1024, "M": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s, 0) * mult


last_error = ""


def outcome(fn):
    """Run a request: "OK", or the name of the errno it failed with."""
    global last_error
    try:
        fn()
    except nbd.Error as e:
        last_error = e.string
        return e.errno or "error: " + e.string
    return "OK"


conns = {}


def conn(uri, n):
    if n not in conns:
        h = nbd.NBD()
        h.connect_uri(uri)
        conns[n] = h
    return conns[n]


def step(uri, text):
    what, _, expect = text.rpartition("=")
    n = 1
    if what.startswith("c") and "/" in what.split(":")[0]:
        c, what = what.split("/", 1)
        n = int(c[1:])
    h = conn(uri, n)
    op, *a = what.split(":")
    got_data = None

    if op == "write":
        off, ln, byte = size(a[0]), size(a[1]), int(a[2], 0)
        flags = nbd.CMD_FLAG_FUA if a[3:] == ["fua"] else 0
        got = outcome(lambda: h.pwrite(bytes([byte]) * ln, off, flags))
    elif op == "read":
        off, ln = size(a[0]), size(a[1])
        want = [int(b, 0) for b in a[2].split("/")]

        def rd():
            nonlocal got_data
            got_data = h.pread(ln, off)
        got = outcome(rd)
        if got == "OK":
            for i in range(0, ln, BLOCK):
                blk = got_data[i:i + BLOCK]
                if not any(blk == bytes([b]) * len(blk) for b in want):
                    raise SystemExit("%s: bytes %d.. read %r, want %s"
                                     % (text, off + i, sorted(set(blk))[:8],
                                        a[2]))
    elif op == "flush":
        got = outcome(h.flush)
    elif op == "zero":
        got = outcome(lambda: h.zero(size(a[1]), size(a[0])))
    elif op == "trim":
        got = outcome(lambda: h.trim(size(a[1]), size(a[0])))
    else:
        raise SystemExit("unknown step %r" % text)
    if got not in expect.split("|"):
        raise SystemExit("%s: got %s%s" % (text, got, " (%s)" % last_error
                                            if got != "OK" else ""))


def storm(uri, seed, count, control):
    """Random requests while host writes fail now and then.  A request
    that failed leaves its range unknown (old bytes, new bytes, or a mix
    of the two, sector by sector, never a third value); everything else
    must read back exactly, before and after a final flush."""
    rng = random.Random(seed)
    hs = [conn(uri, 1), conn(uri, 2)]
    disk = min(hs[0].get_size(), 16 << 20)
    nblocks = disk // BLOCK
    nunits = disk // UNIT

    def read_all(h):
        return b"".join(h.pread(1 << 20, o) for o in range(0, disk, 1 << 20))
    data = read_all(hs[0])
    # Per sector: the set of contents it may have now.
    state = [{bytes(data[u * UNIT:(u + 1) * UNIT])} for u in range(nunits)]
    failed = ok = 0
    errors = {}

    def check(first, n, data):
        """FIRST, N: in sectors."""
        for u in range(n):
            sect = bytes(data[u * UNIT:(u + 1) * UNIT])
            if sect not in state[first + u]:
                raise SystemExit("storm: sector %d reads %r, may be one of %r"
                                 % (first + u, sorted(set(sect))[:4],
                                    [sorted(set(v))[:4]
                                     for v in state[first + u]]))
            state[first + u] = {sect}

    for i in range(count):
        if i % 16 == 0:
            # A few rules at a time, each firing once after a few host
            # writes, at any file offset: data, L2 and refcount writes
            # alike.
            with open(control, "w") as f:
                f.write("clear\n")
                for _ in range(rng.randint(0, 3)):
                    f.write("fail write %s path=/img.qcow2 after=%d count=1\n"
                            % (rng.choice(["eio", "enospc", "short"]),
                               rng.randint(0, 40)))
        h = rng.choice(hs)
        first = rng.randrange(nblocks - 64)
        n = rng.randint(1, 64)
        off, ln = first * BLOCK, n * BLOCK
        r = rng.random()
        if r < 0.6:
            byte = rng.randint(1, 255)
            got = outcome(lambda: h.pwrite(bytes([byte]) * ln, off))
            new = bytes([byte]) * UNIT
        elif r < 0.75:
            got = outcome(lambda: h.zero(ln, off))
            new = bytes(UNIT)
        elif r < 0.85:
            got = outcome(lambda: h.flush())
            new = None
        else:
            rdata = None

            def rd():
                nonlocal rdata
                rdata = h.pread(ln, off)
            got = outcome(rd)
            if got != "OK":
                raise SystemExit("storm: read failed (%s); no read fault "
                                 "was injected" % got)
            check(first * BLOCK // UNIT, n * BLOCK // UNIT, rdata)
            continue
        if got == "OK":
            ok += 1
            if new is not None:
                for u in range(first * BLOCK // UNIT,
                               (first + n) * BLOCK // UNIT):
                    state[u] = {new}
        else:
            failed += 1
            errors[got] = errors.get(got, 0) + 1
            if got not in ("EIO", "ENOSPC"):
                raise SystemExit("storm: unexpected error %s" % got)
            if new is not None:
                for u in range(first * BLOCK // UNIT,
                               (first + n) * BLOCK // UNIT):
                    state[u] = state[u] | {new}
    with open(control, "w") as f:
        f.write("clear\n")
    if outcome(hs[0].flush) != "OK":
        raise SystemExit("storm: the final flush failed")
    data = read_all(hs[1])
    check(0, nunits, data)
    print("storm: %d requests answered OK, %d failed %s" % (
        ok, failed, " ".join("%s=%d" % kv for kv in sorted(errors.items()))))
    return data


def main():
    uri = sys.argv[1]
    if sys.argv[2] == "storm":
        data = storm(uri, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
        # What the disk holds now, to compare with after a restart.
        with open(sys.argv[6], "wb") as f:
            f.write(data)
        return
    for s in sys.argv[2:]:
        step(uri, s)
    for h in conns.values():
        h.shutdown()


if __name__ == "__main__":
    main()
