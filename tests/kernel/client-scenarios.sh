# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Scenarios of the kernel client against qcow2-nbd on the host: each one
# starts its own server (on 127.0.0.1, which the guest reaches as
# 10.0.2.2), drives nbd-client and the kernel in the guest, and checks
# the result on both sides.  Sourced after vm.sh; each function runs in
# its own subshell (vm.sh: scenario), so fail() ends only that scenario.

# readback: a backing chain with random data, patterns, zeroes,
# compressed clusters and holes, attached read-only under an export
# name: every byte of /dev/nbd0 equals qemu-img's own conversion.
sc_readback ()
{
  local base="$tmpdir/rb-base.qcow2" img="$tmpdir/rb.qcow2"
  local ref="$tmpdir/rb.raw" want got
  head -c 3M /dev/urandom > "$tmpdir/random"
  make_image "$base" 48M -o cluster_size=64k
  image_io "$base" 'write -P 0x11 0 8M' "write -s $tmpdir/random 20M 3M" \
    'write -P 0x22 47M 1M'
  make_image "$img" 48M -o cluster_size=64k -b "$base" -F qcow2
  image_io "$img" 'write -P 0x33 1M 2M' 'write -z 2M 64k' \
    'write -c -P 0x44 16M 128k' 'write -P 0x55 12345 1000' \
    "write -s $tmpdir/random 30M 3M" 'write -z -u 47M 64k'
  image_to_raw "$img" "$ref"
  want=$(sha256sum < "$ref" | cut -d' ' -f1)

  start_server "$img" -r -x disk
  guest_ok "connect and read" "g_modprobe && g_connect /dev/nbd0 $port -N disk &&
    echo size \$(cat /sys/block/nbd0/size) && echo sha \$(g_sha /dev/nbd0)"
  got=$(guest_field sha)
  [ "$(guest_field size)" = $(( $(file_size "$ref") / 512 )) ] ||
    fail "the device has $(guest_field size) sectors"
  [ "$got" = "$want" ] ||
    fail "/dev/nbd0 reads differently from qemu-img convert ($got, not $want)"
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  stop_server
  ok "every byte of 48 MiB read back through the kernel"
}

# ext4: mkfs.ext4, mount, files written, unmount, fsck, disconnect; the
# image passes qemu-img check and holds the guest's files.
sc_ext4 ()
{
  local img="$tmpdir/ext4.qcow2"
  make_image "$img" 128M
  start_server "$img"
  guest_ok "connect" "g_modprobe && g_connect /dev/nbd0 $port"
  guest_ok "mkfs.ext4" "/sbin/mkfs.ext4 -q /dev/nbd0"
  guest_ok "mount" "mount -t ext4 /dev/nbd0 /mnt/a"
  guest_ok "write files" "g_make_files /mnt/a"
  cp "$guest_out" "$tmpdir/ext4.sums"
  guest_ok "umount" "umount /mnt/a"
  guest_ok "e2fsck in the guest" "/sbin/e2fsck -fn /dev/nbd0"
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  stop_server
  check_clean "$img" "after the ext4 session"
  ext4_files_match "$img" "$tmpdir/ext4.sums" "ext4"
}

