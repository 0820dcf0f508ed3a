#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The systemd units 'make install' ships (systemd/): systemd's own
# checker accepts the templated socket and service, and the service's
# ExecStart line, expanded as systemd expands it (${IMAGE} one word,
# $OPTIONS split at spaces) from an instance's SYSCONFDIR/qcow2-nbd/NAME.conf,
# serves the image on the socket it is handed (socket activation, as
# the socket unit does) and stops cleanly on SIGTERM.
SMOKE_TEST=1
source "$(dirname "$0")/functions.sh"

requires qemu-img nbdinfo
requires_server

units="$abs_top_srcdir/systemd"
bin="$(dirname "$QCOW2_NBD")"
for u in service socket; do
  sed -e "s|@sbindir[@]|$bin|g" -e "s|@sysconfdir[@]|$tmpdir/etc|g" \
    "$units/qcow2-nbd@.$u.in" \
    >"$tmpdir/qcow2-nbd@.$u"
done

if command -v systemd-analyze >/dev/null; then
  # verify wants instances; it reads the templates from the same place.
  (cd "$tmpdir" && systemd-analyze verify --man=no \
     ./qcow2-nbd@disk.service ./qcow2-nbd@disk.socket) \
    >"$tmpdir/verify.out" 2>&1 ||
    { cat "$tmpdir/verify.out" >&2; fail "systemd-analyze verify failed"; }
  [ ! -s "$tmpdir/verify.out" ] ||
    { cat "$tmpdir/verify.out" >&2; fail "systemd-analyze verify complained"; }
  ok "systemd-analyze verify accepts qcow2-nbd@.service and qcow2-nbd@.socket"
else
  echo "note: systemd-analyze not installed: unit syntax not checked"
fi

grep -q '^ListenStream=/run/qcow2-nbd/%i.sock$' "$tmpdir/qcow2-nbd@.socket" ||
  fail "the socket unit does not listen on /run/qcow2-nbd/%i.sock"
exec_start=$(sed -n 's/^ExecStart=//p' "$tmpdir/qcow2-nbd@.service")
[ -n "$exec_start" ] || fail "no ExecStart in qcow2-nbd@.service"

# An instance's configuration, with a path that has a space in it.
mkdir -p "$tmpdir/my images"
img="$tmpdir/my images/disk.qcow2"
make_image "$img" 64M
qemu-io -f qcow2 -c 'write -P 0x42 0 1M' "$img" >/dev/null
env_file=$(sed -n 's/^EnvironmentFile=//p' "$tmpdir/qcow2-nbd@.service")
env_file=${env_file//%i/disk}
[ "$env_file" = "$tmpdir/etc/qcow2-nbd/disk.conf" ] ||
  fail "EnvironmentFile is $env_file"
mkdir -p "$(dirname "$env_file")"
# Quoted values: systemd strips the quotes, as the shell does here.
cat >"$env_file" <<CONF
IMAGE="$img"
OPTIONS="--read-only --export-name=disk -v"
CONF
# shellcheck disable=SC1090
source "$env_file"

# systemd's expansion: ${VAR} is one argument, $VAR is split at spaces.
args=()
read -r -a words <<<"$exec_start"
for w in "${words[@]}"; do
  case "$w" in
    '${IMAGE}') args+=("$IMAGE") ;;
    '$OPTIONS') read -r -a opts <<<"$OPTIONS"; args+=("${opts[@]}") ;;
    *) args+=("$w") ;;
  esac
done
[ "${args[0]}" = "$QCOW2_NBD" ] ||
  fail "ExecStart runs ${args[0]}, not $QCOW2_NBD"

sock="$tmpdir/disk.sock"
"$PYTHON" "$abs_top_srcdir/tests/socket-activate.py" "$sock" "${args[@]}" \
  >"$tmpdir/unit.log" 2>&1 &
pid=$!
cleanup_fn _kill_server "$pid"
for (( i = 0; i < 300; i++ )); do
  [ -S "$sock" ] && break
  sleep 0.1
done
out=$(run_timeout 60 nbdinfo --json "nbd+unix:///disk?socket=$sock") ||
  { cat "$tmpdir/unit.log" >&2; fail "nbdinfo through the unit's command"; }
grep -q '"export-size": 67108864' <<<"$out" || fail "wrong size: $out"
grep -q '"is_read_only": true' <<<"$out" || fail "not read-only: $out"
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || { cat "$tmpdir/unit.log" >&2; fail "exit $rc after SIGTERM"; }
ok "the service's ExecStart serves the activated socket and stops on SIGTERM"
