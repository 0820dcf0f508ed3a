# SPDX-License-Identifier: MIT
# shellcheck shell=sh
# Guest-side helpers of the kernel-client tests (busybox sh), sourced by
# init's agent before every command the host sends, so a scenario's
# guest steps read as one call each.
#
# Busybox's shell runs its own applets before anything on PATH (its
# nbd-client, mount, modprobe ...), so the real tools are called by path.

NBD_CLIENT=/usr/sbin/nbd-client
QCOW2_NBD=/usr/local/bin/qcow2-nbd
HOST=10.0.2.2
W=/tmp/w                # scratch space of the current scenario

# g_wait_for WHAT COMMAND...: run COMMAND every 0.1 s until it succeeds,
# 3000 times at most (5 minutes or more: TCG on a loaded machine).
g_wait_for ()
{
  _what=$1; shift
  _i=0
  while ! "$@"; do
    _i=$((_i + 1))
    if [ "$_i" -ge 3000 ]; then
      echo "gave up waiting for $_what"
      return 1
    fi
    sleep 0.1
  done
}

_dev_up () { [ -e "/sys/block/${1#/dev/}/pid" ]; }
_dev_down () { ! _dev_up "$1"; }
# Gone: exited, a zombie included (orphans wait for init, the agent
# shell, to reap them).  One read of /proc/PID/stat decides: init may
# reap the zombie at any moment, so "exists" and "is a zombie" asked
# apart could see it alive, then find no status (and say "running").
_gone ()
{
  _st=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  [ -n "$_st" ] || return 0
  # The state follows the command name's closing parenthesis.
  case "${_st##*) }" in Z*|X*) return 0 ;; esac
  return 1
}

# g_modprobe: load nbd.ko with kmod's modprobe (the kernel's netlink
# family "nbd" comes with it).
g_modprobe ()
{
  /sbin/modprobe nbd
}

# g_connect DEV PORT [NBD-CLIENT ARGS...]: nbd-client to the host's
# server; the device must be up with a size.
g_connect ()
{
  _dev=$1 _port=$2; shift 2
  $NBD_CLIENT "$HOST" "$_port" "$_dev" "$@" || return 1
  g_wait_for "$_dev to come up" _dev_up "$_dev" || return 1
  [ "$(cat "/sys/block/${_dev#/dev/}/size")" -gt 0 ] ||
    { echo "$_dev has no size"; return 1; }
}

# g_warm_recv N: leave the kernel N idle workers for the NBD receive
# work, by attaching a scratch image to /dev/nbd15 with N connections
# and detaching it, twice.  Each connection of a device has a receive
# work that runs as long as the connection (nbd.ko's nbdX-recv
# workqueue, WQ_MEM_RECLAIM).  When a device gets several at once and
# the kernel is slow to make workers for them (TCG on a loaded machine),
# the workqueue's rescuer takes the pending ones and runs them one after
# the other: the first never ends, so a connection whose work waits
# behind it is never read, and requests on it hang.  Idle workers made
# beforehand take them all at once.
g_warm_recv ()
{
  $QCOW2_NBD create -q "$W/warm.qcow2" 1M || return 1
  for _round in 1 2; do
    $QCOW2_NBD attach -C "$1" "$W/warm.qcow2" /dev/nbd15 --fork \
      --pid-file "$W/warm.pid" || return 1
    # The server removes its pid file as it exits.
    _pid=$(cat "$W/warm.pid") || return 1
    g_disconnect /dev/nbd15 || return 1
    g_wait_for "the warm-up server to exit" _gone "$_pid" || return 1
  done
  rm -f "$W/warm.qcow2"
}

# g_disconnect DEV: nbd-client -d, and wait until the device is down.
g_disconnect ()
{
  $NBD_CLIENT -d "$1" >/dev/null || return 1
  g_wait_for "$1 to go down" _dev_down "$1"
}

# g_qnbd_both ARGS...: our qemu-nbd, then Debian's, each run with ARGS;
# each one's exit status and output (stdout, then stderr) after a line
# "== ours" or "== qemu", for the host to compare.
g_qnbd_both ()
{
  for _q in ours:/usr/local/bin/qemu-nbd qemu:/usr/bin/qemu-nbd; do
    echo "== ${_q%%:*}"
    "${_q#*:}" "$@" > "$W/qnbd.out" 2> "$W/qnbd.err"
    echo "status $?"
    cat "$W/qnbd.out" "$W/qnbd.err"
  done
}

# g_wait_exit PIDFILE: wait until the process named in PIDFILE is gone.
g_wait_exit ()
{
  _pid=$(cat "$1") || return 1
  g_wait_for "process $_pid to exit" _gone "$_pid"
}

# g_sha FILE [BYTES]: the SHA-256 of FILE, or of its first BYTES.
g_sha ()
{
  if [ -n "${2:-}" ]; then
    head -c "$2" "$1" | sha256sum | cut -d' ' -f1
  else
    sha256sum < "$1" | cut -d' ' -f1
  fi
}

# g_random FILE MIB: MIB MiB of random bytes.
g_random ()
{
  dd if=/dev/urandom of="$1" bs=1M count="$2" iflag=fullblock 2>/dev/null
}

# g_make_files DIR: files of awkward sizes and a directory tree with
# random contents; prints their SHA-256 list (relative names), sorted,
# which the host compares with what it reads out of the image.
g_make_files ()
{
  mkdir -p "$1/tree/deeper" || return 1
  for s in 1 511 4095 4096 4097 65537 1048576 3145735; do
    head -c "$s" /dev/urandom > "$1/file-$s" || return 1
  done
  _i=0
  while [ "$_i" -lt 20 ]; do
    head -c $((_i * 1000 + 1)) /dev/urandom > "$1/tree/deeper/f$_i" ||
      return 1
    _i=$((_i + 1))
  done
  g_sums "$1"
}

# g_sums DIR: the SHA-256 list of the files under DIR (lost+found aside).
g_sums ()
{
  (cd "$1" && find . -path ./lost+found -prune -o -type f -print |
     sort | xargs sha256sum)
}

# g_stat DEV FIELD: a field of /sys/block/DEV/stat (1 read I/Os, 3 read
# sectors, 5 write I/Os, 7 write sectors).
g_stat ()
{
  awk -v f="$2" '{ print $f }' "/sys/block/${1#/dev/}/stat"
}

# guest_reset: what every scenario leaves behind, undone: file systems
# under /mnt unmounted, servers started in the guest stopped, every NBD
# device disconnected, the scratch space emptied.
guest_reset ()
{
  for _m in $(awk '$2 ~ "^/mnt" { print $2 }' /proc/mounts | sort -r); do
    umount "$_m" 2>/dev/null || umount -l "$_m"
  done
  for _p in "$W"/*.pid; do
    [ -e "$_p" ] && kill "$(cat "$_p")" 2>/dev/null
  done
  for _d in /sys/block/nbd*; do
    [ -e "$_d/pid" ] && $NBD_CLIENT -d "/dev/${_d##*/}" >/dev/null 2>&1
  done
  for _p in "$W"/*.pid; do
    [ -e "$_p" ] && g_wait_exit "$_p"
  done
  rm -rf "$W"
  mkdir -p "$W" /mnt/a /mnt/b
}
