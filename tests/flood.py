#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Handshake floods and the probes that must get through them.
#
#   flood.py hold HOST PORT --idle N --handshake N --tls N
#            [--sources A,B,...] --ready FILE --stop FILE --report FILE
#     Opens the connections one after the other (round robin over the
#     source addresses, all loopback) and takes each to where it stalls:
#     idle (connects, says nothing), handshake (stops part of the way:
#     after the client flags, half-way through an option header, or in
#     an option's payload), tls (STARTTLS, then a real ClientHello, and
#     silence once the server has answered it).  Writes READY once every
#     connection has stalled, been closed by the server, or 60 s have
#     passed; then holds them until STOP exists, and writes REPORT (JSON:
#     how many stalled, were never greeted, were closed by the server and
#     in which order of opening).  --wait-greeting: ready only once every
#     connection has also been greeted (or closed).
#
#   flood.py active HOST PORT --source ADDR --dir DIR
#     A client that negotiates slowly, in steps the test paces with files
#     in DIR: greeted and flags sent (writes DIR/1, waits for DIR/go1),
#     NBD_OPT_LIST answered (writes DIR/2, waits for DIR/go2), then
#     NBD_OPT_GO and a 512-byte READ.  Exit 1 if the server closes it.
#
#   flood.py probe URI --count N [--tls-certs DIR] [--deadline S]
#     N clients (libnbd, the real client library) one after the other,
#     each connecting, negotiating (with TLS if --tls-certs), reading 4 KiB
#     and disconnecting; prints the latencies.  Exit 1 if one fails or
#     takes more than S seconds (default 60).
#
# Loopback only; raises its own file descriptor limit to the hard one.

import json
import os
import resource
import selectors
import socket
import ssl
import struct
import sys
import time

import rawnbd
from rawnbd import (CLIENT_FLAGS, CMD_READ, GO, IHAVEOPT, NBD_MAGIC, OPT_GO,
                    OPT_LIST, OPT_STARTTLS, REP_ACK, SIMPLE_MAGIC, opt,
                    option_replies, recv_exact, req)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Conn:
    """One flood connection, a small client-side state machine."""

    def __init__(self, idx, kind, variant, source, addr, sel):
        self.idx = idx
        self.kind = kind
        self.variant = variant
        self.sel = sel
        self.inbuf = b""
        self.state = "connecting"
        self.stalled = False
        self.closed_by_server = False
        self.closed_at = None
        self.greeted = False
        self.tls = None
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.setblocking(False)
        if source:
            self.s.bind((source, 0))
        err = self.s.connect_ex(addr)
        if err not in (0, 115):     # EINPROGRESS
            raise OSError(err, os.strerror(err))
        sel.register(self.s, selectors.EVENT_WRITE, self)

    def send(self, data):
        # Small writes to a socket with room: never partial on loopback.
        self.s.sendall(data)

    def stall(self):
        self.stalled = True
        self.state = "stalled"

    def connected(self):
        self.sel.modify(self.s, selectors.EVENT_READ, self)
        if self.kind == "idle":
            self.stall()
        else:
            self.state = "greeting"

    def on_readable(self):
        try:
            data = self.s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        except BlockingIOError:
            return
        if not data:
            self.closed_by_server = True
            self.closed_at = time.monotonic()
            self.sel.unregister(self.s)
            self.s.close()
            self.state = "closed"
            return
        if self.state in ("stalled", "connecting") and self.tls is None:
            if self.state == "stalled" and self.kind == "idle":
                self.greeted = True
            return                  # ignore whatever comes
        self.inbuf += data
        self.step()

    def step(self):
        if self.state == "greeting" and len(self.inbuf) >= 18:
            magic, ihaveopt = struct.unpack(">QQ", self.inbuf[:16])
            assert magic == NBD_MAGIC and ihaveopt == IHAVEOPT, \
                "bad greeting"
            self.greeted = True
            self.inbuf = self.inbuf[18:]
            if self.kind == "handshake":
                v = self.variant % 3
                if v == 0:
                    self.send(CLIENT_FLAGS)
                elif v == 1:
                    self.send(CLIENT_FLAGS + struct.pack(">Q", IHAVEOPT))
                else:
                    self.send(CLIENT_FLAGS +
                              struct.pack(">QII", IHAVEOPT, OPT_GO, 100) +
                              b"\0" * 10)
                self.stall()
            else:
                self.send(CLIENT_FLAGS + opt(OPT_STARTTLS))
                self.state = "starttls"
        if self.state == "starttls" and len(self.inbuf) >= 20:
            _, _, typ, length = struct.unpack(">QIII", self.inbuf[:20])
            if typ != REP_ACK or length != 0:
                raise SystemExit("flood: STARTTLS refused (%#x)" % typ)
            self.inbuf = self.inbuf[20:]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self.tls_in = ssl.MemoryBIO()
            self.tls_out = ssl.MemoryBIO()
            self.tls = ctx.wrap_bio(self.tls_in, self.tls_out,
                                    server_side=False)
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            self.send(self.tls_out.read())      # the ClientHello
            self.state = "clienthello"
        if self.state == "clienthello" and self.inbuf:
            # The server answered the ClientHello (its key exchange is
            # done): stop here, mid-handshake, and read no more of it.
            self.inbuf = b""
            self.stall()


