# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Scenarios of "qcow2-nbd attach" run inside the guest, on the guest's
# own kernel device: images go in and out through the 9p share (/share),
# are served from the guest's tmpfs, and are checked on the host with
# qemu-img once the guest has detached them.  Sourced after vm.sh, like
# client-scenarios.sh.

# at_image NAME SIZE [QEMU-IMG-CREATE-ARGS...]: a new image in the share,
# copied by the guest to $W/NAME.
at_image ()
{
  local name=$1 size=$2; shift 2
  make_image "$share/$name" "$size" "$@"
  guest_ok "copy $name in" "cp /share/$name \$W/$name"
}

# at_out NAME: the guest's $W/NAME, copied back to $tmpdir/NAME.
at_out ()
{
  guest_ok "copy $1 out" "cp \$W/$1 /share/$1.out"
  mv "$share/$1.out" "$tmpdir/$1"
}

# nomodule: before nbd.ko is loaded, attach and detach say to load it.
# (Run first in a VM: nothing has loaded the module yet.)
sc_nomodule ()
{
  guest_ok "nbd.ko not loaded yet" '[ ! -e /sys/module/nbd ]'
  guest_ok "an image" 'qcow2-nbd create -q $W/a.qcow2 16M'
  guest_ok "attach without nbd.ko" \
    'qcow2-nbd attach $W/a.qcow2 /dev/nbd0 2>&1; echo "status $?"'
  [ "$(guest_field status)" = 1 ] ||
    { guest_show; fail "attach exited $(guest_field status)"; }
  grep -q "nbd kernel module is not loaded; load it with 'modprobe nbd'" \
    "$guest_out" || { guest_show; fail "attach does not say to load nbd.ko"; }
  guest_fails "detach without nbd.ko" 'qcow2-nbd detach /dev/nbd0 2>&1'
  grep -q "modprobe nbd" "$guest_out" ||
    { guest_show; fail "detach does not say to load nbd.ko"; }
  ok "attach and detach say: modprobe nbd"
}

# attach: netlink, --fork, --pid-file; the device is up when attach
# returns; ext4 made, written, checked; "qcow2-nbd detach" returns once
# the server has closed the image, which is clean and holds the files.
sc_attach ()
{
  at_image at.qcow2 128M
  guest_ok "attach --fork" 'g_modprobe &&
    qcow2-nbd attach -v $W/at.qcow2 /dev/nbd0 --fork --pid-file $W/at.pid \
      2>$W/at.log || { cat $W/at.log; exit 1; }
    # Up at once: --fork returns only then.
    [ "$(cat /sys/block/nbd0/size)" -eq $((128 << 11)) ] ||
      { echo "size $(cat /sys/block/nbd0/size)"; exit 1; }
    [ "$(cat /sys/block/nbd0/pid)" = "$(cat $W/at.pid)" ] ||
      { echo "sysfs pid $(cat /sys/block/nbd0/pid)"; exit 1; }
    grep "through netlink with 1 connection" $W/at.log &&
    echo "timeout $(cat /sys/block/nbd0/queue/io_timeout)"'
  # One connection: no timeout given, the kernel's 30 s only log.
  [ "$(guest_field timeout)" = 30000 ] ||
    fail "request timeout $(guest_field timeout) ms with 1 connection"
  guest_ok "mkfs.ext4 and mount" \
    "/sbin/mkfs.ext4 -q /dev/nbd0 && mount -t ext4 /dev/nbd0 /mnt/a"
  guest_ok "write files" "g_make_files /mnt/a"
  cp "$guest_out" "$tmpdir/at.sums"
  guest_ok "umount and e2fsck" "umount /mnt/a && /sbin/e2fsck -fn /dev/nbd0"
  guest_ok "qcow2-nbd detach" 'pid=$(cat $W/at.pid)
    qcow2-nbd detach /dev/nbd0 || exit 1
    # detach waits for the server: gone now, its pid file too.
    _gone $pid ||
      { echo "server $pid still running: $(cat /proc/$pid/stat)"; exit 1; }
    [ ! -e $W/at.pid ] || { echo "pid file left"; exit 1; }
    [ ! -e /sys/block/nbd0/pid ] || { echo "nbd0 still up"; exit 1; }
    cat $W/at.log'
  grep -q 'client sent NBD_CMD_DISC' "$guest_out" ||
    { guest_show; fail "the kernel did not send NBD_CMD_DISC"; }
  at_out at.qcow2
  check_clean "$tmpdir/at.qcow2" "after attach, ext4 and detach"
  ext4_files_match "$tmpdir/at.qcow2" "$tmpdir/at.sums" "attach"
}

