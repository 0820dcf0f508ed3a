# SPDX-License-Identifier: MIT
"""Run a list of NBD requests against a server with libnbd, one after the
other, so a shell test can drive qcow2-nbd and qemu-nbd through exactly
the same guest actions.

    nbd-ops.py URI OP...

OPs (offsets and lengths take K, M, G suffixes):
    write:OFF:LEN:BYTE     WRITE LEN bytes of BYTE (hex) at OFF, in 32 MiB
                           requests
    trim:OFF:LEN           TRIM, in requests of at most 1 GiB
    zero:OFF:LEN           WRITE_ZEROES without NO_HOLE (may deallocate)
    zero-nohole:OFF:LEN    WRITE_ZEROES with NO_HOLE (allocation kept)
    trim-every:OFF:END:LEN:STEP  TRIM LEN bytes every STEP bytes from OFF
                           up to END, many requests in flight
    flush                  FLUSH
    read:OFF:LEN:BYTE      READ and check every byte is BYTE
    vanish                 exit at once: the socket closes without
                           NBD_CMD_DISC, as a killed client's would
Without 'vanish' the client disconnects cleanly (NBD_CMD_DISC) at the
end, without a FLUSH of its own: the kernel does that after blkdiscard.
"""

import os
import sys

import nbd

CHUNK = 32 << 20


def size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if s and s[-1].upper() in mult:
        return int(s[:-1]) * mult[s[-1].upper()]
    return int(s, 0)


def chunks(off, length, step):
    while length > 0:
        n = min(length, step)
        yield off, n
        off += n
        length -= n


def trim_every(h, off, end, length, step):
    """Many small TRIMs in flight at once: a fragmented discard."""
    cookies = []
    while off + length <= end:
        cookies.append(h.aio_trim(length, off))
        off += step
        while h.aio_in_flight() >= 64:
            h.poll(-1)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for c in cookies:
        h.aio_command_completed(c)


def main():
    uri, ops = sys.argv[1], sys.argv[2:]
    h = nbd.NBD()
    h.connect_uri(uri)
    for op in ops:
        name, *args = op.split(":")
        if name == "write":
            off, length, byte = size(args[0]), size(args[1]), int(args[2], 16)
            for o, n in chunks(off, length, CHUNK):
                h.pwrite(bytes([byte]) * n, o)
        elif name == "read":
            off, length, byte = size(args[0]), size(args[1]), int(args[2], 16)
            for o, n in chunks(off, length, CHUNK):
                buf = h.pread(n, o)
                if buf != bytes([byte]) * n:
                    sys.exit(f"nbd-ops: {op}: bytes differ at {o}")
        elif name == "trim":
            for o, n in chunks(size(args[0]), size(args[1]), 1 << 30):
                h.trim(n, o)
        elif name == "zero":
            for o, n in chunks(size(args[0]), size(args[1]), 1 << 30):
                h.zero(n, o)
        elif name == "zero-nohole":
            for o, n in chunks(size(args[0]), size(args[1]), 1 << 30):
                h.zero(n, o, nbd.CMD_FLAG_NO_HOLE)
        elif name == "trim-every":
            trim_every(h, *(size(a) for a in args))
        elif name == "flush":
            h.flush()
        elif name == "vanish":
            sys.stdout.flush()
            os._exit(0)
        else:
            sys.exit(f"nbd-ops: unknown op {op}")
    h.shutdown()


if __name__ == "__main__":
    main()
