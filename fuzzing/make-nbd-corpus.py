#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Write the seed corpora of the NBD fuzz targets: corpus-handshake/ (whole
# client sessions: the handshake in its many forms, then requests) and
# corpus-request/ (request streams on each negotiated state), and
# nbd-corpus.mk listing them.  Run from fuzzing/ after changing the
# targets' input layout (see the comments of fuzz-handshake.c and
# fuzz-request.c); the seeds are small and kept in the tree.

import os
import struct

IHAVEOPT = 0x49484156454F5054
OPT = dict(EXPORT_NAME=1, ABORT=2, LIST=3, PEEK_EXPORT=4, STARTTLS=5,
           INFO=6, GO=7, STRUCTURED_REPLY=8, LIST_META=9, SET_META=10,
           EXTENDED_HEADERS=11)
CMD = dict(READ=0, WRITE=1, DISC=2, FLUSH=3, TRIM=4, CACHE=5,
           WRITE_ZEROES=6, BLOCK_STATUS=7, RESIZE=8)
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32


def opt(o, payload=b""):
    return struct.pack(">QII", IHAVEOPT, OPT[o], len(payload)) + payload


def opt_raw(code, length, payload=b""):
    return struct.pack(">QII", IHAVEOPT, code, length) + payload


def name(s):
    b = s.encode()
    return struct.pack(">I", len(b)) + b


def go(export="", infos=(), o="GO"):
    return opt(o, name(export) + struct.pack(">H", len(infos)) +
               b"".join(struct.pack(">H", i) for i in infos))


def meta(o, export="", queries=()):
    q = b"".join(name(x) for x in queries)
    return opt(o, name(export) + struct.pack(">I", len(queries)) + q)


