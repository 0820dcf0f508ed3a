#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A slow client on a raw socket: request headers and write payloads
# arrive in small pieces with pauses between them, so the server sees
# every state of its input parsing with nothing more to read (a header
# cut anywhere, a payload that starts in the same segment as its header
# and goes on straight into its buffer, a refused payload thrown away as
# it comes) and every way of hanging up in the middle.  The handshake
# and reply parsing are abuse.py's.
#   trickle.py HOST PORT EXPORT REFERENCE.raw CASE [READY-FILE]
#   trickle.py --list
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
from abuse import Bad, CMD_READ, CMD_WRITE, CMD_DISC, REQ_MAGIC

ENOSPC = 28
# Above the server's DIRECT_PAYLOAD (16 KiB): received into its buffer.
BIG = 1 << 20
# Below it: received through the input buffer.
SMALL = 4096


def header(c, cmd, offset, length, flags=0):
    c.handle += 1
    return c.handle, struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd,
                                 c.handle, offset, length)


def trickle(c, data, rnd, max_piece, pause=0.002):
    """Send DATA in pieces of 1..MAX_PIECE bytes, pausing between them."""
    i = 0
    while i < len(data):
        n = rnd.randint(1, max_piece)
        c.send(data[i:i + n])
        i += n
        time.sleep(pause)


def slow_conn(x):
    c = x.good_conn()
    # Every piece its own segment, as a slow network would deliver it.
    c.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return c


def write_area(x):
    return x.size - (8 << 20)


def expect_ok(c, h, what):
    err, _ = c.collect(h, 0, 0)
    if err:
        raise Bad("%s: error %d" % (what, err))


def check_data(c, offset, data, what):
    err, got = c.read_cmd(offset, len(data))
    if err:
        raise Bad("%s: reading back failed with %d" % (what, err))
    if got != data:
        raise Bad("%s: read back wrong data" % what)


# ---- the cases ------------------------------------------------------------

def case_header_pieces(x):
    # Five READs, their headers cut into pieces of 1 to 5 bytes, so a
    # piece often ends one header and starts the next.
    c = slow_conn(x)
    rnd = random.Random(11)
    reqs, data = [], b""
    for i in range(5):
        off = rnd.randrange(0, x.size - 65536)
        n = rnd.randrange(1, 65536)
        h, hdr = header(c, CMD_READ, off, n)
        reqs.append((h, off, n))
        data += hdr
    trickle(c, data, rnd, 5)
    for h, off, n in reqs:
        err, got = c.collect(h, off, n)
        if err or got != x.ref[off:off + n]:
            raise Bad("READ(%d, %d) sent in pieces: error %d or wrong data"
                      % (off, n, err))
    x.still_works(c, "after headers in pieces")


def case_small_write_pieces(x):
    # A payload small enough to go through the input buffer, header and
    # payload cut anywhere.
    c = slow_conn(x)
    rnd = random.Random(12)
    off = write_area(x) + 12345
    payload = rnd.randbytes(SMALL)
    h, hdr = header(c, CMD_WRITE, off, len(payload))
    trickle(c, hdr + payload, rnd, 700)
    expect_ok(c, h, "small WRITE in pieces")
    check_data(c, off, payload, "small WRITE in pieces")


def case_big_write_slow(x):
    # A big payload: its first bytes come with the header (through the
    # input buffer), the rest straight into the payload buffer in pieces
    # of any size, down to one byte; the next request's header comes in
    # the same segment as the payload's last bytes.
    c = slow_conn(x)
    rnd = random.Random(13)
    off = write_area(x) + (1 << 20)
    payload = rnd.randbytes(BIG)
    h, hdr = header(c, CMD_WRITE, off, len(payload))
    c.send(hdr + payload[:1000])
    time.sleep(0.01)
    i = 1000
    sizes = [1, 2, 100, 4095, 65536, 300000]
    while i < len(payload) - 50:
        n = min(rnd.choice(sizes), len(payload) - 50 - i)
        c.send(payload[i:i + n])
        i += n
        time.sleep(0.003)
    h2, hdr2 = header(c, CMD_READ, off, 4096)
    c.send(payload[i:] + hdr2[:7])
    time.sleep(0.01)
    c.send(hdr2[7:])
    expect_ok(c, h, "big WRITE received slowly")
    err, got = c.collect(h2, off, 4096)
    if err or got != payload[:4096]:
        raise Bad("READ right after the big WRITE: error %d or wrong data"
                  % err)
    check_data(c, off, payload, "big WRITE received slowly")


def case_refused_write_slow(x):
    # Refused writes: their payloads are thrown away as they trickle in,
    # and the requests after them are still parsed in step.
    c = slow_conn(x)
    rnd = random.Random(14)
    # Unknown flag: refused before the payload, 256 KiB of it.
    h, hdr = header(c, CMD_WRITE, write_area(x), 256 << 10, flags=0x8000)
    c.send(hdr)
    trickle(c, b"\xaa" * (256 << 10), rnd, 40000, 0.003)
    err, _ = c.collect(h, 0, 0)
    if err != abuse.EINVAL:
        raise Bad("WRITE with an unknown flag: error %d, want EINVAL" % err)
    # Out of range: ENOSPC, once its small payload is in.
    h, hdr = header(c, CMD_WRITE, x.size - 512, SMALL)
    trickle(c, hdr + b"\xbb" * SMALL, rnd, 300)
    err, _ = c.collect(h, 0, 0)
    if err != ENOSPC:
        raise Bad("WRITE past the end: error %d, want ENOSPC" % err)
    x.still_works(c, "after refused writes received slowly")


def case_disc_pieces(x):
    c = slow_conn(x)
    _, hdr = header(c, CMD_DISC, 0, 0)
    trickle(c, hdr, random.Random(15), 3)
    c.expect_close("after a DISC sent in pieces")


def case_hangup_mid_header(x):
    c = slow_conn(x)
    _, hdr = header(c, CMD_READ, 0, 4096)
    c.send(hdr[:10])
    time.sleep(0.05)
    c.close()


def part_of_big_write(x, fill, kib):
    """A connection that sent a big WRITE's header and KIB KiB (and a
    bit) of its payload: some through the input buffer, the rest
    straight into the payload buffer."""
    c = slow_conn(x)
    _, hdr = header(c, CMD_WRITE, write_area(x), BIG)
    c.send(hdr + fill * 1000)
    time.sleep(0.05)
    c.send(fill * (kib << 10))
    time.sleep(0.05)
    return c


def case_hangup_mid_payload(x):
    part_of_big_write(x, b"\xcc", 200).close()


def case_hangup_between_requests(x):
    c = slow_conn(x)
    x.still_works(c, "before hanging up")
    c.close()


def case_held_mid_payload(x):
    # Part of a big payload, then wait for the server to close (it is
    # being stopped): READY-FILE says when that part is in.
    c = part_of_big_write(x, b"\xdd", 300)
    time.sleep(0.05)
    with open(x.ready, "w"):
        pass
    c.expect_close("server stopping during a payload", timeout=60)


CASES = {name[5:]: fn for name, fn in globals().items()
         if name.startswith("case_")}


if __name__ == "__main__":
    abuse.run_cases(CASES, "trickle")
