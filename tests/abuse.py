#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# A deliberately rude NBD client on raw sockets.  Each case breaks one
# rule of the handshake or the transmission phase and checks that the
# server answers as the protocol says (an error reply, ERR_UNSUP, a
# disconnect) and, where the connection should survive, that it still
# serves correct data afterwards.  Whether the server itself survived is
# checked by the calling shell test after every case.
#   abuse.py HOST PORT EXPORT REFERENCE.raw CASE
#   abuse.py --list
# Exit 0: behaved; 1: wrong behaviour (message on stderr).

import os
import random
import socket
import struct
import sys
import time

from rawnbd import (
    NBD_MAGIC, IHAVEOPT, REP_MAGIC, REQ_MAGIC, SIMPLE_MAGIC, STRUCT_MAGIC,
    OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO,
    OPT_STRUCTURED_REPLY, OPT_SET_META, REP_ACK, REP_SERVER,
    REP_INFO, REP_META, ERR, REP_ERR_UNSUP, REP_ERR_INVALID,
    REP_ERR_UNKNOWN, REP_ERR_TOO_BIG, INFO_EXPORT, CMD_READ, CMD_WRITE,
    CMD_DISC, CMD_BLOCK_STATUS, REPLY_FLAG_DONE, TYPE_NONE,
    TYPE_OFFSET_DATA, TYPE_OFFSET_HOLE, TYPE_ERROR,
    TYPE_ERROR_OFFSET)

FLAG_FIXED = 1
FLAG_NO_ZEROES = 2
CMD_FLAG_DF = 4

EPERM = 1
EINVAL = 22

TIMEOUT = 20


class Bad(Exception):
    pass


class Closed(Exception):
    pass


def rep_name(t):
    names = {REP_ACK: "ACK", REP_SERVER: "SERVER", REP_INFO: "INFO",
             REP_META: "META_CONTEXT", REP_ERR_UNSUP: "ERR_UNSUP",
             REP_ERR_INVALID: "ERR_INVALID", REP_ERR_UNKNOWN: "ERR_UNKNOWN",
             REP_ERR_TOO_BIG: "ERR_TOO_BIG"}
    return names.get(t, "0x%x" % t)