def req(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    return struct.pack(">IHHQQI", 0x25609513, flags, CMD[cmd], cookie,
                       offset, length) + payload


def xreq(cmd, offset=0, length=0, flags=0, cookie=1, payload=b""):
    """An extended (32-byte) request header and its payload."""
    return struct.pack(">IHHQQQ", 0x21e41c71, flags, CMD[cmd], cookie,
                       offset, length) + payload


def xrequests():
    """A session's requests with extended headers: payloads, effect
    lengths over 4 GiB, the BLOCK_STATUS payload form and its refusals."""
    bs = lambda eff, *ids: struct.pack(">Q", eff) + b"".join(
        struct.pack(">I", i) for i in ids)
    r = [xreq("READ", 0, 4096, cookie=1),
         xreq("WRITE", 4096, 512, flags=PAYLOAD_LEN, cookie=2,
              payload=b"\x5a" * 512),
         xreq("WRITE", 8192, 512, cookie=3),                # no PAYLOAD_LEN
         xreq("TRIM", 0, 5 << 30, cookie=4),
         xreq("WRITE_ZEROES", 0, 1 << 40, flags=NO_HOLE, cookie=5),
         xreq("CACHE", 0, (1 << 64) - 1, cookie=6),
         xreq("BLOCK_STATUS", 0, 1 << 40, cookie=7),
         xreq("BLOCK_STATUS", 0, 12, flags=PAYLOAD_LEN | REQ_ONE, cookie=8,
              payload=bs(1 << 20, 1)),
         xreq("BLOCK_STATUS", 0, 16, flags=PAYLOAD_LEN, cookie=9,
              payload=bs(1 << 20, 2, 2)),
         xreq("BLOCK_STATUS", 0, 10, flags=PAYLOAD_LEN, cookie=10,
              payload=b"\0" * 10),
         xreq("TRIM", 0, 8, flags=PAYLOAD_LEN, cookie=11, payload=b"x" * 8),
         xreq("READ", 0, 64 << 20, cookie=12),
         xreq("READ", 0, 8192, flags=DF, cookie=13),
         xreq("DISC", cookie=14)]
    return b"".join(r)


def requests(structured=False):
    r = [req("READ", 0, 4096, cookie=1),
         req("WRITE", 4096, 512, cookie=2, payload=b"\x5a" * 512),
         req("WRITE", 8192, 16, flags=FUA, cookie=3, payload=b"\1" * 16),
         req("FLUSH", cookie=4),
         req("TRIM", 0, 65536, cookie=5),
         req("WRITE_ZEROES", 65536, 65536, flags=NO_HOLE | FAST_ZERO,
             cookie=6),
         req("CACHE", 0, 1 << 20, cookie=7),
         req("BLOCK_STATUS", 0, 1 << 20, flags=REQ_ONE, cookie=8),
         req("READ", (1 << 20) - 512, 1024, cookie=9),          # past the end
         req("READ", 0, 64 << 20, cookie=10),                   # too long
         req("RESIZE", 0, 0, cookie=11),
         req("READ", 0, 512, flags=0x40, cookie=12)]             # bad flag
    if structured:
        r.append(req("READ", 0, 8192, flags=DF, cookie=13))
    r.append(req("DISC", cookie=14))
    return b"".join(r)


FLAGS = struct.pack(">I", 3)            # fixed newstyle, no zeroes
# Byte 0 of a handshake seed: --tls (0 off, 1 on, 2 require), 4: TLS
# succeeds, 8: replies read bytewise, high nibble: the export (its bit 2,
# read-only, is bit 6 here; its bit 3, the name "fuzz" and a
# description, bit 7).
OFF, ON, REQUIRE, TLS_OK, BYTEWISE = 0, 1, 2, 4, 8
RO, NAMED = 0x40, 0x80


def hs(cfg, piece, body):
    return bytes([cfg & 0xff, piece]) + body


handshake = {
    "go-plain": hs(OFF, 0, FLAGS + go() + requests()),
    "go-structured-meta": hs(OFF, 0, FLAGS + opt("STRUCTURED_REPLY") +
                             meta("SET_META", "", ["base:allocation",
                                                   "qemu:allocation-depth"]) +
                             go("", [3]) + requests(True)),
    "export-name-old": hs(OFF, 0, struct.pack(">I", 1) +
                          opt("EXPORT_NAME") + requests()),
    "export-name-zeroes": hs(RO, 0, struct.pack(">I", 1) +
                             opt("EXPORT_NAME") + requests()),
    "list-abort": hs(OFF | BYTEWISE, 0, FLAGS + opt("LIST") + opt("ABORT")),
    "list-described": hs(NAMED, 0, FLAGS + opt("LIST") +
                         go("fuzz", [1, 2], "INFO") + go("fuzz", [2])),
    "info-then-go": hs(NAMED, 0, FLAGS + go("fuzz", [1, 2, 3], "INFO") +
                       go("fuzz", [0]) + requests()),
    "info-unknown-name": hs(OFF, 0, FLAGS + go("nope", [], "INFO") +
                            go("nope") + go()),
    "starttls-require": hs(REQUIRE | TLS_OK, 0, FLAGS + opt("LIST") +
                           opt("STARTTLS") + opt("STARTTLS") +
                           opt("STRUCTURED_REPLY") +
                           meta("SET_META", "", ["base:allocation"]) +
                           go() + requests(True)),
    "starttls-refused": hs(OFF, 0, FLAGS + opt("STARTTLS") +
                           opt("STARTTLS", b"x") + go()),
    "starttls-fails": hs(ON, 0, FLAGS + opt("STRUCTURED_REPLY") +
                         opt("STARTTLS") + go()),
    "tls-required-export-name": hs(REQUIRE, 0, FLAGS + opt("EXPORT_NAME")),
    "unsupported": hs(OFF, 0, FLAGS + opt("PEEK_EXPORT") +
                      opt("EXTENDED_HEADERS") + opt_raw(99, 3, b"abc") +
                      opt_raw(3, 70000, b"\0" * 70000) + go()),
    "list-meta-queries": hs(OFF | BYTEWISE, 0, FLAGS +
                            meta("LIST_META", "", []) +
                            meta("LIST_META", "", ["base:", "qemu:", "x:y"]) +
                            meta("LIST_META", "", ["qemu:dirty-bitmap:"]) +
                            meta("SET_META", "", ["base:allocation"]) +
                            opt("STRUCTURED_REPLY") +
                            opt("STRUCTURED_REPLY") +
                            meta("SET_META", "nope", ["base:allocation"]) +
                            meta("SET_META", "", ["qemu:allocation-depth",
                                                  "qemu:dirty-bitmap:fuzz"]) +
                            go() + requests(True)),
    "bad-lengths": hs(OFF, 0, FLAGS + opt("INFO", b"\0\0\0\x10\0") +
                      opt("INFO", name("") + b"\0\2\0") +
                      opt("SET_META", b"\0\0\0\0") +
                      opt("LIST_META", name("") + b"\0\0\0\2" + name("a")) +
                      opt("LIST", b"x") + go()),
    "bad-option-magic": hs(OFF, 0, FLAGS + b"\0" * 16),
    "bad-client-flags": hs(OFF, 0, struct.pack(">I", 0x80)),
    "not-fixed": hs(OFF, 0, struct.pack(">I", 0) + opt("LIST")),
    "trickle": hs(OFF, 1, FLAGS + opt("STRUCTURED_REPLY") + go() +
                  requests(True)),
    "pieces-of-7": hs(ON | TLS_OK, 7, FLAGS + opt("STARTTLS") + go("", [1]) +
                      requests()),
    "hang-up-in-payload": hs(OFF, 0, FLAGS + opt_raw(7, 100, b"\0" * 10)),
    "abort-with-payload": hs(OFF, 0, FLAGS + opt("ABORT", b"bye")),
    "timeout-in-option": hs(OFF, 0x80, FLAGS + opt("LIST") + b"IHAVE"),
    "timeout-unread-reply": hs(NAMED, 0x80, FLAGS + opt("LIST")),
    "go-extended-meta": hs(OFF, 0, FLAGS + opt("EXTENDED_HEADERS") +
                           meta("SET_META", "", ["base:allocation",
                                                 "qemu:allocation-depth"]) +
                           go("", [3]) + xrequests()),
    "extended-ordering": hs(OFF | BYTEWISE, 0, FLAGS +
                            opt("STRUCTURED_REPLY") +
                            opt("EXTENDED_HEADERS", b"x") +
                            opt("EXTENDED_HEADERS") +
                            opt("EXTENDED_HEADERS") +
                            opt("STRUCTURED_REPLY") + go("", [], "INFO") +
                            opt("EXPORT_NAME")),
    "starttls-extended": hs(ON | TLS_OK, 0, FLAGS + opt("EXTENDED_HEADERS") +
                            meta("SET_META", "", ["base:allocation"]) +
                            opt("STARTTLS") + go() + requests()),
}

# Byte 0 of a request seed: bit 0 structured, bits 1-2 meta contexts,
# bit 3 extended headers, high nibble: the export.
request = {}
for cfg in (0x00, 0x01, 0x07, 0x03 | 0x40, 0x05 | 0x10, 0x01 | 0x20,
            0x01 | 0x30):
    request["session-%02x" % cfg] = bytes([cfg]) + requests(bool(cfg & 1))
request["bad-magic"] = bytes([1]) + req("READ", 0, 512)[:-28] + b"\0" * 28
request["huge-write"] = bytes([0]) + req("WRITE", 0, 64 << 20)
request["overflow"] = bytes([1]) + req("READ", (1 << 64) - 512, 1024) + \
    req("BLOCK_STATUS", 0, 0) + req("WRITE_ZEROES", 1 << 62, 1 << 31)
request["short"] = bytes([0]) + req("READ", 0, 512)[:20]
# Bit 3: extended headers.
for cfg in (0x08, 0x0f, 0x0b | 0x40, 0x0f | 0x20):
    request["extended-%02x" % cfg] = bytes([cfg]) + xrequests()
request["extended-huge-payload"] = bytes([0x0f]) + \
    xreq("WRITE", 0, 64 << 20, flags=PAYLOAD_LEN)
request["extended-compact-magic"] = bytes([0x08]) + req("READ", 0, 512) + \
    b"\0" * 4

files = []
for d, seeds in (("corpus-handshake", handshake), ("corpus-request", request)):
    os.makedirs(d, exist_ok=True)
    for n, data in sorted(seeds.items()):
        path = os.path.join(d, n)
        with open(path, "wb") as f:
            f.write(data)
        files.append(path)

with open("nbd-corpus.mk", "w") as f:
    f.write("# SPDX-License-Identifier: MIT\n"
            "# Written by make-nbd-corpus.py: the seeds of the NBD fuzz "
            "targets.\n\nNBD_CORPUS = \\\n")
    for p in files:
        f.write("\t%s \\\n" % p)
    f.write("\t$(NULL)\n")
