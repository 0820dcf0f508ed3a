#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# QEMU's own iotests that start qemu-nbd, run twice: with QEMU_NBD_PROG
# set to the oracle (Debian's /usr/bin/qemu-nbd) and to the candidate
# (our build's server/qemu-nbd), everything else (qemu-img, qemu-io,
# qemu-system, qemu-storage-daemon) from Debian's packages.  Prints each
# test's result for both sides, side by side, and exits 1 when a test the
# oracle passes does not pass with the candidate (the goal of issue 15 is
# the same pass set).
#
# The tests come from Debian's qemu source package, fetched with
# `apt-get source` into a cache directory on first use and never
# committed: QEMU_SRC_CACHE (default ~/.cache/qcow2-nbd/qemu-src).  We run
# Debian's check script without a QEMU build tree: every *_PROG variable
# is given, so check never looks for binaries beside itself.  Debian's
# qemu-system-x86 has no qtest accelerator, so QEMU_PROG is a small
# wrapper that turns `-accel qtest` into `-accel tcg` (the -qtest socket
# itself still works).
#
#   run-iotests.sh [--candidate PATH] [--oracle PATH] [--only oracle|candidate]
#                  [--jobs N] [TEST...]
#
# TEST is a name as check takes it (058, nbd-multiconn), optionally with
# a format and a protocol after colons (241:raw:nbd; default qcow2, file);
# the default list is described at the place it is made, below.
# Takes two to three minutes per side on a 2-core machine when nothing
# hangs; each test is stopped after IOTESTS_TIMEOUT seconds (300: the
# slowest passes in well under a minute, but 162 loops until qemu-nbd
# starts, forever for a qemu-nbd without the null-co driver).
set -uo pipefail

: "${abs_top_builddir:=$(cd "$(dirname "$0")/../.." && pwd)}"
candidate=${QEMU_NBD_CANDIDATE:-$abs_top_builddir/server/qemu-nbd}
oracle=${QEMU_NBD_ORACLE:-/usr/bin/qemu-nbd}
cache=${QEMU_SRC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qcow2-nbd/qemu-src}
only=""
jobs=1
tests=()
while [ $# -gt 0 ]; do
  case "$1" in
    --candidate) candidate=$2; shift 2 ;;
    --oracle) oracle=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "run-iotests.sh: unknown option $1" >&2; exit 2 ;;
    *) tests+=("$1"); shift ;;
  esac
done

skip () { echo "SKIP: run-iotests: $*"; exit 77; }

for p in /usr/bin/python3 qemu-img qemu-io qemu-system-x86_64 \
         qemu-storage-daemon "$oracle"; do
  command -v "$p" >/dev/null || skip "$p is not installed"
done
if [ "$only" != oracle ] && [ ! -x "$candidate" ]; then
  skip "candidate $candidate does not exist (build the qemu-nbd mode, or" \
       "pass --candidate PATH, or --only oracle)"
fi

# ---- the source --------------------------------------------------------

# fetch_source: Debian's qemu source package, unpacked with its patches
# (the iotests of the exact release the oracle was built from).
fetch_source ()
{
  local ver
  ver=$(dpkg-query -W -f '${source:Version}' qemu-utils 2>/dev/null) ||
    skip "qemu-utils is not a Debian package here"
  local stamp="$cache/unpacked-$ver"
  [ -e "$stamp" ] && return 0
  command -v dpkg-source >/dev/null || skip "dpkg-source (dpkg-dev) missing"
  mkdir -p "$cache" || skip "cannot create $cache"
  # apt-get source needs deb-src lines: a copy of the deb ones, added
  # once when we are root (as CI is).
  if ! grep -rqs '^Types:.*deb-src\|^deb-src' /etc/apt/sources.list \
         /etc/apt/sources.list.d/; then
    [ "$(id -u)" = 0 ] || skip "no deb-src in apt sources and not root"
    local f=/etc/apt/sources.list.d/debian.sources
    [ -f "$f" ] || skip "no $f to copy as deb-src"
    sed 's/^Types: deb$/Types: deb-src/' "$f" \
      >/etc/apt/sources.list.d/qcow2-nbd-deb-src.sources
    apt-get update -q >/dev/null 2>&1 || skip "apt-get update failed"
  fi
  rm -rf "$cache/src" "$cache"/qemu_*
  (cd "$cache" && apt-get source --download-only -q "qemu=$ver") \
    >"$cache/fetch.log" 2>&1 ||
    (cd "$cache" && apt-get update -q && apt-get source --download-only -q "qemu=$ver") \
      >>"$cache/fetch.log" 2>&1 ||
    skip "apt-get source qemu=$ver failed (see $cache/fetch.log)"
  (cd "$cache" && dpkg-source -x qemu_*.dsc src) >>"$cache/fetch.log" 2>&1 ||
    skip "dpkg-source -x failed (see $cache/fetch.log)"
  rm -f "$cache"/unpacked-*
  touch "$stamp"
}
fetch_source
iotests=$cache/src/tests/qemu-iotests

