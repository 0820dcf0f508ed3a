# SPDX-License-Identifier: MIT
# NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT with dirty-bitmap
# queries, on raw sockets, to our server and to qemu-nbd (started with -A
# so that both offer qemu:allocation-depth): for every query list both
# must answer the same contexts, in the same order, and the same final
# reply.  Context IDs are each server's own and are only checked to be
# distinct in a SET reply.
#
# usage: bitmap-meta.py OURS_SOCKET QEMU_SOCKET BITMAP...
# Exit 0 when the answers agree, 1 with the first difference.

import socket
import struct
import sys

NBD_MAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003e889045565a9
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META = 9
OPT_SET_META = 10
REP_ACK = 1
REP_META = 4


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("FAIL: server closed the connection")
        buf += chunk
    return buf


def option(s, opt, data=b""):
    s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)
    out = []
    while True:
        magic, ropt, rtype, length = struct.unpack(">QIII",
                                                   recv_exact(s, 20))
        if magic != REP_MAGIC or ropt != opt:
            raise SystemExit("FAIL: bad option reply")
        payload = recv_exact(s, length)
        if rtype == REP_META:
            out.append((struct.unpack(">I", payload[:4])[0],
                        payload[4:].decode()))
        else:
            # An error's message is free text; its type is what counts.
            out.append((None, "reply 0x%x" % rtype))
            return out


def ask(path, opt, queries):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    magic, opt_magic, _ = struct.unpack(">QQH", recv_exact(s, 18))
    if magic != NBD_MAGIC or opt_magic != IHAVEOPT:
        raise SystemExit("FAIL: bad greeting")
    s.sendall(struct.pack(">I", 3))         # fixed newstyle, no zeroes
    option(s, OPT_STRUCTURED_REPLY)
    data = struct.pack(">I", 0) + struct.pack(">I", len(queries))
    for q in queries:
        data += struct.pack(">I", len(q)) + q.encode()
    out = option(s, opt, data)
    s.sendall(struct.pack(">QII", IHAVEOPT, 2, 0))     # ABORT
    s.close()
    return out


ours, qemu, bitmaps = sys.argv[1], sys.argv[2], sys.argv[3:]
b0 = bitmaps[0]
queries = [
    [],
    ["qemu:"],
    ["base:"],
    ["qemu:dirty-bitmap:"],
    ["qemu:dirty-bitmap"],
    ["qemu:dirty-bitmap:" + b0],
    ["qemu:dirty-bitmap:" + b0 + "x"],
    ["qemu:dirty-bitmap:nonesuch"],
    ["qemu:dirty-bitmap:" + b0, "qemu:dirty-bitmap:" + b0],
    ["qemu:allocation-depth", "qemu:dirty-bitmap:"],
    ["base:allocation"] + ["qemu:dirty-bitmap:" + b for b in bitmaps],
    ["qemu:dirty-bitmap:" + b for b in reversed(bitmaps)],
    ["qemu:dirty-bitmap:" + b.upper() for b in bitmaps],
]
n = 0
for opt, name in ((OPT_LIST_META, "LIST"), (OPT_SET_META, "SET")):
    for q in queries:
        a = ask(ours, opt, q)
        b = ask(qemu, opt, q)
        if [x[1] for x in a] != [x[1] for x in b]:
            sys.exit("FAIL: %s %s:\n  ours     %s\n  qemu-nbd %s"
                     % (name, q, [x[1] for x in a], [x[1] for x in b]))
        ids = [x[0] for x in a if x[0] is not None]
        if opt == OPT_SET_META and len(set(ids)) != len(ids):
            sys.exit("FAIL: SET %s: context IDs repeat: %s" % (q, a))
        n += 1
print("bitmap-meta: %d queries answered alike" % n)