# multiconn: nbd-client -C 4.  The kernel has one hardware queue per
# connection (at most one per CPU) and sends each queue's requests on
# its own socket: writers pinned to each CPU put requests on every
# queue, so on as many connections as the VM has CPUs (4 in
# test-kernel-client.sh); the server counts each connection's requests.
sc_multiconn ()
{
  local img="$tmpdir/mc.qcow2" nq used got want
  make_image "$img" 64M
  start_server "$img" -v
  # A long timeout: with several connections the kernel takes a request
  # that times out (30 s by default; a loaded machine under TCG) for a
  # dead connection and drops it.
  guest_ok "connect with -C 4" \
    "g_modprobe && g_warm_recv 6 && g_connect /dev/nbd0 $port -C 4 -timeout 86400"
  wait_log 4 'serving on worker'
  guest_ok "writers on every CPU" '
    n=$(nproc) i=0 pids=""
    echo "queues $(ls /sys/block/nbd0/mq | wc -l)"
    while [ $i -lt 4 ]; do
      g_random $W/part$i 8 || exit 1
      taskset -c $((i % n)) dd if=$W/part$i of=/dev/nbd0 bs=256k \
        seek=$((i * 32)) oflag=direct 2>/dev/null &
      pids="$pids $!"
      i=$((i + 1))
    done
    for p in $pids; do wait $p || exit 1; done
    sync
    cat $W/part0 $W/part1 $W/part2 $W/part3 > $W/all
    echo "sha $(g_sha /dev/nbd0 $((32 << 20))) $(g_sha $W/all)"'
  nq=$(guest_field queues)
  read -r got want <<< "$(guest_field sha)"
  [ "$got" = "$want" ] ||
    { guest_show; fail "the device does not read back what was written"; }
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  wait_log 4 'client sent NBD_CMD_DISC'
  # NBD_CMD_DISC is one request: a connection that carried I/O has more.
  used=$(grep -c 'client sent NBD_CMD_DISC ([0-9]*[0-9][0-9] requests)\|client sent NBD_CMD_DISC ([2-9] requests)' \
         "$server_log" || true)
  [ "$used" -ge "$nq" ] ||
    fail "only $used of the 4 connections carried requests ($nq queues)"
  stop_server
  check_clean "$img" "after writes on 4 connections"
  qemu-img convert -O raw "$img" "$tmpdir/mc.raw"
  [ "$(head -c 32M "$tmpdir/mc.raw" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
    fail "the image does not hold what the guest wrote"
  ok "4 connections, $used of them carrying requests ($nq hardware" \
     "queues), each closed with NBD_CMD_DISC"
}

# readonly: a server with -r; the kernel marks the device read-only,
# writes fail in the guest, reads are right, the image is unchanged.
sc_readonly ()
{
  local img="$tmpdir/ro.qcow2" before want
  make_image "$img" 32M
  image_io "$img" 'write -P 0x5a 0 4M' 'write -P 0xa5 30M 1M'
  image_to_raw "$img" "$tmpdir/ro.raw"
  want=$(sha256sum < "$tmpdir/ro.raw" | cut -d' ' -f1)
  before=$(sha256sum < "$img")
  start_server "$img" -r
  guest_ok "connect" "g_modprobe && g_connect /dev/nbd0 $port"
  guest_ok "blockdev --getro" "/sbin/blockdev --getro /dev/nbd0"
  [ "$(guest_last)" = 1 ] ||
    fail "the kernel did not make the device read-only"
  guest_fails "a write to the read-only device" \
    "dd if=/dev/zero of=/dev/nbd0 bs=4k count=1 oflag=direct"
  guest_fails "mkfs.ext4 on the read-only device" "/sbin/mkfs.ext4 -q /dev/nbd0"
  guest_ok "read" "g_sha /dev/nbd0"
  [ "$(guest_last)" = "$want" ] ||
    fail "the read-only device reads wrong"
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  stop_server
  [ "$(sha256sum < "$img")" = "$before" ] || fail "the image file changed"
  ok "writes refused by the kernel, reads right, image untouched"
}

# bigreq: 32 MiB requests (the kernel's max_hw_sectors for NBD, and our
# NBD_MAX_PAYLOAD): max_sectors_kb raised to it, one direct write and
# one direct read of 32 MiB are each exactly one request.
sc_bigreq ()
{
  local img="$tmpdir/big.qcow2" want
  make_image "$img" 64M
  start_server "$img"
  guest_ok "connect" "g_modprobe && g_connect /dev/nbd0 $port"
  guest_ok "32 MiB requests" '
    hw=$(cat /sys/block/nbd0/queue/max_hw_sectors_kb)
    [ "$hw" -eq 32768 ] || { echo "max_hw_sectors_kb is $hw"; exit 1; }
    echo 32768 > /sys/block/nbd0/queue/max_sectors_kb || exit 1
    g_random $W/r32 32
    w0=$(g_stat nbd0 5) s0=$(g_stat nbd0 7)
    dd if=$W/r32 of=/dev/nbd0 bs=32M count=1 seek=1 oflag=direct 2>/dev/null || exit 1
    w1=$(g_stat nbd0 5) s1=$(g_stat nbd0 7)
    r0=$(g_stat nbd0 1) t0=$(g_stat nbd0 3)
    dd if=/dev/nbd0 of=$W/back bs=32M count=1 skip=1 iflag=direct 2>/dev/null || exit 1
    r1=$(g_stat nbd0 1) t1=$(g_stat nbd0 3)
    echo "write $((w1 - w0)) requests $((s1 - s0)) sectors"
    echo "read $((r1 - r0)) requests $((t1 - t0)) sectors"
    cmp $W/r32 $W/back || exit 1
    echo "sha $(g_sha $W/r32)"'
  grep -qx 'write 1 requests 65536 sectors' "$guest_out" &&
    grep -qx 'read 1 requests 65536 sectors' "$guest_out" ||
    { guest_show; fail "the 32 MiB transfers were not single requests"; }
  want=$(awk '$1 == "sha" { print $2 }' "$guest_out")
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  stop_server
  check_clean "$img" "after 32 MiB requests"
  qemu-img convert -O raw "$img" "$tmpdir/big.raw"
  [ "$(tail -c 32M "$tmpdir/big.raw" | sha256sum | cut -d' ' -f1)" = "$want" ] ||
    fail "the image does not hold the 32 MiB write"
  ok "one 32 MiB WRITE and one 32 MiB READ, data right"
}

# tls: nbd-client's -certfile/-keyfile/-cacertfile against a server that
# requires TLS and a client certificate (tls-functions.sh's CA); a
# plain nbd-client is refused.
sc_tls ()
{
  local img="$tmpdir/tls.qcow2" srv="$tmpdir/tls-server" want
  certs="$tmpdir/certs"
  mkdir -p "$certs" "$share/tls"
  make_ca "$certs/ca" "Test CA"
  sign "$certs/ca" server "/O=Example/CN=localhost" v3_server
  sign "$certs/ca" client "/O=Example/CN=client" v3_client
  server_dir "$srv" "$certs/ca"
  cp "$certs/ca/ca-cert.pem" "$certs/client-cert.pem" \
     "$certs/client-key.pem" "$share/tls/"
  make_image "$img" 32M
  start_server "$img" --tls-certs "$srv" --tls-verify-peer -x secure
  guest_fails "a plain nbd-client" \
    "g_modprobe && g_connect /dev/nbd0 $port -N secure"
  guest_ok "nbd-client with certificates" "g_connect /dev/nbd0 $port -N secure \
    -certfile /share/tls/client-cert.pem -keyfile /share/tls/client-key.pem \
    -cacertfile /share/tls/ca-cert.pem -tlshostname localhost"
  guest_ok "writes and reads over TLS" '
    g_random $W/r 8
    dd if=$W/r of=/dev/nbd0 bs=1M seek=3 2>/dev/null && sync || exit 1
    echo 3 > /proc/sys/vm/drop_caches
    [ "$(dd if=/dev/nbd0 bs=1M skip=3 count=8 2>/dev/null | sha256sum)" = \
      "$(sha256sum < $W/r)" ] || { echo "read back differs"; exit 1; }
    echo "sha $(g_sha $W/r)"'
  want=$(awk '$1 == "sha" { print $2 }' "$guest_out")
  guest_ok "disconnect" "g_disconnect /dev/nbd0"
  stop_server
  check_clean "$img" "after writes over TLS"
  qemu-img convert -O raw "$img" "$tmpdir/tls.raw"
  [ "$(head -c 11M "$tmpdir/tls.raw" | tail -c 8M | sha256sum | cut -d' ' -f1)" \
    = "$want" ] || fail "the image does not hold what was written over TLS"
  ok "plain client refused; certificate client wrote and read 8 MiB"
}

# check_uncorrupt IMAGE WHEN: qemu-img check finds IMAGE clean or with
# leaked clusters only (exit 0 or 3), never corrupt; says which.
check_uncorrupt ()
{
  local rc=0
  qemu-img check "$1" > "$tmpdir/check.out" 2>&1 || rc=$?
  [ "$rc" -eq 0 ] || [ "$rc" -eq 3 ] || {
    cat "$tmpdir/check.out" >&2
    fail "qemu-img check $2 exited $rc (corruption)"
  }
  ok "$2: qemu-img check exits $rc$([ "$rc" -eq 3 ] && echo ' (leaks only)')"
}

# kill: the server killed (-9) under a mounted ext4 and restarted.  What
# survives is stated: the kernel fails the requests in flight and every
# later one (nbd-client 3.24 does not reconnect a netlink device), ext4
# aborts its journal and goes read-only; after a reconnect, e2fsck
# replays the journal, and every file synced before the kill is intact.
sc_kill ()
{
  local img="$tmpdir/kill.qcow2" p rc
  make_image "$img" 128M
  p=$(pick_unused_port)
  start_server "$img" --port "$p" --bind 127.0.0.1
  guest_ok "connect" "g_modprobe && g_connect /dev/nbd0 $p"
  guest_ok "mkfs.ext4 and mount" \
    "/sbin/mkfs.ext4 -q /dev/nbd0 && mount -t ext4 /dev/nbd0 /mnt/a"
  guest_ok "synced files" "g_make_files /mnt/a/synced >/dev/null && sync &&
    g_sums /mnt/a"
  cp "$guest_out" "$tmpdir/synced.sums"
  guest_ok "unsynced file" "g_random /mnt/a/unsynced 4"

  kill -KILL "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  check_uncorrupt "$img" "after kill -9"

  guest_run "sync; touch /mnt/a/after-kill" || true
  guest_ok "the guest's view" "dmesg | grep -c 'I/O error' || true;
    grep ' /mnt/a ' /proc/mounts"
  grep -q ' ro[ ,]' "$guest_out" && ok "ext4 remounted read-only" ||
    ok "ext4 still read-write after the kill"
  guest_ok "unmount and disconnect" "umount /mnt/a && g_disconnect /dev/nbd0"

  start_server "$img" --port "$p" --bind 127.0.0.1
  guest_ok "reconnect" "g_connect /dev/nbd0 $p"
  rc=0
  guest_run "/sbin/e2fsck -fy /dev/nbd0" || rc=$?
  [ "$rc" -le 1 ] || { guest_show; fail "e2fsck -fy exited $rc"; }
  ok "e2fsck -fy after the restart exits $rc (journal replayed)"
  guest_ok "e2fsck -fn after the repair" "/sbin/e2fsck -fn /dev/nbd0"
  guest_ok "mount" "mount -t ext4 /dev/nbd0 /mnt/a"
  guest_ok "synced files" "g_sums /mnt/a | grep -v -e ' ./unsynced\$' -e ' ./after-kill\$'"
  diff "$tmpdir/synced.sums" "$guest_out" >&2 ||
    fail "files synced before the kill did not survive"
  guest_ok "unsynced file" "ls -l /mnt/a/unsynced 2>&1 || true"
  ok "every synced file intact; the unsynced one: $(tail -n1 "$guest_out")"
  guest_ok "umount and disconnect" "umount /mnt/a && g_disconnect /dev/nbd0"
  stop_server
  # Clusters leaked by the kill stay leaked (nothing repairs them).
  check_uncorrupt "$img" "after the restart and a clean stop"
}

# discard: blkdiscard, then fstrim on ext4, through qcow2-nbd and through
# qemu-nbd 7.2 (the oracle), both with --discard=unmap, the same guest
# actions on both; the image file must take no more host space with us
# than with qemu-nbd at each step (DISCARD_SLACK bytes of metadata
# aside), and both must pass qemu-img check once closed.
DISCARD_SLACK=$(( 2 * 1024 * 1024 ))
sc_discard ()
{
  local ours="$tmpdir/d-ours.qcow2" theirs="$tmpdir/d-qemu.qcow2"
  local step o t bad=0
  make_image "$ours" 128M
  make_image "$theirs" 128M
  start_server "$ours" --discard=unmap
  start_qemu_nbd "$theirs" --discard=unmap
  guest_ok "connect both" "g_modprobe && g_connect /dev/nbd0 $port &&
    g_connect /dev/nbd1 $qemu_nbd_port"

  # measure [-n] STEP: the host sizes now, against qemu-nbd's (-n: only
  # shown, not compared).
  measure ()
  {
    local check=1
    if [ "$1" = -n ]; then check=0; shift; fi
    o=$(alloc_bytes "$ours") t=$(alloc_bytes "$theirs")
    echo "  $1: qcow2-nbd $(mib "$o"), qemu-nbd $(mib "$t")"
    if [ "$check" -eq 1 ] && [ "$o" -gt $(( t + DISCARD_SLACK )) ]; then
      echo "FAIL: $test_name: $1: the image takes $(mib "$o")," \
           "qemu-nbd's $(mib "$t")" >&2
      bad=1
    fi
  }

  guest_ok "write 64 MiB" 'g_random $W/r64 64 &&
    for d in /dev/nbd0 /dev/nbd1; do
      dd if=$W/r64 of=$d bs=1M oflag=direct 2>/dev/null || exit 1
    done'
  measure "64 MiB written"
  guest_ok "blkdiscard 32 MiB" \
    "for d in /dev/nbd0 /dev/nbd1; do /sbin/blkdiscard -o 0 -l 32M \$d || exit 1; done"
  measure "after blkdiscard of 32 MiB"

  # mkfs without its own discard (only fstrim frees) and with every inode
  # table and the journal written now, not by ext4lazyinit in the
  # background at a time of its own, so both images see the same writes.
  guest_ok "ext4, 48 MiB of files" '
    for d in nbd0:a nbd1:b; do
      dev=/dev/${d%:*} mnt=/mnt/${d#*:}
      /sbin/mkfs.ext4 -q -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 $dev && mount -t ext4 $dev $mnt || exit 1
      i=0
      while [ $i -lt 6 ]; do
        dd if=$W/r64 of=$mnt/f$i bs=1M count=8 skip=$((i * 8)) 2>/dev/null ||
          exit 1
        i=$((i + 1))
      done
      sync || exit 1
    done'
  # Where ext4 puts the files (in clusters the blkdiscard freed, or in
  # ones still allocated) differs from one mkfs to the next, by 10 MiB
  # here: shown only.  fstrim then frees whatever they do not use.
  measure -n "ext4 with 48 MiB of files"
  guest_ok "files deleted, fstrim" '
    for mnt in /mnt/a /mnt/b; do
      rm $mnt/f* && sync && /sbin/fstrim -v $mnt || exit 1
    done'
  measure "after fstrim"
  guest_ok "unmount and disconnect" 'umount /mnt/a && umount /mnt/b &&
    g_disconnect /dev/nbd0 && g_disconnect /dev/nbd1'
  stop_server
  stop_qemu_nbd
  measure "closed"
  check_clean "$theirs" "qemu-nbd's image"
  check_clean "$ours" "our image after blkdiscard and fstrim"
  [ "$bad" -eq 0 ] || fail "the image does not shrink as with qemu-nbd"
  ok "host space follows the guest's discards as with qemu-nbd"
}
