# SPDX-License-Identifier: MIT
"""Power cuts: every state a crash could leave the image in, checked.

    powercut.py backing FILE SIZE
        Write a raw backing file whose sectors name themselves.

    powercut.py run URI WORKLOAD SEED CONTROL OPS.json DISK CLUSTER SCALE
                    BACKING-BYTES
        Drive WORKLOAD through the server (one connection, one request at
        a time) with data that names its request and sector, and mark in
        faultfs's log (CONTROL) each request before it is sent ("op K")
        and each FLUSH or FUA write once it is acknowledged ("ack K").
        Writes the requests to OPS.json.

    powercut.py check LOG INITIAL OPS.json WORKDIR [options]
        Rebuild, from faultfs's LOG of the image's writes and fsyncs and
        the image as it was before the server opened it (INITIAL), the
        images a power cut could leave, and check each with qemu-img.

The crash model.  faultfs logs the changes to the file in the order they
completed; an fsync makes durable every change logged before it.  A power
cut between the e-th and the (e+1)-th fsync leaves everything up to the
e-th, plus any subset of the changes logged after it (before the next
one), each whole or, in the torn model, cut after any 512-byte sector.
Small epochs are enumerated exhaustively; larger ones sampled with a
seeded generator (the single changes, everything but one, then random
subsets), so a run can be replayed.

What must hold in every state: `qemu-img check` exits 0 or 3 (leaks are
fine, corruption is not), and every sector reads as one of the values it
may have: the value it had at the last acknowledged FLUSH (or FUA write
of that sector) whose final fsync is in the durable part, or the value of
a later request already sent by then.  Each sector written by request K
holds a pattern naming K and the sector, so a sector that reads another
request's data, data of another sector, or garbage is caught.  The
workload ends with a clean server shutdown, whose flush and close are in
the log too: after it ("closed"), every request is durable.
"""

import bisect
import concurrent.futures
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time

SECTOR = 512
MiB = 1 << 20

# faultfs log record types (tests/faultfs.c).
LOG_WRITE, LOG_FSYNC, LOG_PUNCH, LOG_ZERO, LOG_ALLOCATE, LOG_TRUNCATE, \
    LOG_MARK, LOG_CREATE = range(1, 9)
LOG_KEEP_SIZE = 0x80000000
IMAGE = "/img.qcow2"


def pattern(k, s):
    """The 512 bytes request K writes to guest sector S (K > 0), or the
    backing file holds there (K == 0)."""
    head = struct.pack("<QQ", k, s)
    return head + bytes([(k * 131 + s * 7 + 1) & 0xff or 1]) * (SECTOR - 16)


# ---- Workloads --------------------------------------------------------------

# Each workload: image options (for qemu-img create), virtual size, and a
# generator of requests.  Requests are dicts: type write/zero/trim/flush,
# off, len (bytes), fua, flags.

