#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A raw-socket NBD client for extended headers (NBD_OPT_EXTENDED_HEADERS,
# NetworkBlockDevice/nbd doc/proto.md, "Extended headers" branch): it
# negotiates them and checks every request and reply form against the
# protocol document byte for byte, the option ordering rules, the
# NBD_CMD_FLAG_PAYLOAD_LEN rules, NBD_FLAG_BLOCK_STAT_PAYLOAD and effect
# lengths over 4 GiB, and that compact (plain and structured) clients
# are unchanged beside them.
#   exthdr.py [--unix PATH | --port PORT] [--tls CERTDIR] [--starttls]
#             EXPORT REFERENCE.raw CASE...
#   exthdr.py --list
# CERTDIR holds ca-cert.pem, client-cert.pem and client-key.pem;
# --starttls upgrades every connection to TLS before anything else.
# REFERENCE.raw is the export's contents (a sparse file is fine): data
# read is compared with it, and writes go to a scratch area the cases
# restore.  Exit 0: every case passed; 1: a case failed (message on
# stderr).

import os
import socket
import ssl
import struct
import sys

from rawnbd import (
    NBD_MAGIC, IHAVEOPT, REP_MAGIC, REQ_MAGIC, EXT_REQ_MAGIC, SIMPLE_MAGIC,
    STRUCT_MAGIC, EXT_REPLY_MAGIC, OPT_EXPORT_NAME, OPT_STARTTLS, OPT_INFO,
    OPT_GO, OPT_STRUCTURED_REPLY, OPT_SET_META, OPT_EXTENDED_HEADERS,
    REP_ACK, REP_INFO, REP_META, REP_ERR_INVALID, REP_ERR_TLS_REQD,
    REP_ERR_EXT_HEADER_REQD, INFO_EXPORT, INFO_BLOCK_SIZE, CMD_READ,
    CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES,
    CMD_BLOCK_STATUS, REPLY_FLAG_DONE, TYPE_NONE, TYPE_OFFSET_DATA,
    TYPE_OFFSET_HOLE, TYPE_BLOCK_STATUS, TYPE_BLOCK_STATUS_EXT, TYPE_ERROR)

FLAG_HAS_FLAGS = 1 << 0
FLAG_SEND_DF = 1 << 7
FLAG_BLOCK_STAT_PAYLOAD = 1 << 12

FLAG_FUA, FLAG_NO_HOLE, FLAG_DF, FLAG_REQ_ONE = 1, 2, 4, 8
FLAG_FAST_ZERO, FLAG_PAYLOAD_LEN = 16, 32

EPERM, EINVAL, ENOSPC, EOVERFLOW = 1, 22, 28, 75
STATE_HOLE, STATE_ZERO = 1, 2

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
MAX_PAYLOAD = 32 * MiB
TIMEOUT = 120

CONTEXTS = ["base:allocation", "qemu:allocation-depth"]


