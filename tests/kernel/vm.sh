# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# Host side of the kernel-client tests, sourced after functions.sh: find
# Debian's kernel and tools (or skip saying which is missing), build the
# initramfs (mkinitramfs.sh; the Debian part cached in the build tree),
# boot one TCG virtual machine, run commands in it over its second serial
# port (init), and run named scenarios in it, each in its own subshell so
# a failing one is reported and the next still runs.
#
# Why TCG: /dev/kvm on the machines this runs on only takes PVM guests,
# and Debian's kernel hangs under it.  Why no guestfwd: qemu's guestfwd
# connects to its target once, at start-up, so a guest could open only
# one connection through it; user networking's gateway 10.0.2.2 already
# reaches the host's 127.0.0.1, for any number of connections.

# The host as the guest sees it.
guest_host=10.0.2.2

# ---- finding the parts -------------------------------------------------

# kernel_find: set kver and vmlinuz to the newest Debian kernel that has
# nbd.ko, or skip.
kernel_find ()
{
  local v best=""
  for v in /boot/vmlinuz-*; do
    [ -e "$v" ] || continue
    v=${v#/boot/vmlinuz-}
    ls /lib/modules/"$v"/kernel/drivers/block/nbd.ko* >/dev/null 2>&1 ||
      continue
    if [ -z "$best" ] ||
       [ "$(printf '%s\n%s\n' "$best" "$v" | sort -V | tail -n1)" = "$v" ]
    then
      best=$v
    fi
  done
  [ -n "$best" ] ||
    skip "no kernel with nbd.ko in /boot and /lib/modules" \
         "(apt-get install linux-image-amd64)"
  kver=$best
  vmlinuz=/boot/vmlinuz-$kver
  [ -r "$vmlinuz" ] || skip "$vmlinuz is not readable (run as root)"
}

# vm_requires: everything the VM and its initramfs are made from.
vm_requires ()
{
  command -v qemu-system-x86_64 >/dev/null 2>&1 ||
    skip "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
  [ -x /bin/busybox ] ||
    skip "busybox is not installed (apt-get install busybox-static)"
  local t
  for t in /usr/sbin/nbd-client /sbin/mke2fs /sbin/e2fsck /sbin/blkdiscard \
           /sbin/fstrim /bin/kmod /usr/bin/qemu-nbd cpio depmod ldd gzip; do
    command -v "$t" >/dev/null 2>&1 || skip "$t is not installed"
  done
  kernel_find
}

# ---- the initramfs -----------------------------------------------------

kernel_dir="$abs_top_srcdir/tests/kernel"
mkinitramfs="$kernel_dir/mkinitramfs.sh"

# initramfs_build OUT: the base archive (cached under the build tree,
# keyed by every input file's size and time and by the script itself)
# followed by a fresh overlay with this build's server and the guest
# scripts.
initramfs_build ()
{
  local out=$1 cache="$abs_top_builddir/tests/kernel/cache" key base
  mkdir -p "$cache"
  key=$({ cat "$mkinitramfs"; echo "$kver";
          "$mkinitramfs" inputs "$kver" | xargs stat -L -c '%n %s %Y'; } |
        sha256sum | cut -c1-16) || fail "cannot list the initramfs inputs"
  base="$cache/base-$kver-$key.cpio.gz"
  # Tests building at once share one copy.
  (
    flock 9
    if [ ! -s "$base" ]; then
      rm -f "$cache"/base-*.cpio.gz
      "$mkinitramfs" base "$base" "$kver"
    fi
  ) 9>"$cache/lock" || fail "cannot build the initramfs base"
  "$mkinitramfs" overlay "$tmpdir/overlay.cpio.gz" "$QCOW2_NBD" \
    "$kernel_dir/init" "$kernel_dir/guest.sh" ||
    fail "cannot build the initramfs overlay"
  cat "$base" "$tmpdir/overlay.cpio.gz" > "$out"
}

# ---- the VM ------------------------------------------------------------

vm_pid=""
vm_broken=""               # why the agent can no longer be trusted
share="$tmpdir/share"      # /share in the guest
guest_out="$tmpdir/guest.out"
guest_log="$tmpdir/guest.log"
console_log="$tmpdir/console.log"

# The kernel's command line.  no_timer_check: on a loaded machine TCG can
# be too slow for the boot-time check that the IO-APIC timer ticks, and
# the kernel then panics ("IO-APIC + timer doesn't work!").
vm_cmdline="console=ttyS0 rdinit=/init panic=-1 no_timer_check nbd.max_part=0 ${VM_APPEND:-}"

# vm_start: boot the VM and wait (10 min at most: a loaded machine
# running TCG) for its agent.  Sets vm_boot_seconds.
vm_start ()
{
  local initrd="$tmpdir/initrd.img" t0 line
  initramfs_build "$initrd"
  mkdir -p "$share"
  mkfifo "$tmpdir/ctl.in" "$tmpdir/ctl.out"
  : > "$guest_log"
  t0=$(date +%s%N)
  qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine pc -accel ${VM_ACCEL:-tcg} -cpu ${VM_CPU:-max} -smp ${VM_SMP:-1} -m 1024 \
    -kernel "$vmlinuz" -initrd "$initrd" \
    -append "$vm_cmdline" \
    -serial "file:$console_log" -serial "pipe:$tmpdir/ctl" \
    -monitor "unix:$tmpdir/monitor.sock,server=on,wait=off" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
    -fsdev "local,id=fs0,path=$share,security_model=none" \
    -device virtio-9p-pci,fsdev=fs0,mount_tag=share \
    >"$tmpdir/qemu.log" 2>&1 </dev/null &
  vm_pid=$!
  cleanup_fn vm_kill
  # Read-write opens of a FIFO never block, whether qemu has it open yet
  # or not.
  exec 5<>"$tmpdir/ctl.in" 6<>"$tmpdir/ctl.out"
  _guest_wait "@@READY" 600 || {
    tail -n 30 "$console_log" >&2
    cat "$tmpdir/qemu.log" >&2
    fail "the VM did not boot: $vm_broken"
  }
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  vm_boot_seconds="$(( ms / 1000 )).$(( ms % 1000 / 100 ))"
  ok "VM booted in $vm_boot_seconds s (kernel $kver, TCG)"
}

vm_kill ()
{
  if [ -n "$vm_pid" ] && kill -0 "$vm_pid" 2>/dev/null; then
    kill -TERM "$vm_pid" 2>/dev/null
    wait "$vm_pid" 2>/dev/null
  fi
  exec 5>&- 6<&-
  return 0
}

# vm_stop: power the guest off and wait for qemu to leave.
vm_stop ()
{
  guest_run -t 60 'sync; poweroff -f' >/dev/null 2>&1 || true
  local i
  for (( i = 0; i < 300; i++ )); do
    kill -0 "$vm_pid" 2>/dev/null || break
    sleep 0.1
  done
  vm_kill
}

# _guest_wait MARKER SECONDS: read the control port, logging every line,
# until a line equal to MARKER (return 0) or beginning with it (the rest
# goes to $guest_status); fail with 1 when the time runs out or qemu dies.
_guest_wait ()
{
  local marker=$1 deadline=$(( SECONDS + $2 )) line partial=""
  while :; do
    if IFS= read -r -t 2 line <&6; then
      line=$partial$line
      partial=""
      if [ "$line" = "$marker" ]; then
        return 0
      fi
      case $line in
        "$marker "*) guest_status=${line#"$marker "}; return 0 ;;
      esac
      printf '%s\n' "$line" >> "$guest_out"
      printf '  | %s\n' "$line" >> "$guest_log"
    else
      # A timed-out read keeps what it got of the line.
      partial+=$line
      if ! kill -0 "$vm_pid" 2>/dev/null; then
        vm_broken="qemu exited"
        return 1
      fi
      if [ "$SECONDS" -ge "$deadline" ]; then
        vm_broken="no answer within $2 s"
        # Scenarios run in subshells: tell the ones that follow too.
        echo "$vm_broken" > "$tmpdir/vm-broken"
        return 1
      fi
    fi
  done
}

# vm_monitor COMMAND...: run QEMU monitor (HMP) commands, print the
# answers.
vm_monitor ()
{
  "$PYTHON" - "$tmpdir/monitor.sock" "$@" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.settimeout(10)
s.connect(sys.argv[1])
for cmd in sys.argv[2:]:
    s.sendall(cmd.encode() + b"\n")
time.sleep(1)
out = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
except socket.timeout:
    pass
for line in out.decode(errors="replace").replace("\r", "").splitlines():
    if "\x1b" not in line:
        print(line)
PY
}

# What a hung guest command leaves to look at: the guest kernel's last
# words, qemu's user network and vCPUs, and the last started server's
# threads and sockets.
_vm_diagnose ()
{
  local t lines
  echo "---- qemu: user network, vCPUs ----"
  vm_monitor "info usernet" "info cpus" 2>&1 | tail -n 40
  # SysRq w and l: the guest's blocked tasks and every CPU's backtrace,
  # on its console.
  lines=$(wc -l < "$console_log")
  vm_monitor "sendkey alt-sysrq-w" "sendkey alt-sysrq-l" >/dev/null 2>&1
  for (( t = 0; t < 100; t++ )); do
    grep -q 'NMI backtrace' <(tail -n +"$lines" "$console_log") && break
    sleep 0.1
  done
  sleep 2
  echo "---- guest kernel log (tail) ----"
  tail -n +"$(( lines > 40 ? lines - 40 : 1 ))" "$console_log" | head -n 400
  [ -n "${server_pid:-}" ] && _alive "$server_pid" || return 0
  echo "---- server $server_pid: threads (state, wchan) ----"
  for t in /proc/"$server_pid"/task/*; do
    echo "${t##*/} $(awk '{ print $3 }' "$t/stat") $(cat "$t/wchan")"
  done
  echo "---- server $server_pid: sockets ----"
  ss -tnpi 2>/dev/null | grep -A1 "pid=$server_pid," || true
  if command -v gdb >/dev/null 2>&1; then
    echo "---- server $server_pid: stacks ----"
    timeout 60 gdb -p "$server_pid" -batch -ex 'thread apply all bt' 2>&1 |
      grep -E '^(Thread|#)' | head -n 200
  fi
}

