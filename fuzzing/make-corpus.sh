#!/bin/sh
# SPDX-License-Identifier: MIT
# Regenerate the seed corpus in corpus/ (committed; run by hand when the
# set of seeds should change).  Small virtual sizes and small clusters
# keep every seed far below 300 KiB.
set -e
cd "$(dirname "$0")/corpus"
img () { qemu-img create -q -f qcow2 "$@"; }
io () { f="$1"; shift; for c in "$@"; do qemu-io -f qcow2 -c "$c" "$f" >/dev/null; done; }

img -o cluster_size=4096 plain-v3.qcow2 256k
io plain-v3.qcow2 'write -P 0xaa 0 12k' 'write -c -P 0xbb 64k 8k' \
   'write -z 128k 4k'

img -o compat=0.10,cluster_size=512 v2-512.qcow2 64k
io v2-512.qcow2 'write -P 0x11 0 3k' 'write -c -P 0x22 32k 1k'

img -o compression_type=zstd,cluster_size=4096 zstd.qcow2 128k
io zstd.qcow2 'write -c -P 0x33 0 16k' 'write -P 0x44 64k 4k'

img -o extended_l2=on,cluster_size=16k extl2.qcow2 256k
io extl2.qcow2 'write -P 0x55 0 1k' 'write -P 0x66 20k 2k' 'write -z 48k 1k'

img -o cluster_size=4096 -u -b base.qcow2 -F qcow2 backed.qcow2 64k

img -o cluster_size=4096,data_file=ext.raw datafile.qcow2 64k
rm -f ext.raw

img -o cluster_size=4096 snapshot.qcow2 64k
io snapshot.qcow2 'write -P 0x88 0 4k'
qemu-img snapshot -c s1 snapshot.qcow2
io snapshot.qcow2 'write -P 0x99 0 4k'

img -o cluster_size=4096 bitmap.qcow2 64k
qemu-img bitmap --add bitmap.qcow2 b0

ls -l
