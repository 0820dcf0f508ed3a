# SPDX-License-Identifier: MIT
"""Kill -9 the server in the middle of compressed writes.

Usage: compress-crash.py SOCKET SERVER_PID EXPECTED KILL_AFTER

Writes EXPECTED's first half through the server at SOCKET (an export
through the compress filter, on an empty image) with many requests in
flight, FLUSHes, then sends the second half the same way, with FLUSHes
among the writes, and kills SERVER_PID with SIGKILL once KILL_AFTER of
those writes have been answered (or all of them).  The caller then checks the image: qemu-img
check may report leaks but no corruption, and the first half, covered
by the completed FLUSH, must read back.  EXPECTED is a raw file whose
size is the export's, a whole number of 64 KiB clusters.
"""

import os
import signal
import sys

import nbd

REQUEST = 256 * 1024
IN_FLIGHT = 16


def write_range(h, data, start, end, stop_after=None):
    """Write data[start:end] in REQUEST pieces, at most IN_FLIGHT at
    once; with STOP_AFTER, also FLUSH after every fourth answer (so the
    kill finds metadata being written back too) and return once that
    many writes were answered."""
    off, done, cookies = start, 0, []
    while off < end or cookies:
        while off < end and len(cookies) < IN_FLIGHT:
            n = min(REQUEST, end - off)
            cookies.append(h.aio_pwrite(nbd.Buffer.from_bytearray(
                bytearray(data[off:off + n])), off))
            off += n
        h.poll(-1)
        for c in [c for c in cookies if h.aio_command_completed(c)]:
            cookies.remove(c)
            done += 1
            if stop_after is None:
                continue
            if done >= stop_after:
                return
            if done % 4 == 0:
                h.aio_flush()


def main():
    sock, pid, expected, kill_after = sys.argv[1:5]
    data = open(expected, "rb").read()
    half = len(data) // 2
    h = nbd.NBD()
    h.connect_unix(sock)
    write_range(h, data, 0, half)
    h.flush()
    write_range(h, data, half, len(data), int(kill_after))
    os.kill(int(pid), signal.SIGKILL)


if __name__ == "__main__":
    main()