# Test 162 opens ssh: and other protocol drivers that Debian ships as
# modules in qemu-block-extra; without them its expected output differs
# whatever qemu-nbd does.  Installed once when we are root, like the
# source above.
if ! dpkg-query -W -f '${Status}' qemu-block-extra 2>/dev/null |
     grep -q 'ok installed' && [ "$(id -u)" = 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
    --no-install-recommends qemu-block-extra >"$cache/install.log" 2>&1 ||
    echo "run-iotests: could not install qemu-block-extra (162 will fail)" >&2
fi

# ---- the environment ---------------------------------------------------

work=$(mktemp -d "${TMPDIR:-/tmp}/qcow2-nbd-iotests.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The qtest accelerator is not built into Debian's qemu-system-x86; tcg
# runs the same (guest-less) machines the tests start.
cat >"$work/qemu-system" <<'WRAP'
#!/bin/bash
args=()
for a in "$@"; do
  case "$a" in
    qtest) args+=(tcg) ;;
    *accel=qtest*) args+=("${a//accel=qtest/accel=tcg}") ;;
    *) args+=("$a") ;;
  esac
done
exec /usr/bin/qemu-system-x86_64 "${args[@]}"
WRAP
chmod +x "$work/qemu-system"

# The default list, NAME:FORMAT:PROTOCOL entries chosen from what each
# test declares (_supported_fmt/_supported_proto in bash tests,
# supported_fmts=/supported_protocols= in python ones):
#  - tests that start qemu-nbd themselves ($QEMU_NBD, common.nbd,
#    iotests.qemu_nbd*), in qcow2 and raw where supported (else in their
#    one format), over the file protocol unless they need nbd;
#  - tests that run over the nbd protocol (-nbd), where common.rc's
#    _make_test_img serves every test image with
#    `qemu-nbd -v -t -k SOCK -f raw -e 42 -x ''`, in raw.
if [ ${#tests[@]} -eq 0 ]; then
  while IFS= read -r t; do tests+=("$t"); done < <(
    cd "$iotests" && /usr/bin/python3 - <<'PY'
import glob, os, re
names = sorted(glob.glob('[0-9][0-9][0-9]') + glob.glob('tests/*'))
def decl(text, bash, py):
    m = re.search(r'^' + bash + r'\s+(.*)$', text, re.M)
    if m:
        return m.group(1).split('#')[0].split()
    m = re.search(py + r'\s*=\s*\[([^\]]*)\]', text)
    if m:
        return re.findall(r"""['"]([^'"]+)['"]""", m.group(1))
    return None
for n in names:
    if n.endswith('.out') or not os.path.isfile(n):
        continue
    text = open(n, errors='replace').read()
    name = os.path.basename(n)
    fmts = decl(text, '_supported_fmt', 'supported_fmts') or ['generic']
    protos = decl(text, '_supported_proto', 'supported_protocols') or ['generic']
    if re.search(r'QEMU_NBD|qemu_nbd|qemu-nbd', text):
        use = [f for f in ('qcow2', 'raw') if f in fmts or 'generic' in fmts]
        proto = 'file' if ('file' in protos or 'generic' in protos) else protos[0]
        for f in use or fmts[:1]:
            print(f'{name}:{f}:{proto}')
    elif text.startswith('#!/usr/bin/env python3'):
        # python tests only get an nbd image when they ask for one
        if 'nbd' in protos and ('raw' in fmts or 'generic' in fmts):
            print(f'{name}:raw:nbd')
    elif ('nbd' in protos or 'generic' in protos) and \
         ('raw' in fmts or 'generic' in fmts):
        print(f'{name}:raw:nbd')
PY
  )
fi

# run_one NAME PROG ENTRY: run one test with QEMU_NBD_PROG=PROG and
# print its result (pass, fail, notrun, timeout, error).  The TAP output of a
# failure is kept in IOTESTS_LOG_DIR/NAME when that is set.
run_one ()
{
  local name=$1 prog=$2 t fmt proto line res
  IFS=: read -r t fmt proto <<<"$3"
  : "${fmt:=qcow2}" "${proto:=file}"
  rm -rf "$work/$name/scratch" "$work/$name/sock"
  mkdir -p "$work/$name/scratch" "$work/$name/sock"
  local out="$work/$name/$t-$fmt-$proto.tap"
  (cd "$iotests" &&
   env QEMU_PROG="$work/qemu-system" QEMU_IMG_PROG=/usr/bin/qemu-img \
       QEMU_IO_PROG=/usr/bin/qemu-io QEMU_NBD_PROG="$prog" \
       QSD_PROG=/usr/bin/qemu-storage-daemon \
       TEST_DIR="$work/$name/scratch" SOCK_DIR="$work/$name/sock" \
       timeout -k 10 "${IOTESTS_TIMEOUT:-300}" nice /usr/bin/python3 ./check -tap "-$fmt" \
         "-$proto" "$t") >"$out" 2>&1
  local rc=$?
  line=$(grep -E '^(not )?ok ' "$out" | head -n1)
  case "$rc:$line" in
    124:*|137:*) res=timeout ;;
    *:"not ok "*) res=fail ;;
    *"# SKIP"*) res=notrun ;;
    *:"ok "*) res=pass ;;
    *) res=error ;;
  esac
  if [ -n "${IOTESTS_LOG_DIR:-}" ] && [ "$res" != pass ] && [ "$res" != notrun ]; then
    mkdir -p "$IOTESTS_LOG_DIR/$name"
    cp "$out" "$IOTESTS_LOG_DIR/$name/"
  fi
  echo "$res"
}

