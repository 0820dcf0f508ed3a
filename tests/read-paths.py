#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Read an export through every read path of the server and compare each
byte with qemu-img's raw view of the image.

  read-paths.py URI RAW [SEED]

Small and large reads at random offsets (large ones go zero-copy on a
read-only export), sequential 4 KiB reads (the decompressed-cluster
cache on compressed images), a deep queue of reads completing in any
order (decompression spread over the workers), DF reads (one chunk) and
a client without structured replies (simple replies).
"""
import random
import sys

import nbd

uri, raw_path = sys.argv[1], sys.argv[2]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
rnd = random.Random(seed)
ref = open(raw_path, "rb").read()
size = len(ref)
failures = 0


def check(what, off, got):
    global failures
    want = ref[off:off + len(got)]
    if got != want:
        bad = next(i for i in range(len(got)) if got[i] != want[i])
        print("FAIL: %s: read of %d bytes at %d differs at byte %d" %
              (what, len(got), off, off + bad))
        failures += 1


def connect(structured=True):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(uri)
    if h.get_size() != size:
        sys.exit("FAIL: export size %d, image %d" % (h.get_size(), size))
    return h


def random_range(maxlen):
    n = rnd.choice([1, 512, 4096, 4096, 65536, 65536 + 512, 131072,
                    262144, 1 << 20, 3 << 20, maxlen])
    n = max(1, min(n, maxlen, size))
    off = rnd.randrange(0, size - n + 1)
    if rnd.random() < 0.7:
        off -= off % 512
    return off, n


h = connect()

# Random reads, synchronous.
for _ in range(300):
    off, n = random_range(4 << 20)
    check("random read", off, h.pread(n, off))

# DF: one data chunk, holes included as zeros (libnbd takes DF only on
# pread_structured).
for _ in range(40):
    off, n = random_range(2 << 20)
    chunks = []
    got = h.pread_structured(n, off, lambda *a: chunks.append(a[-3]) or 0,
                             flags=nbd.CMD_FLAG_DF)
    if len(chunks) != 1:
        print("FAIL: DF read of %d bytes at %d: %d chunks" %
              (n, off, len(chunks)))
        failures += 1
    check("DF read", off, bytes(got))

# Sequential 4 KiB reads over the first 4 MiB and over a stretch in the
# middle: clusters decoded once, then served from the cache.
for start in (0, (size // 2) & ~4095):
    for off in range(start, min(size, start + (4 << 20)), 4096):
        check("sequential 4k read", off, h.pread(min(4096, size - off), off))

# A deep queue: 64 reads in flight, small and large, completing in any
# order.
bufs = []
for _ in range(8):
    batch = []
    for _ in range(64):
        off, n = random_range(1 << 20)
        buf = nbd.Buffer(n)
        cookie = h.aio_pread(buf, off)
        batch.append((cookie, off, buf))
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for cookie, off, buf in batch:
        h.aio_command_completed(cookie)
        check("queued read", off, buf.to_bytearray())
h.shutdown()

# Simple replies: the data of every read in one piece, zeros included.
h = connect(structured=False)
if h.get_structured_replies_negotiated():
    sys.exit("FAIL: structured replies were negotiated when not asked for")
for _ in range(100):
    off, n = random_range(2 << 20)
    check("simple-reply read", off, h.pread(n, off))
h.shutdown()

if failures:
    sys.exit("%d reads differ" % failures)
print("ok: every read matches qemu-img's view")
