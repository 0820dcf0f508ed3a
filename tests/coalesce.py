#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Clients that keep many requests in flight, so the server receives them
# in batches (server/coalesce.c), and then change what they do: fewer in
# flight, a header in pieces, writes.  Every answer is checked against
# the reference, and every request must be answered: a batch wait that
# never ends shows up as a timeout here.
#   coalesce.py HOST PORT EXPORT REFERENCE.raw CASE
#   coalesce.py --list
# The export must be writable; the cases write only in the last 8 MiB.
# Exit 0: behaved; 1: wrong behaviour (message on stderr).

import os
import random
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import abuse  # noqa: E402
from abuse import Bad, CMD_READ, REQ_MAGIC  # noqa: E402

BS = 4096


def readable(x):
    """Where the raw client reads: below the area libnbd_deep writes."""
    return x.size - (8 << 20) - BS


def read_header(c, offset, length):
    c.handle += 1
    return c.handle, struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ,
                                 c.handle, offset, length)


def expect_reads(x, c, reqs, what):
    """Read the simple replies to REQS (handle -> offset), in any order."""
    while reqs:
        r = c.read_reply(BS)
        off = reqs.pop(r["handle"], None)
        if off is None:
            raise Bad("%s: reply for unknown handle %d" % (what, r["handle"]))
        if r["error"] or r["data"] != x.ref[off:off + BS]:
            raise Bad("%s: READ(%d) error %d or wrong data"
                      % (what, off, r["error"]))


def waves(x, c, rnd, n=300):
    for wave in range(n):
        reqs, data = {}, b""
        for i in range(32):
            off = rnd.randrange(0, readable(x))
            h, hdr = read_header(c, off, BS)
            reqs[h] = off
            data += hdr
        c.send(data)
        expect_reads(x, c, reqs, "wave %d" % wave)


def batching_conn(x, seed):
    c = x.good_conn(structured=False)
    c.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rnd = random.Random(seed)
    waves(x, c, rnd)
    return c, rnd


def case_waves_then_split_header(x):
    # Waves of 32 READs sent at once: the server learns that this client
    # keeps 32 in flight and waits for batches.  Then a header comes in
    # two pieces far apart (the wait for a batch must end, and the rest
    # of the header must not wait for a batch), then lone READs (the
    # server must notice the client keeps only one in flight).
    c, rnd = batching_conn(x, 21)

    for cut in (1, 13, 27):
        off = rnd.randrange(0, readable(x))
        h, hdr = read_header(c, off, BS)
        c.send(hdr[:cut])
        time.sleep(0.2)
        c.send(hdr[cut:])
        expect_reads(x, c, {h: off}, "header cut after %d bytes" % cut)

    for i in range(50):
        off = rnd.randrange(0, readable(x))
        h, hdr = read_header(c, off, BS)
        c.send(hdr)
        expect_reads(x, c, {h: off}, "lone READ %d" % i)


def case_hangup_mid_batch(x):
    # Fewer requests than a batch, then gone: the wait ends with the
    # hang-up, not with its time limit or never.
    c, rnd = batching_conn(x, 23)
    data = b""
    for i in range(5):
        data += read_header(c, rnd.randrange(0, readable(x)), BS)[1]
    c.send(data)
    c.close()


def case_held_mid_batch(x):
    # Keeps the connection while the server waits for a batch, and waits
    # for the server to close it (it is being stopped): READY-FILE says
    # when the wait has begun.
    c, rnd = batching_conn(x, 24)
    with open(x.ready, "w"):
        pass
    c.expect_close("server stopping during a batch wait", timeout=60)


def case_libnbd_deep(x):
    # libnbd keeping 32 READs in flight, then 32 WRITEs in flight in the
    # last 8 MiB, then READs of everything (old and new data) at depth 32,
    # then one at a time.
    import nbd
    h = nbd.NBD()
    h.set_export_name(x.name.decode())
    h.connect_tcp(x.host, str(x.port))
    rnd = random.Random(22)
    ref = bytearray(x.ref)
    area = x.size - (8 << 20)
    bad = []

    state = {"inflight": 0}

    def run(n, issue):
        # The completion callbacks return 1: libnbd retires the commands
        # itself, and they count them out here.
        issued = 0
        while issued < n or state["inflight"]:
            while issued < n and state["inflight"] < 32:
                issue()
                issued += 1
                state["inflight"] += 1
            h.poll(-1)
        if bad:
            raise Bad(bad[0])

    def read_check(off, what):
        buf = nbd.Buffer(BS)

        def done(err):
            if err.value:
                bad.append("%s: READ(%d) failed: %d" % (what, off, err.value))
            elif buf.to_bytearray() != ref[off:off + BS]:
                bad.append("%s: READ(%d) returned wrong data" % (what, off))
            state["inflight"] -= 1
            return 1
        h.aio_pread(buf, off, completion=done)

    def issue_read(lo=0, hi=x.size - BS, what="deep READ"):
        read_check(rnd.randrange(lo, hi), what)

    run(20000, issue_read)
    # Overlapping writes in flight at once land in any order: keep them
    # apart by writing each 4k slot of the area once per round.
    def write_slots(size):
        """Write every SIZE slot of the area once, in random order, 32 in
        flight."""
        slots = list(range(0, 8 << 20, size))
        rnd.shuffle(slots)

        def issue():
            off = area + slots.pop()
            data = rnd.randbytes(size)
            ref[off:off + size] = data

            def done(err):
                if err.value:
                    bad.append("WRITE(%d, %d) failed: %d"
                               % (off, size, err.value))
                state["inflight"] -= 1
                return 1
            h.aio_pwrite(data, off, completion=done)
        run(len(slots), issue)

    write_slots(BS)
    # Writes of 128 KiB: their payloads go straight into their buffers,
    # and the server stops batching for large requests.
    write_slots(128 << 10)
    run(5000, lambda: issue_read(area - (1 << 20), x.size - BS,
                                 "READ after writes"))
    for i in range(100):
        off = rnd.randrange(0, readable(x))
        got = h.pread(BS, off)
        if got != ref[off:off + BS]:
            raise Bad("lone READ(%d) returned wrong data" % off)
    h.shutdown()


CASES = {name[len("case_"):]: f for name, f in sorted(globals().items())
         if name.startswith("case_")}

if __name__ == "__main__":
    abuse.run_cases(CASES, "coalesce")
