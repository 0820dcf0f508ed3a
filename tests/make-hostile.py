#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# Make hostile qcow2 images for test-hostile, in the spirit of QEMU's
# iotest 080: build sane images with qemu-img/qemu-io, then patch header
# fields, extensions and table entries to values a careless parser would
# trust.  Writes the images and a manifest (manifest.txt) into the output
# directory; each manifest line says what test-hostile must observe:
#
#   refuse|FILE|ERRNO|KEYWORD|FLAGS   qcow2_open fails with -ERRNO and
#                                     logs a line containing KEYWORD
#   read|FILE|RANGES|KEYWORD|FLAGS    opens; reading the whole guest in
#                                     4 KiB chunks gives -EIO exactly for
#                                     the chunks inside RANGES ("a-b,c-d"
#                                     or "-"), every other chunk equals
#                                     the reference raw image; KEYWORD
#                                     (may be empty) must have been logged
#
# FLAGS (comma separated): ref=FILE (reference, default ref.raw),
# writable, depth=N (max_backing_depth), layers=N (expected chain depth),
# corrupt (image must be flagged corrupt after the reads).
#
# Usage: make-hostile.py OUTDIR

import os
import shutil
import struct
import subprocess
import sys

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
os.chdir(out)
manifest = []

K = 1024
M = 1024 * 1024
CS = 4096                        # cluster size of the test images
COPIED = 1 << 63
COMPRESSED = 1 << 62
OFFMASK = 0x00fffffffffffe00


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)


def qemu_img(*args):
    run('qemu-img', *args)


def qemu_io(path, *cmds, fmt='qcow2'):
    args = ['qemu-io', '-f', fmt]
    for c in cmds:
        args += ['-c', c]
    run(*args, path)


def rd(path, off, fmt):
    with open(path, 'rb') as f:
        f.seek(off)
        return struct.unpack('>' + fmt, f.read(struct.calcsize('>' + fmt)))[0]


def wr(path, off, fmt, val):
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(struct.pack('>' + fmt, val))


def wrbytes(path, off, data):
    with open(path, 'r+b') as f:
        f.seek(off)
        f.write(data)


def copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


def refuse(f, err, keyword, flags=''):
    manifest.append('refuse|%s|%s|%s|%s' % (f, err, keyword, flags))


def refuse_patched(name, err, keyword, *writes):
    """NAME: base.qcow2 with WRITES, (OFFSET, FMT, VALUE) each, applied;
    qcow2_open must refuse it with ERR and log KEYWORD."""
    f = copy('base.qcow2', name)
    for off, fmt, val in writes:
        wr(f, off, fmt, val)
    refuse(f, err, keyword)


def read(f, ranges='-', keyword='', flags=''):
    if ranges != '-':
        flags = ','.join(x for x in (flags, 'corrupt') if x)
    manifest.append('read|%s|%s|%s|%s' % (f, ranges, keyword, flags))


# Header field offsets (qcow2.txt "Header").
BACKING_OFF, BACKING_SIZE, CLUSTER_BITS, SIZE = 8, 16, 20, 24
CRYPT, L1_SIZE, L1_OFF, RT_OFF, RT_CLUSTERS = 32, 36, 40, 48, 56
NB_SN, SN_OFF, INCOMPAT, AUTOCLEAR = 60, 64, 72, 88
REFCOUNT_ORDER, HEADER_LENGTH, COMPRESSION_TYPE = 96, 100, 104


def extensions(path):
    """Yield (file offset of the extension header, type, length)."""
    off = rd(path, HEADER_LENGTH, 'I') if rd(path, 4, 'I') == 3 else 72
    while True:
        t, n = rd(path, off, 'I'), rd(path, off + 4, 'I')
        if t == 0:
            return
        yield off, t, n
        off += 8 + (n + 7) // 8 * 8


def find_ext(path, typ):
    for off, t, n in extensions(path):
        if t == typ:
            return off, n
    raise Exception('%s: no extension 0x%x' % (path, typ))


def l2_entry_pos(path, guest):
    """File offset of the L2 entry mapping GUEST (4k clusters, 8-byte
    entries)."""
    l1 = rd(path, L1_OFF, 'Q')
    per_l2 = CS // 8
    idx1, idx2 = guest // CS // per_l2, guest // CS % per_l2
    l2 = rd(path, l1 + 8 * idx1, 'Q') & OFFMASK
    assert l2 != 0
    return l2 + 8 * idx2


def set_backing_name(path, name):
    off = rd(path, BACKING_OFF, 'Q')
    assert off != 0
    data = name.encode()
    wrbytes(path, off, data + b'\0' * 64)
    wr(path, BACKING_SIZE, 'I', len(data))


# ---- the base image: 8 MiB, 4 KiB clusters, data in four L2 tables ------

qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096',
         'base.qcow2', '8M')
qemu_io('base.qcow2',
        'write -P 0xaa 0 1M',
        'write -P 0xbb 2M 1M',
        'write -P 0xcc 4M 64k',
        'write -P 0xff 5M 4k',
        'write -c -P 0xdd 6M 64k')
qemu_img('convert', '-O', 'raw', 'base.qcow2', 'ref.raw')
base_size = os.path.getsize('base.qcow2')
read('base.qcow2')

# ---- header fields -------------------------------------------------------

refuse_patched('magic.qcow2', 'EINVAL', 'magic', (0, 'I', 0x514649fa))

refuse_patched('version4.qcow2', 'ENOTSUP', 'version', (4, 'I', 4))

for name, val in (('small', 100), ('huge', 0xfffffff8), ('unaligned', 108)):
    refuse_patched('header-length-%s.qcow2' % name, 'EINVAL', 'header_length',
                   (HEADER_LENGTH, 'I', val))

for bits in (8, 22, 0xffffffff):
    refuse_patched('cluster-bits-%d.qcow2' % bits, 'EINVAL', 'cluster_bits',
                   (CLUSTER_BITS, 'I', bits))

refuse_patched('refcount-order-7.qcow2', 'EINVAL', 'refcount_order',
               (REFCOUNT_ORDER, 'I', 7))

# Backing file name: offset and size out of bounds, too long.
refuse_patched('backing-offset-huge.qcow2', 'EINVAL', 'backing file name',
               (BACKING_OFF, 'Q', 0xffffffffffff0000), (BACKING_SIZE, 'I', 10))
refuse_patched('backing-size-oob.qcow2', 'EINVAL', 'backing file name',
               (BACKING_OFF, 'Q', CS - 100), (BACKING_SIZE, 'I', 200))
refuse_patched('backing-too-long.qcow2', 'EINVAL', 'too long',
               (BACKING_OFF, 'Q', 512), (BACKING_SIZE, 'I', 1024))
refuse_patched('backing-in-header.qcow2', 'EINVAL', 'backing file name',
               (BACKING_OFF, 'Q', 16), (BACKING_SIZE, 'I', 8))

# Refcount table.
rt = rd('base.qcow2', RT_OFF, 'Q')
refuse_patched('reftable-unaligned.qcow2', 'EINVAL', 'refcount table',
               (RT_OFF, 'Q', rt + 512))