class Bad(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Bad(what)


def hexdiff(want, got):
    for i in range(min(len(want), len(got))):
        if want[i] != got[i]:
            return ("first difference at byte %d: want %s, got %s"
                    % (i, want[i:i + 16].hex(), got[i:i + 16].hex()))
    return "lengths %d and %d" % (len(want), len(got))


class Conn:
    """One connection; the transport may become TLS after STARTTLS."""

    def __init__(self, args):
        self.args = args
        if args.unix:
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(TIMEOUT)
            self.s.connect(args.unix)
        else:
            self.s = socket.create_connection(("127.0.0.1", args.port),
                                              timeout=TIMEOUT)
        self.ext = False
        self.structured = False

    def send(self, b):
        self.s.sendall(b)

    def recv(self, n):
        b = b""
        while len(b) < n:
            d = self.s.recv(min(n - len(b), 1 << 20))
            if not d:
                raise Bad("EOF after %d of %d bytes" % (len(b), n))
            b += d
        return b

    def expect(self, want, what):
        got = self.recv(len(want))
        if got != want:
            raise Bad("%s: %s" % (what, hexdiff(want, got)))

    def expect_eof(self, what):
        try:
            d = self.s.recv(4096)
        except (ConnectionResetError, ssl.SSLError):
            return
        if d:
            raise Bad("%s: expected a disconnect, got %s" % (what, d[:32].hex()))

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    # ---- handshake ----------------------------------------------------

    def greet(self, auto_tls=True):
        magic, opt, flags = struct.unpack(">QQH", self.recv(18))
        check(magic == NBD_MAGIC and opt == IHAVEOPT, "bad greeting")
        self.send(struct.pack(">I", 3))      # FIXED_NEWSTYLE | NO_ZEROES
        if auto_tls and self.args.tls and self.args.starttls:
            self.starttls()

    def opt(self, opt, payload=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(payload)) + payload)

    def reply(self, opt):
        magic, ropt, rtype, rlen = struct.unpack(">QIII", self.recv(20))
        check(magic == REP_MAGIC, "bad option reply magic %#x" % magic)
        check(ropt == opt, "reply to option %d, expected %d" % (ropt, opt))
        return rtype, self.recv(rlen)

    def expect_ack(self, opt, what):
        # "Option reply": magic, option, NBD_REP_ACK, length 0.
        self.expect(struct.pack(">QIII", REP_MAGIC, opt, REP_ACK, 0), what)

    def expect_err(self, opt, err, what):
        rtype, body = self.reply(opt)
        check(rtype == err, "%s: reply %#x, expected %#x" % (what, rtype, err))
        check(len(body) > 0, "%s: error reply without a message" % what)
        return body

    def starttls(self):
        self.opt(OPT_STARTTLS)
        self.expect_ack(OPT_STARTTLS, "STARTTLS")
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.args.tls, "ca-cert.pem"))
        ctx.load_cert_chain(os.path.join(self.args.tls, "client-cert.pem"),
                            os.path.join(self.args.tls, "client-key.pem"))
        self.s = ctx.wrap_socket(self.s, server_hostname="localhost")
        self.ext = self.structured = False

    def extended(self):
        self.opt(OPT_EXTENDED_HEADERS)
        self.expect_ack(OPT_EXTENDED_HEADERS, "NBD_OPT_EXTENDED_HEADERS")
        self.ext = self.structured = True

    def structured_reply(self):
        self.opt(OPT_STRUCTURED_REPLY)
        self.expect_ack(OPT_STRUCTURED_REPLY, "NBD_OPT_STRUCTURED_REPLY")
        self.structured = True

    def set_meta(self, names):
        name = self.args.export.encode()
        p = struct.pack(">I", len(name)) + name + struct.pack(">I", len(names))
        for n in names:
            p += struct.pack(">I", len(n)) + n.encode()
        self.opt(OPT_SET_META, p)
        ids = {}
        while True:
            rtype, body = self.reply(OPT_SET_META)
            if rtype == REP_ACK:
                check(body == b"", "ACK with a payload")
                return ids
            check(rtype == REP_META, "SET_META reply %#x" % rtype)
            ids[body[4:].decode()] = struct.unpack(">I", body[:4])[0]

    def go(self, opt=OPT_GO):
        name = self.args.export.encode()
        self.opt(opt, struct.pack(">I", len(name)) + name
                 + struct.pack(">HH", 1, INFO_BLOCK_SIZE))
        info = {}
        while True:
            rtype, body = self.reply(opt)
            if rtype == REP_ACK:
                check(body == b"", "ACK with a payload")
                break
            check(rtype == REP_INFO, "GO reply %#x: %r" % (rtype, body))
            itype = struct.unpack(">H", body[:2])[0]
            if itype == INFO_EXPORT:
                check(len(body) == 12, "NBD_INFO_EXPORT length %d" % len(body))
                info["size"], info["eflags"] = struct.unpack(">QH", body[2:])
            elif itype == INFO_BLOCK_SIZE:
                check(len(body) == 14, "NBD_INFO_BLOCK_SIZE length")
                info["min"], info["pref"], info["max"] = \
                    struct.unpack(">III", body[2:])
        check("size" in info, "no NBD_INFO_EXPORT")
        self.size, self.eflags = info["size"], info["eflags"]
        self.max_payload = info.get("max", MAX_PAYLOAD)
        return info

    # ---- transmission -------------------------------------------------

    def request(self, cmd, offset, length, flags=0, cookie=None,
                payload=b""):
        cookie = cmd * 1000 + 7 if cookie is None else cookie
        if self.ext:
            hdr = struct.pack(">IHHQQQ", EXT_REQ_MAGIC, flags, cmd, cookie,
                              offset, length)
        else:
            hdr = struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie,
                              offset, length)
        self.send(hdr + payload)
        return cookie

    def chunk_hdr(self, flags, rtype, cookie, offset, length):
        """The exact bytes of a reply chunk header as negotiated."""
        if self.ext:
            return struct.pack(">IHHQQQ", EXT_REPLY_MAGIC, flags, rtype,
                               cookie, offset, length)
        return struct.pack(">IHHQI", STRUCT_MAGIC, flags, rtype, cookie,
                           length)

    def read_chunk(self, cookie, offset, what):
        """A chunk of the reply to COOKIE; the header is checked against
        the layout and the request's cookie and offset."""
        if self.ext:
            magic, flags, rtype, ck, off, length = \
                struct.unpack(">IHHQQQ", self.recv(32))
            check(magic == EXT_REPLY_MAGIC,
                  "%s: reply magic %#x, want extended" % (what, magic))
            check(off == offset, "%s: header offset %d, want the request's %d"
                  % (what, off, offset))
        else:
            magic, flags, rtype, ck, length = \
                struct.unpack(">IHHQI", self.recv(20))
            check(magic == STRUCT_MAGIC, "%s: reply magic %#x" % (what, magic))
        check(ck == cookie, "%s: cookie %#x, want %#x" % (what, ck, cookie))
        check(flags & ~REPLY_FLAG_DONE == 0, "%s: reply flags %#x"
              % (what, flags))
        check(length < 64 * MiB, "%s: chunk length %d" % (what, length))
        return flags, rtype, self.recv(length)

    def expect_none(self, cookie, offset, what):
        self.expect(self.chunk_hdr(REPLY_FLAG_DONE, TYPE_NONE, cookie, offset,
                                   0), what)

    def expect_simple(self, cookie, err, what):
        self.expect(struct.pack(">IIQ", SIMPLE_MAGIC, err, cookie), what)

    def expect_error(self, cookie, offset, err, what):
        flags, rtype, body = self.read_chunk(cookie, offset, what)
        check(flags == REPLY_FLAG_DONE and rtype == TYPE_ERROR,
              "%s: chunk flags %d type %#x, want a final NBD_REPLY_TYPE_ERROR"
              % (what, flags, rtype))
        check(len(body) >= 6, "%s: error chunk of %d bytes" % (what, len(body)))
        e, mlen = struct.unpack(">IH", body[:6])
        check(e == err, "%s: error %d, want %d" % (what, e, err))
        check(mlen == len(body) - 6, "%s: message length %d in %d bytes"
              % (what, mlen, len(body)))
        check(mlen > 0, "%s: no message" % what)

    def read_data(self, offset, length, flags=0, what="READ"):
        """READ through structured or extended chunks; returns the bytes
        and the chunk types seen."""
        cookie = self.request(CMD_READ, offset, length, flags)
        buf = bytearray(length)
        covered = 0
        types = []
        while True:
            cflags, rtype, body = self.read_chunk(cookie, offset, what)
            types.append(rtype)
            if rtype == TYPE_OFFSET_DATA:
                o = struct.unpack(">Q", body[:8])[0]
                n = len(body) - 8
                check(n > 0 and offset <= o and o + n <= offset + length,
                      "%s: data chunk %d+%d outside the request" % (what, o, n))
                buf[o - offset:o - offset + n] = body[8:]
                covered += n
            elif rtype == TYPE_OFFSET_HOLE:
                check(len(body) == 12, "%s: hole chunk of %d bytes"
                      % (what, len(body)))
                o, n = struct.unpack(">QI", body)
                check(n > 0 and offset <= o and o + n <= offset + length,
                      "%s: hole chunk %d+%d outside the request" % (what, o, n))
                covered += n
            elif rtype != TYPE_NONE:
                raise Bad("%s: chunk type %#x" % (what, rtype))
            if cflags & REPLY_FLAG_DONE:
                break
        check(covered == length, "%s: chunks cover %d of %d bytes"
              % (what, covered, length))
        return bytes(buf), types

    def block_status(self, offset, length, flags=0, payload=b"",
                     what="BLOCK_STATUS"):
        """BLOCK_STATUS; returns {context id: [(length, status)]}."""
        if payload:
            cookie = self.request(CMD_BLOCK_STATUS, offset, len(payload),
                                  flags | FLAG_PAYLOAD_LEN, payload=payload)
        else:
            cookie = self.request(CMD_BLOCK_STATUS, offset, length, flags)
        out = {}
        while True:
            cflags, rtype, body = self.read_chunk(cookie, offset, what)
            if rtype == TYPE_ERROR:
                raise Bad("%s: error %r" % (what, body))
            if self.ext:
                check(rtype == TYPE_BLOCK_STATUS_EXT,
                      "%s: chunk type %d, want NBD_REPLY_TYPE_BLOCK_STATUS_EXT"
                      % (what, rtype))
                check(len(body) >= 8 + 16 and (len(body) - 8) % 16 == 0,
                      "%s: BLOCK_STATUS_EXT length %d" % (what, len(body)))
                cid, count = struct.unpack(">II", body[:8])
                check(count * 16 + 8 == len(body),
                      "%s: descriptor count %d in %d bytes"
                      % (what, count, len(body)))
                ents = [struct.unpack(">QQ", body[8 + 16 * i:24 + 16 * i])
                        for i in range(count)]
                for _, st in ents:
                    check(st >> 32 == 0, "%s: high status bits set" % what)
            else:
                check(rtype == TYPE_BLOCK_STATUS,
                      "%s: chunk type %d" % (what, rtype))
                check(len(body) >= 12 and (len(body) - 4) % 8 == 0,
                      "%s: BLOCK_STATUS length %d" % (what, len(body)))
                cid = struct.unpack(">I", body[:4])[0]
                ents = [struct.unpack(">II", body[4 + 8 * i:12 + 8 * i])
                        for i in range((len(body) - 4) // 8)]
            check(cid not in out, "%s: two chunks for context %d" % (what, cid))
            for n, _ in ents:
                check(n > 0, "%s: empty extent" % what)
            total = 0
            for n, _ in ents[:-1]:
                total += n
            check(total < length, "%s: extents before the last reach past "
                  "the request" % what)
            if flags & FLAG_REQ_ONE:
                check(len(ents) == 1 and ents[0][0] <= length,
                      "%s: REQ_ONE gave %r" % (what, ents))
            out[cid] = ents
            if cflags & REPLY_FLAG_DONE:
                return out


# ---- setup -------------------------------------------------------------

def connect(args, mode="ext", meta=True):
    """A connection in the transmission phase: MODE is "ext", "sr-ext"
    (structured replies first), "structured" or "plain"."""
    c = Conn(args)
    c.greet()
    if mode == "sr-ext":
        c.structured_reply()
        c.extended()
    elif mode == "ext":
        c.extended()
    elif mode == "structured":
        c.structured_reply()
    c.ids = {}
    if meta and mode != "plain":
        c.ids = c.set_meta(CONTEXTS)
        check(sorted(c.ids) == sorted(CONTEXTS), "contexts %r" % c.ids)
    c.go()
    return c


def ref_bytes(args, offset, length):
    with open(args.ref, "rb") as f:
        f.seek(offset)
        b = f.read(length)
    return b + bytes(length - len(b))


def finish(c):
    """NBD_CMD_DISC: the server closes without a reply."""
    c.request(CMD_DISC, 0, 0)
    c.expect_eof("after NBD_CMD_DISC")
    c.close()


# ---- the cases ---------------------------------------------------------

def case_negotiate(args):
    """The option's replies and ordering rules, byte for byte."""
    c = Conn(args)
    c.greet()
    # A payload: NBD_REP_ERR_INVALID, and the payload consumed.
    c.opt(OPT_EXTENDED_HEADERS, b"xyz")
    c.expect_err(OPT_EXTENDED_HEADERS, REP_ERR_INVALID, "EXTENDED_HEADERS "
                 "with a payload")
    c.extended()
    # Twice: refused, still extended.
    c.opt(OPT_EXTENDED_HEADERS)
    c.expect_err(OPT_EXTENDED_HEADERS, REP_ERR_INVALID, "EXTENDED_HEADERS "
                 "twice")
    # Structured replies after extended headers: no downgrade.
    c.opt(OPT_STRUCTURED_REPLY)
    c.expect_err(OPT_STRUCTURED_REPLY, REP_ERR_EXT_HEADER_REQD,
                 "STRUCTURED_REPLY after EXTENDED_HEADERS")
    # Meta contexts work without structured replies negotiated.
    ids = c.set_meta(CONTEXTS)
    check(len(ids) == 2, "SET_META after EXTENDED_HEADERS: %r" % ids)
    info = c.go(OPT_INFO)
    check(info["eflags"] & FLAG_BLOCK_STAT_PAYLOAD,
          "BLOCK_STAT_PAYLOAD not advertised with extended headers and "
          "contexts: %#x" % info["eflags"])
    check(info["eflags"] & FLAG_SEND_DF, "DF not advertised")
    c.go()
    c.ext = c.structured = True
    cookie = c.request(CMD_FLUSH, 0, 0)
    c.expect_none(cookie, 0, "FLUSH after GO")
    finish(c)

    # Structured replies first, then extended headers: allowed; no
    # contexts, so no BLOCK_STAT_PAYLOAD.
    c = Conn(args)
    c.greet()
    c.structured_reply()
    c.extended()
    info = c.go()
    check(not info["eflags"] & FLAG_BLOCK_STAT_PAYLOAD,
          "BLOCK_STAT_PAYLOAD advertised without contexts")
    cookie = c.request(CMD_FLUSH, 4096, 0, cookie=0x1122334455667788)
    c.expect_none(cookie, 4096, "FLUSH, extended after structured")
    finish(c)

    # Compact clients never see the flag.
    for mode in ("structured", "plain"):
        c = connect(args, mode)
        check(not c.eflags & FLAG_BLOCK_STAT_PAYLOAD,
              "BLOCK_STAT_PAYLOAD advertised to a %s client" % mode)
        check(bool(c.eflags & FLAG_SEND_DF) == (mode == "structured"),
              "DF advertised wrongly to a %s client" % mode)
        finish(c)

    # EXPORT_NAME after extended headers: the client broke a MUST and
    # the option has no error reply, so the server hangs up.
    c = Conn(args)
    c.greet()
    c.extended()
    name = args.export.encode()
    c.opt(OPT_EXPORT_NAME, name)
    c.expect_eof("EXPORT_NAME after EXTENDED_HEADERS")
    c.close()


def case_tls_reset(args):
    """STARTTLS forgets extended headers negotiated in clear text
    (server with --tls=on)."""
    c = Conn(args)
    c.greet(auto_tls=False)
    c.extended()
    c.set_meta(CONTEXTS)
    c.starttls()
    info = c.go()
    check(not info["eflags"] & FLAG_BLOCK_STAT_PAYLOAD,
          "state kept across STARTTLS: %#x" % info["eflags"])
    # Compact, simple replies: nothing of before survived.
    cookie = c.request(CMD_FLUSH, 0, 0)
    c.expect_simple(cookie, 0, "FLUSH after STARTTLS reset")
    data = c.request(CMD_READ, 0, 4096)
    c.expect_simple(data, 0, "READ after STARTTLS reset")
    check(c.recv(4096) == ref_bytes(args, 0, 4096), "READ data after reset")
    finish(c)
    # Negotiated again inside TLS, they work.
    c = Conn(args)
    c.greet(auto_tls=False)
    c.starttls()
    c.extended()
    c.ids = c.set_meta(CONTEXTS)
    c.go()
    check(c.eflags & FLAG_BLOCK_STAT_PAYLOAD, "no BLOCK_STAT_PAYLOAD in TLS")
    got, _ = c.read_data(0, 65536)
    check(got == ref_bytes(args, 0, 65536), "READ in TLS with extended "
          "headers")
    finish(c)


def case_tls_required(args):
    """With --tls=require the option waits for TLS like any other."""
    c = Conn(args)
    c.greet(auto_tls=False)
    c.opt(OPT_EXTENDED_HEADERS)
    c.expect_err(OPT_EXTENDED_HEADERS, REP_ERR_TLS_REQD,
                 "EXTENDED_HEADERS before STARTTLS")
    c.starttls()
    c.extended()
    c.go()
    cookie = c.request(CMD_FLUSH, 0, 0)
    c.expect_none(cookie, 0, "FLUSH over TLS")
    finish(c)


def case_read(args):
    """READ: OFFSET_DATA and OFFSET_HOLE chunks under extended headers,
    every header carrying the request's offset; DF; a READ over the
    maximum payload; NONE for FLUSH and CACHE."""
    c = connect(args)
    size = c.size
    # Exactly one data chunk for a small data read, byte for byte.
    cookie = c.request(CMD_READ, 512, 4096, FLAG_DF, cookie=0xdeadbeef)
    c.expect(c.chunk_hdr(REPLY_FLAG_DONE, TYPE_OFFSET_DATA, 0xdeadbeef, 512,
                         8 + 4096) + struct.pack(">Q", 512)
             + ref_bytes(args, 512, 4096), "READ with DF")
    # Mixed data and holes: the chunks cover the range.
    for off, n in ((0, 4 * MiB), (1 * MiB - 4096, 2 * MiB),
                   (size - 3 * MiB, 3 * MiB)):
        got, types = c.read_data(off, n)
        check(got == ref_bytes(args, off, n), "READ %d+%d: wrong data"
              % (off, n))
    # A hole read over a zeroed area gives a hole chunk, byte for byte.
    cookie = c.request(CMD_READ, 2 * MiB, 65536, cookie=77)
    c.expect(c.chunk_hdr(REPLY_FLAG_DONE, TYPE_OFFSET_HOLE, 77, 2 * MiB, 12)
             + struct.pack(">QI", 2 * MiB, 65536), "READ of a hole")
    # Over the maximum payload: EOVERFLOW, the connection goes on.
    cookie = c.request(CMD_READ, 0, MAX_PAYLOAD + 512)
    c.expect_error(cookie, 0, EOVERFLOW, "READ over the maximum")
    # An effect length over 4 GiB cannot be read either.
    cookie = c.request(CMD_READ, 0, 5 * GiB)
    c.expect_error(cookie, 0, EOVERFLOW, "READ of 5 GiB")
    cookie = c.request(CMD_FLUSH, 0, 0)
    c.expect_none(cookie, 0, "FLUSH")
    cookie = c.request(CMD_CACHE, 0, size)
    c.expect_none(cookie, 0, "CACHE of the whole export (%d bytes)" % size)
    finish(c)


def case_write(args):
    """WRITE with NBD_CMD_FLAG_PAYLOAD_LEN; without it; PAYLOAD_LEN on
    commands without a payload; bad and oversized payload lengths."""
    c = connect(args)
    scratch = c.size - 8 * MiB
    data = bytes((i * 7) & 0xff for i in range(65536))
    cookie = c.request(CMD_WRITE, scratch, len(data),
                       FLAG_PAYLOAD_LEN | FLAG_FUA, payload=data)
    c.expect_none(cookie, scratch, "WRITE with PAYLOAD_LEN")
    got, _ = c.read_data(scratch, len(data))
    check(got == data, "data written with extended headers read back wrong")
    # WRITE without PAYLOAD_LEN: no payload was sent, EINVAL, in step.
    cookie = c.request(CMD_WRITE, scratch, 4096)
    c.expect_error(cookie, scratch, EINVAL, "WRITE without PAYLOAD_LEN")
    # PAYLOAD_LEN on commands that take none: the payload is consumed
    # (it looks like a request; executed, it would be visible) and the
    # command fails with EINVAL.
    evil = struct.pack(">IHHQQQ", EXT_REQ_MAGIC, 0, CMD_WRITE_ZEROES, 1,
                       scratch, 65536)
    for cmd in (CMD_READ, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_FLUSH):
        cookie = c.request(cmd, scratch, len(evil), FLAG_PAYLOAD_LEN,
                           payload=evil)
        c.expect_error(cookie, scratch, EINVAL,
                       "PAYLOAD_LEN on command %d" % cmd)
    got, _ = c.read_data(scratch, len(data))
    check(got == data, "a payload was executed as a request")
    # A payload length over the maximum: the server hangs up (it cannot
    # stay in step without reading 64 MiB of nothing).
    c.request(CMD_WRITE, scratch, 2 * MAX_PAYLOAD, FLAG_PAYLOAD_LEN)
    c.expect_eof("WRITE payload over the maximum")
    c.close()
    # Restore the scratch area.
    c = connect(args)
    orig = ref_bytes(args, scratch, len(data))
    cookie = c.request(CMD_WRITE, scratch, len(orig), FLAG_PAYLOAD_LEN,
                       payload=orig)
    c.expect_none(cookie, scratch, "restoring WRITE")
    # A compact magic on an extended connection (in a 32-byte header):
    # hung up.
    c.send(struct.pack(">IHHQQQ", REQ_MAGIC, 0, CMD_READ, 1, 0, 512))
    c.expect_eof("compact request on an extended connection")
    c.close()


def case_effect(args):
    """Effect lengths over 4 GiB for TRIM, WRITE_ZEROES, CACHE and
    BLOCK_STATUS; past the end they fail as they should."""
    c = connect(args)
    size = c.size
    check(size > 6 * GiB, "the export must be over 6 GiB")
    lo = 64 * MiB
    n = 5 * GiB + 64 * KiB
    # Data in the range first, so that zeroing has work to do.
    blob = b"\x5a" * 65536
    for off in (lo, lo + 4 * GiB + 3 * MiB, lo + n - 65536):
        cookie = c.request(CMD_WRITE, off, len(blob), FLAG_PAYLOAD_LEN,
                           payload=blob)
        c.expect_none(cookie, off, "WRITE before the zeroing")
    cookie = c.request(CMD_WRITE_ZEROES, lo, n, cookie=0x5a5a)
    c.expect_none(cookie, lo, "WRITE_ZEROES of %d bytes" % n)
    st = c.block_status(lo, n)
    base = st[c.ids["base:allocation"]]
    check(base[0][0] >= n and base[0][1] & STATE_ZERO,
          "after WRITE_ZEROES of 5 GiB: %r" % base[:4])
    got, _ = c.read_data(lo + 4 * GiB + 3 * MiB, 65536)
    check(got == bytes(65536), "zeroed data does not read as zeros")
    cookie = c.request(CMD_TRIM, lo, n)
    c.expect_none(cookie, lo, "TRIM of %d bytes" % n)
    cookie = c.request(CMD_CACHE, 0, size)
    c.expect_none(cookie, 0, "CACHE of %d bytes" % size)
    # Past the end: WRITE_ZEROES ENOSPC, the others EINVAL; 2^64-1 too.
    for cmd, err in ((CMD_WRITE_ZEROES, ENOSPC), (CMD_TRIM, EINVAL),
                     (CMD_CACHE, EINVAL), (CMD_BLOCK_STATUS, EINVAL)):
        for off, ln in ((0, size + 1), (size - 4096, 8192),
                        (4096, (1 << 64) - 1)):
            cookie = c.request(cmd, off, ln)
            c.expect_error(cookie, off, err, "command %d %d+%d past the end"
                           % (cmd, off, ln))
    # Zero length BLOCK_STATUS: EINVAL, not a disconnect.
    cookie = c.request(CMD_BLOCK_STATUS, 0, 0)
    c.expect_error(cookie, 0, EINVAL, "BLOCK_STATUS of length 0")
    # Unknown command: EINVAL.
    cookie = c.request(99, 0, 4096)
    c.expect_error(cookie, 0, EINVAL, "unknown command")
    finish(c)


def case_block_status(args):
    """NBD_REPLY_TYPE_BLOCK_STATUS_EXT byte for byte, REQ_ONE, and the
    payload form with its id checks."""
    c = connect(args)
    size = c.size
    b_id = c.ids["base:allocation"]
    d_id = c.ids["qemu:allocation-depth"]
    # A hole at 2 MiB, 64 KiB long in a zeroed area: exact bytes of the
    # REQ_ONE reply for the payload form naming base:allocation only.
    payload = struct.pack(">QI", 65536, b_id)
    cookie = c.request(CMD_BLOCK_STATUS, 2 * MiB, len(payload),
                       FLAG_REQ_ONE | FLAG_PAYLOAD_LEN, cookie=0xb5,
                       payload=payload)
    c.expect(c.chunk_hdr(REPLY_FLAG_DONE, TYPE_BLOCK_STATUS_EXT, 0xb5,
                         2 * MiB, 8 + 16)
             + struct.pack(">IIQQ", b_id, 1, 65536, STATE_HOLE | STATE_ZERO),
             "BLOCK_STATUS payload form, REQ_ONE")
    # The whole export: each context's extents, compared with the
    # compact answer of a structured client.
    full = c.block_status(0, size)
    check(sorted(full) == sorted([b_id, d_id]), "contexts %r" % list(full))
    s = connect(args, "structured")
    sb = s.ids["base:allocation"]
    pos = 0
    compact = []
    while pos < size:
        n = min(size - pos, 4 * GiB - 65536)
        e = s.block_status(pos, n)[sb]
        compact += e
        pos += sum(x for x, _ in e)
    finish(s)

    def merged(ents):
        out = []
        for n, st in ents:
            if out and out[-1][1] == st:
                out[-1][0] += n
            else:
                out.append([n, st])
        return out
    ours, theirs = merged(full[b_id]), merged(compact)
    if sum(n for n, _ in full[b_id]) < size:
        # A prefix: the last extent may be cut short.
        ours, theirs = ours[:-1], theirs[:len(ours) - 1]
    check(ours == theirs, "extended and compact block status differ: "
          "%r / %r" % (ours[:6], theirs[:6]))
    # The payload form selects one context, or both in any order.
    for ids in ([d_id], [d_id, b_id]):
        p = struct.pack(">Q", 8 * MiB) + b"".join(struct.pack(">I", i)
                                                   for i in ids)
        got = c.block_status(0, 8 * MiB, payload=p)
        check(sorted(got) == sorted(ids), "payload ids %r answered %r"
              % (ids, list(got)))
    # Bad payloads: consumed, EINVAL, and the connection goes on.
    bad = [
        ("a repeated id", struct.pack(">QII", 4096, b_id, b_id)),
        ("an unknown id", struct.pack(">QI", 4096, 99)),
        ("id 0", struct.pack(">QI", 4096, 0)),
        ("no ids", struct.pack(">Q", 4096)),
        ("a length not 8+4n", struct.pack(">QI", 4096, b_id) + b"xy"),
        ("a zero effect length", struct.pack(">QI", 0, b_id)),
        ("an effect past the end", struct.pack(">QI", size + 1, b_id)),
        ("a long payload", struct.pack(">Q", 4096)
         + struct.pack(">I", b_id) * 2000),
    ]
    for what, p in bad:
        cookie = c.request(CMD_BLOCK_STATUS, 0, len(p), FLAG_PAYLOAD_LEN,
                           payload=p)
        c.expect_error(cookie, 0, EINVAL, "BLOCK_STATUS payload with " + what)
    got = c.block_status(0, 65536, FLAG_REQ_ONE)
    check(sorted(got) == sorted([b_id, d_id]), "after the bad payloads")
    finish(c)
    # Only one context selected: the payload may name only it.
    c = connect(args, meta=False)
    check(not c.eflags & FLAG_BLOCK_STAT_PAYLOAD, "flag without contexts")
    cookie = c.request(CMD_BLOCK_STATUS, 0, 4096)
    c.expect_error(cookie, 0, EINVAL, "BLOCK_STATUS without contexts")
    p = struct.pack(">QI", 4096, 1)
    cookie = c.request(CMD_BLOCK_STATUS, 0, len(p), FLAG_PAYLOAD_LEN,
                       payload=p)
    c.expect_error(cookie, 0, EINVAL, "payload form without the flag")
    finish(c)


def case_compact(args):
    """Compact clients beside: PAYLOAD_LEN is not theirs, and replies
    are simple or structured exactly as before."""
    for mode in ("plain", "structured"):
        c = connect(args, mode)
        c.request(CMD_READ, 4096, 512, cookie=5)
        if mode == "plain":
            c.expect(struct.pack(">IIQ", SIMPLE_MAGIC, 0, 5)
                     + ref_bytes(args, 4096, 512), "plain READ")
        else:
            c.expect(c.chunk_hdr(REPLY_FLAG_DONE, TYPE_OFFSET_DATA, 5, 4096,
                                 8 + 512) + struct.pack(">Q", 4096)
                     + ref_bytes(args, 4096, 512), "structured READ")
        # A compact WRITE with PAYLOAD_LEN: the payload still follows
        # (compact rule) and is thrown away; EINVAL.
        scratch = c.size - 8 * MiB
        c.request(CMD_WRITE, scratch, 512, FLAG_PAYLOAD_LEN, cookie=6,
                  payload=b"\xee" * 512)
        if mode == "plain":
            c.expect_simple(6, EINVAL, "plain WRITE with PAYLOAD_LEN")
        else:
            c.expect_error(6, scratch, EINVAL,
                           "structured WRITE with PAYLOAD_LEN")
        c.request(CMD_FLUSH, 0, 0, cookie=8)
        if mode == "plain":
            c.expect_simple(8, 0, "plain FLUSH")
        else:
            c.expect_none(8, 0, "structured FLUSH")
        # The extended magic is not a compact request.
        c.send(struct.pack(">IHHQQQ", EXT_REQ_MAGIC, 0, CMD_READ, 1, 0, 512))
        c.expect_eof("extended request on a %s connection" % mode)
        c.close()


def case_huge(args):
    """A 1 TiB export: one BLOCK_STATUS covers it whole, one
    WRITE_ZEROES zeroes it whole, one BLOCK_STATUS then says so."""
    c = connect(args)
    size = c.size
    check(size >= TiB, "export of %d bytes, want 1 TiB" % size)
    b_id = c.ids["base:allocation"]
    d_id = c.ids["qemu:allocation-depth"]
    st = c.block_status(0, size)
    print("before: %r" % {k: v[:4] for k, v in st.items()})
    covered = {k: sum(n for n, _ in v) for k, v in st.items()}
    check(all(v == size for v in covered.values()),
          "one BLOCK_STATUS did not cover the export: %r" % covered)
    cookie = c.request(CMD_WRITE_ZEROES, 0, size, cookie=0x7b)
    c.expect_none(cookie, 0, "WRITE_ZEROES of the whole export")
    st = c.block_status(0, size)
    check(st[b_id] == [(size, STATE_HOLE | STATE_ZERO)],
          "base:allocation after zeroing: %r" % st[b_id][:4])
    check(st[d_id] == [(size, 1)],
          "allocation-depth after zeroing: %r" % st[d_id][:4])
    got, _ = c.read_data(size // 2, 65536)
    check(got == bytes(65536), "zeroed data does not read as zeros")
    cookie = c.request(CMD_FLUSH, 0, 0)
    c.expect_none(cookie, 0, "FLUSH")
    finish(c)


def case_pipeline(args):
    """Many requests in flight at once (the server reads them in
    batches): every reply comes, whole, under its own cookie."""
    c = connect(args)
    scratch = c.size - 8 * MiB
    n = 256
    blob = bytes(range(256)) * 16
    reqs = b""
    for i in range(n):
        if i % 4 == 1:
            reqs += struct.pack(">IHHQQQ", EXT_REQ_MAGIC, FLAG_PAYLOAD_LEN,
                                CMD_WRITE, 0x10000 + i, scratch + 4096 * i,
                                4096) + blob
        else:
            reqs += struct.pack(">IHHQQQ", EXT_REQ_MAGIC, FLAG_DF, CMD_READ,
                                0x10000 + i, 4096 * i, 4096)
    c.send(reqs)
    seen = set()
    for _ in range(n):
        magic, flags, rtype, ck, off, length = \
            struct.unpack(">IHHQQQ", c.recv(32))
        check(magic == EXT_REPLY_MAGIC, "pipelined reply magic %#x" % magic)
        i = ck - 0x10000
        check(0 <= i < n and i not in seen and flags == REPLY_FLAG_DONE,
              "pipelined reply cookie %#x flags %d" % (ck, flags))
        seen.add(i)
        body = c.recv(length)
        if i % 4 == 1:
            check(rtype == TYPE_NONE and off == scratch + 4096 * i,
                  "pipelined WRITE reply")
        else:
            check(rtype == TYPE_OFFSET_DATA and off == 4096 * i
                  and body == struct.pack(">Q", 4096 * i)
                  + ref_bytes(args, 4096 * i, 4096), "pipelined READ reply")
    # Put the scratch area back.
    for i in range(1, n, 4):
        orig = ref_bytes(args, scratch + 4096 * i, 4096)
        cookie = c.request(CMD_WRITE, scratch + 4096 * i, 4096,
                           FLAG_PAYLOAD_LEN, payload=orig)
        c.expect_none(cookie, scratch + 4096 * i, "restoring WRITE")
    finish(c)


def case_bitmap(args):
    """A qemu:dirty-bitmap:b0 context under extended headers: the dirty
    runs the shell test made (1M+64k, 100M+1M, 5G+64k), in one
    BLOCK_STATUS_EXT chunk over the whole export, the same as a
    structured client's compact answer, and alone by the payload form."""
    names = ["base:allocation", "qemu:dirty-bitmap:b0"]
    c = Conn(args)
    c.greet()
    c.extended()
    ids = c.set_meta(names)
    check(sorted(ids) == sorted(names), "contexts %r" % ids)
    c.go()
    size = c.size
    bid = ids["qemu:dirty-bitmap:b0"]
    want = [(0, 1 * MiB), (1, 64 * KiB), (0, 99 * MiB - 64 * KiB),
            (1, 1 * MiB), (0, 5 * GiB - 101 * MiB), (1, 64 * KiB),
            (0, size - 5 * GiB - 64 * KiB)]
    want = [(n, st) for st, n in want]
    got = c.block_status(0, size)[bid]
    check(got == want, "dirty bitmap extents %r, want %r" % (got, want))
    p = struct.pack(">QI", size, bid)
    got = c.block_status(0, size, payload=p)
    check(list(got) == [bid] and got[bid] == want,
          "payload form naming the bitmap: %r" % got)
    # REQ_ONE from inside a dirty run.
    got = c.block_status(100 * MiB + 4096, 4 * GiB, FLAG_REQ_ONE)[bid]
    check(got == [(1 * MiB - 4096, 1)], "REQ_ONE in a dirty run: %r" % got)
    finish(c)
    s = Conn(args)
    s.greet()
    s.structured_reply()
    sids = s.set_meta(names)
    s.go()
    pos, compact = 0, []
    while pos < size:
        e = s.block_status(pos, min(size - pos, 4 * GiB - 65536))
        e = e[sids["qemu:dirty-bitmap:b0"]]
        compact += e
        pos += sum(n for n, _ in e)
    finish(s)
    merged = []
    for n, st in compact:
        if merged and merged[-1][1] == st:
            merged[-1] = (merged[-1][0] + n, st)
        else:
            merged.append((n, st))
    check(merged == want, "compact bitmap extents %r" % merged[:8])


CASES = {
    "negotiate": case_negotiate,
    "tls-reset": case_tls_reset,
    "tls-required": case_tls_required,
    "read": case_read,
    "write": case_write,
    "effect": case_effect,
    "block-status": case_block_status,
    "compact": case_compact,
    "pipeline": case_pipeline,
    "bitmap": case_bitmap,
    "huge": case_huge,
}


class Args:
    pass


def main(argv):
    if argv[1:] == ["--list"]:
        print(" ".join(CASES))
        return 0
    a = Args()
    a.unix = a.tls = None
    a.port = 0
    a.starttls = False
    rest = argv[1:]
    while rest and rest[0].startswith("--"):
        o = rest.pop(0)
        if o == "--unix":
            a.unix = rest.pop(0)
        elif o == "--port":
            a.port = int(rest.pop(0))
        elif o == "--tls":
            a.tls = rest.pop(0)
        elif o == "--starttls":
            a.starttls = True
        else:
            raise SystemExit("unknown option " + o)
    a.export, a.ref = rest[0], rest[1]
    failed = 0
    for name in rest[2:]:
        try:
            CASES[name](a)
            print("ok: exthdr case %s" % name)
        except (Bad, OSError, struct.error) as e:
            print("FAIL: exthdr case %s: %s" % (name, e), file=sys.stderr)
            failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main(sys.argv))
