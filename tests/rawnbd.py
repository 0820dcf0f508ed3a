# SPDX-License-Identifier: MIT
# The few pieces of the NBD protocol that the raw-socket tools
# (flood.py, memload.py, storm.py, exthdr.py) share: constants, whole
# reads, option and request framing, and NBD_OPT_GO on the default export
# with simple replies (fixed newstyle, no zeroes).

import struct

NBD_MAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x0003e889045565a9
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META = 9
OPT_SET_META = 10
OPT_EXTENDED_HEADERS = 11
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META = 4
ERR = 1 << 31
REP_ERR_UNSUP = ERR | 1
REP_ERR_POLICY = ERR | 2
REP_ERR_INVALID = ERR | 3
REP_ERR_TLS_REQD = ERR | 5
REP_ERR_UNKNOWN = ERR | 6
REP_ERR_TOO_BIG = ERR | 9
REP_ERR_EXT_HEADER_REQD = ERR | 10
INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3
REQ_MAGIC = 0x25609513
EXT_REQ_MAGIC = 0x21e41c71
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668e33ef
EXT_REPLY_MAGIC = 0x6e8a278c
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
REPLY_FLAG_DONE = 1
TYPE_NONE = 0
TYPE_OFFSET_DATA = 1
TYPE_OFFSET_HOLE = 2
TYPE_BLOCK_STATUS = 5
TYPE_BLOCK_STATUS_EXT = 6
TYPE_ERROR = (1 << 15) + 1
TYPE_ERROR_OFFSET = (1 << 15) + 2
CLIENT_FLAGS = struct.pack(">I", 3)     # fixed newstyle, no zeroes


class Closed(Exception):
    """The server closed the connection."""


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise Closed("the server closed the connection")
        buf += d
    return bytes(buf)


def opt(code, payload=b""):
    return struct.pack(">QII", IHAVEOPT, code, len(payload)) + payload


# NBD_OPT_GO for the export "" with no information requests.
GO = opt(OPT_GO, struct.pack(">IH", 0, 0))


def option_replies(s):
    """Read option replies up to the last one (not SERVER or INFO);
    returns its type."""
    while True:
        _, _, typ, length = struct.unpack(">QIII", recv_exact(s, 20))
        recv_exact(s, length)
        if typ not in (2, 3):
            return typ


def req(cmd, cookie, offset, length, flags=0):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset,
                       length)


def negotiate(s):
    """Greeting, client flags and GO on connected socket S: afterwards
    it is in the transmission phase."""
    recv_exact(s, 18)
    s.sendall(CLIENT_FLAGS + GO)
    typ = option_replies(s)
    if typ != REP_ACK:
        raise SystemExit("NBD_OPT_GO refused: %#x" % typ)


def main(prog, cmds):
    """Run the subcommand sys.argv[1] of CMDS (name -> function of the
    remaining arguments); a server that closes a connection unexpectedly
    is an error with a message."""
    import sys
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit("usage: %s %s ..." % (prog, "|".join(cmds)))
    try:
        cmds[sys.argv[1]](sys.argv[2:])
    except Closed as e:
        sys.exit("%s %s: %s" % (prog, sys.argv[1], e))
