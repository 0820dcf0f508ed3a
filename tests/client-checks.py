#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# libnbd checks of a read-only export against a raw copy of its content:
# structured replies, reads with and without DF, block status with
# REQ_ONE on both meta contexts, EPERM for writes, EINVAL for reads past
# the end, and that the connection keeps working after every error.
#   client-checks.py URI REFERENCE.raw
# Prints "ok: ..." per check; exits 1 on the first failure.

import errno
import random
import sys

import nbd

BASE = "base:allocation"
DEPTH = "qemu:allocation-depth"


def fail(msg):
    sys.stderr.write("FAIL: client-checks: %s\n" % msg)
    sys.exit(1)


def ok(msg):
    print("ok: %s" % msg)


def expect_error(what, want_errno, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        if e.errnum != want_errno:
            fail("%s: got errno %s (%s), want %s"
                 % (what, e.errnum, e.string,
                    errno.errorcode.get(want_errno)))
        return
    fail("%s: succeeded, want %s" % (what, errno.errorcode.get(want_errno)))


def main():
    uri, ref_path = sys.argv[1], sys.argv[2]
    with open(ref_path, "rb") as f:
        ref = f.read()

    h = nbd.NBD()
    h.add_meta_context(BASE)
    h.add_meta_context(DEPTH)
    h.connect_uri(uri)

    size = h.get_size()
    if size != len(ref):
        fail("export size %d, image size %d" % (size, len(ref)))
    ok("export size %d" % size)

    if not h.get_structured_replies_negotiated():
        fail("structured replies not negotiated")
    ok("structured replies negotiated")
    for ctx in (BASE, DEPTH):
        if not h.can_meta_context(ctx):
            fail("meta context %s not negotiated" % ctx)
    ok("both meta contexts negotiated")
    if not h.is_read_only():
        fail("export not flagged read-only")
    if not h.can_df():
        fail("DF not advertised although structured replies are on")
    if not h.can_multi_conn():
        fail("CAN_MULTI_CONN not advertised")
    ok("flags: read-only, DF, multi-conn")

    # Reads at odd offsets and lengths, with and without DF, including
    # the very start, ranges across cluster boundaries and the end.
    r = random.Random(7)
    cases = [(0, 1), (0, 512), (1, 4095), (65535, 2), (65536 - 7, 70001),
             (size - 1, 1), (size - 4097, 4097), (size // 2 + 3, 1 << 20)]
    for _ in range(60):
        off = r.randrange(0, size)
        n = r.randrange(1, min(size - off, 300000) + 1)
        cases.append((off, n))
    for i, (off, n) in enumerate(cases):
        n = min(n, size - off)
        # libnbd takes DF only on pread_structured.
        if i % 2:
            flags = nbd.CMD_FLAG_DF
            chunks = []
            got = bytes(h.pread_structured(
                n, off, lambda *a: chunks.append(a[-3]) or 0, flags=flags))
            if len(chunks) != 1:
                fail("pread_structured(%d, %d, DF): %d chunks, want 1"
                     % (n, off, len(chunks)))
        else:
            flags = 0
            got = h.pread(n, off)
        if got != ref[off:off + n]:
            bad = next(k for k in range(n) if got[k] != ref[off + k])
            fail("pread(%d, %d, flags=%d) differs at offset %d: got 0x%02x "
                 "want 0x%02x" % (n, off, flags, off + bad, got[bad],
                                  ref[off + bad]))
    ok("%d preads with and without DF match the image" % len(cases))

    # A maximum-sized read (32 MiB) when the export is that large.
    if size >= 32 << 20:
        got = h.pread(32 << 20, 0)
        if got != ref[:32 << 20]:
            fail("32 MiB pread differs")
        ok("32 MiB pread")

    # pread_structured: chunks must cover the range without overlap.
    def check_chunks(off, n):
        seen = []

        # (subbuf, offset, status, error); older bindings put user_data
        # first, so index from the end.
        def chunk(*a):
            buf, coff, status = a[-4], a[-3], a[-2]
            seen.append((coff, len(buf), status))
            return 0

        buf = h.pread_structured(n, off, chunk)
        seen.sort()
        pos = off
        for coff, clen, status in seen:
            if coff != pos:
                fail("structured read [%d,+%d): chunk at %d, expected %d"
                     % (off, n, coff, pos))
            pos += clen
        if pos != off + n:
            fail("structured read [%d,+%d): chunks end at %d"
                 % (off, n, pos))
        if bytes(buf) != ref[off:off + n]:
            fail("structured read [%d,+%d): data differs" % (off, n))
        return len(seen)

    check_chunks(0, min(size, 4 << 20))
    check_chunks(size - 100000, 100000)
    ok("structured read chunks cover the range exactly")

    # Block status with REQ_ONE: exactly one extent per context, not
    # longer than asked, starting where asked.
    for off, n in [(0, 4096), (12345, 99999), (size - 512, 512),
                   (size // 3, 1 << 20), (1, size - 1)]:
        n = min(n, size - off)
        got = {}

        def extent(metacontext, offset, entries, err):
            if metacontext in got:
                fail("block_status: two replies for %s" % metacontext)
            got[metacontext] = (offset, list(entries))
            return 0

        h.block_status(n, off, extent, flags=nbd.CMD_FLAG_REQ_ONE)
        for ctx in (BASE, DEPTH):
            if ctx not in got:
                fail("block_status(%d, %d, REQ_ONE): no %s reply"
                     % (n, off, ctx))
            o, e = got[ctx]
            if o != off:
                fail("block_status %s: offset %d, asked %d" % (ctx, o, off))
            if len(e) != 2:
                fail("block_status %s REQ_ONE at %d: %d extents (%r)"
                     % (ctx, off, len(e) // 2, e))
            if e[0] == 0 or e[0] > n:
                fail("block_status %s REQ_ONE at %d len %d: extent length "
                     "%d" % (ctx, off, n, e[0]))
    ok("block_status with REQ_ONE: one extent per context")

    # Without REQ_ONE the extents of each context cover at least one byte
    # and never run past the end of the export.
    got = {}

    def extents_all(metacontext, offset, entries, err):
        got[metacontext] = list(entries)
        return 0

    h.block_status(size, 0, extents_all)
    for ctx in (BASE, DEPTH):
        total = sum(got[ctx][0::2])
        if total == 0 or total > size:
            fail("block_status %s over the export: %d bytes" % (ctx, total))
    ok("block_status over the whole export")

    # Errors the connection must survive.  Strict mode off so libnbd
    # sends what the server has to refuse.
    h.set_strict_mode(0)
    expect_error("pwrite on a read-only export", errno.EPERM,
                 h.pwrite, b"x" * 512, 0)
    ok("pwrite refused with EPERM")
    expect_error("pread past the end", errno.EINVAL, h.pread, 512, size)
    expect_error("pread straddling the end", errno.EINVAL,
                 h.pread, 1024, size - 512)
    expect_error("pread far past the end", errno.EINVAL,
                 h.pread, 1, (1 << 63) - 1)
    ok("reads past the end refused with EINVAL")
    expect_error("block_status past the end", errno.EINVAL,
                 h.block_status, 512, size, lambda *a: 0)
    ok("block_status past the end refused with EINVAL")
    if h.pread(4096, 0) != ref[:4096]:
        fail("read after errors differs")
    ok("connection still works after the errors")
    h.flush() if h.can_flush() else None
    h.shutdown()
    ok("clean disconnect")


if __name__ == "__main__":
    main()
