/* SPDX-License-Identifier: MIT */
/* The QCOW2 on-disk format: header layout, feature bits, header
 * extensions, table entry masks and the limits we enforce on hostile
 * images.  Section names refer to QEMU's docs/interop/qcow2.txt, which is
 * the authority; limits that are ours (or QEMU's, not the spec's) say so.
 * Everything on disk is big-endian; read it with common/byteorder.h. */
#ifndef QCOW2_FORMAT_H
#define QCOW2_FORMAT_H

#include <stdint.h>

/* ---- Header ("Header", qcow2.txt) -------------------------------------
 * All offsets are byte offsets into cluster 0. */

#define QCOW2_MAGIC 0x514649fbu            /* 'Q' 'F' 'I' 0xfb */

#define QCOW2_HDR_MAGIC                   0   /* u32 */
#define QCOW2_HDR_VERSION                 4   /* u32: 2 or 3 */
#define QCOW2_HDR_BACKING_FILE_OFFSET     8   /* u64, 0: no backing file */
#define QCOW2_HDR_BACKING_FILE_SIZE      16   /* u32, no NUL, < 1024 */
#define QCOW2_HDR_CLUSTER_BITS           20   /* u32 */
#define QCOW2_HDR_SIZE                   24   /* u64: virtual size */
#define QCOW2_HDR_CRYPT_METHOD           32   /* u32 */
#define QCOW2_HDR_L1_SIZE                36   /* u32: entries */
#define QCOW2_HDR_L1_TABLE_OFFSET        40   /* u64 */
#define QCOW2_HDR_REFCOUNT_TABLE_OFFSET  48   /* u64 */
#define QCOW2_HDR_REFCOUNT_TABLE_CLUSTERS 56  /* u32 */
#define QCOW2_HDR_NB_SNAPSHOTS           60   /* u32 */
#define QCOW2_HDR_SNAPSHOTS_OFFSET       64   /* u64 */
/* Version 3 only; version 2 headers end here and imply zero features,
 * refcount_order 4 and header_length 72. */
#define QCOW2_HDR_INCOMPATIBLE_FEATURES  72   /* u64 */
#define QCOW2_HDR_COMPATIBLE_FEATURES    80   /* u64 */
#define QCOW2_HDR_AUTOCLEAR_FEATURES     88   /* u64 */
#define QCOW2_HDR_REFCOUNT_ORDER         96   /* u32 */
#define QCOW2_HDR_HEADER_LENGTH         100   /* u32 */
/* Present only when header_length > 104 ("Additional fields"). */
#define QCOW2_HDR_COMPRESSION_TYPE      104   /* u8 */

#define QCOW2_V2_HEADER_LENGTH 72
#define QCOW2_V3_HEADER_LENGTH 104     /* minimum for version 3 */

/* crypt_method ("Header", byte 32). */
#define QCOW2_CRYPT_NONE 0
#define QCOW2_CRYPT_AES  1
#define QCOW2_CRYPT_LUKS 2

/* cluster_bits: the spec allows 9 (512 B) .. 21 (2 MiB) for QEMU. */
#define QCOW2_MIN_CLUSTER_BITS 9
#define QCOW2_MAX_CLUSTER_BITS 21

/* refcount_order: refcounts are 2^order bits wide, order 0..6. */
#define QCOW2_MAX_REFCOUNT_ORDER 6

/* Incompatible feature bits ("Header", bytes 72-79).  An image with a bit
 * we don't know must not be opened. */
#define QCOW2_INCOMPAT_DIRTY        (UINT64_C (1) << 0)
#define QCOW2_INCOMPAT_CORRUPT      (UINT64_C (1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (UINT64_C (1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (UINT64_C (1) << 3)
#define QCOW2_INCOMPAT_EXTL2        (UINT64_C (1) << 4)
#define QCOW2_INCOMPAT_MASK         UINT64_C (0x1f)

/* Compatible feature bits (bytes 80-87): safe to ignore when unknown. */
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C (1) << 0)

/* Autoclear feature bits (bytes 88-95): a writer that doesn't know a bit
 * clears it on its first write. */
#define QCOW2_AUTOCLEAR_BITMAPS       (UINT64_C (1) << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (UINT64_C (1) << 1)

/* compression_type ("Additional fields", byte 104); non-zero iff
 * QCOW2_INCOMPAT_COMPRESSION is set. */
#define QCOW2_COMPRESSION_ZLIB 0
#define QCOW2_COMPRESSION_ZSTD 1

/* Extended L2 entries need at least 32 subclusters of 512 bytes
 * ("Extended L2 Entries"). */
#define QCOW2_EXTL2_MIN_CLUSTER_BITS 14
#define QCOW2_EXTL2_SUBCLUSTERS 32