# run_side NAME PROG: every test; results in $work/NAME.res as
# "TEST:FMT:PROTO RESULT" lines.
run_side ()
{
  local name=$1 prog=$2 t f p
  : >"$work/$name.res"
  for t in "${tests[@]}"; do
    IFS=: read -r t f p <<<"$t"
    echo "$t:${f:-qcow2}:${p:-file} $(run_one "$name" "$prog" "$t:$f:$p")" \
      >>"$work/$name.res"
  done
}

start=$SECONDS
[ "$only" = candidate ] || { run_side oracle "$oracle"; t_oracle=$((SECONDS - start)); }
start=$SECONDS
[ "$only" = oracle ] || { run_side candidate "$candidate"; t_cand=$((SECONDS - start)); }

# Some tests race qemu-system's own timing on a loaded machine (223, 264
# and 307 have been seen to fail with the oracle now and then): a test
# whose result differs between the sides runs once more on both, and
# the better result of the two runs counts, marked "(2 runs)".
retried=" "
if [ -z "$only" ]; then
  for t in "${tests[@]}"; do
    IFS=: read -r n f p <<<"$t"
    t=$n:${f:-qcow2}:${p:-file}
    o=$(awk -v t="$t" '$1 == t { print $2 }' "$work/oracle.res")
    c=$(awk -v t="$t" '$1 == t { print $2 }' "$work/candidate.res")
    [ "$o" = "$c" ] && continue
    # A test that ran out of time would only run out of time again.
    [ "$o" = timeout ] || [ "$c" = timeout ] && continue
    retried+="$t "
    for side in oracle candidate; do
      [ "$(awk -v t="$t" '$1 == t { print $2 }' "$work/$side.res")" = pass ] &&
        continue
      prog=$oracle; [ "$side" = candidate ] && prog=$candidate
      r=$(run_one "$side" "$prog" "$t")
      [ "$r" = pass ] &&
        sed -i "s|^$t .*|$t pass|" "$work/$side.res"
    done
  done
fi

# ---- the report --------------------------------------------------------

printf '%-34s %-8s %-8s\n' TEST oracle candidate
rc=0 n_o=0 n_c=0 n_both=0
for t in "${tests[@]}"; do
  IFS=: read -r n f p <<<"$t"
  t=$n:${f:-qcow2}:${p:-file}
  o=$(awk -v t="$t" '$1 == t { print $2 }' "$work/oracle.res" 2>/dev/null)
  c=$(awk -v t="$t" '$1 == t { print $2 }' "$work/candidate.res" 2>/dev/null)
  mark=""
  if [ "$o" = pass ] && [ -n "$c" ] && [ "$c" != pass ]; then
    mark="  <-- REGRESSION"; rc=1
  elif [ "$c" = pass ] && [ -n "$o" ] && [ "$o" != pass ]; then
    mark="  (passes only with the candidate)"
  fi
  [ "$o" = pass ] && n_o=$((n_o + 1))
  [ "$c" = pass ] && n_c=$((n_c + 1))
  [ "$o" = pass ] && [ "$c" = pass ] && n_both=$((n_both + 1))
  case "$retried" in *" $t "*) mark+="  (2 runs)" ;; esac
  printf '%-34s %-8s %-8s%s\n' "$t" "${o:--}" "${c:--}" "$mark"
done
echo "oracle ($oracle): $n_o passed${t_oracle:+ in ${t_oracle}s}"
[ "$only" = oracle ] ||
  echo "candidate ($candidate): $n_c passed${t_cand:+ in ${t_cand}s}, $n_both of the oracle's passes"
[ -n "${IOTESTS_LOG_DIR:-}" ] && echo "failure logs: $IOTESTS_LOG_DIR"
exit "$rc"