def gen_requests(name, rng, disk, cluster, scale):
    reqs = []

    def add(t, off=0, ln=0, **kw):
        reqs.append(dict(type=t, off=off, len=ln, **kw))

    def rand_range(lo, hi, maxlen):
        ln = rng.randint(1, maxlen // SECTOR) * SECTOR
        off = rng.randrange(lo, max(lo + 1, hi - ln), SECTOR)
        return off, ln

    n = 40 * scale
    if name in ("alloc", "lazy", "cow"):
        for i in range(n):
            off, ln = rand_range(0, disk, 128 * 1024)
            add("write", off, ln, fua=rng.random() < 0.1)
            if rng.random() < 0.25:
                add("flush")
            if name == "lazy" and rng.random() < 0.1:
                off, ln = rand_range(0, disk, 4 * cluster)
                add("trim", off, ln)
    elif name == "overwrite":
        region = min(disk, 2 * MiB)
        add("write", 0, region)
        add("flush")
        for i in range(n):
            off, ln = rand_range(0, region, 64 * 1024)
            add("write", off, ln, fua=rng.random() < 0.15)
            if rng.random() < 0.25:
                add("flush")
    elif name == "discard":
        region = min(disk, 4 * MiB)
        for i in range(n):
            r = rng.random()
            if r < 0.5:
                off, ln = rand_range(0, region, 256 * 1024)
                add("write", off, ln, fua=rng.random() < 0.1)
            elif r < 0.8:
                # Mostly whole clusters, so they are freed and reused.
                first = rng.randrange(region // cluster)
                cnt = rng.randint(1, 8)
                off, ln = first * cluster, cnt * cluster
                if rng.random() < 0.3:
                    off += SECTOR * rng.randint(1, 8)
                add("trim", off, min(ln, disk - off))
            else:
                add("flush")
    elif name == "zero":
        region = min(disk, 4 * MiB)
        for i in range(n):
            r = rng.random()
            if r < 0.45:
                off, ln = rand_range(0, region, 256 * 1024)
                add("write", off, ln)
            elif r < 0.8:
                off, ln = rand_range(0, region, 8 * cluster)
                add("zero", off, ln, no_hole=rng.random() < 0.5,
                    fua=rng.random() < 0.1)
            else:
                add("flush")
    elif name == "l2":
        # One L2 table covers cluster * cluster / 8 bytes: spread the
        # writes so most of them need a new one.
        per_l2 = cluster * cluster // 8
        tables = disk // per_l2
        for i in range(n):
            t = rng.randrange(tables)
            off = t * per_l2 + rng.randrange(0, per_l2 - 8192, SECTOR)
            add("write", off, rng.randint(1, 16) * SECTOR,
                fua=rng.random() < 0.1)
            if rng.random() < 0.3:
                add("flush")
    elif name == "growth":
        # Tiny clusters and 64-bit refcounts: a refcount block covers
        # 64 clusters, the first refcount table 64 blocks; writing a few
        # MiB needs new blocks all the time and grows the table.
        pos = 0
        while pos < min(disk, 3 * MiB * scale):
            ln = rng.randint(1, 64) * SECTOR * 8
            add("write", pos, min(ln, disk - pos), fua=rng.random() < 0.05)
            pos += ln + rng.randrange(0, 4) * cluster
            if rng.random() < 0.2:
                add("flush")
    else:
        raise SystemExit("unknown workload %s" % name)
    # The end is not flushed: the clean close makes it durable (and, for
    # trims, writes out the decrements only a flush would commit).
    if name in ("discard", "lazy"):
        for _ in range(3):
            first = rng.randrange(disk // cluster - 2)
            add("trim", first * cluster, 2 * cluster)
    return reqs


def run(uri, name, seed, control, ops_path, disk, cluster, scale, backing):
    import nbd
    rng = random.Random("%s/%d" % (name, seed))
    # "cow-eio": the copy-on-write workload while host writes fail now
    # and then (data, L2 or refcount writes alike).
    faults = name.endswith("-eio")
    plan = gen_requests(name[:-4] if faults else name, rng, disk, cluster,
                        scale)
    h = nbd.NBD()
    h.connect_uri(uri)
    ctl = os.open(control, os.O_WRONLY)
    sent = []               # every request sent, failed ones too
    failed = 0

    def command(text):
        os.write(ctl, (text + "\n").encode())

    def send(r):
        k = len(sent) + 1
        sent.append(r)
        command("mark op %d" % k)
        flags = nbd.CMD_FLAG_FUA if r.get("fua") else 0
        try:
            if r["type"] == "write":
                s0 = r["off"] // SECTOR
                data = b"".join(pattern(k, s)
                                for s in range(s0, s0 + r["len"] // SECTOR))
                h.pwrite(data, r["off"], flags)
            elif r["type"] == "zero":
                if r.get("no_hole"):
                    flags |= nbd.CMD_FLAG_NO_HOLE
                h.zero(r["len"], r["off"], flags)
            elif r["type"] == "trim":
                h.trim(r["len"], r["off"], flags)
            elif r["type"] == "flush":
                h.flush()
        except nbd.Error as e:
            if not faults or e.errno not in ("EIO", "ENOSPC"):
                raise
            r["failed"] = e.errno
            return False
        if r["type"] == "flush" or r.get("fua"):
            command("mark ack %d" % k)
        return True

    for r in plan:
        if faults and rng.random() < 0.2:
            command("fail write %s path=%s after=%d count=1" % (
                rng.choice(["eio", "enospc"]), IMAGE, rng.randrange(4)))
        if send(dict(r)) or r["type"] != "write":
            continue
        # A failed write leaves its range old or new, sector by sector:
        # write it again (a new request) until it works, so the model
        # knows what the disk holds.
        failed += 1
        for attempt in range(8):
            if attempt == 4:
                command("clear")
            if send(dict(r)):
                break
            failed += 1
        else:
            raise SystemExit("%s: a write keeps failing" % name)
    command("clear")
    # The server's view must be what the requests made: the model the
    # checker builds on.
    model = Model(sent, disk, cluster, backing // SECTOR)
    model.advance(len(sent) + 1)
    for off in range(0, disk, 4 * MiB):
        got = h.pread(min(4 * MiB, disk - off), off)
        want = bytes(model.image[off:off + len(got)])
        if got != want:
            for i in range(0, len(got), SECTOR):
                if got[i:i + SECTOR] != want[i:i + SECTOR]:
                    raise SystemExit("%s: the server reads sector %d "
                                     "differently from the model"
                                     % (name, (off + i) // SECTOR))
    h.shutdown()
    os.close(ctl)
    with open(ops_path, "w") as f:
        json.dump(dict(workload=name, seed=seed, disk=disk, cluster=cluster,
                       requests=sent), f)
    print("%s: %d requests (%d flushes, %d FUA, %d failed)" % (
        name, len(sent), sum(r["type"] == "flush" for r in sent),
        sum(bool(r.get("fua")) for r in sent),
        sum(bool(r.get("failed")) for r in sent)))


# ---- The model of the guest disk --------------------------------------------

class Model:
    """Which request last set each guest sector, after the first N
    requests; the image that makes; and, per sector, every request that
    sets it (hist), for the candidates of a crash state."""

    def __init__(self, reqs, disk, cluster, backing_sectors):
        self.reqs = reqs
        self.nsect = disk // SECTOR
        self.backing = backing_sectors or 0
        self.last = [0] * self.nsect          # request, 0: initial
        self.image = bytearray(disk)
        for s in range(self.backing):
            self.image[s * SECTOR:(s + 1) * SECTOR] = pattern(0, s)
        self.done = 1                          # requests 1..done-1 applied
        self.hist = {}                         # sector -> [requests]
        self.sets = [None]                     # request -> (first, last+1)
        for k, r in enumerate(reqs, start=1):
            rng = self._range(r, cluster)
            self.sets.append(rng)
            if rng:
                for s in range(*rng):
                    self.hist.setdefault(s, []).append(k)

    def _range(self, r, cluster):
        """The sectors a request gives a new value, or None."""
        if r["type"] in ("write", "zero"):
            return (r["off"] // SECTOR, (r["off"] + r["len"]) // SECTOR)
        if r["type"] == "trim":
            # Whole clusters are deallocated (read as zeros); partial
            # ones are left alone.
            a = -(-r["off"] // cluster) * cluster
            b = (r["off"] + r["len"]) // cluster * cluster
            if b > a:
                return (a // SECTOR, b // SECTOR)
        return None

    def value(self, k, s):
        if k == 0:
            return pattern(0, s) if s < self.backing else bytes(SECTOR)
        if self.reqs[k - 1]["type"] == "write":
            return pattern(k, s)
        return bytes(SECTOR)

    def advance(self, n):
        """Apply requests up to n-1."""
        while self.done < n:
            k = self.done
            rng = self.sets[k]
            if rng:
                if self.reqs[k - 1]["type"] == "write":
                    data = b"".join(pattern(k, s) for s in range(*rng))
                else:
                    data = bytes((rng[1] - rng[0]) * SECTOR)
                self.image[rng[0] * SECTOR:rng[1] * SECTOR] = data
                for s in range(*rng):
                    self.last[s] = k
            self.done += 1


# ---- The log ----------------------------------------------------------------

class Rec:
    __slots__ = ("type", "keep", "name", "off", "len", "data", "pos")


def parse_log(path):
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:8] != b"FAULTFS1":
        raise SystemExit("%s: not a faultfs log" % path)
    p, recs = 8, []
    while p < len(buf):
        if p + 32 > len(buf):
            raise SystemExit("%s: truncated record at %d" % (path, p))
        t, nlen, off, ln, seq = struct.unpack_from("<IIQQQ", buf, p)
        p += 32
        r = Rec()
        r.type, r.keep = t & ~LOG_KEEP_SIZE, bool(t & LOG_KEEP_SIZE)
        r.name = buf[p:p + nlen].decode()
        p += nlen
        r.off, r.len = off, ln
        r.data = None
        if r.type == LOG_WRITE:
            r.data = buf[p:p + ln]
            p += ln
        r.pos = len(recs)
        recs.append(r)
    return recs


def apply(fd, r, torn=None):
    """Apply change R to the file FD; TORN: only its first TORN sectors."""
    if r.type == LOG_WRITE:
        data = r.data if torn is None else r.data[:torn * SECTOR]
        os.pwrite(fd, data, r.off)
    elif r.type in (LOG_PUNCH, LOG_ZERO):
        size = os.fstat(fd).st_size
        end = r.off + r.len
        if r.type == LOG_ZERO and not r.keep and end > size:
            os.ftruncate(fd, end)
            size = end
        p = r.off
        while p < min(end, size):
            n = min(end, size, p + 4 * MiB) - p
            os.pwrite(fd, bytes(n), p)
            p += n
    elif r.type == LOG_ALLOCATE:
        if not r.keep and r.off + r.len > os.fstat(fd).st_size:
            os.ftruncate(fd, r.off + r.len)
    elif r.type == LOG_TRUNCATE:
        os.ftruncate(fd, r.len)
    elif r.type == LOG_CREATE:
        os.ftruncate(fd, 0)


def changes(r):
    return r.name == IMAGE and r.type in (LOG_WRITE, LOG_PUNCH, LOG_ZERO,
                                          LOG_ALLOCATE, LOG_TRUNCATE,
                                          LOG_CREATE)


# ---- Checking ---------------------------------------------------------------

def subsets(n, budget, rng):
    """Subsets (sorted index tuples) of range(n) to try: all of them when
    there are at most BUDGET, else the empty and full sets, each single
    change, everything but one, and random ones, up to BUDGET."""
    if n < 20 and (1 << n) <= budget:
        for bits in range(1 << n):
            yield tuple(i for i in range(n) if bits >> i & 1), True
        return
    seen = set()
    cands = [(), tuple(range(n))]
    cands += [(i,) for i in range(n)]
    cands += [tuple(j for j in range(n) if j != i) for i in range(n)]
    for c in cands:
        if len(seen) >= budget:
            return
        if c not in seen:
            seen.add(c)
            yield c, False
    tries = 0
    while len(seen) < budget and tries < budget * 4:
        tries += 1
        p = rng.random()
        c = tuple(i for i in range(n) if rng.random() < p)
        if c not in seen:
            seen.add(c)
            yield c, False


class Checker:
    def __init__(self, args):
        self.a = args
        with open(args.ops) as f:
            ops = json.load(f)
        self.reqs = ops["requests"]
        self.disk = ops["disk"]
        self.cluster = ops["cluster"]
        self.workload = ops["workload"]
        self.backing_sectors = args.backing_bytes // SECTOR
        self.recs = parse_log(args.log)
        self.rng = random.Random("%s/%d" % (self.workload, args.seed))
        self.states = self.failures = self.exhaustive = self.torn = 0
        self.epochs = 0
        self.fail_dir = os.path.join(args.workdir, "failed")
        self.report = []
        self.lock = threading.Lock()
        self.kept = 0

    def run(self):
        a, recs = self.a, self.recs
        fsyncs = [r.pos for r in recs
                  if r.type == LOG_FSYNC and r.name == IMAGE]
        op_pos, ack_pos = {}, {}
        closed = None
        for r in recs:
            if r.type != LOG_MARK:
                continue
            w = r.name.split()
            if w[0] == "op":
                op_pos[int(w[1])] = r.pos
            elif w[0] == "ack":
                ack_pos[int(w[1])] = r.pos
            elif w[0] == "closed":
                closed = r.pos
        if closed is None:
            raise SystemExit("the log has no 'closed' mark")
        nreq = len(self.reqs)
        # The last fsync before each acknowledgement: from that epoch on,
        # the acknowledged request is durable.
        acks = []      # (fsync index from which durable, request, kind)
        for k, p in ack_pos.items():
            i = bisect.bisect_left(fsyncs, p) - 1
            kind = "flush" if self.reqs[k - 1]["type"] == "flush" else "fua"
            acks.append((i, k, kind))
        i = bisect.bisect_left(fsyncs, closed) - 1
        acks.append((i, nreq + 1, "flush"))
        acks.sort()
        op_starts = sorted((p, k) for k, p in op_pos.items())

        model = Model(self.reqs, self.disk, self.cluster, self.backing_sectors)
        base = os.path.join(a.workdir, "base.img")
        shutil.copyfile(a.initial, base)
        pool = concurrent.futures.ThreadPoolExecutor(a.jobs)
        bfd = os.open(base, os.O_RDWR)
        applied = 0            # records applied to base
        kf = 0                 # flushes up to this request are durable
        fua = {}               # sector -> latest durable FUA request
        ai = 0
        t0 = time.monotonic()
        # The states to check per epoch: all of them up to the budget, but
        # no more than an even share of what is left of the run's target
        # (small epochs leave some for the others).
        budget = a.budget
        for e in range(-1, len(fsyncs)):
            start = fsyncs[e] if e >= 0 else -1
            end = fsyncs[e + 1] if e + 1 < len(fsyncs) else len(recs)
            for r in recs[applied:start + 1]:
                if changes(r):
                    apply(bfd, r)
            applied = max(applied, start + 1)
            while ai < len(acks) and acks[ai][0] <= e:
                _, k, kind = acks[ai]
                if kind == "flush":
                    kf = max(kf, k)
                else:
                    rng = model.sets[k]
                    for s in range(*rng) if rng else ():
                        fua[s] = max(fua.get(s, 0), k)
                ai += 1
            model.advance(kf)
            # Requests sent before the end of the epoch.
            sent = bisect.bisect_left(op_starts, (end, 0))
            last_sent = op_starts[sent - 1][1] if sent else 0
            epoch = [r for r in recs[start + 1:end] if changes(r)]
            if not epoch and e >= 0 and e + 1 < len(fsyncs):
                continue        # same state as the epoch before
            self.epochs += 1
            if a.states:
                budget = min(a.budget, max(2, (a.states - self.states)
                                           // (len(fsyncs) - e)))
            amb = self.ambiguous(model, kf, last_sent, fua)
            jobs = [(sub, None, ex) for sub, ex in
                    subsets(len(epoch), budget, self.rng)]
            if a.torn:
                # A crash in the middle of each multi-sector change, the
                # changes before it landed (a prefix of the epoch), and
                # random torn subsets.
                multi = [i for i, r in enumerate(epoch)
                         if r.type == LOG_WRITE and r.len > SECTOR]
                for i in multi[:max(1, budget // 2)]:
                    cut = self.rng.randrange(1, epoch[i].len // SECTOR)
                    jobs.append((tuple(range(i + 1)), (i, cut), False))
                for _ in range(min(len(multi), budget // 4)):
                    i = self.rng.choice(multi)
                    sub = tuple(j for j in range(len(epoch))
                                if j == i or self.rng.random() < 0.5)
                    cut = self.rng.randrange(1, epoch[i].len // SECTOR)
                    jobs.append((sub, (i, cut), False))
            ctx = Epoch(e, epoch, amb, bytes(model.image), model)
            for (sub, torn, ex), res in zip(
                    jobs, pool.map(lambda j: self.check_state(ctx, base, *j),
                                   jobs)):
                self.states += 1
                self.exhaustive += ex
                self.torn += torn is not None
                if res:
                    self.failures += 1
                    self.report.append(res)
            if self.failures >= a.max_failures:
                break
        os.close(bfd)
        pool.shutdown()
        dt = time.monotonic() - t0
        kinds = {}
        for r in recs:
            if changes(r):
                kinds[r.type] = kinds.get(r.type, 0) + 1
        print("%s: %d crash states checked (%d by exhaustive enumeration, "
              "%d torn) over %d epochs (%d fsyncs; %d writes, %d holes "
              "punched, %d ranges zeroed), %d failures, %.1f s" % (
                  self.workload, self.states, self.exhaustive, self.torn,
                  self.epochs, len(fsyncs), kinds.get(LOG_WRITE, 0),
                  kinds.get(LOG_PUNCH, 0), kinds.get(LOG_ZERO, 0),
                  self.failures, dt))
        for line in self.report[:20]:
            print("  " + line)
        return self.failures == 0

    def ambiguous(self, model, kf, last_sent, fua):
        """Sectors that may hold more than one value in this epoch: those
        set by a request after the durable point (kf, or a durable FUA
        write of the sector), sent before the epoch ended.  Returns
        {sector: set of allowed requests}."""
        amb = {}
        for k in range(kf, last_sent + 1):
            if k == 0 or k > len(self.reqs):
                continue
            rng = model.sets[k]
            if not rng:
                continue
            for s in range(*rng):
                d = max(model.last[s], fua.get(s, 0))
                if k <= d and d != model.last[s]:
                    continue        # older than the durable FUA value
                if s not in amb:
                    amb[s] = {d}
                if k > d:
                    amb[s].add(k)
        # A durable FUA write after kf pins its sectors, where no later
        # request may have changed them.
        for s, u in fua.items():
            if u >= kf and s not in amb:
                amb[s] = {u}
        return amb

    def check_state(self, ctx, base, sub, torn, exhaustive):
        """Build the state of epoch CTX with the changes SUB (TORN: (i,
        n): change i only up to its n-th sector) and check it.  Returns
        None, or why it failed.  Runs in a pool thread."""
        tag = "%d" % threading.get_ident()
        state = os.path.join(self.a.workdir, "state-%s.img" % tag)
        raw = os.path.join(self.a.workdir, "state-%s.raw" % tag)
        shutil.copyfile(base, state)
        fd = os.open(state, os.O_RDWR)
        for i in sub:
            apply(fd, ctx.changes[i], torn[1] if torn and torn[0] == i
                  else None)
        os.close(fd)
        what = "epoch %d, changes %s%s of %d" % (
            ctx.e + 1, list(sub) if len(sub) < 12 else "%d changes" % len(sub),
            " (#%d torn after %d sectors)" % torn if torn else "",
            len(ctx.changes))
        why = self.judge(ctx, state, raw)
        if why is None:
            return None
        with self.lock:
            self.kept += 1
            keep = os.path.join(self.fail_dir, "state-%d.qcow2" % self.kept)
            if self.kept <= 5:
                os.makedirs(self.fail_dir, exist_ok=True)
                shutil.copyfile(state, keep)
            else:
                keep = "not kept"
        return "FAIL %s: %s (%s)" % (what, why, keep)

    def judge(self, ctx, state, raw):
        p = subprocess.run(["qemu-img", "check", "-f", "qcow2", state],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode not in (0, 3):
            return "qemu-img check exited %d: %s" % (
                p.returncode, " / ".join(p.stdout.decode(errors="replace")
                                         .strip().splitlines()[:6]))
        p = subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                            state, raw], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        if p.returncode != 0:
            return "qemu-img convert failed: %s" % (
                p.stdout.decode(errors="replace").strip())
        with open(raw, "rb") as f:
            got = f.read()
        if len(got) != self.disk:
            return "the disk reads %d bytes" % len(got)
        want, model = ctx.image, ctx.model
        prev = 0
        for s in ctx.amb_sorted + [self.disk // SECTOR]:
            a0 = s * SECTOR
            if got[prev:a0] != want[prev:a0]:
                for t in range(prev // SECTOR, s):
                    sect = got[t * SECTOR:(t + 1) * SECTOR]
                    if sect != want[t * SECTOR:(t + 1) * SECTOR]:
                        return ("sector %d (byte %d) reads %s, must be the "
                                "value of request %d (durable)"
                                % (t, t * SECTOR, self.describe(sect),
                                   model.last[t]))
            if s == self.disk // SECTOR:
                break
            sect = got[a0:a0 + SECTOR]
            allowed = ctx.amb[s]
            if not any(sect == model.value(k, s) for k in allowed):
                return ("sector %d (byte %d) reads %s, may be the value of "
                        "request(s) %s" % (s, a0, self.describe(sect),
                                           sorted(allowed)))
            prev = a0 + SECTOR
        return None

    def describe(self, sect):
        if sect == bytes(SECTOR):
            return "zeros"
        k, s = struct.unpack_from("<QQ", sect)
        if sect == pattern(k, s):
            return "request %d's data for sector %d" % (k, s)
        return "garbage"


class Epoch:
    """What the checks of one epoch's states share (read-only)."""

    def __init__(self, e, changes, amb, image, model):
        self.e = e
        self.changes = changes
        self.amb = amb
        self.amb_sorted = sorted(amb)
        self.image = image
        self.model = model


def main():
    if sys.argv[1] == "run":
        uri, name, seed, control, ops = sys.argv[2:7]
        disk, cluster, scale, backing = (int(x) for x in sys.argv[7:11])
        run(uri, name, int(seed), control, ops, disk, cluster, scale, backing)
        return
    if sys.argv[1] == "backing":
        with open(sys.argv[2], "wb") as f:
            for s in range(int(sys.argv[3]) // SECTOR):
                f.write(pattern(0, s))
        return
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("log")
    ap.add_argument("initial")
    ap.add_argument("ops")
    ap.add_argument("workdir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget", type=int, default=64,
                    help="most states per epoch (beyond: sampled)")
    ap.add_argument("--states", type=int, default=0,
                    help="about how many states in all (0: no limit)")
    ap.add_argument("--torn", action="store_true")
    ap.add_argument("--backing-bytes", type=int, default=0)
    ap.add_argument("--max-failures", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=2,
                    help="states checked at once")
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    sys.exit(0 if Checker(a).run() else 1)


if __name__ == "__main__":
    main()