_guest_seq=0

# guest_run [-t SECONDS] COMMAND: run COMMAND (a shell string; guest.sh's
# functions are defined) in the guest, 600 s at most.  Returns its
# status; its output is in $guest_out (and prints with guest_show).
# After a timeout the agent is still busy, so every later command fails
# at once.
guest_run ()
{
  local secs=600
  if [ "$1" = -t ]; then secs=$2; shift 2; fi
  : > "$guest_out"
  [ -z "$vm_broken" ] && [ -s "$tmpdir/vm-broken" ] &&
    vm_broken=$(cat "$tmpdir/vm-broken")
  if [ -n "$vm_broken" ]; then
    echo "the VM is unusable: $vm_broken" > "$guest_out"
    return 255
  fi
  _guest_seq=$(( _guest_seq + 1 ))
  local id="$BASHPID.$_guest_seq"
  printf '  $ %s\n' "$*" >> "$guest_log"
  # Base64, so a command may span lines and hold any character.
  printf '%s %s\n' "$id" "$(printf '%s' "$*" | base64 -w0)" >&5
  if ! _guest_wait "@@DONE $id" "$secs"; then
    echo "guest command '$*': $vm_broken" >> "$guest_out"
    _vm_diagnose >&2
    return 255
  fi
  printf '  = %s\n' "$guest_status" >> "$guest_log"
  return "$guest_status"
}

