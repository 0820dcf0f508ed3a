#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Clients that push a server's memory: many connections pipelining large
# WRITEs and READs as fast as the sockets take them, and a client that
# sends large READs and does not read the replies.  Raw sockets (the
# protocol is simple and libnbd would hold every buffer in flight in the
# client), fixed newstyle, NBD_OPT_GO, simple replies.
#
#   memload.py load HOST PORT --clients N --rounds R [--size BYTES]
#     Client c owns the range [c*SIZE, (c+1)*SIZE) of the export and sends
#     R rounds of (WRITE of SIZE bytes of the byte c%8+1, READ of SIZE bytes)
#     all at once, as fast as its socket takes them, reading replies as
#     they come.  Exit 1 on an error reply or a short stream.  Prints the
#     bytes moved.
#
#   memload.py deaf HOST PORT --reads K [--size BYTES] --dir DIR
#     Sends K READs of SIZE bytes, reads the first reply whole, writes
#     DIR/ready, reads nothing more until DIR/go exists, then reads every
#     other reply.  Exit 1 if one is missing or an error.
#
# The byte c%8+1 pattern lets the caller check the image afterwards
# (qemu-io read -P); eight patterns, so the clients share their payloads.

import os
import selectors
import socket
import struct
import time

import rawnbd
from rawnbd import (CMD_DISC, CMD_READ, CMD_WRITE, SIMPLE_MAGIC,
                    negotiate, recv_exact)
from rawnbd import req as header

SCRATCH = bytearray(1 << 20)    # where reply data goes, shared
PAYLOADS = {}                   # pattern byte -> payload


def pattern(idx):
    return idx % 8 + 1


def connect(host, port):
    s = socket.create_connection((host, port), timeout=300)
    negotiate(s)
    return s


class LoadClient:
    """One pipelining connection, driven by a selector."""

    def __init__(self, idx, host, port, rounds, size, sel):
        self.s = connect(host, port)
        self.s.setblocking(False)
        self.size = size
        p = pattern(idx)
        if p not in PAYLOADS:
            PAYLOADS[p] = bytes([p]) * size
        payload = PAYLOADS[p]
        off = idx * size
        out = []
        self.kinds = {}
        for r in range(rounds):
            out.append(header(CMD_WRITE, 2 * r, off, size))
            out.append(payload)
            out.append(header(CMD_READ, 2 * r + 1, off, size))
            self.kinds[2 * r] = 0
            self.kinds[2 * r + 1] = size
        self.out = [memoryview(b) for b in out]
        self.pending = 2 * rounds
        self.hdr = bytearray()
        self.data_left = 0
        self.moved = 0
        self.sel = sel
        sel.register(self.s, selectors.EVENT_READ | selectors.EVENT_WRITE,
                     self)

    def writable(self):
        while self.out:
            try:
                n = self.s.send(self.out[0])
            except BlockingIOError:
                return
            self.moved += n
            if n == len(self.out[0]):
                self.out.pop(0)
            else:
                self.out[0] = self.out[0][n:]
        self.sel.modify(self.s, selectors.EVENT_READ, self)

    def readable(self):
        while True:
            if self.data_left:
                want = min(self.data_left, len(SCRATCH))
            else:
                want = 16 - len(self.hdr)
            try:
                n = self.s.recv_into(memoryview(SCRATCH)[:want])
            except BlockingIOError:
                return
            if n == 0:
                raise SystemExit("server closed a load connection")
            self.moved += n
            if self.data_left:
                self.data_left -= n
                if self.data_left == 0 and self.done_one():
                    return
                continue
            self.hdr += SCRATCH[:n]
            if len(self.hdr) < 16:
                continue
            magic, err, cookie = struct.unpack(">IIQ", self.hdr)
            self.hdr = bytearray()
            if magic != SIMPLE_MAGIC or err != 0 or cookie not in self.kinds:
                raise SystemExit("bad reply: magic %#x error %d cookie %d" %
                                 (magic, err, cookie))
            self.data_left = self.kinds.pop(cookie)
            if self.data_left == 0 and self.done_one():
                return

    def done_one(self):
        """A reply is in; True when it was the last (socket closed)."""
        self.pending -= 1
        if self.pending > 0:
            return False
        self.sel.unregister(self.s)
        self.s.setblocking(True)
        self.s.sendall(header(CMD_DISC, 0, 0, 0))
        self.s.close()
        return True


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s[-1].upper() in mult:
        return int(s[:-1]) * mult[s[-1].upper()]
    return int(s)


def load(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="memload.py load")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--rounds", type=int, required=True)
    ap.add_argument("--size", default="32M")
    a = ap.parse_args(argv)
    size = parse_size(a.size)
    sel = selectors.DefaultSelector()
    clients = [LoadClient(i, a.host, a.port, a.rounds, size, sel)
               for i in range(a.clients)]
    t0 = time.monotonic()
    while sel.get_map():
        for key, ev in sel.select(300):
            c = key.data
            if ev & selectors.EVENT_WRITE:
                c.writable()
            if ev & selectors.EVENT_READ and c.s.fileno() >= 0:
                c.readable()
    t = time.monotonic() - t0
    moved = sum(c.moved for c in clients)
    print("load: %d clients moved %d MiB in %.1f s" %
          (a.clients, moved >> 20, t))


def deaf(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="memload.py deaf")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--reads", type=int, required=True)
    ap.add_argument("--size", default="32M")
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)
    size = parse_size(a.size)
    s = connect(a.host, a.port)
    s.sendall(b"".join(header(CMD_READ, i, 0, size)
                       for i in range(a.reads)))

    def one_reply():
        magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
        if magic != SIMPLE_MAGIC or err != 0:
            raise SystemExit("deaf: bad reply %#x error %d" % (magic, err))
        left = size
        while left:
            n = s.recv_into(memoryview(SCRATCH)[:min(left, len(SCRATCH))])
            if n == 0:
                raise SystemExit("deaf: server closed the connection")
            left -= n
        return cookie

    seen = {one_reply()}
    open(os.path.join(a.dir, "ready"), "w").close()
    end = time.monotonic() + 600
    while not os.path.exists(os.path.join(a.dir, "go")):
        if time.monotonic() > end:
            raise SystemExit("deaf: never told to go on")
        time.sleep(0.05)
    for _ in range(a.reads - 1):
        seen.add(one_reply())
    if seen != set(range(a.reads)):
        raise SystemExit("deaf: replies missing")
    s.sendall(header(CMD_DISC, 0, 0, 0))
    s.close()
    print("deaf: %d READs of %d MiB answered once it read" %
          (a.reads, size >> 20))


if __name__ == "__main__":
    rawnbd.main("memload.py", {"load": load, "deaf": deaf})