refuse_patched('reftable-past-eof.qcow2', 'EINVAL', 'refcount table',
               (RT_OFF, 'Q', (base_size + 100 * CS) // CS * CS))
refuse_patched('reftable-offset-huge.qcow2', 'EINVAL', 'refcount table',
               (RT_OFF, 'Q', 0xfffffffffffff000))
refuse_patched('reftable-clusters-huge.qcow2', 'EINVAL',
               'refcount table too large', (RT_CLUSTERS, 'I', 0xffffffff))
refuse_patched('reftable-clusters-zero.qcow2', 'EINVAL', 'refcount table',
               (RT_CLUSTERS, 'I', 0))

# L1 table.
l1 = rd('base.qcow2', L1_OFF, 'Q')
l1_size = rd('base.qcow2', L1_SIZE, 'I')
assert l1_size == 4, l1_size
refuse_patched('l1-unaligned.qcow2', 'EINVAL', 'L1 table offset',
               (L1_OFF, 'Q', l1 + 8))
refuse_patched('l1-offset-huge.qcow2', 'EINVAL', 'L1 table',
               (L1_OFF, 'Q', 0xfffffffffffff000))
refuse_patched('l1-size-huge.qcow2', 'EINVAL', 'L1 table too large',
               (L1_SIZE, 'I', 0x7fffffff))
refuse_patched('l1-size-max.qcow2', 'EINVAL', 'L1 table too large',
               (L1_SIZE, 'I', 0xffffffff))
refuse_patched('l1-past-eof.qcow2', 'EINVAL', 'past the end',
               (L1_SIZE, 'I', (base_size - l1) // 8 + 1))
refuse_patched('l1-too-small.qcow2', 'EINVAL', 'L1 table too small',
               (L1_SIZE, 'I', 3))
refuse_patched('size-huge.qcow2', 'EINVAL', 'L1 table',
               (SIZE, 'Q', 0xffffffffffffffff))
refuse_patched('size-2p62.qcow2', 'EINVAL', 'L1 table',
               (SIZE, 'Q', 1 << 62), (L1_SIZE, 'I', 0x7fffffff))
# An L1 table longer than the virtual size needs is valid (QEMU accepts
# it); the extra entries are never looked at.
f = copy('base.qcow2', 'l1-larger.qcow2')
wr(f, L1_SIZE, 'I', 64)
read(f)

# Overlapping metadata.
refuse_patched('l1-on-header.qcow2', 'EINVAL', 'overlaps', (L1_OFF, 'Q', 0))
refuse_patched('reftable-on-l1.qcow2', 'EINVAL', 'overlaps', (RT_OFF, 'Q', l1))
refuse_patched('reftable-on-header.qcow2', 'EINVAL', 'overlaps',
               (RT_OFF, 'Q', 0))

# Snapshot table.
refuse_patched('snapshot-offset-huge.qcow2', 'EINVAL', 'snapshot',
               (NB_SN, 'I', 1), (SN_OFF, 'Q', 0xfffffffffffff000))
refuse_patched('snapshot-offset-unaligned.qcow2', 'EINVAL', 'snapshot',
               (NB_SN, 'I', 1), (SN_OFF, 'Q', CS + 8))
refuse_patched('snapshot-count-huge.qcow2', 'EINVAL', 'too many snapshots',
               (NB_SN, 'I', 0x7fffffff), (SN_OFF, 'Q', 5 * M // CS * CS))


def snapshot_case(name, id_size, name_size, extra, keyword):
    """A one-entry snapshot table in a cluster appended to the file."""
    f = copy('base.qcow2', name)
    pos = (os.path.getsize(f) + CS - 1) // CS * CS
    entry = struct.pack('>QIHHIIQII', 0, 0, id_size, name_size, 0, 0, 0, 0,
                        extra)
    with open(f, 'r+b') as fh:
        fh.truncate(pos + CS)
    wrbytes(f, pos, entry + b'1' * 8)
    wr(f, NB_SN, 'I', 1)
    wr(f, SN_OFF, 'Q', pos)
    refuse(f, 'EINVAL', keyword)


snapshot_case('snapshot-id-past-eof.qcow2', 0xffff, 4, 0, 'past the end')
snapshot_case('snapshot-name-past-eof.qcow2', 1, 0xffff, 0, 'past the end')
snapshot_case('snapshot-extra-huge.qcow2', 1, 1, 0xffffffff, 'extra data')

# A real snapshot table made by qemu-img must open (and reads see the
# active layer).  Then two entries where the file holds one.
f = copy('base.qcow2', 'snapshot-ok.qcow2')
qemu_img('snapshot', '-c', 'snap1', f)
read(f)
f = copy('snapshot-ok.qcow2', 'snapshot-count-past.qcow2')
sn = rd(f, SN_OFF, 'Q')
with open(f, 'r+b') as fh:
    fh.truncate(sn + CS)         # the table is the last thing qemu-img wrote
wr(f, NB_SN, 'I', 1000)
refuse(f, 'EINVAL', 'snapshot')

# Header extensions.  qemu-img 7.2 writes none into a plain image, so
# add our own after the header.
def add_ext(path, typ, data):
    off = rd(path, HEADER_LENGTH, 'I')
    for o, t, n in extensions(path):
        off = o + 8 + (n + 7) // 8 * 8
    pad = (len(data) + 7) // 8 * 8 - len(data)
    wrbytes(path, off, struct.pack('>II', typ, len(data)) + data +
            b'\0' * pad + b'\0' * 8)
    return off


f = copy('base.qcow2', 'ext-past-cluster.qcow2')
off = add_ext(f, 0x12345678, b'x' * 16)
wr(f, off + 4, 'I', CS - off - 8 + 1)
refuse(f, 'EINVAL', 'extension')
f = copy('base.qcow2', 'ext-huge-length.qcow2')
off = add_ext(f, 0x12345678, b'x' * 16)
wr(f, off + 4, 'I', 0xffffffff)
refuse(f, 'EINVAL', 'extension')
f = copy('base.qcow2', 'ext-backing-format-long.qcow2')
add_ext(f, 0xe2792aca, b'q' * 1100)
refuse(f, 'EINVAL', 'backing format')
f = copy('base.qcow2', 'ext-crypto-plain.qcow2')
add_ext(f, 0x0537be77, struct.pack('>QQ', CS, 512))
refuse(f, 'EINVAL', 'encryption header')
f = copy('base.qcow2', 'ext-crypto-oob.qcow2')
wr(f, CRYPT, 'I', 2)
add_ext(f, 0x0537be77, struct.pack('>QQ', 0xfffffffffffff000, 0x100000))
refuse(f, 'EINVAL', 'encryption header')
# Unknown extension types are skipped; an extension ending exactly at
# the end of the cluster is fine.
f = copy('base.qcow2', 'ext-unknown.qcow2')
add_ext(f, 0x12345678, b'hello')
off = add_ext(f, 0x87654321, b'')
wr(f, off + 4, 'I', CS - off - 8)
read(f)

# Incompatible features.
refuse_patched('incompat-unknown.qcow2', 'ENOTSUP',
               'unknown incompatible feature bit 40', (INCOMPAT, 'Q', 1 << 40))
f = copy('base.qcow2', 'incompat-named.qcow2')
wr(f, INCOMPAT, 'Q', (1 << 40) | (1 << 63))
add_ext(f, 0x6803f857,
        struct.pack('>BB46s', 0, 0, b'dirty') +
        struct.pack('>BB46s', 1, 40, b'not this one') +
        struct.pack('>BB46s', 0, 40, b'frobnicator') +
        struct.pack('>BB46s', 0, 63, b'\x1b[31mred' + b'z' * 36))
refuse(f, 'ENOTSUP', 'frobnicator, ?[31mredzzz')
refuse_patched('incompat-extl2-small.qcow2', 'EINVAL', 'extended L2',
               (INCOMPAT, 'Q', 1 << 4))
refuse_patched('incompat-datafile-noname.qcow2', 'EINVAL', 'data file',
               (INCOMPAT, 'Q', 1 << 2))
assert rd('base.qcow2', HEADER_LENGTH, 'I') == 112
refuse_patched('compression-type-2.qcow2', 'ENOTSUP', 'compression type',
               (INCOMPAT, 'Q', 1 << 3), (COMPRESSION_TYPE, 'B', 2))
refuse_patched('compression-type-nobit.qcow2', 'EINVAL', 'compression type',
               (COMPRESSION_TYPE, 'B', 1))

# Encryption: refused by name, never served as ciphertext.
for m, what in ((1, 'AES'), (2, 'LUKS')):
    refuse_patched('crypt-%d.qcow2' % m, 'ENOTSUP',
                   'encrypted (crypt_method %d: %s)' % (m, what),
                   (CRYPT, 'I', m))
try:
    qemu_img('create', '-q', '-f', 'qcow2', '--object',
             'secret,id=sec0,data=123456', '-o',
             'encrypt.format=luks,encrypt.key-secret=sec0,'
             'encrypt.iter-time=10', 'luks.qcow2', '1M')
    refuse('luks.qcow2', 'ENOTSUP', 'encrypted (crypt_method 2: LUKS)')
except subprocess.CalledProcessError:
    pass

# Dirty: readable with a warning (a writable open repairs it: that is
# tests/test-qcow2-alloc.sh's business); corrupt: read-only.
f = copy('base.qcow2', 'dirty.qcow2')
wr(f, INCOMPAT, 'Q', 1)
read(f, keyword='dirty')
f = copy('base.qcow2', 'corrupt-bit.qcow2')
wr(f, INCOMPAT, 'Q', 2)
read(f, keyword='marked corrupt', flags='corrupt')
refuse(f, 'EROFS', 'read-only', 'writable')

# Bitmaps extension (validated when autoclear bit 0 says it is valid).
try:
    f = copy('base.qcow2', 'bitmaps.qcow2')
    qemu_img('bitmap', '--add', f, 'b0')
    read(f)
    bo, bn = find_ext(f, 0x23852875)
    g = copy(f, 'bitmaps-nb-zero.qcow2')
    wr(g, bo + 8, 'I', 0)
    refuse(g, 'EINVAL', 'bitmaps')
    g = copy(f, 'bitmaps-dir-past-eof.qcow2')
    wr(g, bo + 8 + 16, 'Q', 0xfffffffffffff000)
    refuse(g, 'EINVAL', 'bitmaps')
    g = copy(f, 'bitmaps-length.qcow2')
    wr(g, bo + 4, 'I', 16)
    refuse(g, 'EINVAL', 'bitmaps')
    # With the autoclear bit clear the extension is stale and ignored.
    g = copy(f, 'bitmaps-stale.qcow2')
    wr(g, bo + 8, 'I', 0)
    wr(g, AUTOCLEAR, 'Q', 0)
    read(g)
except subprocess.CalledProcessError:
    pass

# ---- bitmap directories (issue 13) ---------------------------------------
# bm.qcow2: b0 (64k granules) and b1 (512 B granules: one data cluster)
# dirtied after they were made, dis (disabled, clean).  Read-only opens
# check the directory; tables are checked where they are used: writable
# opens (flag writable) and bitmaps asked for (flag bitmap=NAME).

BITMAPS_EXT = 0x23852875
BME_FLAGS, BME_TYPE, BME_GRAN, BME_NAME_SIZE, BME_EXTRA = 12, 16, 17, 18, 20


def bm_dir(path):
    """(ext offset, dir offset, [entry dicts])"""
    eo, _ = find_ext(path, BITMAPS_EXT)
    nb, dsize, doff = rd(path, eo + 8, 'I'), rd(path, eo + 16, 'Q'), \
        rd(path, eo + 24, 'Q')
    out, pos = [], doff
    for _ in range(nb):
        ns, ex = rd(path, pos + BME_NAME_SIZE, 'H'), rd(path, pos + BME_EXTRA, 'I')
        with open(path, 'rb') as fh:
            fh.seek(pos + 24 + ex)
            name = fh.read(ns).decode()
        out.append({'pos': pos, 'name': name,
                    'table': rd(path, pos, 'Q'), 'size': rd(path, pos + 8, 'I'),
                    'flags': rd(path, pos + BME_FLAGS, 'I')})
        pos += (24 + ex + ns + 7) // 8 * 8
    return eo, doff, out


def bm_case(name, patch, kind, err='EINVAL', keyword='', flags=''):
    f = copy('bm.qcow2', name)
    eo, doff, ents = bm_dir(f)
    patch(f, eo, doff, {e['name']: e for e in ents})
    if kind == 'refuse':
        refuse(f, err, keyword, flags)
    else:
        read(f, keyword=keyword, flags=flags)


try:
    f = copy('base.qcow2', 'bm.qcow2')
    qemu_img('bitmap', '--add', f, 'b0')
    qemu_img('bitmap', '--add', '-g', '512', f, 'b1')
    qemu_img('bitmap', '--add', '--disable', f, 'dis')
    qemu_io(f, 'write -P 0xaa 0 1M')
    read(f, flags='bitmap=b1')
    read(f, flags='writable,bitmap=b0')
    E = bm_dir(f)[2]
    assert [e['name'] for e in E] == ['b0', 'b1', 'dis'], E
    b1_data = rd(f, E[1]['table'], 'Q')
    assert b1_data != 0

    # The extension and the directory's shape.
    bm_case('bm-count-more.qcow2', lambda f, eo, d, e: wr(f, eo + 8, 'I', 4),
            'refuse', keyword='holds 3 bitmaps')
    bm_case('bm-count-less.qcow2', lambda f, eo, d, e: wr(f, eo + 8, 'I', 2),
            'refuse', keyword='more bitmaps')
    bm_case('bm-count-huge.qcow2',
            lambda f, eo, d, e: wr(f, eo + 8, 'I', 65536), 'refuse',
            keyword='number of bitmaps')
    bm_case('bm-dir-size-huge.qcow2',
            lambda f, eo, d, e: wr(f, eo + 16, 'Q', 1 << 40), 'refuse',
            keyword='directory size')
    bm_case('bm-dir-unaligned.qcow2',
            lambda f, eo, d, e: wr(f, eo + 24, 'Q', d + 8), 'refuse',
            keyword='unaligned')
    bm_case('bm-dir-on-l1.qcow2',
            lambda f, eo, d, e: wr(f, eo + 24, 'Q', l1), 'refuse',
            keyword='bitmap')
    # Entries.
    bm_case('bm-name-size-zero.qcow2',
            lambda f, eo, d, e: wr(f, e['dis']['pos'] + BME_NAME_SIZE, 'H', 0),
            'refuse', keyword='name size')
    bm_case('bm-name-size-huge.qcow2',
            lambda f, eo, d, e: wr(f, e['b1']['pos'] + BME_NAME_SIZE, 'H',
                                   0xffff), 'refuse', keyword='broken')
    bm_case('bm-name-nul.qcow2',
            lambda f, eo, d, e: wr(f, e['b0']['pos'] + 25, 'B', 0),
            'refuse', keyword='NUL')
    bm_case('bm-name-dup.qcow2',
            lambda f, eo, d, e: wrbytes(f, e['b1']['pos'] + 24, b'b0'),
            'refuse', keyword="two bitmaps are named 'b0'")
    # A name that would upset a terminal is printed defused.
    bm_case('bm-name-escape.qcow2',
            lambda f, eo, d, e: (wrbytes(f, e['b1']['pos'] + 24, b'\x1b['),
                                 wr(f, e['b1']['pos'] + BME_TYPE, 'B', 2)),
            'refuse', keyword="bitmap '?[' has unknown type 2")

    def whole_dir_cluster(f, d):
        # qemu-img writes the directory last, unpadded: make its cluster
        # whole, zeros after the directory.
        with open(f, 'r+b') as fh:
            fh.truncate(max(os.path.getsize(f), d + CS))

    def extra(f, eo, d, e):
        # The last entry grows by 8 bytes of extra data (zeros).
        whole_dir_cluster(f, d)
        wr(f, e['dis']['pos'] + BME_EXTRA, 'I', 8)
        wr(f, eo + 16, 'Q', rd(f, eo + 16, 'Q') + 8)
    bm_case('bm-extra-data.qcow2', extra, 'refuse', 'ENOTSUP', 'extra data')
    bm_case('bm-flags-reserved.qcow2',
            lambda f, eo, d, e: wr(f, e['b0']['pos'] + BME_FLAGS, 'I', 2 | 4),
            'refuse', keyword='reserved flags')
    for g in (8, 32):
        bm_case('bm-granularity-%d.qcow2' % g,
                lambda f, eo, d, e: wr(f, e['b0']['pos'] + BME_GRAN, 'B', g),
                'refuse', keyword='granularity')
    for nm, val in (('zero', 0), ('huge', 0x8000001)):
        bm_case('bm-table-size-%s.qcow2' % nm,
                lambda f, eo, d, e: wr(f, e['b1']['pos'] + 8, 'I', val),
                'refuse', keyword='table size')
    bm_case('bm-table-size-wrong.qcow2',
            lambda f, eo, d, e: wr(f, e['b1']['pos'] + 8, 'I', 2),
            'refuse', keyword='the disk size needs 1')
    for nm, val in (('zero', 0), ('unaligned', E[0]['table'] + 512),
                    ('huge', 0xfffffffffffff000)):
        bm_case('bm-table-offset-%s.qcow2' % nm,
                lambda f, eo, d, e: wr(f, e['b0']['pos'], 'Q', val),
                'refuse', keyword='outside the file')
    # In use (a crash): opens, and is refused only when asked for; a
    # stale table size is allowed then, as QEMU allows it.
    def in_use(f, eo, d, e):
        wr(f, e['b1']['pos'] + BME_FLAGS, 'I', 3)
        wr(f, e['b1']['pos'] + 8, 'I', 2)
    bm_case('bm-in-use.qcow2', in_use, 'read', flags='writable')
    bm_case('bm-in-use-asked.qcow2', in_use, 'refuse',
            keyword="bitmap 'b1' is inconsistent", flags='bitmap=b1')
    refuse('bm.qcow2', 'ENOENT', "bitmap 'nope' is not found",
           'bitmap=nope')

    # Table entries: checked where the table is used.
    for nm, val in (('reserved', b1_data | 2), ('unaligned', b1_data + 512),
                    ('past-eof', 0x00fffffffffff000),
                    ('ones-with-offset', b1_data | 1)):
        def patch(f, eo, d, e, val=val):
            wr(f, e['b1']['table'], 'Q', val)
        bm_case('bm-entry-%s.qcow2' % nm, patch, 'read')
        bm_case('bm-entry-%s-rw.qcow2' % nm, patch, 'refuse',
                keyword='table entry 0', flags='writable')
        bm_case('bm-entry-%s-asked.qcow2' % nm, patch, 'refuse',
                keyword='table entry 0', flags='bitmap=b1')
    bm_case('bm-entry-all-ones.qcow2',
            lambda f, eo, d, e: wr(f, e['b1']['table'], 'Q', 1), 'read',
            flags='writable,bitmap=b1')

    # Clusters a writable open would write or free: used once, by the
    # bitmaps only, with a refcount.
    bm_case('bm-shared-table.qcow2',
            lambda f, eo, d, e: wr(f, e['b1']['pos'], 'Q', e['b0']['table']),
            'refuse', keyword='both use cluster', flags='writable')
    bm_case('bm-table-on-reftable.qcow2',
            lambda f, eo, d, e: wr(f, e['dis']['pos'], 'Q',
                                   rd(f, RT_OFF, 'Q')),
            'refuse', keyword='other metadata', flags='writable')
    rb = rd('bm.qcow2', rd('bm.qcow2', RT_OFF, 'Q'), 'Q')
    bm_case('bm-data-on-refblock.qcow2',
            lambda f, eo, d, e: wr(f, e['b1']['table'], 'Q', rb),
            'refuse', keyword='other metadata', flags='writable')
    bm_case('bm-data-on-dir.qcow2',
            lambda f, eo, d, e: (whole_dir_cluster(f, d),
                                 wr(f, e['b1']['table'], 'Q', d)),
            'refuse', keyword='bitmap directory', flags='writable')

    def refcount_zero(f, eo, d, e):
        end = (os.path.getsize(f) + CS - 1) // CS * CS
        with open(f, 'r+b') as fh:
            fh.truncate(end + CS)
        wr(f, e['b1']['table'], 'Q', end)
    bm_case('bm-data-refcount-zero.qcow2', refcount_zero, 'refuse',
            keyword='refcount is 0', flags='writable')

    # Memory: two 512 MiB bitmaps (a 2 TiB disk at 512 B granules) are
    # more than a writable open may hold.
    qemu_img('create', '-q', '-f', 'qcow2', 'bm-2t.qcow2', '2T')
    qemu_img('bitmap', '--add', '-g', '512', 'bm-2t.qcow2', 'g1')
    qemu_img('bitmap', '--add', '-g', '512', 'bm-2t.qcow2', 'g2')
    refuse('bm-2t.qcow2', 'ENOMEM', 'more than 1024 MiB', 'writable')
except subprocess.CalledProcessError:
    pass

# Other formats and layouts that must read correctly.
qemu_img('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=512',
         'v2.qcow2', '1M')
qemu_io('v2.qcow2', 'write -P 0x11 0 100k', 'write -c -P 0x22 512k 4k')
qemu_img('convert', '-O', 'raw', 'v2.qcow2', 'v2.raw')
read('v2.qcow2', flags='ref=v2.raw')
qemu_img('create', '-q', '-f', 'qcow2', '-o',
         'compression_type=zstd,cluster_size=4096', 'zstd.qcow2', '1M')
qemu_io('zstd.qcow2', 'write -c -P 0x33 0 64k', 'write -P 0x44 128k 4k')
qemu_img('convert', '-O', 'raw', 'zstd.qcow2', 'zstd.raw')
read('zstd.qcow2', flags='ref=zstd.raw')

qemu_img('create', '-q', '-f', 'qcow2', '-o',
         'extended_l2=on,cluster_size=16k', 'extl2.qcow2', '1M')
qemu_io('extl2.qcow2', 'write -P 0x66 0 1k', 'write -P 0x77 20k 3k',
        'write -z 40k 1k', 'write -c -P 0x88 64k 16k')
qemu_img('convert', '-O', 'raw', 'extl2.qcow2', 'extl2.raw')
read('extl2.qcow2', flags='ref=extl2.raw')
# Opening the top image read-write changes nothing for reads.
read('base.qcow2', flags='writable')

# ---- backing chains ------------------------------------------------------

os.makedirs('sub', exist_ok=True)
qemu_img('create', '-q', '-f', 'raw', 'chain0.raw', '6M')
qemu_io('chain0.raw', 'write -P 0x01 0 6M', fmt='raw')
qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b',
         '../chain0.raw', '-F', 'raw', 'sub/chain1.qcow2', '8M')
qemu_io('sub/chain1.qcow2', 'write -P 0x02 1M 1M')
qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b',
         'chain1.qcow2', '-F', 'qcow2', 'sub/chain2.qcow2')
qemu_io('sub/chain2.qcow2', 'write -P 0x03 1536k 1M', 'write -z 3M 64k')
qemu_img('convert', '-O', 'raw', 'sub/chain2.qcow2', 'chain.raw')
read('sub/chain2.qcow2', flags='ref=chain.raw,layers=3')
read('sub/chain2.qcow2', flags='ref=chain.raw,layers=3,depth=2')
refuse('sub/chain2.qcow2', 'EINVAL', 'deeper', 'depth=1')

# a -> b -> a
qemu_img('create', '-q', '-f', 'qcow2', '-u', '-b', 'loop-b.qcow2', '-F',
         'qcow2', 'loop-a.qcow2', '1M')
qemu_img('create', '-q', '-f', 'qcow2', '-u', '-b', 'loop-a.qcow2', '-F',
         'qcow2', 'loop-b.qcow2', '1M')
refuse('loop-a.qcow2', 'EINVAL', 'loop')
f = copy('loop-a.qcow2', 'self-loop.qcow2')
set_backing_name(f, 'self-loop.qcow2')
refuse(f, 'EINVAL', 'loop')
# The same loop through names that differ: only the depth cap sees it.
f = copy('loop-a.qcow2', 'loop-c.qcow2')
set_backing_name(f, './loop-c.qcow2')
refuse(f, 'EINVAL', 'deeper')

# Names are file names, never URLs or JSON.
qemu_img('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4096', '-b',
         'base.qcow2', '-F', 'qcow2', 'overlay.qcow2')
read('overlay.qcow2', flags='layers=2')
f = copy('overlay.qcow2', 'backing-json.qcow2')
set_backing_name(f, 'json:{"file":{"driver":"file","filename":"/etc/passwd"}}')
refuse(f, 'ENOENT', 'json:{')
f = copy('overlay.qcow2', 'backing-nbd-url.qcow2')
set_backing_name(f, 'nbd://127.0.0.1:10809/x')
refuse(f, 'ENOENT', 'nbd://127.0.0.1')
f = copy('overlay.qcow2', 'backing-missing.qcow2')
set_backing_name(f, 'no-such-file.qcow2')
refuse(f, 'ENOENT', 'no-such-file.qcow2')
f = copy('overlay.qcow2', 'backing-no-format.qcow2')
bf, _ = find_ext(f, 0xe2792aca)
wr(f, bf, 'I', 0x0badf00d)
refuse(f, 'ENOTSUP', 'rebase')
f = copy('overlay.qcow2', 'backing-format-vmdk.qcow2')
wrbytes(f, bf + 8, b'vmdk\0')
wr(f, bf + 4, 'I', 4)
refuse(f, 'ENOTSUP', "backing format 'vmdk'")
# A hostile backing layer is refused like a hostile top image.
f = copy('overlay.qcow2', 'backing-hostile.qcow2')
set_backing_name(f, 'l1-size-huge.qcow2')
refuse(f, 'EINVAL', 'L1 table too large')

# External data file.
qemu_img('create', '-q', '-f', 'qcow2', '-o',
         'cluster_size=4096,data_file=datafile.raw', 'datafile.qcow2', '2M')
qemu_io('datafile.qcow2', 'write -P 0x55 4k 600k')
qemu_img('convert', '-O', 'raw', 'datafile.qcow2', 'datafile-ref.raw')
read('datafile.qcow2', flags='ref=datafile-ref.raw')
qemu_img('create', '-q', '-f', 'qcow2', '-o',
         'cluster_size=4096,data_file=rawdata.raw,data_file_raw=on',
         'datafile-raw.qcow2', '2M')
qemu_io('datafile-raw.qcow2', 'write -P 0x56 8k 100k')
qemu_img('convert', '-O', 'raw', 'datafile-raw.qcow2', 'datafile-raw.ref')
read('datafile-raw.qcow2', flags='ref=datafile-raw.ref')
qemu_img('create', '-q', '-f', 'qcow2', '-o',
         'cluster_size=4096,data_file=gone.raw', 'datafile-gone.qcow2', '2M')
os.unlink('gone.raw')
refuse('datafile-gone.qcow2', 'ENOENT', 'external data file')

# ---- corruption found when reading: EIO for that range only -------------

l1e = [rd('base.qcow2', l1 + 8 * i, 'Q') for i in range(4)]
f = copy('base.qcow2', 'l1-entry-huge.qcow2')
wr(f, l1 + 8, 'Q', COPIED | 0x00fffffffffff000)
read(f, '%d-%d' % (2 * M, 4 * M))
f = copy('base.qcow2', 'l1-entry-unaligned.qcow2')
wr(f, l1 + 8, 'Q', l1e[1] | 0x200)
read(f, '%d-%d' % (2 * M, 4 * M))

# A data cluster past the end of the file is not corruption (map.c, as
# QEMU): it reads as zeros, and only that cluster does.
f = copy('base.qcow2', 'l2-entry-past-eof.qcow2')
wr(f, l2_entry_pos(f, 0), 'Q', COPIED | 0x00fffffffffff000)
read(f, flags='zeros=0-4096')
# Reserved bits in an L1 or L2 entry are.
f = copy('base.qcow2', 'l1-entry-reserved.qcow2')
wr(f, l1 + 16, 'Q', l1e[2] | (1 << 56))
read(f, '%d-%d' % (4 * M, 6 * M))
f = copy('base.qcow2', 'l2-entry-reserved.qcow2')
p = l2_entry_pos(f, 2 * M + 8192)
wr(f, p, 'Q', rd(f, p, 'Q') | 2)
read(f, '%d-%d' % (2 * M + 8192, 2 * M + 12288))
f = copy('base.qcow2', 'l2-entry-unaligned.qcow2')
p = l2_entry_pos(f, 4096)
wr(f, p, 'Q', rd(f, p, 'Q') | 0x200)
read(f, '4096-8192')

# Compressed descriptors: x = 62 - (12 - 8) = 58 bits of offset, then the
# number of additional sectors.
garbage = rd('base.qcow2', l2_entry_pos('base.qcow2', 5 * M), 'Q') & OFFMASK
f = copy('base.qcow2', 'compressed-garbage.qcow2')
wr(f, l2_entry_pos(f, 4 * M), 'Q', COMPRESSED | (7 << 58) | garbage)
read(f, '%d-%d' % (4 * M, 4 * M + 4096))
f = copy('base.qcow2', 'compressed-past-eof.qcow2')
wr(f, l2_entry_pos(f, 4 * M + 4096), 'Q',
   COMPRESSED | (1 << 58) | (base_size + 10 * M + 100))
read(f, '%d-%d' % (4 * M + 4096, 4 * M + 8192))
# Zero bytes (the unused tail of the header cluster) are not a valid
# deflate stream: an empty stored block whose length check fails.
f = copy('base.qcow2', 'compressed-zeros.qcow2')
wr(f, l2_entry_pos(f, 6 * M), 'Q', COMPRESSED | 3001)
read(f, '%d-%d' % (6 * M, 6 * M + 4096))

with open('manifest.txt', 'w') as fh:
    fh.write('\n'.join(manifest) + '\n')
print('%d cases' % len(manifest))