guest_show ()
{
  sed 's/^/  guest: /' "$guest_out" >&2
}

# guest_ok WHAT COMMAND: guest_run that must succeed; fail with WHAT
# and the guest's output otherwise.
guest_ok ()
{
  local what=$1 rc=0; shift
  guest_run "$@" || rc=$?
  [ "$rc" -eq 0 ] || { guest_show; fail "$what (status $rc)"; }
}

# guest_fails WHAT COMMAND: COMMAND must fail (not time out).
guest_fails ()
{
  local what=$1 rc=0; shift
  guest_run "$@" || rc=$?
  [ "$rc" -ne 0 ] || { guest_show; fail "$what: it succeeded"; }
  [ "$rc" -ne 255 ] || { guest_show; fail "$what: $vm_broken"; }
}

# guest_field KEY: the rest of the line "KEY ..." the last command
# printed (commands label what the host reads: "sha ...", "size ...").
guest_field ()
{
  awk -v k="$1" '$1 == k { sub(/^[^ ]+ /, ""); print; exit }' "$guest_out"
}

# guest_last: the last line the last command printed.
guest_last ()
{
  tail -n1 "$guest_out"
}

# ---- scenarios ---------------------------------------------------------

scenario_results=()
scenario_failed=0

# scenario NAME FUNCTION: run FUNCTION in a subshell with cleanups of its
# own (servers it starts are stopped when it ends, however it ends),
# with the guest reset before and after (nothing mounted, no device
# connected, /tmp/w empty).
scenario ()
{
  local name=$1 fn=$2 rc=0 t0=$SECONDS
  echo "---- scenario $name"
  printf '==== scenario %s\n' "$name" >> "$guest_log"
  guest_run -t 120 guest_reset >/dev/null || true
  (
    _cleanup_cmds=()
    _server_logs=()
    test_name="$test_name: $name"
    trap _run_cleanups EXIT
    "$fn"
  ) || rc=$?
  guest_run -t 120 guest_reset >/dev/null || true
  if [ "$rc" -eq 0 ]; then
    scenario_results+=("PASS $name ($(( SECONDS - t0 )) s)")
  else
    scenario_results+=("FAIL $name ($(( SECONDS - t0 )) s)")
    scenario_failed=1
  fi
}

