#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Concurrency races of the write path (issue 3):
#  1. many overlapping qemu-io aio_writes into fresh clusters, with and
#     without a backing file (so copy-on-write is involved), and with
#     extended L2: every byte must hold the pattern of a writer that
#     covers it (or the old content where none does), in an order that is
#     one order for the whole cluster;
#  2. discards and write-zeroes racing allocating writes (libnbd aio over
#     two connections): each sector ends as the write's data or zeros, and
#     after a last pass writing a distinct pattern into every cluster,
#     everything reads back (no two guest clusters share a host cluster);
#  3. fio random writes with crc32c verification from four connections.
# After each, the server stops cleanly and `qemu-img check` exits 0.
# CONC_SEED=N replays a run.

source "$abs_top_srcdir/tests/functions.sh"

requires qemu-img qemu-io cmp
requires_python_nbd
requires_server

seed=${CONC_SEED:-$RANDOM$RANDOM}
echo "seed $seed (CONC_SEED=$seed replays)"
MiB=$(( 1024 * 1024 ))

# ---- 1. overlapping aio_write into fresh clusters --------------------------

# overlapping NAME IMG CLUSTER BASE-RAW: BASE-RAW is what the image reads
# as before (zeros or the backing file's data).
overlapping ()
{
  local name=$1 img=$2 cluster=$3 base=$4
  local plan="$tmpdir/$name.plan" cmds="$tmpdir/$name.cmds"
  start_server "$img"

  # The case from the issue first: two writes, overlapping by 2 KiB, into
  # one unallocated cluster.
  local rc=0
  run_timeout 60 qemu-io -f raw "$uri" -c 'aio_write -P 0x11 0 4k' \
    -c 'aio_write -P 0x22 2k 4k' -c 'aio_flush' >"$tmpdir/qio.out" 2>&1 ||
    rc=$?
  if [ "$rc" -ne 0 ] || grep -qiE 'error|fail' "$tmpdir/qio.out"; then
    cat "$tmpdir/qio.out" >&2
    fail "$name: qemu-io aio_write pair"
  fi
  run_timeout 60 "$PYTHON" - "$uri" "$base" <<'EOF' || fail "$name: pair"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
with open(sys.argv[2], "rb") as f:
    base = f.read(8192)
got = h.pread(8192, 0)
a, mid, b, rest = got[:2048], got[2048:4096], got[4096:6144], got[6144:]
assert a == b"\x11" * 2048, "first writer's own bytes lost"
assert mid in (b"\x11" * 2048, b"\x22" * 2048), "overlap mixed: %r" % set(mid)
assert b == b"\x22" * 2048, "second writer's own bytes lost"
assert rest == base[6144:], "bytes after both writes changed"
EOF
  ok "$name: two overlapping aio_writes into one fresh cluster"

  # Then many rounds of many writers per fresh cluster.  The plan holds
  # one line per writer: "offset length pattern".
  "$PYTHON" - "$plan" "$cmds" "$cluster" "$(file_size "$base")" \
    "$seed" <<'EOF'
import random, sys
plan, cmds, cluster, size, seed = sys.argv[1], sys.argv[2], \
    int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = random.Random(seed ^ cluster)
nclusters = min(48, size // cluster - 2)
first = (8192 + cluster - 1) // cluster    # the pair above took [0, 6k)
pat = 0
with open(plan, "w") as p, open(cmds, "w") as c:
    for k in range(nclusters):
        start = (first + k) * cluster
        for _ in range(rng.randint(2, 6)):
            if rng.random() < 0.2:          # across a cluster boundary
                off = start + rng.randrange(cluster // 2, cluster)
                ln = rng.randint(1, cluster)
            else:
                off = start + rng.randrange(0, cluster)
                ln = rng.randint(1, start + cluster - off)
            if rng.random() < 0.3:          # sector-aligned, as guests do
                off -= off % 512
                ln = max(512, ln - ln % 512)
            pat = pat % 250 + 2             # 2..251; never 0
            p.write("%d %d %d\n" % (off, ln, pat))
            c.write("aio_write -P %d %d %d\n" % (pat, off, ln))
            if pat == 251:
                c.write("aio_flush\n")      # patterns are reused after this
                p.write("barrier\n")
    c.write("aio_flush\n")
EOF
  local args=() line
  while IFS= read -r line; do args+=(-c "$line"); done < "$cmds"
  rc=0
  run_timeout 120 qemu-io -f raw "$uri" "${args[@]}" >"$tmpdir/qio.out" 2>&1 ||
    rc=$?
  if [ "$rc" -ne 0 ] || grep -qiE 'error|fail' "$tmpdir/qio.out"; then
    tail -20 "$tmpdir/qio.out" >&2
    fail "$name: qemu-io aio_write rounds"
  fi
  run_timeout 120 "$PYTHON" - "$uri" "$base" "$plan" "$cluster" <<'EOF' ||
import sys, nbd
uri, base_path, plan_path = sys.argv[1:4]
cluster = int(sys.argv[4])
h = nbd.NBD(); h.connect_uri(uri)
base = open(base_path, "rb").read()
# Writers in plan order, split into epochs at the barriers (an aio_flush
# waits for every earlier write, so epochs are ordered).
writers = []
epoch = 0
for line in open(plan_path):
    if line.strip() == "barrier":
        epoch += 1
        continue
    off, ln, pat = map(int, line.split())
    writers.append((off, ln, pat, epoch))
lo = min(w[0] for w in writers)
hi = max(w[0] + w[1] for w in writers)
got = h.pread(hi - lo, lo)
# Cut [lo, hi) at every writer and cluster boundary: inside a piece the
# set of covering writers is constant.  A write spanning two clusters may
# land in each at a different time (NBD writes are not atomic), so the
# order is per cluster: nodes are (cluster, writer).
cuts = sorted({lo, hi} | {w[0] for w in writers} | {w[0] + w[1] for w in writers}
              | set(range(lo - lo % cluster + cluster, hi, cluster)))
edges = set()                   # (a, b): writer a landed before writer b
for s, e in zip(cuts, cuts[1:]):
    cover = [i for i, w in enumerate(writers) if w[0] <= s and e <= w[0] + w[1]]
    piece = got[s - lo:e - lo]
    if not cover:
        if piece != base[s:e]:
            raise SystemExit("[%d, %d): no writer, but not the old data" % (s, e))
        continue
    last_epoch = max(writers[i][3] for i in cover)
    cover = [i for i in cover if writers[i][3] == last_epoch]
    by_pat = {writers[i][2]: i for i in cover}
    for v in set(piece):
        if v not in by_pat:
            raise SystemExit("[%d, %d): byte %#x is no covering writer's "
                             "pattern (%s)" % (s, e, v, sorted(by_pat)))
        k = s // cluster
        for i in cover:
            if i != by_pat[v]:
                edges.add(((k, i), (k, by_pat[v])))
# One order for everything: the "landed before" graph has no cycle.
succ = {}
for a, b in edges:
    succ.setdefault(a, []).append(b)
state = {}
def cyclic(n):
    stack = [(n, iter(succ.get(n, ())))]
    state[n] = 1
    while stack:
        node, it = stack[-1]
        nxt = next(it, None)
        if nxt is None:
            state[node] = 2
            stack.pop()
        elif state.get(nxt) == 1:
            return (node, nxt)
        elif nxt not in state:
            state[nxt] = 1
            stack.append((nxt, iter(succ.get(nxt, ()))))
    return None
for n in list(succ):
    if n not in state:
        c = cyclic(n)
        if c:
            raise SystemExit("cluster %d: writers %s and %s landed in "
                             "contradictory orders" % (c[0][0], writers[c[0][1]],
                                                       writers[c[1][1]]))
print("%d writers checked" % len(writers))
EOF
    fail "$name: overlapping aio_writes"
  stop_server
  check_clean "$img" "$name"
  ok "$name: many overlapping aio_writes per fresh cluster, check clean"
}

img="$tmpdir/plain.qcow2"
make_image "$img" 16M
make_raw "$tmpdir/zero.raw" 16M
overlapping "no-backing" "$img" 65536 "$tmpdir/zero.raw"

back="$tmpdir/back.raw"
"$PYTHON" -c '
import random, sys
random.seed(1)
open(sys.argv[1], "wb").write(random.randbytes(16 << 20))' "$back"
img="$tmpdir/cow.qcow2"
make_image "$img" 16M -b "$back" -F raw
overlapping "over-backing" "$img" 65536 "$back"

img="$tmpdir/small.qcow2"
make_image "$img" 16M -o cluster_size=4k -b "$back" -F raw
overlapping "4k-clusters-over-backing" "$img" 4096 "$back"

if qemu-img create -q -f qcow2 -o extended_l2=on "$tmpdir/probe" 1M \
     >/dev/null 2>&1; then
  img="$tmpdir/xl2.qcow2"
  make_image "$img" 16M -o extended_l2=on -b "$back" -F raw
  overlapping "extended-L2-over-backing" "$img" 65536 "$back"
fi

# ---- 2. discards and zeroes racing allocating writes -----------------------

# racing NAME IMG CLUSTER BACKING(0|1) [SERVER-ARGS]
racing ()
{
  local name=$1 img=$2 cluster=$3 backing=$4; shift 4
  start_server "$img" --discard=unmap "$@"
  run_timeout 300 "$PYTHON" - "$uri" "$cluster" "$backing" "$seed" <<'EOF' ||
import random, sys, nbd
uri, cluster, backing, seed = sys.argv[1], int(sys.argv[2]), \
    sys.argv[3] == "1", int(sys.argv[4])
rng = random.Random(seed + cluster)
w, d = nbd.NBD(), nbd.NBD()         # writer and discarder connections
w.connect_uri(uri); d.connect_uri(uri)
size = w.get_size()
nclusters = size // cluster
SECT = 512

def wait_all(handles_cookies):
    for h, c in handles_cookies:
        while not h.aio_command_completed(c):
            h.poll(-1)

for rnd in range(30):
    # A handful of clusters: fresh ones, and ones earlier rounds allocated.
    picks = rng.sample(range(nclusters), 16)
    ops = []
    for c in picks:
        start = c * cluster
        if rng.random() < 0.5:
            off, ln = start, cluster
        else:
            off = start + rng.randrange(0, cluster // SECT) * SECT
            ln = rng.randint(1, (start + cluster - off) // SECT) * SECT
        data = bytes([rng.randrange(1, 256)]) * ln
        if backing:
            kind = rng.choice(["zero", "zero-nohole"])
        else:
            kind = rng.choice(["trim", "zero", "zero-nohole"])
        ops.append((c, off, ln, data, kind))
    cookies = []
    order = list(range(len(ops)))
    rng.shuffle(order)
    for i in order:
        c, off, ln, data, kind = ops[i]
        start = c * cluster
        first_write = rng.random() < 0.5
        for step in (0, 1):
            if (step == 0) == first_write:
                cookies.append((w, w.aio_pwrite(data, off)))
            elif kind == "trim":
                cookies.append((d, d.aio_trim(cluster, start)))
            else:
                flags = nbd.CMD_FLAG_NO_HOLE if kind == "zero-nohole" else 0
                cookies.append((d, d.aio_zero(cluster, start, flags=flags)))
    wait_all(cookies)
    for c, off, ln, data, kind in ops:
        start = c * cluster
        got = w.pread(cluster, start)
        if got[:off - start] != bytes(off - start) or \
           got[off - start + ln:] != bytes(start + cluster - off - ln):
            raise SystemExit("round %d cluster %d (%s): bytes outside the "
                             "write are not zero" % (rnd, c, kind))
        for s in range(off - start, off - start + ln, SECT):
            sect = got[s:s + SECT]
            if sect != data[:SECT] and sect != bytes(SECT):
                raise SystemExit("round %d cluster %d (%s, write [%d, +%d) "
                                 "of %#x): sector at %d is neither the write "
                                 "nor zeros: bytes %s"
                                 % (rnd, c, kind, off, ln, data[0], start + s,
                                    sorted(set(sect))[:8]))
    w.flush()

# Last: a distinct pattern in every cluster, written with many requests in
# flight, then everything read back.
def pattern(c):
    return (c.to_bytes(4, "little") + b"\xa5\x5a\xc3\x3c") * (cluster // 8)
cookies = []
for c in range(nclusters):
    h = w if c % 2 else d
    cookies.append((h, h.aio_pwrite(pattern(c), c * cluster)))
    if len(cookies) >= 64:
        wait_all(cookies)
        cookies = []
wait_all(cookies)
w.flush()
for c in range(nclusters):
    if w.pread(cluster, c * cluster) != pattern(c):
        raise SystemExit("cluster %d does not read back its own pattern "
                         "(shares a host cluster?)" % c)
print("30 rounds of races, %d clusters verified" % nclusters)
EOF
    fail "$name: discards racing writes"
  stop_server
  check_clean "$img" "$name"
  # qemu's own reading of the image after the stop must agree as well.
  image_to_raw "$img" "$tmpdir/race.raw"
  "$PYTHON" - "$tmpdir/race.raw" "$cluster" <<'EOF' ||
import sys
data = open(sys.argv[1], "rb").read()
cluster = int(sys.argv[2])
for c in range(len(data) // cluster):
    want = (c.to_bytes(4, "little") + b"\xa5\x5a\xc3\x3c") * (cluster // 8)
    if data[c * cluster:(c + 1) * cluster] != want:
        raise SystemExit("qemu reads cluster %d wrongly" % c)
EOF
    fail "$name: qemu-img reads the image differently"
  rm -f "$tmpdir/race.raw"
  ok "$name: discards/zeroes racing allocating writes, check clean"
}

img="$tmpdir/race.qcow2"
make_image "$img" 8M
racing "race-64k" "$img" 65536 0

img="$tmpdir/race4k.qcow2"
make_image "$img" 4M -o cluster_size=4k,refcount_bits=1
racing "race-4k-refcount1" "$img" 4096 0

img="$tmpdir/race-back.qcow2"
make_image "$img" 8M -o cluster_size=16k -b "$back" -F raw
racing "race-over-backing" "$img" 16384 1

img="$tmpdir/race-v2.qcow2"
make_image "$img" 8M -o compat=0.10,cluster_size=4k
racing "race-v2" "$img" 4096 0

# ---- 3. fio random writes with verification, four connections --------------

if command -v fio >/dev/null 2>&1 &&
   grep -qw nbd <<< "$(fio --enghelp 2>/dev/null)"
then
  for spec in "64k:" "4k:-b $back -F raw"; do
    cs=${spec%%:*} extra=${spec#*:}
    img="$tmpdir/fio-$cs.qcow2"
    # shellcheck disable=SC2086
    make_image "$img" 64M -o cluster_size=$cs $extra
    start_server "$img"
    rc=0
    run_timeout 300 fio --name=verify --ioengine=nbd --uri="$uri" \
      --verify_state_save=0 \
      --rw=randwrite --bsrange=512-64k --bs_unaligned=1 --numjobs=4 \
      --size=12M --offset_increment=16M --iodepth=16 --verify=crc32c \
      --verify_fatal=1 --do_verify=1 --group_reporting \
      --randseed="$seed" >"$tmpdir/fio.out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ] || grep -qiE 'verify: bad|crc32c: verify failed|error=' \
         "$tmpdir/fio.out"; then
      tail -40 "$tmpdir/fio.out" >&2
      fail "fio randwrite+verify ($cs clusters $extra) exited $rc"
    fi
    stop_server
    check_clean "$img" "fio $cs"
    ok "fio: 4 jobs random writes verified, $cs clusters${extra:+ over backing}"
  done
else
  echo "fio without the nbd engine: not tested"
fi
