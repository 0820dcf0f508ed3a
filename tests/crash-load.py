# SPDX-License-Identifier: MIT
# Write load for the kill -9 test, and its verifier.
#
#   crash-load.py write URI LOG [--conns N] [--seed S]
#     N connections, each owning its own slice of the export, write (and
#     now and then zero) random ranges, one request at a time, and FLUSH
#     every few requests, until the server dies.  The log records every
#     request before it is sent ("I seq conn offset length dataseed"; data
#     seed -1 for zeros), every acknowledgement ("A seq [fua]"), and every
#     completed FLUSH ("F n": the first n acknowledgements, counted in log
#     order at the moment the FLUSH was sent, are durable).  A write's
#     bytes derive from its data seed, so the log stays small.  The log is
#     fsync'd at every FLUSH line.
#
#   crash-load.py verify LOG BEFORE.raw AFTER.raw
#     For every byte: if the last request sent that touched it was
#     acknowledged before the last completed FLUSH (or acknowledged with
#     FUA), it must hold that request's data; if no request touched it, it
#     must be as before; otherwise (last request not yet durable) it may
#     hold anything the requests could have left, and is not checked.

import os
import random
import sys
import threading


def data_for(dseed, length):
    if dseed < 0:
        return bytes(length)
    return random.Random(dseed).randbytes(length)


def write_main(argv):
    import argparse
    import nbd
    p = argparse.ArgumentParser()
    p.add_argument("uri")
    p.add_argument("log")
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--max-len", type=int, default=300000)
    a = p.parse_args(argv)

    log = open(a.log, "w", buffering=1)
    lock = threading.Lock()
    state = {"seq": 0, "acks": 0}
    handles = []
    try:
        for i in range(a.conns):
            h = nbd.NBD()
            h.connect_uri(a.uri)
            handles.append(h)
    except nbd.Error as e:
        # Killed before every connection was up: nothing was sent.
        print("no load: %s" % e)
        return 0
    size = handles[0].get_size()
    slice_len = size // a.conns

    def worker(i):
        h = handles[i]
        rng = random.Random(a.seed * 100 + i)
        lo = i * slice_len
        hi = size if i == a.conns - 1 else lo + slice_len
        try:
            while True:
                r = rng.random()
                if r < 0.5:
                    length = rng.randint(1, 8192)
                else:
                    length = rng.randint(1, a.max_len)
                length = min(length, hi - lo)
                off = rng.randint(lo, hi - length)
                if rng.random() < 0.3:
                    off -= (off - lo) % 512
                zero = rng.random() < 0.1
                fua = rng.random() < 0.1
                with lock:
                    state["seq"] += 1
                    seq = state["seq"]
                    dseed = -1 if zero else a.seed * 10000000 + seq
                    log.write("I %d %d %d %d %d\n" % (seq, i, off, length, dseed))
                flags = nbd.CMD_FLAG_FUA if fua else 0
                if zero:
                    h.zero(length, off, flags)
                else:
                    h.pwrite(data_for(dseed, length), off, flags)
                with lock:
                    state["acks"] += 1
                    log.write("A %d%s\n" % (seq, " fua" if fua else ""))
                if rng.random() < 0.15:
                    with lock:
                        n = state["acks"]
                    h.flush()
                    with lock:
                        log.write("F %d\n" % n)
                        log.flush()
                        os.fsync(log.fileno())
        except nbd.Error:
            return              # the server was killed: expected

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with lock:
        log.flush()
        os.fsync(log.fileno())
    return 0


def verify_main(argv):
    log_path, before_path, after_path = argv
    before = open(before_path, "rb").read()
    after = open(after_path, "rb").read()
    if len(before) != len(after):
        print("size changed: %d -> %d" % (len(before), len(after)))
        return 1
    issued = {}                 # seq -> (off, len, dseed)
    ack_order = []              # seqs in acknowledgement order
    fua = set()
    durable_acks = 0
    for line in open(log_path):
        f = line.split()
        if not f or (f[0] != "F" and len(f) < 2):
            continue            # a torn last line
        if f[0] == "I" and len(f) == 6:
            issued[int(f[1])] = (int(f[3]), int(f[4]), int(f[5]))
        elif f[0] == "A":
            ack_order.append(int(f[1]))
            if len(f) > 2 and f[2] == "fua":
                fua.add(int(f[1]))
        elif f[0] == "F" and len(f) == 2:
            durable_acks = max(durable_acks, int(f[1]))
    durable = set(ack_order[:durable_acks]) | fua

    # Walk the requests from the last sent to the first: the parts of a
    # request's range no later request covered are the bytes whose last
    # request it is.
    claimed = []                # sorted disjoint [start, end)

    def unclaimed(s, e):
        out = []
        cur = s
        for cs, ce in claimed:
            if ce <= cur:
                continue
            if cs >= e:
                break
            if cs > cur:
                out.append((cur, cs))
            cur = max(cur, ce)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
        return out

    def claim(s, e):
        merged = []
        for cs, ce in claimed:
            if ce < s or cs > e:
                merged.append((cs, ce))
            else:
                s, e = min(s, cs), max(e, ce)
        merged.append((s, e))
        merged.sort()
        claimed[:] = merged

    checked = 0
    for seq in sorted(issued, reverse=True):
        off, length, dseed = issued[seq]
        parts = unclaimed(off, off + length)
        if seq in durable and parts:
            data = data_for(dseed, length)
            for s, e in parts:
                if after[s:e] != data[s - off:e - off]:
                    i = next(i for i in range(s, e) if after[i] != data[i - off])
                    print("request %d [%d, +%d) was durable, but byte %d reads "
                          "%#x instead of %#x" % (seq, off, length, i, after[i],
                                                   data[i - off]))
                    return 1
                checked += e - s
        claim(off, off + length)
    # Bytes no request touched: as before.
    cur = 0
    for s, e in claimed + [(len(after), len(after))]:
        if after[cur:s] != before[cur:s]:
            i = next(i for i in range(cur, s) if after[i] != before[i])
            print("byte %d was never written but changed: %#x -> %#x"
                  % (i, before[i], after[i]))
            return 1
        cur = max(cur, e)
    print("verified: %d requests sent, %d durable, %d bytes checked against "
          "durable data" % (len(issued), len(durable), checked))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        sys.exit(write_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "verify":
        sys.exit(verify_main(sys.argv[2:]))
    sys.exit("usage: crash-load.py write URI LOG | verify LOG BEFORE AFTER")