def hold(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="flood.py hold")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--idle", type=int, default=0)
    ap.add_argument("--handshake", type=int, default=0)
    ap.add_argument("--tls", type=int, default=0)
    ap.add_argument("--sources", default="")
    ap.add_argument("--ready", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--wait-greeting", action="store_true")
    a = ap.parse_args(argv)
    raise_nofile()

    sources = [s for s in a.sources.split(",") if s] or [None]
    kinds = (["idle"] * a.idle + ["handshake"] * a.handshake +
             ["tls"] * a.tls)
    sel = selectors.DefaultSelector()
    conns = []
    start = time.monotonic()
    deadline = start + 60

    def pump(timeout):
        for key, ev in sel.select(timeout):
            c = key.data
            if c.state == "connecting":
                err = c.s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    c.sel.unregister(c.s)
                    c.s.close()
                    c.state = "failed"
                    continue
                c.connected()
            elif ev & selectors.EVENT_READ:
                c.on_readable()

    for i, kind in enumerate(kinds):
        conns.append(Conn(i, kind, i, sources[i % len(sources)],
                          (a.host, a.port), sel))
        pump(0)
    def settled(c):
        if c.state in ("closed", "failed"):
            return True
        return c.stalled and (c.greeted or not a.wait_greeting)

    while time.monotonic() < deadline:
        if all(settled(c) for c in conns):
            break
        pump(0.1)
    with open(a.ready + ".tmp", "w") as f:
        f.write("%.3f\n" % (time.monotonic() - start))
    os.rename(a.ready + ".tmp", a.ready)

    stalled_at_ready = sum(1 for c in conns if c.stalled)
    while not os.path.exists(a.stop):
        pump(0.1)
    # Closes the server made before STOP are queued already: take them.
    while sel.get_map() and sel.select(0.2):
        pump(0)
    report = {
        "opened": len(conns),
        "connect_failed": sum(1 for c in conns if c.state == "failed"),
        "stalled": stalled_at_ready,
        "never_greeted": sum(1 for c in conns
                             if not c.greeted and c.state != "failed"),
        "closed_by_server": sum(1 for c in conns if c.closed_by_server),
        "closed_order": [c.idx for c in
                         sorted((c for c in conns if c.closed_by_server),
                                key=lambda c: c.closed_at)],
        "open_at_end": sum(1 for c in conns
                           if c.state not in ("closed", "failed")),
    }
    with open(a.report + ".tmp", "w") as f:
        json.dump(report, f)
    os.rename(a.report + ".tmp", a.report)
    for c in conns:
        if c.state not in ("closed", "failed"):
            c.s.close()


def wait_file(path):
    end = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > end:
            sys.exit("active: %s never came" % path)
        time.sleep(0.05)


def active(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="flood.py active")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--source", required=True)
    ap.add_argument("--dir", required=True)
    a = ap.parse_args(argv)

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(60)
    s.bind((a.source, 0))
    s.connect((a.host, a.port))
    recv_exact(s, 18)
    s.sendall(CLIENT_FLAGS)
    open(os.path.join(a.dir, "1"), "w").close()
    wait_file(os.path.join(a.dir, "go1"))
    s.sendall(opt(OPT_LIST))
    if option_replies(s) != REP_ACK:
        sys.exit("active: LIST failed")
    open(os.path.join(a.dir, "2"), "w").close()
    wait_file(os.path.join(a.dir, "go2"))
    s.sendall(GO)
    if option_replies(s) != REP_ACK:
        sys.exit("active: GO failed")
    s.sendall(req(CMD_READ, 1, 0, 512))
    magic, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    if magic != SIMPLE_MAGIC or err != 0 or cookie != 1:
        sys.exit("active: bad READ reply")
    recv_exact(s, 512)
    s.close()


def probe(argv):
    import argparse
    import nbd
    ap = argparse.ArgumentParser(prog="flood.py probe")
    ap.add_argument("uri")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--tls-certs")
    ap.add_argument("--deadline", type=float, default=60)
    a = ap.parse_args(argv)

    lat = []
    for i in range(a.count):
        t0 = time.monotonic()
        end = t0 + a.deadline
        h = nbd.NBD()
        if a.tls_certs:
            h.set_tls(nbd.TLS_REQUIRE)
            h.set_tls_certificates(a.tls_certs)
        h.aio_connect_uri(a.uri)
        while not h.aio_is_ready():
            if h.aio_is_dead() or h.aio_is_closed():
                sys.exit("probe %d: connection failed" % i)
            left = end - time.monotonic()
            if left <= 0:
                sys.exit("probe %d: not served within %g s" % (i, a.deadline))
            h.poll(int(left * 1000) + 1)
        buf = nbd.Buffer(4096)
        cookie = h.aio_pread(buf, 0)
        while not h.aio_command_completed(cookie):
            left = end - time.monotonic()
            if left <= 0:
                sys.exit("probe %d: read not done within %g s" %
                         (i, a.deadline))
            h.poll(int(left * 1000) + 1)
        h.shutdown()
        del h
        lat.append((time.monotonic() - t0) * 1000)
    lat.sort()
    print("probes %d, latency ms: min %.1f median %.1f max %.1f" %
          (len(lat), lat[0], lat[len(lat) // 2], lat[-1]))


if __name__ == "__main__":
    rawnbd.main("flood.py", {"hold": hold, "probe": probe, "active": active})