/* ---- Header extensions ("Header extensions") --------------------------
 * Directly after the header (at header_length; 72 for version 2), each
 * {u32 type, u32 length, data, zero padding to a multiple of 8}, ending
 * with type 0; all inside cluster 0 and before the backing file name.
 * Unknown types are skipped. */
#define QCOW2_EXT_HEADER_SIZE     8
#define QCOW2_EXT_END             0x00000000u
#define QCOW2_EXT_BACKING_FORMAT  0xe2792acau   /* string, no NUL */
#define QCOW2_EXT_FEATURE_TABLE   0x6803f857u   /* "Feature name table" */
#define QCOW2_EXT_BITMAPS         0x23852875u   /* "Bitmaps extension" */
#define QCOW2_EXT_CRYPTO          0x0537be77u   /* "Full disk encryption
                                                 * header pointer" */
#define QCOW2_EXT_DATA_FILE       0x44415441u   /* "External data file
                                                 * name", string */

/* Feature name table entry: u8 type, u8 bit number, char name[46]
 * (NUL padded, not NUL terminated when 46 long). */
#define QCOW2_FEATURE_ENTRY_SIZE 48
#define QCOW2_FEATURE_NAME_SIZE  46
#define QCOW2_FEATURE_TYPE_INCOMPATIBLE 0
#define QCOW2_FEATURE_TYPE_COMPATIBLE   1
#define QCOW2_FEATURE_TYPE_AUTOCLEAR    2

/* Bitmaps extension: u32 nb_bitmaps, u32 reserved (0),
 * u64 bitmap_directory_size, u64 bitmap_directory_offset. */
#define QCOW2_BITMAPS_EXT_SIZE 24
#define QCOW2_MAX_BITMAPS 65535                       /* QEMU's limit */
#define QCOW2_MAX_BITMAP_DIRECTORY_SIZE (1024u * QCOW2_MAX_BITMAPS)

/* ---- Bitmap directory and bitmaps ("Bitmap directory", "Bitmaps") -----
 *
 *   bitmaps extension -> bitmap directory (nb_bitmaps entries, each
 *     padded to 8 bytes) -> entry: bitmap table (u64 per cluster of
 *     bitmap data) -> bitmap data cluster: one bit per granule of the
 *     guest, bit 0 of byte 0 first; 1 = the granule was written.
 *
 * Directory entry: u64 bitmap_table_offset, u32 bitmap_table_size
 * (entries), u32 flags, u8 type, u8 granularity_bits, u16 name_size,
 * u32 extra_data_size, extra data, name (no NUL), padding to 8. */
#define QCOW2_BME_TABLE_OFFSET     0   /* u64 */
#define QCOW2_BME_TABLE_SIZE       8   /* u32 */
#define QCOW2_BME_FLAGS           12   /* u32 */
#define QCOW2_BME_TYPE            16   /* u8: 1 = dirty tracking bitmap */
#define QCOW2_BME_GRANULARITY     17   /* u8: log2 of bytes per bit */
#define QCOW2_BME_NAME_SIZE       18   /* u16 */
#define QCOW2_BME_EXTRA_DATA_SIZE 20   /* u32 */
#define QCOW2_BME_HEADER_SIZE     24
#define QCOW2_BME_FLAG_IN_USE   (1u << 0)  /* may be inconsistent */
#define QCOW2_BME_FLAG_AUTO     (1u << 1)  /* enabled: tracks writes */
/* Bit 2, extra_data_compatible, is refused like the others, as QEMU
 * does (it supports no extra data). */
#define QCOW2_BME_RESERVED_FLAGS 0xfffffffcu
#define QCOW2_BME_TYPE_DIRTY_TRACKING 1
/* QEMU's limits (block/qcow2-bitmap.c), which we share so that we open
 * what it opens: granularity 512 B .. 2 GiB, names of 1..1023 bytes, a
 * table of at most 2^27 entries describing at most 512 MiB of bits. */
#define QCOW2_BME_MIN_GRANULARITY_BITS 9
#define QCOW2_BME_MAX_GRANULARITY_BITS 31
#define QCOW2_BME_MAX_NAME_SIZE 1023
#define QCOW2_BME_MAX_TABLE_SIZE 0x8000000u
#define QCOW2_BME_MAX_PHYS_SIZE (UINT64_C (512) << 20)
/* Bitmap table entry: bits 9-55 data cluster offset (0: none), bit 0
 * with offset 0: the cluster reads as all ones (else all zeros). */
#define QCOW2_BMT_OFFSET_MASK   UINT64_C (0x00fffffffffffe00)
#define QCOW2_BMT_RESERVED_MASK UINT64_C (0xff000000000001fe)
#define QCOW2_BMT_ALL_ONES      UINT64_C (1)

/* Full disk encryption header pointer: u64 offset, u64 length. */
#define QCOW2_CRYPTO_EXT_SIZE 16

