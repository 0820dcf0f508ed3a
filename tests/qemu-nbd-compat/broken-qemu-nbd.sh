#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# A deliberately broken qemu-nbd for proving the compatibility harness:
# Debian's qemu-nbd with one behaviour changed, chosen by QNC_BREAK.  The
# harness must report FAIL on the patterns that see the change, naming
# the difference (test-qemu-nbd-compat-harness.sh checks that it does).
#
#   drop-description  -D/--description is dropped
#   drop-persistent   -t/--persistent is dropped
#   ignore-shared     -e/--shared is dropped (back to one client)
#   exit-status       a failing qemu-nbd exits 2 instead of 1
#   message           the "qemu-nbd: " prefix of messages is dropped
#   fork-early        --fork returns at once, before the server is ready
set -u
real=${QNC_ORACLE:-/usr/bin/qemu-nbd}
args=()
skip_next=0
for a in "$@"; do
  if [ "$skip_next" = 1 ]; then skip_next=0; continue; fi
  case "${QNC_BREAK:-}:$a" in
    drop-description:-D|drop-description:--description) skip_next=1 ;;
    drop-description:--description=*) ;;
    drop-persistent:-t|drop-persistent:--persistent) ;;
    ignore-shared:-e|ignore-shared:--shared) skip_next=1 ;;
    ignore-shared:--shared=*) ;;
    fork-early:--fork) fork_early=1 ;;
    *) args+=("$a") ;;
  esac
done

case "${QNC_BREAK:-}" in
  exit-status)
    "$real" "${args[@]}"
    rc=$?
    [ "$rc" = 1 ] && rc=2
    exit "$rc" ;;
  message)
    exec "$real" "${args[@]}" 2> >(sed -u 's/^qemu-nbd: //' >&2) ;;
  fork-early)
    if [ "${fork_early:-0}" = 1 ]; then
      # Return at once and serve only a while later: the runner looks
      # for readiness as soon as --fork returns, and a server started
      # with no delay could win that race on a quiet machine and hide
      # the breakage.
      (sleep 5; exec "$real" "${args[@]}") </dev/null &
      exit 0
    fi
    exec "$real" "${args[@]}" ;;
  *)
    exec "$real" "${args[@]}" ;;
esac