# ioctl: the ioctl interface (--no-netlink), two connections, TRIM with
# --discard=unmap, in the foreground, stopped by SIGTERM: flushed,
# detached, exit status 0, the image clean and holding the writes; then
# attached by the ioctls again and detached by "qcow2-nbd detach".
sc_ioctl ()
{
  local want tail
  at_image io.qcow2 64M
  guest_ok "attach --no-netlink -C 2" 'g_modprobe && g_warm_recv 4 || exit 1
    (qcow2-nbd attach -v $W/io.qcow2 /dev/nbd1 --no-netlink -C 2 \
       --discard=unmap --pid-file $W/io.pid 2>$W/io.log
     echo $? > $W/io.status) </dev/null >/dev/null 2>&1 &
    g_wait_for "the pid file" [ -s $W/io.pid ] || { cat $W/io.log; exit 1; }
    grep "through ioctls with 2 connections" $W/io.log &&
    echo "timeout $(cat /sys/block/nbd1/queue/io_timeout)"'
  # Several connections: a day's timeout, not the kernel's 30 s (kdev.c).
  [ "$(guest_field timeout)" = 86400000 ] ||
    fail "request timeout $(guest_field timeout) ms with 2 connections"
  guest_ok "write, discard, read" '
    g_random $W/r 16 && dd if=$W/r of=/dev/nbd1 bs=1M 2>/dev/null || exit 1
    /sbin/blkdiscard -o $((4 << 20)) -l $((4 << 20)) /dev/nbd1 || exit 1
    dd if=/dev/zero of=$W/r bs=1M seek=4 count=4 conv=notrunc 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    [ "$(g_sha /dev/nbd1 $((16 << 20)))" = "$(g_sha $W/r)" ] ||
      { echo "reads back wrong"; exit 1; }
    echo "sha $(g_sha $W/r)"'
  want=$(guest_field sha)
  # Written without O_DIRECT nor sync: only the flush on SIGTERM saves it.
  guest_ok "SIGTERM" 'g_random $W/tail 1 && dd if=$W/tail of=/dev/nbd1 bs=1M seek=20 2>/dev/null &&
    echo "tail $(g_sha $W/tail)" &&
    kill -TERM $(cat $W/io.pid) && g_wait_exit $W/io.pid &&
    g_wait_for "the status" [ -s $W/io.status ] &&
    echo "status $(cat $W/io.status)" && cat $W/io.log &&
    [ ! -e /sys/block/nbd1/pid ]'
  tail=$(guest_field tail)
  [ "$(guest_field status)" = 0 ] ||
    { guest_show; fail "attach exited $(guest_field status) after SIGTERM"; }
  [ "$(grep -c 'client sent NBD_CMD_DISC' "$guest_out")" -eq 2 ] ||
    { guest_show; fail "not both connections ended with NBD_CMD_DISC"; }
  # Attached by the ioctls again, detached from another process (which
  # uses netlink): the writes are still there, the server leaves.
  guest_ok "reattach, detach" 'qcow2-nbd attach $W/io.qcow2 /dev/nbd1 \
      --no-netlink --fork --pid-file $W/io.pid && pid=$(cat $W/io.pid) &&
    [ "$(g_sha /dev/nbd1 $((16 << 20)))" = "$(g_sha $W/r)" ] &&
    qcow2-nbd detach /dev/nbd1 && _gone $pid'
  at_out io.qcow2
  check_clean "$tmpdir/io.qcow2" "after SIGTERM"
  qemu-img convert -O raw "$tmpdir/io.qcow2" "$tmpdir/io.raw"
  [ "$(head -c 16M "$tmpdir/io.raw" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
    fail "the image does not hold the writes and the discard"
  [ "$(head -c 21M "$tmpdir/io.raw" | tail -c 1M | sha256sum | cut -d' ' -f1)" \
    = "$tail" ] ||
    fail "the write still cached in the guest was lost at SIGTERM"
  ok "ioctls, 2 connections, TRIM, SIGTERM: flushed, clean, status 0"
}

# readonly: attach -r (by netlink, with two connections and so a day's
# request timeout): the kernel device is read-only, writes fail, reads
# are right, the image file is untouched.
sc_attach_ro ()
{
  local want
  make_image "$share/ro.qcow2" 16M
  image_io "$share/ro.qcow2" 'write -P 0x77 1M 3M'
  image_to_raw "$share/ro.qcow2" "$tmpdir/ro.raw"
  want=$(sha256sum < "$tmpdir/ro.raw" | cut -d' ' -f1)
  guest_ok "copy in" 'cp /share/ro.qcow2 $W/ro.qcow2'
  guest_ok "attach -r" 'g_modprobe && g_warm_recv 4 && before=$(g_sha $W/ro.qcow2) &&
    qcow2-nbd attach -r -C 2 $W/ro.qcow2 /dev/nbd2 --fork --pid-file $W/ro.pid &&
    echo "ro $(/sbin/blockdev --getro /dev/nbd2)" &&
    echo "timeout $(cat /sys/block/nbd2/queue/io_timeout)" &&
    echo "sha $(g_sha /dev/nbd2)" &&
    ! dd if=/dev/zero of=/dev/nbd2 bs=4k count=1 oflag=direct 2>/dev/null &&
    qcow2-nbd detach /dev/nbd2 &&
    [ "$(g_sha $W/ro.qcow2)" = "$before" ]'
  [ "$(guest_field ro)" = 1 ] || fail "the device is not read-only"
  [ "$(guest_field timeout)" = 86400000 ] ||
    fail "request timeout $(guest_field timeout) ms with 2 connections"
  [ "$(guest_field sha)" = "$want" ] || fail "the read-only device reads wrong"
  ok "read-only attach: writes refused, reads right, image untouched"
}

# errors: clear refusals, and the image never touched by them: a device
# already attached (by us, or by nbd-client), a device another process
# holds open (the kernel's EBUSY), not an NBD device, no such device,
# detaching a device that is not attached.  Then a device attached by
# qcow2-nbd and detached by nbd-client -d: the server leaves cleanly.
sc_errors ()
{
  make_image "$share/er.qcow2" 16M
  make_image "$tmpdir/er-host.qcow2" 16M
  start_server "$tmpdir/er-host.qcow2"
  guest_ok "set-up" "g_modprobe && cp /share/er.qcow2 \$W/er.qcow2 &&
    cp /share/er.qcow2 \$W/er2.qcow2 &&
    qcow2-nbd attach \$W/er.qcow2 /dev/nbd3 --fork --pid-file \$W/er.pid &&
    g_connect /dev/nbd4 $port && echo sha \$(g_sha \$W/er2.qcow2)"
  local before
  before=$(guest_field sha)

  # expect WHAT PATTERN COMMAND: COMMAND fails, saying PATTERN.
  expect ()
  {
    guest_fails "$1" "$3 2>&1"
    grep -q -- "$2" "$guest_out" ||
      { guest_show; fail "$1: no message matching '$2'"; }
    ok "$1: $(grep -m1 -- "$2" "$guest_out")"
  }
  expect "attach to a device we serve" "is busy: already attached" \
    'qcow2-nbd attach $W/er2.qcow2 /dev/nbd3'
  expect "attach to nbd-client's device" "is busy: already attached" \
    'qcow2-nbd attach $W/er2.qcow2 /dev/nbd4'
  expect "attach to a device held open" "is busy: in use" \
    'sleep 600 < /dev/nbd5 & holder=$!
     qcow2-nbd attach $W/er2.qcow2 /dev/nbd5; r=$?; kill $holder; exit $r'
  expect "attach to /dev/null" "is not an NBD device" \
    'qcow2-nbd attach $W/er2.qcow2 /dev/null'
  expect "attach to /dev/nbd99" "no such device" \
    'qcow2-nbd attach $W/er2.qcow2 /dev/nbd99'
  expect "detach of a free device" "is not attached" \
    'qcow2-nbd detach /dev/nbd6'
  guest_ok "the refused image untouched" "[ \"\$(g_sha \$W/er2.qcow2)\" = $before ]"

  guest_ok "nbd-client -d of our device" 'pid=$(cat $W/er.pid)
    g_disconnect /dev/nbd3 && g_wait_for "the server to exit" _gone $pid &&
    [ ! -e $W/er.pid ]'
  guest_ok "qcow2-nbd detach of nbd-client's device" \
    'qcow2-nbd detach /dev/nbd4 && [ ! -e /sys/block/nbd4/pid ]'
  at_out er.qcow2
  check_clean "$tmpdir/er.qcow2" "after a detach by nbd-client -d"
  stop_server
  ok "nbd-client -d and qcow2-nbd detach work on each other's devices"
}

# qn_same WHAT ARGS: our qemu-nbd and Debian's, run in the guest with
# ARGS (a string, guest-side), print the same and exit alike.
qn_same ()
{
  guest_ok "$1" "g_qnbd_both $2"
  awk -v d="$tmpdir" '/^== (ours|qemu)$/ { w = $2; next }
                      { print > (d "/qn." w) }' "$guest_out"
  diff -u "$tmpdir/qn.qemu" "$tmpdir/qn.ours" >&2 ||
    fail "$1: our qemu-nbd differs from Debian's (Debian's first)"
  ok "$1: $(tr '\n' ' ' < "$tmpdir/qn.ours")"
}

# qemu_nbd: "qemu-nbd -c" and "-d" - our qemu-nbd link beside Debian's
# qemu-nbd 7.2, both in the guest, on real devices: attached in the
# background with nothing printed and status 0, the device up (ours: as
# soon as -c returns); the same words and statuses for a busy device (by
# netlink or by the ioctls), a missing one, and -d of a free or missing
# one; each -d detaching the other's device, ours returning once the
# server is gone; -v in the foreground saying the same; --fork.  Both
# images clean afterwards, holding the same writes and discard.
sc_qemu_nbd ()
{
  local want
  at_image qn.qcow2 64M
  at_image qo.qcow2 64M
  at_image qe.qcow2 16M
  guest_ok "qemu-nbd -c, ours and Debian's" 'g_modprobe
    qemu-nbd -c /dev/nbd0 --discard=unmap $W/qn.qcow2 > $W/c.out 2>&1
    echo "ours $? $(wc -c < $W/c.out)"
    # Up as soon as -c returns.
    echo "size $(cat /sys/block/nbd0/size 2>&1)"
    echo "pid $(cat /sys/block/nbd0/pid 2>&1)"
    /usr/bin/qemu-nbd -c /dev/nbd1 --discard=unmap $W/qo.qcow2 > $W/c.out 2>&1
    echo "qemu $? $(wc -c < $W/c.out)"
    g_wait_for "nbd1 up" _dev_up /dev/nbd1 &&
    echo "qpid $(cat /sys/block/nbd1/pid)"'
  [ "$(guest_field ours)" = "0 0" ] ||
    { guest_show; fail "our qemu-nbd -c: status and output bytes $(guest_field ours)"; }
  [ "$(guest_field qemu)" = "0 0" ] ||
    { guest_show; fail "Debian's qemu-nbd -c: $(guest_field qemu)"; }
  [ "$(guest_field size)" = $(( 64 << 11 )) ] ||
    { guest_show; fail "the device is not up when qemu-nbd -c returns"; }
  ok "qemu-nbd -c: status 0, silent, the device up when it returns"

  qn_same "-c on a device attached by netlink" '-c /dev/nbd0 $W/qe.qcow2'
  qn_same "-c on a device attached by the ioctls" '-c /dev/nbd1 $W/qe.qcow2'
  qn_same "-c on a missing device" '-c /dev/nbd99 $W/qe.qcow2'
  qn_same "-d of a free device" '-d /dev/nbd5'
  qn_same "-d of a missing device" '-d /dev/nbd99'

  guest_ok "the same writes and discard on both" '
    g_random $W/r 16 || exit 1
    for d in /dev/nbd0 /dev/nbd1; do
      dd if=$W/r of=$d bs=1M 2>/dev/null &&
        /sbin/blkdiscard -o $((4 << 20)) -l $((4 << 20)) $d || exit 1
    done
    dd if=/dev/zero of=$W/r bs=1M seek=4 count=4 conv=notrunc 2>/dev/null
    echo 3 > /proc/sys/vm/drop_caches
    for d in /dev/nbd0 /dev/nbd1; do
      [ "$(g_sha $d $((16 << 20)))" = "$(g_sha $W/r)" ] ||
        { echo "$d reads back wrong"; exit 1; }
    done
    echo "sha $(g_sha $W/r)"'
  want=$(guest_field sha)
  guest_ok "each -d detaches the other one's device" '
    ours=$(cat /sys/block/nbd0/pid) theirs=$(cat /sys/block/nbd1/pid)
    qemu-nbd -d /dev/nbd1 || exit 1
    # Ours waits for the server it disconnected (qemu-nbd too) to exit.
    _gone $theirs || { echo "Debian qemu-nbd $theirs still running"; exit 1; }
    /usr/bin/qemu-nbd -d /dev/nbd0 || exit 1
    g_wait_for "our server to exit" _gone $ours &&
    _dev_down /dev/nbd0 && _dev_down /dev/nbd1'
  grep -qx '/dev/nbd1 disconnected' "$guest_out" ||
    { guest_show; fail "our -d did not say it disconnected"; }

  guest_ok "-v: in the foreground" '
    qemu-nbd -v -c /dev/nbd2 $W/qe.qcow2 > $W/v.out 2> $W/v.err &
    echo $! > $W/v.pid
    /usr/bin/qemu-nbd -v -c /dev/nbd3 $W/qn.qcow2 -r > $W/vq.out 2> $W/vq.err &
    echo $! > $W/vq.pid
    g_wait_for "nbd2 up" _dev_up /dev/nbd2 &&
      g_wait_for "nbd3 up" _dev_up /dev/nbd3 || exit 1
    g_wait_for "the words" grep -q connected $W/v.err &&
      g_wait_for "the words" grep -q connected $W/vq.err || exit 1
    # The same process as the one started: no fork.
    [ "$(cat /sys/block/nbd2/pid)" = "$(cat $W/v.pid)" ] ||
      { echo "nbd2 served by $(cat /sys/block/nbd2/pid)"; exit 1; }
    # The same words, devices and files aside.
    norm () { grep connected "$1" | sed "s|/dev/nbd[0-9]|DEV|; s|$W/q[en].qcow2|FILE|"; }
    echo "ours $(norm $W/v.err)"
    echo "qemu $(norm $W/vq.err)"
    # SIGTERM: ours flushes, disconnects, exits 0.
    kill -TERM $(cat $W/v.pid); wait $(cat $W/v.pid); echo "term $?"
    _dev_down /dev/nbd2 || { echo "nbd2 still up"; exit 1; }
    qemu-nbd -d /dev/nbd3 >/dev/null && wait $(cat $W/vq.pid)'
  [ "$(guest_field ours)" = "$(guest_field qemu)" ] ||
    { guest_show; fail "-v says '$(guest_field ours)', Debian's '$(guest_field qemu)'"; }
  [ "$(guest_field term)" = 0 ] ||
    { guest_show; fail "SIGTERM: exit status $(guest_field term)"; }
  ok "-v: '$(guest_field ours)' as Debian's; SIGTERM detaches, status 0"

  guest_ok "--fork and --pid-file" '
    qemu-nbd -c /dev/nbd2 --fork --pid-file $W/f.pid $W/qe.qcow2 || exit 1
    [ "$(cat /sys/block/nbd2/pid)" = "$(cat $W/f.pid)" ] || exit 1
    pid=$(cat $W/f.pid)
    qemu-nbd -d /dev/nbd2 && _gone $pid'

  at_out qn.qcow2
  at_out qo.qcow2
  at_out qe.qcow2
  check_clean "$tmpdir/qn.qcow2" "ours after qemu-nbd -c, writes, a discard and Debian's -d"
  check_clean "$tmpdir/qo.qcow2" "Debian's after our -d"
  check_clean "$tmpdir/qe.qcow2" "after -v, SIGTERM and --fork"
  for f in qn qo; do
    qemu-img convert -O raw "$tmpdir/$f.qcow2" "$tmpdir/$f.raw"
    [ "$(head -c 16M "$tmpdir/$f.raw" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
      fail "$f.qcow2 does not hold the writes and the discard"
  done
  ok "both images clean, holding the same writes"
}