/* Longest backing file name ("Header", bytes 16-19: "must not be longer
 * than 1023 bytes"); we apply it to the data file name too. */
#define QCOW2_MAX_BACKING_NAME 1023

/* ---- L1 and L2 tables ("Cluster mapping") -----------------------------
 *
 *   L1 entry (u64):  bits 9-55  L2 table offset (cluster aligned)
 *                    bit 63     COPIED (refcount exactly 1)
 *                    bits 0-8, 56-62 reserved, must be 0
 *   L2 entry (u64), standard cluster:
 *                    bit 0      reads as zero (v3; unused with extended L2)
 *                    bits 9-55  host cluster offset (cluster aligned)
 *                    bit 62     0 = standard cluster
 *                    bit 63     COPIED
 *                    bits 1-8, 56-61 reserved, must be 0
 *   L2 entry, compressed cluster (bit 62 set): the "descriptor" in bits
 *   0-61, with x = 62 - (cluster_bits - 8):
 *                    bits 0..x-1  host byte offset of the stream
 *                    bits x..61   additional 512-byte sectors
 *   Extended L2 ("Extended L2 Entries"): each entry is followed by a u64
 *   subcluster bitmap, bits 0-31 allocated, bits 32-63 reads as zero.
 *
 * Per-entry checks are done lazily, by map.c, when a range is read: a bad
 * entry makes reads of its range fail with EIO (as in QEMU), it does not
 * make the whole image unopenable. */
/* ---- Refcount table and blocks ("Host cluster management") ------------
 *
 *   refcount table entry (u64): bits 9-63 refcount block offset (cluster
 *                    aligned; 0 = block not allocated), bits 0-8 reserved
 *   refcount block: one cluster of 2^refcount_order-bit big-endian
 *                    counts; widths below 8 bits pack from the least
 *                    significant bit of each byte. */
#define REFT_OFFSET_MASK   UINT64_C (0xfffffffffffffe00)
#define REFT_RESERVED_MASK UINT64_C (0x00000000000001ff)

#define L1E_OFFSET_MASK   UINT64_C (0x00fffffffffffe00)
#define L1E_RESERVED_MASK UINT64_C (0x7f000000000001ff)
#define L2E_OFFSET_MASK   UINT64_C (0x00fffffffffffe00)
#define L2E_STD_RESERVED_MASK UINT64_C (0x3f000000000001fe)
#define QCOW_OFLAG_COPIED     (UINT64_C (1) << 63)
#define QCOW_OFLAG_COMPRESSED (UINT64_C (1) << 62)
#define QCOW_OFLAG_ZERO       (UINT64_C (1) << 0)
#define QCOW2_L1E_SIZE 8
#define QCOW2_L2E_SIZE 8
#define QCOW2_EXTL2E_SIZE 16
#define QCOW2_COMPRESSED_SECTOR_SIZE 512

/* Our limits on table sizes, QEMU's values so that we open what it opens:
 * L1 at most 32 MiB (QCOW_MAX_L1_SIZE), refcount table at most 8 MiB
 * (QCOW_MAX_REFTABLE_SIZE). */
#define QCOW2_MAX_L1_BYTES        (UINT64_C (32) << 20)
#define QCOW2_MAX_REFTABLE_BYTES  (UINT64_C (8) << 20)

/* ---- Snapshot table ("Snapshots") -------------------------------------
 * nb_snapshots entries at snapshots_offset (cluster aligned), each:
 * a 40-byte header, extra_data_size bytes of extra data, the id string,
 * the name, padding to a multiple of 8. */
#define QCOW2_SN_L1_TABLE_OFFSET   0   /* u64 */
#define QCOW2_SN_L1_SIZE           8   /* u32 */
#define QCOW2_SN_ID_STR_SIZE      12   /* u16 */
#define QCOW2_SN_NAME_SIZE        14   /* u16 */
#define QCOW2_SN_DATE_SEC         16   /* u32 */
#define QCOW2_SN_DATE_NSEC        20   /* u32 */
#define QCOW2_SN_VM_CLOCK_NSEC    24   /* u64 */
#define QCOW2_SN_VM_STATE_SIZE    32   /* u32 */
#define QCOW2_SN_EXTRA_DATA_SIZE  36   /* u32 */
#define QCOW2_SN_HEADER_SIZE      40
/* QEMU's limits (QCOW_MAX_SNAPSHOTS, QCOW_MAX_SNAPSHOT_EXTRA_DATA,
 * QCOW_MAX_SNAPSHOTS_SIZE). */
#define QCOW2_MAX_SNAPSHOTS 65536
#define QCOW2_MAX_SNAPSHOT_EXTRA_DATA 1024
#define QCOW2_MAX_SNAPSHOTS_BYTES (UINT64_C (1024) * QCOW2_MAX_SNAPSHOTS)

#endif /* QCOW2_FORMAT_H */
