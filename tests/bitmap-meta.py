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

import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import abuse  # noqa: E402  (the raw client of test-protocol-abuse.sh)
import rawnbd  # noqa: E402  (the protocol's constants)


def ask(path, opt, queries):
    """Send OPT with QUERIES; return [(context id, name)] and, last,
    (None, the final reply's type)."""
    c = abuse.Conn.__new__(abuse.Conn)      # on a Unix socket
    c.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.s.settimeout(abuse.TIMEOUT)
    c.s.connect(path)
    c.start()
    c.structured_reply()
    data = struct.pack(">II", 0, len(queries))
    for q in queries:
        data += struct.pack(">I", len(q)) + q.encode()
    c.option(opt, data)
    out = []
    for rtype, payload in c.replies_until_final(opt):
        if rtype == abuse.REP_META:
            out.append((struct.unpack(">I", payload[:4])[0],
                        payload[4:].decode()))
        else:
            # An error's message is free text; its type is what counts.
            out.append((None, abuse.rep_name(rtype)))
    c.option(abuse.OPT_ABORT)
    c.close()
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
for opt, name in ((rawnbd.OPT_LIST_META, "LIST"),
                  (rawnbd.OPT_SET_META, "SET")):
    for q in queries:
        a = ask(ours, opt, q)
        b = ask(qemu, opt, q)
        if [x[1] for x in a] != [x[1] for x in b]:
            sys.exit("FAIL: %s %s:\n  ours     %s\n  qemu-nbd %s"
                     % (name, q, [x[1] for x in a], [x[1] for x in b]))
        ids = [x[0] for x in a if x[0] is not None]
        if opt == abuse.OPT_SET_META and len(set(ids)) != len(ids):
            sys.exit("FAIL: SET %s: context IDs repeat: %s" % (q, a))
        n += 1
print("bitmap-meta: %d queries answered alike" % n)
