/* SPDX-License-Identifier: MIT */
/* NBD protocol constants and wire structures, named as in the protocol
 * specification (NetworkBlockDevice/nbd, doc/proto.md) and QEMU's
 * docs/interop/nbd.rst for the qemu: meta contexts.  All fields are
 * big-endian on the wire; the structs here are packed and only ever
 * filled with the store_be* helpers. */
#ifndef SERVER_NBD_PROTOCOL_H
#define SERVER_NBD_PROTOCOL_H

#include <stdint.h>

/* "Handshake" / "Newstyle negotiation" */
#define NBD_MAGIC            UINT64_C (0x4e42444d41474943) /* "NBDMAGIC" */
#define NBD_IHAVEOPT         UINT64_C (0x49484156454F5054) /* "IHAVEOPT" */
#define NBD_REP_MAGIC        UINT64_C (0x0003e889045565a9)

/* "Handshake flags" */
#define NBD_FLAG_FIXED_NEWSTYLE   (1u << 0)
#define NBD_FLAG_NO_ZEROES        (1u << 1)

/* "Client flags" */
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0)
#define NBD_FLAG_C_NO_ZEROES      (1u << 1)

/* "Option types" */
#define NBD_OPT_EXPORT_NAME       1
#define NBD_OPT_ABORT             2
#define NBD_OPT_LIST              3
#define NBD_OPT_PEEK_EXPORT       4
#define NBD_OPT_STARTTLS          5
#define NBD_OPT_INFO              6
#define NBD_OPT_GO                7
#define NBD_OPT_STRUCTURED_REPLY  8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT  10
#define NBD_OPT_EXTENDED_HEADERS  11

/* "Option reply types" */
#define NBD_REP_ERR(v)            ((1u << 31) | (v))
#define NBD_REP_ACK               1
#define NBD_REP_SERVER            2
#define NBD_REP_INFO              3
#define NBD_REP_META_CONTEXT      4
#define NBD_REP_ERR_UNSUP         NBD_REP_ERR (1)
#define NBD_REP_ERR_POLICY        NBD_REP_ERR (2)
#define NBD_REP_ERR_INVALID       NBD_REP_ERR (3)
#define NBD_REP_ERR_PLATFORM      NBD_REP_ERR (4)
#define NBD_REP_ERR_TLS_REQD      NBD_REP_ERR (5)
#define NBD_REP_ERR_UNKNOWN       NBD_REP_ERR (6)
#define NBD_REP_ERR_SHUTDOWN      NBD_REP_ERR (7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR (8)
#define NBD_REP_ERR_TOO_BIG       NBD_REP_ERR (9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR (10)

/* "Information types" (NBD_OPT_INFO and NBD_OPT_GO) */
#define NBD_INFO_EXPORT           0
#define NBD_INFO_NAME             1
#define NBD_INFO_DESCRIPTION      2
#define NBD_INFO_BLOCK_SIZE       3

/* "Transmission flags" */
#define NBD_FLAG_HAS_FLAGS        (1u << 0)
#define NBD_FLAG_READ_ONLY        (1u << 1)
#define NBD_FLAG_SEND_FLUSH       (1u << 2)
#define NBD_FLAG_SEND_FUA         (1u << 3)
#define NBD_FLAG_ROTATIONAL       (1u << 4)
#define NBD_FLAG_SEND_TRIM        (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF          (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN   (1u << 8)
#define NBD_FLAG_SEND_RESIZE      (1u << 9)
#define NBD_FLAG_SEND_CACHE       (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO   (1u << 11)
#define NBD_FLAG_BLOCK_STAT_PAYLOAD (1u << 12) /* extended headers only */

/* "Transmission": requests and replies */
#define NBD_REQUEST_MAGIC         UINT32_C (0x25609513)
#define NBD_SIMPLE_REPLY_MAGIC    UINT32_C (0x67446698)
#define NBD_STRUCTURED_REPLY_MAGIC UINT32_C (0x668e33ef)
/* "Request message" and "Extended reply chunk message": with
 * NBD_OPT_EXTENDED_HEADERS both directions use 32-byte headers. */
#define NBD_EXTENDED_REQUEST_MAGIC UINT32_C (0x21e41c71)
#define NBD_EXTENDED_REPLY_MAGIC  UINT32_C (0x6e8a278c)

/* "Request types" */
#define NBD_CMD_READ              0
#define NBD_CMD_WRITE             1
#define NBD_CMD_DISC              2
#define NBD_CMD_FLUSH             3
#define NBD_CMD_TRIM              4
#define NBD_CMD_CACHE             5
#define NBD_CMD_WRITE_ZEROES      6
#define NBD_CMD_BLOCK_STATUS      7
#define NBD_CMD_RESIZE            8

/* "Command flags" */
#define NBD_CMD_FLAG_FUA          (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE      (1u << 1)
#define NBD_CMD_FLAG_DF           (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE      (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO    (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN  (1u << 5)  /* extended headers only */

/* "Structured reply flags" and "Structured reply types" */
#define NBD_REPLY_FLAG_DONE       (1u << 0)
#define NBD_REPLY_TYPE_NONE       0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6   /* extended headers only */
#define NBD_REPLY_TYPE_ERROR      ((1u << 15) + 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) + 2)

/* "base:allocation metadata context" */
#define NBD_STATE_HOLE            (1u << 0)
#define NBD_STATE_ZERO            (1u << 1)
/* qemu:dirty-bitmap:NAME (QEMU docs/interop/nbd.rst). */
#define NBD_STATE_DIRTY           (1u << 0)

/* "Error values" */
#define NBD_EPERM                 1
#define NBD_EIO                   5
#define NBD_ENOMEM                12
#define NBD_EINVAL                22
#define NBD_ENOSPC                28
#define NBD_EOVERFLOW             75
#define NBD_ENOTSUP               95
#define NBD_ESHUTDOWN             108

/* Limits we enforce ("Size constraints"; strings at most 4096 bytes). */
#define NBD_MAX_STRING            4096
#define NBD_MAX_OPTION_LENGTH     (64 * 1024)  /* longest option we read */
#define NBD_MAX_PAYLOAD           (32u * 1024 * 1024)

#define NBD_DEFAULT_PORT          "10809"

/* Wire sizes of fixed headers. */
#define NBD_REQUEST_SIZE          28  /* magic, flags, type, cookie, off, len */
#define NBD_EXTENDED_REQUEST_SIZE 32  /* ... with a 64-bit len */
#define NBD_SIMPLE_REPLY_SIZE     16  /* magic, error, cookie */
#define NBD_STRUCTURED_REPLY_SIZE 20  /* magic, flags, type, cookie, length */
#define NBD_EXTENDED_REPLY_SIZE   32  /* ... offset, 64-bit length */
#define NBD_OPTION_HEADER_SIZE    16  /* IHAVEOPT, option, length */
#define NBD_OPTION_REPLY_SIZE     20  /* magic, option, type, length */

#endif /* SERVER_NBD_PROTOCOL_H */
