#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# An incremental backup done end to end with libnbd's tools, as the man
# page's walk-through does it: a bitmap and a full copy (nbdcopy), writes
# through the server, then only the dirty extents (read with nbdsh from
# qemu:dirty-bitmap:NAME) copied onto the full copy, which must then equal
# the disk (cmp).  Twice: once across a restart of the server (the bitmap
# lives on disk in between), once within one read-write session while the
# bitmap keeps tracking; and the extents copied must be far less than the
# disk, or it was no incremental backup.

source "$abs_top_srcdir/tests/functions.sh"
source "$abs_top_srcdir/tests/bitmap-functions.sh"

requires qemu-img qemu-io nbdcopy cmp
requires_python_nbd
requires_server

MiB=$(( 1024 * 1024 ))
disk="$tmpdir/disk.qcow2"
backup="$tmpdir/backup.raw"
now="$tmpdir/now.raw"

# copy_dirty URI BITMAP: the walk-through's nbdsh step, onto $backup;
# prints the number of bytes copied.
copy_dirty ()
{
  nbdsh -c "h.add_meta_context('qemu:dirty-bitmap:$2')" \
        -c "h.connect_uri('$1')" -c "
out = open('$backup', 'r+b')
size, off, copied = h.get_size(), 0, 0
while off < size:
    ext = []
    h.block_status(min(size - off, 1 << 30), off,
                   lambda ctx, o, e, err: ext.extend(zip(e[0::2], e[1::2])))
    for length, dirty in ext:
        for pos in range(off, off + length, 32 << 20) if dirty else ():
            n = min(off + length - pos, 32 << 20)
            out.seek(pos)
            out.write(h.pread(n, pos))
            copied += n
        off += length
print(copied)" || fail "copying the dirty extents of $2"
}

# same_as_disk URI WHAT: the backup must now equal the disk.
same_as_disk ()
{
  rm -f "$now"
  nbdcopy "$1" "$now" || fail "nbdcopy $1"
  cmp "$backup" "$now" || fail "$2: the backup differs from the disk"
}

# The disk: data, compressed clusters, zeros, over a backing file.
qemu-img create -q -f raw "$tmpdir/base.raw" 64M
image_io "$tmpdir/base.raw" -f raw 'write -P 0x01 0 64M'
make_image "$disk" $(( 64 * MiB )) -b "$tmpdir/base.raw" -F raw
image_io "$disk" 'write -P 0x02 1M 3M' 'write -c -P 0x03 8M 1M' \
  'write -z 12M 2M'

# 1. A bitmap, then a full copy.
qemu-img bitmap --add -g 64k "$disk" since-full
start_server "$disk" --socket "$tmpdir/disk.sock" -r
nbdcopy "$uri" "$backup" || fail "full copy"
stop_server

# 2. Writes, zeroes and trims through the server.
start_server "$disk" --socket "$tmpdir/disk.sock" --discard=unmap
image_io "$uri" -f raw 'write -P 0x04 100k 5k' 'write -P 0x05 8M 64k' \
  'write -z 20M 3M' 'discard 1M 1M' 'write -P 0x06 63M 1M' \
  'write -P 0x07 33333 1'
stop_server

# 3. Copy the dirty extents, served read-only with the bitmap.
start_server "$disk" --socket "$tmpdir/disk.sock" -r --bitmap since-full
copied=$(copy_dirty "$uri" since-full)
same_as_disk "$uri" "after a restart"
stop_server
# 64 KiB granules: three partly written, 3M zeroed, 1M trimmed, 1M written.
[ "$copied" -eq $(( 5 * MiB + 192 * 1024 )) ] ||
  fail "copied $copied bytes, want the 5 MiB + 192 KiB the writes dirtied"
check_clean "$disk" "after the first incremental backup"
ok "incremental backup across a restart: $copied bytes copied, cmp equal"

# 4. The next round, within one read-write session: the bitmap, cleared,
# keeps tracking while the backup is read from the same server.
qemu-img bitmap --clear "$disk" since-full
start_server "$disk" --socket "$tmpdir/disk.sock" --bitmap since-full
image_io "$uri" -f raw 'write -P 0x08 40M 10k' 'write -z 50M 64k'
copied=$(copy_dirty "$uri" since-full)
same_as_disk "$uri" "within one session"
[ "$copied" -eq $(( 128 * 1024 )) ] ||
  fail "copied $copied bytes, want the 2 granules written (128 KiB)"
stop_server
check_clean "$disk" "after the second incremental backup"
[ "$(bitmaps_of "$disk")" = "since-full 65536 auto" ] ||
  fail "bitmap after the session: $(bitmaps_of "$disk")"
ok "incremental backup within a session: $copied bytes copied, cmp equal"
