#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Compare the block status an NBD export reports with what qemu-img map
# says about the image it serves.  Both maps are expanded to byte ranges
# and walked together; the first range where they disagree is reported
# with its offsets.  Modes:
#   compare-map.py base IMAGE URI    base:allocation vs data/zero
#   compare-map.py depth IMAGE URI   qemu:allocation-depth vs present/depth
# Each mode can also take two JSON files instead of running the tools:
#   compare-map.py base --files QEMU.json NBD.json
# --content RAW (base mode): RAW is qemu's view of the guest (qemu-img
# convert -O raw).  Every range the export calls ZERO must also read as
# zeroes there, on top of agreeing with qemu-img map.
# Exit 0 when they agree, 1 with a message on the first mismatch.

import json
import subprocess
import sys

HOLE = 1
ZERO = 2


def run_json(argv):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=300)
    if p.returncode != 0:
        sys.exit("compare-map: %s failed (%d): %s"
                 % (" ".join(argv), p.returncode, p.stderr.decode()))
    return json.loads(p.stdout)


def qemu_map(image, qemu_fmt):
    return run_json(["qemu-img", "map", "--output=json", "-f", qemu_fmt,
                     image])


def nbd_map(uri, context):
    return run_json(["nbdinfo", "--map=" + context, "--json", uri])


def check_cover(name, extents, startkey, size=None):
    """The extents must be contiguous from 0 and, if SIZE is known, end
    exactly there.  Returns the end offset."""
    pos = 0
    for e in extents:
        if e[startkey] != pos:
            sys.exit("compare-map: %s map not contiguous at %d (extent %r)"
                     % (name, pos, e))
        if e["length"] <= 0:
            sys.exit("compare-map: %s map has an empty extent %r"
                     % (name, e))
        pos += e["length"]
    if size is not None and pos != size:
        sys.exit("compare-map: %s map ends at %d, expected %d"
                 % (name, pos, size))
    return pos


def walk(qm, nm):
    """Yield (start, end, qemu_extent, nbd_extent) over common ranges."""
    i = j = 0
    pos = 0
    while i < len(qm) and j < len(nm):
        q, n = qm[i], nm[j]
        qend = q["start"] + q["length"]
        nend = n["offset"] + n["length"]
        end = min(qend, nend)
        yield pos, end, q, n
        pos = end
        if qend == end:
            i += 1
        if nend == end:
            j += 1


def fmt_range(a, b):
    return "[%d, %d) (0x%x-0x%x, %d bytes)" % (a, b, a, b, b - a)


def compare_base(qm, nm, content=None):
    for a, b, q, n in walk(qm, nm):
        t = n["type"]
        if content is not None:
            truly_zero = content[a:b].count(0) == b - a
            if (t & ZERO) and not truly_zero:
                first = next(k for k in range(a, b) if content[k])
                return ("base:allocation says ZERO over %s but byte %d "
                        "(0x%x) is 0x%02x" % (fmt_range(a, b), first, first,
                                              content[first]))
        if not q["data"]:
            want = "HOLE|ZERO" if q["zero"] else "HOLE"
            ok = (t & HOLE) and (not q["zero"] or (t & ZERO))
        else:
            want = "ZERO (no HOLE)" if q["zero"] else "data (no HOLE, no ZERO)"
            ok = not (t & HOLE) and bool(t & ZERO) == bool(q["zero"])
        if not ok:
            return ("base:allocation mismatch at %s: qemu-img map says "
                    "data=%s zero=%s, want %s, export says type %d (%s)"
                    % (fmt_range(a, b), q["data"], q["zero"], want, t,
                       n.get("description", "")))
    return None


def compare_depth(qm, nm):
    for a, b, q, n in walk(qm, nm):
        t = n["type"]
        if not q.get("present", True):
            ok = t == 0
            want = "0 (absent)"
        else:
            # qemu-img counts the top layer as depth 0; the context counts
            # it as 1.
            ok = t == q["depth"] + 1
            want = "%d" % (q["depth"] + 1)
        if not ok:
            return ("qemu:allocation-depth mismatch at %s: qemu-img map "
                    "says present=%s depth=%s, want %s, export says %d (%s)"
                    % (fmt_range(a, b), q.get("present"), q.get("depth"),
                       want, t, n.get("description", "")))
    return None


def main():
    args = sys.argv[1:]
    qemu_fmt = "qcow2"
    content = None
    if len(args) >= 2 and args[0] == "--content":
        with open(args[1], "rb") as f:
            content = f.read()
        args = args[2:]
    if len(args) >= 2 and args[0] == "-f":
        qemu_fmt = args[1]
        args = args[2:]
    if len(args) != 3 and not (len(args) == 4 and args[1] == "--files"):
        sys.exit("usage: compare-map.py [--content RAW] "
                 "[-f FMT] "
                 "base|depth IMAGE URI\n"
                 "       compare-map.py base|depth --files QEMU.json "
                 "NBD.json")
    mode = args[0]
    if mode not in ("base", "depth"):
        sys.exit("compare-map: unknown mode %r" % mode)
    context = "base:allocation" if mode == "base" else \
        "qemu:allocation-depth"
    if args[1] == "--files":
        with open(args[2]) as f:
            qm = json.load(f)
        with open(args[3]) as f:
            nm = json.load(f)
        what = args[2]
    else:
        qm = qemu_map(args[1], qemu_fmt)
        nm = nbd_map(args[2], context)
        what = args[1]

    size = check_cover("qemu-img", qm, "start")
    check_cover("nbd " + context, nm, "offset", size)
    err = compare_base(qm, nm, content) if mode == "base" else compare_depth(qm, nm)
    if err:
        sys.stderr.write("compare-map: %s: %s\n" % (what, err))
        sys.exit(1)
    print("ok: %s map of %s agrees with qemu-img map (%d + %d extents)"
          % (context, what, len(qm), len(nm)))


if __name__ == "__main__":
    main()