class Conn:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=TIMEOUT)
        self.handle = 0

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def send(self, data):
        self.s.sendall(data)

    def recv_exact(self, n):
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.s.recv(min(n - len(buf), 1 << 20))
            except ConnectionResetError:
                raise Closed("connection reset after %d of %d bytes"
                             % (len(buf), n))
            except socket.timeout:
                raise Bad("timed out waiting for %d bytes (got %d)"
                          % (n, len(buf)))
            if not chunk:
                raise Closed("EOF after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def expect_close(self, what, timeout=10):
        """The server must close the connection (possibly after sending
        something, which is read and ignored)."""
        self.s.settimeout(timeout)
        got = 0
        try:
            while True:
                chunk = self.s.recv(65536)
                if not chunk:
                    return got
                got += len(chunk)
        except ConnectionResetError:
            return got
        except socket.timeout:
            raise Bad("%s: server did not close the connection within %d s"
                      % (what, timeout))
        finally:
            self.s.settimeout(TIMEOUT)

    # ---- handshake ----

    def greeting(self):
        magic, opt, hflags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBD_MAGIC or opt != IHAVEOPT:
            raise Bad("bad greeting %x %x" % (magic, opt))
        if not hflags & FLAG_FIXED:
            raise Bad("server does not offer fixed newstyle")
        return hflags

    def client_flags(self, flags=FLAG_FIXED | FLAG_NO_ZEROES):
        self.send(struct.pack(">I", flags))

    def start(self):
        self.greeting()
        self.client_flags()

    def option(self, opt, data=b"", magic=IHAVEOPT):
        self.send(struct.pack(">QII", magic, opt, len(data)) + data)

    def reply(self, opt):
        magic, ropt, rtype, length = struct.unpack(">QIII",
                                                   self.recv_exact(20))
        if magic != REP_MAGIC:
            raise Bad("bad option reply magic 0x%x" % magic)
        if ropt != opt:
            raise Bad("reply for option %d, expected %d" % (ropt, opt))
        if length > 64 << 20:
            raise Bad("option reply length %d" % length)
        return rtype, self.recv_exact(length)

    def replies_until_final(self, opt):
        """Read replies to OPT up to the ACK or an error; return the list
        of (type, data) including the final one."""
        out = []
        while True:
            rtype, data = self.reply(opt)
            out.append((rtype, data))
            if rtype == REP_ACK or rtype & ERR:
                return out

    def structured_reply(self):
        self.option(OPT_STRUCTURED_REPLY)
        r = self.replies_until_final(OPT_STRUCTURED_REPLY)
        if r[-1][0] != REP_ACK:
            raise Bad("STRUCTURED_REPLY: %s" % rep_name(r[-1][0]))
        self.structured = True

    def set_meta(self, name, queries):
        data = struct.pack(">I", len(name)) + name
        data += struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        self.option(OPT_SET_META, data)
        return self.replies_until_final(OPT_SET_META)

    def go(self, name, opt=OPT_GO):
        self.option(opt, struct.pack(">I", len(name)) + name +
                    struct.pack(">H", 0))
        r = self.replies_until_final(opt)
        self.size = None
        for rtype, data in r:
            if rtype == REP_INFO and len(data) >= 2:
                (itype,) = struct.unpack(">H", data[:2])
                if itype == INFO_EXPORT and len(data) == 12:
                    self.size, self.eflags = struct.unpack(">QH", data[2:])
        final = r[-1][0]
        if final == REP_ACK and self.size is None:
            raise Bad("GO/INFO acknowledged without NBD_INFO_EXPORT")
        return final

    def go_ok(self, name):
        final = self.go(name)
        if final != REP_ACK:
            raise Bad("GO %r: %s, want ACK" % (name, rep_name(final)))

    # ---- transmission ----

    def request(self, cmd, offset, length, flags=0, magic=REQ_MAGIC,
                payload=b""):
        self.handle += 1
        self.send(struct.pack(">IHHQQI", magic, flags, cmd, self.handle,
                              offset, length) + payload)
        return self.handle

    def read_reply(self, length_for_simple=0):
        """Read one reply (simple or one structured chunk).  Returns a
        dict: handle, error, done, type, and data/offset for reads."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_MAGIC:
            err, handle = struct.unpack(">IQ", self.recv_exact(12))
            data = b""
            if err == 0 and length_for_simple:
                data = self.recv_exact(length_for_simple)
            return {"handle": handle, "error": err, "done": True,
                    "type": None, "data": data}
        if magic != STRUCT_MAGIC:
            raise Bad("bad reply magic 0x%x" % magic)
        flags, rtype, handle, length = struct.unpack(">HHQI",
                                                     self.recv_exact(16))
        if length > (32 << 20) + 64:
            raise Bad("structured chunk of %d bytes" % length)
        payload = self.recv_exact(length)
        r = {"handle": handle, "error": 0, "done": bool(flags &
                                                        REPLY_FLAG_DONE),
             "type": rtype}
        if rtype == TYPE_OFFSET_DATA:
            (r["offset"],) = struct.unpack(">Q", payload[:8])
            r["data"] = payload[8:]
        elif rtype == TYPE_OFFSET_HOLE:
            r["offset"], hl = struct.unpack(">QI", payload)
            r["data"] = bytes(hl)
        elif rtype in (TYPE_ERROR, TYPE_ERROR_OFFSET):
            r["error"], mlen = struct.unpack(">IH", payload[:6])
            if r["error"] == 0:
                raise Bad("error chunk with error 0")
            if 6 + mlen > len(payload):
                raise Bad("error chunk message length %d > payload" % mlen)
        elif rtype == TYPE_NONE:
            if length:
                raise Bad("NONE chunk with payload")
        return r

    def read_cmd(self, offset, length, flags=0):
        """Send a READ and collect the whole answer.  Returns (error,
        data)."""
        h = self.request(CMD_READ, offset, length, flags)
        return self.collect(h, offset, length)

    def collect(self, h, offset, length):
        buf = bytearray(length)
        err = 0
        covered = 0
        while True:
            r = self.read_reply(length)
            if r["handle"] != h:
                raise Bad("reply for handle %d, expected %d"
                          % (r["handle"], h))
            if r["error"]:
                err = r["error"]
            elif "offset" in r:
                o = r["offset"] - offset
                if o < 0 or o + len(r["data"]) > length:
                    raise Bad("chunk [%d,+%d) outside the request [%d,+%d)"
                              % (r["offset"], len(r["data"]), offset,
                                 length))
                buf[o:o + len(r["data"])] = r["data"]
                covered += len(r["data"])
            elif r["type"] is None and not r["error"]:
                buf[:] = r["data"]
                covered = length
            if r["done"]:
                break
        if not err and covered != length:
            raise Bad("read [%d,+%d): chunks cover %d bytes"
                      % (offset, length, covered))
        return err, bytes(buf)


# ---- the cases ------------------------------------------------------------

class Ctx:
    def __init__(self, host, port, name, ref):
        self.host, self.port, self.name = host, port, name
        with open(ref, "rb") as f:
            self.ref = f.read()
        self.size = len(self.ref)

    def conn(self):
        return Conn(self.host, self.port)

    def good_conn(self, structured=True):
        c = self.conn()
        c.start()
        if structured:
            c.structured_reply()
        c.go_ok(self.name)
        if c.size != self.size:
            raise Bad("export size %d, want %d" % (c.size, self.size))
        return c

    def check_read(self, c, offset, length, what):
        err, data = c.read_cmd(offset, length)
        if err:
            raise Bad("%s: READ(%d, %d) failed with %d" % (what, offset,
                                                          length, err))
        if data != self.ref[offset:offset + length]:
            raise Bad("%s: READ(%d, %d) returned wrong data"
                      % (what, offset, length))

    def still_works(self, c, what):
        self.check_read(c, 0, 4096, what)
        self.check_read(c, self.size - 1000, 1000, what)


def expect_final(r, want, what):
    got = r[-1][0]
    if isinstance(want, int):
        want = (want,)
    if got not in want:
        raise Bad("%s: got %s, want %s" % (what, rep_name(got),
                                           "/".join(rep_name(w)
                                                    for w in want)))


def case_garbage_greeting(x):
    c = x.conn()
    c.greeting()
    c.send(bytes([0xde, 0xad, 0xbe, 0xef]) + os.urandom(200))
    c.expect_close("garbage client flags")


def case_unknown_client_flags(x):
    c = x.conn()
    c.greeting()
    c.client_flags(FLAG_FIXED | FLAG_NO_ZEROES | (1 << 9))
    c.expect_close("unknown client flag bit 9")


def case_no_fixed_newstyle(x):
    # Old-newstyle clients are not served (the server requires fixed
    # newstyle); either way the connection must end cleanly or work.
    c = x.conn()
    c.greeting()
    c.client_flags(0)
    c.option(OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 0))
    try:
        c.s.settimeout(10)
        c.recv_exact(20)
    except (Closed, Bad, OSError):
        pass


def case_bad_option_magic(x):
    c = x.conn()
    c.start()
    c.option(OPT_GO, struct.pack(">IH", 0, 0), magic=0x1122334455667788)
    c.expect_close("bad option magic")


def case_long_export_name_go(x):
    c = x.conn()
    c.start()
    name = b"n" * 5000
    final = c.go(name)
    if final == REP_ACK:
        raise Bad("GO with a 5000-byte name acknowledged")
    if not final & ERR:
        raise Bad("GO with a 5000-byte name: %s" % rep_name(final))
    c.structured_reply()
    c.go_ok(x.name)
    x.still_works(c, "after a 5000-byte export name")


def case_long_export_name_info(x):
    c = x.conn()
    c.start()
    final = c.go(b"i" * 5000, opt=OPT_INFO)
    if not final & ERR:
        raise Bad("INFO with a 5000-byte name: %s" % rep_name(final))
    c.go_ok(x.name)
    x.still_works(c, "after INFO with a 5000-byte name")


def case_long_meta_query(x):
    c = x.conn()
    c.start()
    c.structured_reply()
    r = c.set_meta(x.name.encode() if isinstance(x.name, str) else x.name,
                   [b"base:" + b"q" * 5000])
    # Too long: an error, or the query ignored (no context selected).
    for rtype, data in r[:-1]:
        if rtype == REP_META:
            raise Bad("a 5000-byte context query selected a context")
    expect_final(r, (REP_ACK, REP_ERR_TOO_BIG, REP_ERR_INVALID),
                 "SET_META_CONTEXT with a 5000-byte query")
    c.go_ok(x.name)
    x.still_works(c, "after a 5000-byte meta context query")


def case_huge_option_then_hangup(x):
    c = x.conn()
    c.start()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 0xffffffff) + b"x" * 1000)
    c.close()


def case_huge_option_wait(x):
    # A 4 GiB option: the server must not try to buffer it; it may drop
    # the connection or discard while we keep quiet.  Give it a moment to
    # misbehave, then hang up.
    c = x.conn()
    c.start()
    c.send(struct.pack(">QII", IHAVEOPT, 0x4242, 0xfffffff0) + b"y" * 65536)
    time.sleep(0.5)
    c.close()


def case_unknown_option(x):
    c = x.conn()
    c.start()
    for opt in (0x4242, 200, 0x7fffffff):
        c.option(opt, b"some payload")
        r = c.replies_until_final(opt)
        expect_final(r, REP_ERR_UNSUP, "unknown option %d" % opt)
    c.structured_reply()
    c.go_ok(x.name)
    x.still_works(c, "after unknown options")


def case_unknown_export_go(x):
    c = x.conn()
    c.start()
    final = c.go(b"no-such-export-" + os.urandom(4).hex().encode())
    if final != REP_ERR_UNKNOWN:
        raise Bad("GO unknown export: %s, want ERR_UNKNOWN"
                  % rep_name(final))
    c.go_ok(x.name)
    x.still_works(c, "after GO for an unknown export")


def case_unknown_export_name_opt(x):
    # NBD_OPT_EXPORT_NAME cannot be answered with an error: the server
    # closes the connection.
    c = x.conn()
    c.start()
    c.option(OPT_EXPORT_NAME, b"no-such-export")
    c.expect_close("EXPORT_NAME of an unknown export")


def case_export_name_opt(x):
    # The old way in still works: EXPORT_NAME, then size + flags (+ 124
    # zero bytes unless NO_ZEROES), then simple replies.
    c = x.conn()
    c.greeting()
    c.client_flags(FLAG_FIXED)
    c.option(OPT_EXPORT_NAME, x.name)
    size, eflags = struct.unpack(">QH", c.recv_exact(10))
    c.recv_exact(124)
    if size != x.size:
        raise Bad("EXPORT_NAME: size %d want %d" % (size, x.size))
    x.still_works(c, "EXPORT_NAME session with simple replies")


def case_meta_before_structured(x):
    c = x.conn()
    c.start()
    r = c.set_meta(x.name, [b"base:allocation"])
    expect_final(r, REP_ERR_INVALID, "SET_META_CONTEXT before "
                 "STRUCTURED_REPLY")
    c.structured_reply()
    r = c.set_meta(x.name, [b"base:allocation"])
    expect_final(r, REP_ACK, "SET_META_CONTEXT after STRUCTURED_REPLY")
    if not any(t == REP_META for t, _ in r):
        raise Bad("base:allocation not selected")
    c.go_ok(x.name)
    x.still_works(c, "after SET_META_CONTEXT errors")


def case_structured_reply_with_data(x):
    c = x.conn()
    c.start()
    c.option(OPT_STRUCTURED_REPLY, b"junk")
    r = c.replies_until_final(OPT_STRUCTURED_REPLY)
    expect_final(r, REP_ERR_INVALID, "STRUCTURED_REPLY with a payload")
    c.go_ok(x.name)
    x.still_works(c, "after STRUCTURED_REPLY with a payload")


def case_list_then_abort(x):
    c = x.conn()
    c.start()
    c.option(OPT_LIST)
    r = c.replies_until_final(OPT_LIST)
    expect_final(r, REP_ACK, "LIST")
    c.option(OPT_ABORT)
    try:
        r = c.replies_until_final(OPT_ABORT)
    except Closed:
        return
    expect_final(r, REP_ACK, "ABORT")


def case_wrong_request_magic(x):
    c = x.good_conn()
    c.request(CMD_READ, 0, 512, magic=0x12345678)
    c.expect_close("wrong request magic")


def case_unknown_command(x):
    c = x.good_conn()
    for cmd in (0x55, 0xffff, 9, 1000):
        h = c.request(cmd, 0, 512)
        err, _ = c.collect(h, 0, 0)
        if err != EINVAL:
            raise Bad("unknown command %d: error %d, want EINVAL"
                      % (cmd, err))
    x.still_works(c, "after unknown commands")


def case_unknown_flags(x):
    c = x.good_conn()
    for flags in (0x8000, 0x0100, 0x20):
        h = c.request(CMD_READ, 0, 512, flags=flags)
        err, _ = c.collect(h, 0, 512)
        if err != EINVAL:
            raise Bad("READ with flags 0x%x: error %d, want EINVAL"
                      % (flags, err))
    x.still_works(c, "after unknown flags")


def case_read_out_of_range(x):
    for structured in (True, False):
        c = x.good_conn(structured)
        for off, n in [(x.size, 512), (x.size - 512, 1024),
                       (x.size + 1, 1),
                       ((1 << 64) - 512, 1024), ((1 << 64) - 1, 1),
                       ((1 << 63), 4096)]:
            err, _ = c.read_cmd(off, n)
            if err != EINVAL:
                raise Bad("READ(%d, %d)%s: error %d, want EINVAL"
                          % (off, n, " structured" if structured else "",
                             err))
        x.still_works(c, "after reads out of range")
        c.close()


def case_block_status_out_of_range(x):
    c = x.conn()
    c.start()
    c.structured_reply()
    r = c.set_meta(x.name, [b"base:allocation"])
    expect_final(r, REP_ACK, "SET_META_CONTEXT")
    c.go_ok(x.name)
    for off, n in [(x.size, 512), ((1 << 64) - 512, 1024)]:
        h = c.request(CMD_BLOCK_STATUS, off, n)
        err, _ = c.collect(h, off, 0)
        if err != EINVAL:
            raise Bad("BLOCK_STATUS(%d, %d): error %d, want EINVAL"
                      % (off, n, err))
    x.still_works(c, "after BLOCK_STATUS out of range")


def case_read_too_big(x):
    for structured in (True, False):
        c = x.good_conn(structured)
        n = (32 << 20) + 1
        h = c.request(CMD_READ, 0, n)
        # A simple-reply server that fails it sends no data.
        r = c.read_reply(0)
        if r["handle"] != h:
            raise Bad("reply for handle %d" % r["handle"])
        if not r["error"]:
            raise Bad("READ of 32 MiB + 1 succeeded%s"
                      % (" (structured)" if structured else ""))
        while not r["done"]:
            r = c.read_reply(0)
        x.still_works(c, "after READ of 32 MiB + 1")
        c.close()


def case_huge_write(x):
    c = x.good_conn()
    c.request(CMD_WRITE, 0, 64 << 20, payload=b"w" * 65536)
    # Either an error reply (EPERM/EINVAL/EOVERFLOW/ENOMEM...) or a
    # disconnect; never success.
    c.s.settimeout(10)
    try:
        r = c.read_reply(0)
    except (Closed, Bad):
        return
    except socket.timeout:
        # Waiting for the payload is legal too; hang up.
        return
    if not r["error"]:
        raise Bad("WRITE of 64 MiB to a read-only export succeeded")


def case_write_readonly(x):
    c = x.good_conn()
    h = c.request(CMD_WRITE, 4096, 512, payload=b"z" * 512)
    err, _ = c.collect(h, 4096, 0)
    if err != EPERM:
        raise Bad("WRITE on a read-only export: error %d, want EPERM" % err)
    x.still_works(c, "after a refused WRITE")


def case_truncated_header(x):
    c = x.good_conn()
    c.send(struct.pack(">IHH", REQ_MAGIC, 0, CMD_READ) + b"\0\0")
    c.close()


def case_vanish_mid_reply(x):
    c = x.good_conn()
    c.request(CMD_READ, 0, 32 << 20)
    c.close()
    c = x.good_conn(structured=False)
    for i in range(8):
        c.request(CMD_READ, (i * 4 << 20) % max(x.size - (32 << 20), 1),
                  min(32 << 20, x.size))
    c.close()


def case_vanish_after_some_reply(x):
    c = x.good_conn()
    for i in range(16):
        c.request(CMD_READ, 0, min(32 << 20, x.size))
    c.recv_exact(100000)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                   struct.pack("ii", 1, 0))  # RST instead of FIN
    c.close()


def case_disc_with_pending(x):
    # DISC after pipelined reads: every read is answered, then the
    # server closes.
    c = x.good_conn()
    handles = {}
    for i in range(20):
        off = (i * 1234567) % (x.size - 65536)
        handles[c.request(CMD_READ, off, 65536)] = off
    c.request(CMD_DISC, 0, 0)
    pending = {h: bytearray(65536) for h in handles}
    while pending:
        r = c.read_reply(65536)
        h = r["handle"]
        if h not in pending:
            raise Bad("reply for unknown handle %d" % h)
        if r["error"]:
            raise Bad("pipelined read failed: %d" % r["error"])
        if "offset" in r:
            o = r["offset"] - handles[h]
            pending[h][o:o + len(r["data"])] = r["data"]
        if r["done"]:
            off = handles[h]
            if bytes(pending[h]) != x.ref[off:off + 65536]:
                raise Bad("pipelined read at %d: wrong data" % off)
            del pending[h]
    c.expect_close("after DISC")


def case_pipeline(x):
    # Many requests in flight, answers in any order, every byte checked.
    c = x.good_conn()
    r = random.Random(3)
    reqs = {}
    for _ in range(300):
        off = r.randrange(0, x.size - 1)
        n = r.randrange(1, min(200000, x.size - off) + 1)
        reqs[c.request(CMD_READ, off, n)] = (off, n, bytearray(n), [0])
    while reqs:
        rep = c.read_reply(0)
        h = rep["handle"]
        if h not in reqs:
            raise Bad("reply for unknown handle %d" % h)
        off, n, buf, cov = reqs[h]
        if rep["error"]:
            raise Bad("pipelined READ(%d, %d) failed: %d"
                      % (off, n, rep["error"]))
        if "offset" in rep:
            o = rep["offset"] - off
            if o < 0 or o + len(rep["data"]) > n:
                raise Bad("chunk outside its request")
            buf[o:o + len(rep["data"])] = rep["data"]
            cov[0] += len(rep["data"])
        if rep["done"]:
            if cov[0] != n or bytes(buf) != x.ref[off:off + n]:
                raise Bad("pipelined READ(%d, %d): wrong data" % (off, n))
            del reqs[h]
    x.still_works(c, "after 300 pipelined reads")


def case_many_connections(x):
    r = random.Random(5)
    for i in range(100):
        c = x.conn()
        kind = r.randrange(4)
        try:
            if kind >= 1:
                c.greeting()
            if kind >= 2:
                c.client_flags()
            if kind >= 3:
                c.option(OPT_GO, struct.pack(">I", len(x.name)) + x.name)
        except (Closed, OSError):
            pass
        c.close()
    c = x.good_conn()
    x.still_works(c, "after 100 short connections")


CASES = {name[5:]: fn for name, fn in globals().items()
         if name.startswith("case_")}


def run_cases(cases, label):
    """The command line of a case runner (this one, trickle.py):
    --list, or HOST PORT EXPORT-NAME REF-FILE CASE [READY-FILE]."""
    if sys.argv[1:] == ["--list"]:
        print("\n".join(cases))
        return
    host, port, name, ref, case = sys.argv[1:6]
    x = Ctx(host, int(port), name.encode(), ref)
    x.ready = sys.argv[6] if len(sys.argv) > 6 else None
    try:
        cases[case](x)
    except (Bad, Closed) as e:
        sys.stderr.write("FAIL: %s %s: %s\n" % (label, case, e))
        sys.exit(1)
    print("ok: %s %s" % (label, case))


if __name__ == "__main__":
    run_cases(CASES, "abuse")