# scenarios_report: the table of results; exits 1 if any failed.
scenarios_report ()
{
  local r
  echo "---- results (boot $vm_boot_seconds s)"
  for r in "${scenario_results[@]}"; do
    echo "  $r"
  done
  if [ "$scenario_failed" -ne 0 ]; then
    echo "---- guest commands ----" >&2
    tail -n 200 "$guest_log" >&2
    echo "---- guest kernel log ----" >&2
    tail -n 60 "$console_log" >&2
    exit 1
  fi
}

# ---- host-side checks shared by the scenarios --------------------------

# alloc_bytes FILE: the bytes FILE occupies on the host (st_blocks).
alloc_bytes ()
{
  echo $(( $(stat -c '%b * %B' "$1") ))
}

mib ()
{
  awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'
}

# ext4_files_match IMAGE SUMS WHAT: read IMAGE back on the host through
# our own server (read-only) with nbdcopy; its ext4 file system must
# pass e2fsck -fn and hold exactly the files SUMS lists (g_make_files'
# output).
ext4_files_match ()
{
  local img=$1 sums=$2 what=$3 raw="$tmpdir/readout.raw" out="$tmpdir/rdump"
  start_server "$img" -r
  rm -f "$raw"
  nbdcopy "$uri" "$raw" || fail "$what: nbdcopy $uri"
  stop_server
  /sbin/e2fsck -fn "$raw" > "$tmpdir/e2fsck.out" 2>&1 || {
    cat "$tmpdir/e2fsck.out" >&2
    fail "$what: e2fsck -fn on the host finds errors"
  }
  rm -rf "$out"
  mkdir "$out"
  debugfs -R "rdump / $out" "$raw" >/dev/null 2>&1 ||
    fail "$what: debugfs cannot dump the file system"
  (cd "$out" && find . -path ./lost+found -prune -o -type f -print |
     sort | xargs sha256sum) > "$tmpdir/host.sums"
  diff "$sums" "$tmpdir/host.sums" >&2 ||
    fail "$what: the files read on the host differ from the guest's"
  ok "$what: e2fsck clean on the host, $(wc -l < "$sums") files read back"
}

# start_qemu_nbd IMAGE [ARGS...]: Debian's qemu-nbd serving IMAGE on a
# fresh 127.0.0.1 port (persistent), waited for; sets qemu_nbd_port and
# qemu_nbd_pid, and stops it at exit.
start_qemu_nbd ()
{
  local img=$1 i; shift
  qemu_nbd_port=$(pick_unused_port)
  /usr/bin/qemu-nbd -f qcow2 -t -b 127.0.0.1 -p "$qemu_nbd_port" \
    --pid-file "$tmpdir/qemu-nbd.pid" "$@" "$img" \
    >"$tmpdir/qemu-nbd.log" 2>&1 </dev/null &
  qemu_nbd_pid=$!
  cleanup_fn _kill_server "$qemu_nbd_pid"
  for (( i = 0; i < 300; i++ )); do
    [ -s "$tmpdir/qemu-nbd.pid" ] && port_accepts "$qemu_nbd_port" && return 0
    _alive "$qemu_nbd_pid" || break
    sleep 0.1
  done
  cat "$tmpdir/qemu-nbd.log" >&2
  fail "qemu-nbd did not start"
}

stop_qemu_nbd ()
{
  kill -TERM "$qemu_nbd_pid"
  wait "$qemu_nbd_pid" || fail "qemu-nbd exited with status $?"
}
