#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Build the initramfs of the kernel-client test VM from the host's Debian
# packages, in two gzip'ed cpio archives the kernel unpacks one after the
# other (qemu -initrd takes their concatenation):
#
#   mkinitramfs.sh base OUT KVER
#       busybox-static, nbd-client, e2fsprogs (mke2fs, e2fsck), util-linux
#       (blkdiscard, fstrim, blockdev), coreutils' dd and sha256sum, kmod,
#       Debian's qemu-nbd (the reference for our qemu-nbd -c), their
#       shared libraries (found with ldd), and the modules the guest
#       loads (nbd, virtio-net, 9p, ext4 and their dependencies) with a
#       modules.dep made by depmod for that subset.  Only changes when the
#       packages do, so callers cache it (see vm.sh).
#   mkinitramfs.sh overlay OUT QCOW2_NBD FILE...
#       our server binary (also linked as qemu-nbd) and its libraries, and
#       the guest scripts FILE...
#       (init, guest.sh) at the root.
#
#   mkinitramfs.sh inputs KVER
#       print the host files the base archive is made from, one a line,
#       so the cache key can follow them.
#
# The tree is merged-/usr like Debian 12's (/bin, /sbin, /lib, /lib64 are
# links into /usr), so every file lands where the host's ldd and the
# binaries' own paths expect it.

set -euo pipefail

# The real tools the scenarios call by absolute path (busybox's shell runs
# its own applets in preference to anything on PATH).
tools=(
  /usr/sbin/nbd-client
  /sbin/mke2fs /sbin/e2fsck
  /sbin/blkdiscard /sbin/fstrim /sbin/blockdev
  /bin/dd /usr/bin/sha256sum
  /bin/kmod
  /usr/bin/qemu-nbd
)
# name -> target for the tools known under a second name.
tool_links=(
  /sbin/mkfs.ext4:mke2fs
  /sbin/fsck.ext4:e2fsck
  /sbin/modprobe:../bin/kmod
  /sbin/insmod:../bin/kmod
  /sbin/lsmod:../bin/kmod
)
modules=(nbd virtio_pci virtio_net 9p 9pnet_virtio ext4)

die ()
{
  echo "mkinitramfs.sh: $*" >&2
  exit 1
}

# The shared libraries of the ELF files given, one a line (the loader
# included).
libs_of ()
{
  local f
  for f in "$@"; do
    # A static binary makes ldd fail with "not a dynamic executable".
    ldd "$f" 2>/dev/null | awk '
      $2 == "=>" && $3 ~ /^\// { print $3 }
      $1 ~ /^\// { print $1 }' || true
  done | sort -u
}

# The module files (with dependencies) of the modules given.
module_files ()
{
  local kver=$1 m; shift
  for m in "$@"; do
    modprobe -S "$kver" --show-depends "$m" 2>/dev/null |
      awk '$1 == "insmod" { print $2 }' ||
      die "modprobe cannot resolve module $m for kernel $kver"
  done | sort -u
}

# make_tree ROOT: the merged-/usr skeleton.
make_tree ()
{
  local root=$1
  mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{dev,proc,sys,tmp,mnt,share,etc,root}
  ln -s usr/bin "$root/bin"
  ln -s usr/sbin "$root/sbin"
  ln -s usr/lib "$root/lib"
  ln -s usr/lib64 "$root/lib64"
}

# put ROOT FILE...: copy each host file (dereferenced) to the same path
# under ROOT.
put ()
{
  local root=$1 f; shift
  for f in "$@"; do
    [ -e "$f" ] || die "$f not found"
    mkdir -p "$root$(dirname "$f")"
    cp -L "$f" "$root$f"
  done
}

pack ()
{
  local root=$1 out=$2
  (cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
     cpio --quiet -o -H newc -R 0:0) | gzip -1 > "$out.tmp"
  mv "$out.tmp" "$out"
}

base_inputs ()
{
  local kver=$1
  printf '%s\n' /bin/busybox "${tools[@]}" /etc/mke2fs.conf
  libs_of /bin/busybox "${tools[@]}"
  module_files "$kver" "${modules[@]}"
  local m
  for m in modules.order modules.builtin modules.builtin.modinfo; do
    echo "/lib/modules/$kver/$m"
  done
}

cmd=${1:-}
case "$cmd" in
inputs)
  base_inputs "$2"
  ;;

base)
  out=$2 kver=$3
  work=$(mktemp -d "${TMPDIR:-/tmp}/mkinitramfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  make_tree "$root"
  mapfile -t files < <(base_inputs "$kver")
  put "$root" "${files[@]}"
  # busybox lives in /bin; its applet links are made at boot.
  for l in "${tool_links[@]}"; do
    ln -sf "${l#*:}" "$root${l%%:*}"
  done
  depmod -b "$root" "$kver" || die "depmod failed"
  pack "$root" "$out"
  ;;

overlay)
  out=$2 server=$3; shift 3
  work=$(mktemp -d "${TMPDIR:-/tmp}/mkinitramfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root=$work/root
  make_tree "$root"
  mkdir -p "$root/usr/local/bin"
  cp -L "$server" "$root/usr/local/bin/qcow2-nbd"
  # Run under that name it is our qemu-nbd (Debian's is /usr/bin's).
  ln -s qcow2-nbd "$root/usr/local/bin/qemu-nbd"
  mapfile -t files < <(libs_of "$server")
  put "$root" "${files[@]}"
  for f in "$@"; do
    cp -L "$f" "$root/$(basename "$f")"
    chmod 755 "$root/$(basename "$f")"
  done
  # The skeleton's links are already in the base archive; a second
  # archive may not redefine them as directories, so only pack what is
  # new: everything under usr/ and the root files.
  rm "$root"/{bin,sbin,lib,lib64}
  rmdir "$root"/{dev,proc,sys,tmp,mnt,share,etc,root}
  pack "$root" "$out"
  ;;

*)
  sed -n '3,22s/^# \{0,1\}//p' "$0" >&2
  exit 2
  ;;
esac
