#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A disconnect storm: connect, get some way, and go away (a FIN or a
# reset, in turn), over and over, at every stage a connection has.
#
#   storm.py HOST PORT --cycles N [--seed S] [--tls] [--kinds K,K...]
#
# The stages, taken in turn (with --tls, the TLS ones too):
#   handshake  before the greeting, after it, after the client flags, in
#              an option header, in an option's payload, after GO was sent
#              (before its reply), right after the GO reply
#   tls        after STARTTLS was sent, after its ACK, in the ClientHello,
#              after the whole ClientHello (the server mid-handshake),
#              right after the TLS handshake ended
#   write      a 32 MiB WRITE cut off in its payload (up to 256 KiB sent;
#              every 16th: the whole payload, gone before the reply)
#   replies    32 MiB and small READs sent, gone before any reply
# Prints how many cycles of each kind ran.  Exit 1 if the server stops
# accepting or answers a stage wrongly.

import random
import socket
import ssl
import struct

from rawnbd import (CLIENT_FLAGS, CMD_READ, CMD_WRITE, GO, OPT_STARTTLS,
                    Closed, negotiate, opt, recv_exact, req)

MIB = 1 << 20
CHUNK = b"\x3c" * (256 * 1024)


class Storm:
    def __init__(self, host, port, tls, rng, kinds):
        self.addr = (host, port)
        self.tls = tls
        self.kinds = kinds
        self.rng = rng
        self.n = 0
        self.counts = {}
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            self.ctx.check_hostname = False
            self.ctx.verify_mode = ssl.CERT_NONE

    def connect(self):
        s = socket.create_connection(self.addr, timeout=120)
        if self.n % 2:
            # Go away with a reset, not a FIN.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        self.n += 1
        return s

    def handshake(self, stage):
        s = self.connect()
        try:
            if stage >= 1:
                recv_exact(s, 18)
            if stage == 2:
                s.sendall(CLIENT_FLAGS)
            elif stage == 3:
                s.sendall(CLIENT_FLAGS + GO[:9])
            elif stage == 4:
                s.sendall(CLIENT_FLAGS + GO[:19])
            elif stage >= 5:
                s.sendall(CLIENT_FLAGS + GO)
            if stage == 6:
                recv_exact(s, 20)       # the start of the GO replies
        finally:
            s.close()

    def tls_stage(self, stage):
        s = self.connect()
        try:
            recv_exact(s, 18)
            s.sendall(CLIENT_FLAGS + opt(OPT_STARTTLS))
            if stage == 0:
                return
            _, _, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
            if typ != 1 or length != 0:
                raise SystemExit("storm: STARTTLS refused: %#x" % typ)
            if stage == 1:
                return
            inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
            t = self.ctx.wrap_bio(inc, out, server_side=False)
            try:
                t.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = out.read()
            if stage == 2:
                s.sendall(hello[:len(hello) // 2])
                return
            s.sendall(hello)
            if stage == 3:
                recv_exact(s, 5)        # the server answered: mid-handshake
                return
            while True:
                try:
                    t.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pending = out.read()
                    if pending:
                        s.sendall(pending)
                    d = s.recv(65536)
                    if not d:
                        raise Closed("server closed during TLS")
                    inc.write(d)
            pending = out.read()
            if pending:
                s.sendall(pending)
        finally:
            s.close()

    def write(self, i):
        s = self.connect()
        try:
            negotiate(s)
            off = self.rng.randrange(16) * 32 * MIB
            s.sendall(req(CMD_WRITE, 7, off, 32 * MIB))
            left = 32 * MIB if i % 16 == 0 else self.rng.randrange(256 * 1024)
            while left > 0:
                n = min(left, len(CHUNK))
                s.sendall(CHUNK[:n])
                left -= n
        finally:
            s.close()

    def replies(self, i):
        s = self.connect()
        try:
            negotiate(s)
            off = self.rng.randrange(16) * 32 * MIB
            s.sendall(req(CMD_READ, 1, off, 32 * MIB) +
                      b"".join(req(CMD_READ, 2 + k, off + k * 4096, 4096)
                               for k in range(8)) +
                      req(CMD_READ, 10, 0, 32 * MIB))
        finally:
            s.close()

    def cycle(self, i):
        kinds = self.kinds
        kind = kinds[i % len(kinds)]
        sub = (i // len(kinds))
        if kind == "handshake":
            self.handshake(sub % 7)
        elif kind == "tls":
            self.tls_stage(sub % 5)
        elif kind == "write":
            self.write(sub)
        else:
            self.replies(sub)
        self.counts[kind] = self.counts.get(kind, 0) + 1


def main():
    import argparse
    ap = argparse.ArgumentParser(prog="storm.py")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--cycles", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--kinds", default="handshake,write,replies,tls")
    a = ap.parse_args()
    kinds = [k for k in a.kinds.split(",") if a.tls or k != "tls"]
    st = Storm(a.host, a.port, a.tls, random.Random(a.seed), kinds)
    for i in range(a.cycles):
        try:
            st.cycle(i)
        except (OSError, Closed) as e:
            # The server never closes first in any of these stages.
            raise SystemExit("storm: cycle %d: %s" % (i, e))
    print("storm: %d cycles: %s" % (a.cycles, ", ".join(
        "%s %d" % kv for kv in sorted(st.counts.items()))))


if __name__ == "__main__":
    main()
